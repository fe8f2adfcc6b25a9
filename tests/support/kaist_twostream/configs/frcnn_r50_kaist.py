# Full-size two-stream Faster R-CNN R-50-FPN for KAIST at 640x512: its state_dict is the layout of
# fixtures/keys/kaist_frcnn.txt (tests/test_kaist_twostream.py checks it key for key).
_base_ = ['./frcnn_tiny_kaist.py']
img_scale = (640, 512)
model = dict(
    backbone=dict(depth=50, base_channels=64, frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=True),
    neck=dict(in_channels=[256, 512, 1024, 2048], out_channels=256),
    rpn_head=dict(in_channels=256, feat_channels=256),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=256, roi_layer=dict(sampling_ratio=0)),   # mmdet's default
                  bbox_head=dict(in_channels=256, fc_out_channels=1024)),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=1000)))
test_pipeline = [
    dict(type='LoadKaistPair'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
