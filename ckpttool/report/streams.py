"""How the metric names of multi-stream runs read: ``acc/rgb_top1`` is stream ``rgb``, kind ``top1``, shown as
``RGB``; ``acc/RGBPose_1:1_top1`` is the fusion ``fusion 1:1``. Used by the work_dir tables, the doctor and the
training-curve figures."""
from __future__ import annotations

import re

STREAM_RE = re.compile(r"^(?:(?P<prefix>[^/]+)/)?(?P<stream>[^/]+?)_(?P<kind>top\d+|mean\d+|mAP|mean_ap|loss)$")


def stream_of(name: str) -> tuple[str | None, str]:
    """(stream, kind) of a metric name: `acc/rgb_top1` -> ('rgb', 'top1'), `acc/RGBPose_1:1_top1` ->
    ('RGBPose_1:1', 'top1'); single-stream names give (None, name)."""
    m = STREAM_RE.match(name)
    return (m["stream"], m["kind"]) if m else (None, name)


def stream_label(stream: str | None) -> str:
    if stream is None:
        return ""
    low = stream.lower()
    if low.startswith("rgbpose"):
        return "fusion" + stream[len("RGBPose"):].replace("_", " ")
    return {"rgb": "RGB", "pose": "Pose", "flow": "Flow", "audio": "Audio"}.get(low, stream)
