# bevfusion_det.py without the camera branch and with every width >= 16 divided by 8: the shapes of the
# generated layout fixture `bevfusion_det` (fixtures/keys/bevfusion_det.txt scaled by tests/support/fixtures.py).
_base_ = ['./bevfusion_det.py']
model = dict(
    img_backbone=None, img_neck=None, view_transform=None,
    pts_middle_encoder=dict(base_channels=2, output_channels=16,
                            encoder_channels=((2, 2, 4), (4, 4, 8), (8, 8, 16), (16, 16))),
    fusion_layer=dict(in_channels=[10, 32], out_channels=32),
    pts_backbone=dict(in_channels=32, out_channels=[16, 32]),
    pts_neck=dict(in_channels=[16, 32], out_channels=[32, 32]),
    bbox_head=dict(in_channels=64, hidden_channel=16, ffn_channels=32, head_conv=8))
