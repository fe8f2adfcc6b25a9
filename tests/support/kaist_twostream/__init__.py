"""A user project: a two-stream (visible + thermal) Faster R-CNN for KAIST on mmdetection 3.x.

Test support, not library code. Configs import it with ``custom_imports = dict(imports=['kaist_twostream'])``
and the project root (``tests/support``) on ``sys.path``, as a user's own project is imported.

- :class:`LoadKaistPair` (transform): reads ``setNN/VNNN/visible/INNNNN.jpg`` and its ``lwir`` twin and stacks
  them into one H x W x 6 image, so stock ``Resize`` / ``RandomFlip`` / ``TestTimeAug`` / ``PackDetInputs`` apply
  to both streams at once.
- :class:`TwoStreamDataPreprocessor`: per-stream BGR->RGB, mean and std, then mmdet's batching and padding.
- :class:`TwoStreamFasterRCNN`: ``backbone_vis``/``neck_vis`` and ``backbone_lwir``/``neck_lwir``, FPN levels
  fused by their mean, one RPN and RoI head (the layout of ``fixtures/keys/kaist_frcnn.txt``).
- :class:`KaistPairedDataset`: the KAIST annotation json (``images[{id, im_name}]``, ``annotations[{image_id,
  bbox [x,y,w,h], category_id, ignore}]``); non-person categories and ``ignore`` boxes are ``ignore_flag=1``.
"""
from .dataset import KaistPairedDataset
from .model import TwoStreamDataPreprocessor, TwoStreamFasterRCNN
from .oracle import KaistGroundTruthDetector
from .transforms import LoadKaistPair

__all__ = ["KaistGroundTruthDetector", "KaistPairedDataset", "LoadKaistPair", "TwoStreamDataPreprocessor", "TwoStreamFasterRCNN"]
