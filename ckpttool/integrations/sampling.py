"""Find the frame-sampling step of a test pipeline (also inside wrappers) and set its ``num_clips``.

Works on the config (a list of transform dicts), so nothing is built. Wrappers are any step with a ``transforms``
entry (mmcv's ``KeyMapper``, ``TransformBroadcaster``, ``RandomChoice``, ``RandomApply``, ``Compose`` …).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

from ckpttool.errors import CkptError

# mmaction2's clip samplers; subclasses registered elsewhere are recognised through the registry (see _is_sampler).
SAMPLER_TYPES = ("SampleFrames", "UniformSampleFrames", "MMUniformSampleFrames", "DenseSampleFrames",
                 "UniformSample", "SampleAVAFrames")
# Steps that mark a pipeline as a skeleton (Pose) stream rather than RGB.
POSE_STEP_TYPES = {"PoseDecode", "GeneratePoseTarget", "PoseCompact", "PreNormalize2D", "PreNormalize3D",
                   "GenSkeFeat", "JointToBone", "ToMotion", "MergeSkeFeat", "DecompressPose"}


def _type_name(step) -> str:
    t = step.get("type") if isinstance(step, Mapping) else None
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def iter_steps(pipeline, path=()):
    """Yield ``(path, step)`` for every step, depth first, descending into ``transforms`` of wrappers.

    ``path`` is a tuple of list indices and ``"transforms"`` keys, usable with :func:`step_at`.
    """
    if isinstance(pipeline, Mapping):
        yield path, pipeline
        inner = pipeline.get("transforms")
        if inner is not None:
            yield from iter_steps(inner, path + ("transforms",))
    elif isinstance(pipeline, (list, tuple)):
        for i, step in enumerate(pipeline):
            yield from iter_steps(step, path + (i,))


def _is_sampler(step) -> bool:
    name = _type_name(step)
    if name in SAMPLER_TYPES:
        return True
    try:  # a registered subclass of one of mmaction's samplers
        from mmaction.registry import TRANSFORMS

        cls = TRANSFORMS.get(name)
    except Exception:
        return False
    return cls is not None and any(base.__name__ in SAMPLER_TYPES for base in getattr(cls, "__mro__", ())[1:])


def find_sampling_steps(pipeline) -> list[tuple[tuple, dict]]:
    """All sampling steps of ``pipeline`` as ``(path, step)``; CkptError naming the expected steps when none."""
    found = [(p, s) for p, s in iter_steps(pipeline) if _is_sampler(s)]
    if not found:
        names = [_type_name(s) for _, s in iter_steps(pipeline)]
        raise CkptError("the test pipeline has no frame-sampling step to set num_clips on (expected one of "
                        f"{', '.join(SAMPLER_TYPES)}); its steps are: {', '.join(names) or 'none'}")
    return found


def with_num_clips(pipeline, k: int) -> list:
    """A deep copy of ``pipeline`` with ``num_clips=k`` on every sampling step (wrappers included)."""
    if int(k) < 1:
        raise CkptError(f"--clips values must be positive integers, got {k}")
    new = copy.deepcopy(list(pipeline))
    for _, step in find_sampling_steps(new):
        step["num_clips"] = int(k)
    return new


def stream_kind(pipeline) -> str:
    """``"pose"`` when the pipeline builds skeleton inputs (heatmaps/joints), else ``"rgb"``."""
    return "pose" if any(_type_name(s) in POSE_STEP_TYPES for _, s in iter_steps(pipeline)) else "rgb"


def dataset_pipeline(dataset_cfg) -> list:
    """The ``pipeline`` of a dataset config, looking through dataset wrappers (``RepeatDataset`` …)."""
    from ckpttool.integrations.openmmlab import inner_dataset

    node = inner_dataset(dataset_cfg)
    if not isinstance(node, Mapping) or "pipeline" not in node:
        raise CkptError("the test dataset config has no `pipeline`")
    return node["pipeline"]
