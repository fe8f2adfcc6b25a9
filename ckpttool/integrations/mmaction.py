"""mmaction2 access: a safe import (with the upstream packaging workaround) and the shipped configs."""
from __future__ import annotations

import sys
import types
import warnings
from functools import lru_cache
from pathlib import Path

from ckpttool.errors import CkptError

# mmaction2 1.2.0's released wheel lacks the ``mmaction/models/localizers/drn`` package although
# ``mmaction/models/localizers/__init__.py`` imports ``from .drn.drn import DRN``
# (https://github.com/open-mmlab/mmaction2/issues/2714), so ``import mmaction.models`` fails.
# We register stand-in modules for exactly those two missing names before importing; site-packages is
# never touched, and nothing else in mmaction is replaced. The stand-in DRN refuses to be built.
_DRN_PACKAGE = "mmaction.models.localizers.drn"
_DRN_MODULE = "mmaction.models.localizers.drn.drn"


class _MissingDRN:
    """Placeholder for mmaction2's DRN localizer, which the 1.2.0 wheel does not ship (bug #2714)."""

    def __init__(self, *args, **kwargs):
        raise CkptError("mmaction2 1.2.0's installed package lacks the DRN localizer "
                        "(open-mmlab/mmaction2#2714); DRN models cannot be built")


def _drn_missing() -> bool:
    """True when the installed mmaction has the localizers package but not its ``drn`` sub-package.

    Checked on the file system: asking importlib would import ``mmaction.models.localizers``, which is what fails.
    """
    import importlib.util

    spec = importlib.util.find_spec("mmaction")
    if spec is None or not spec.submodule_search_locations:
        return False
    localizers = Path(list(spec.submodule_search_locations)[0]) / "models" / "localizers"
    return (localizers / "__init__.py").is_file() and not (localizers / "drn").is_dir()


def _install_drn_stand_in() -> None:
    if _DRN_MODULE in sys.modules or not _drn_missing():
        return
    pkg = types.ModuleType(_DRN_PACKAGE, "ckpt stand-in for the missing mmaction2 DRN package (#2714)")
    pkg.__path__ = []  # a package, so `.drn.drn` resolves through sys.modules
    mod = types.ModuleType(_DRN_MODULE, "ckpt stand-in for the missing mmaction2 DRN module (#2714)")
    mod.DRN = _MissingDRN
    pkg.drn = mod
    sys.modules[_DRN_PACKAGE] = pkg
    sys.modules[_DRN_MODULE] = mod


def _skip_unimportable_multimodal() -> None:
    """mmaction2 imports its multi-modal models (VindLU) whenever ``transformers`` is installed, and they import
    ``timm``, which imports ``torchvision``. Where that chain cannot be imported (the reachable torchvision wheels are
    CUDA builds that fail with a CPU torch), ``import mmaction.models`` would fail for every recogniser; mmaction's
    own switch ``WITH_MULTIMODAL`` is then turned off, so those three models are registered as placeholders that
    ask for the extra dependencies, exactly as when ``transformers`` is absent."""
    from mmaction.utils import dependency

    if not dependency.WITH_MULTIMODAL:
        return
    try:
        import timm  # noqa: F401
    except Exception:
        dependency.WITH_MULTIMODAL = False


@lru_cache(maxsize=None)
def import_mmaction():
    """Import mmaction2 with all its registries populated and return the ``mmaction`` module.

    Raises CkptError when the ``[mmaction]`` extra is not installed.
    """
    try:
        import mmaction  # noqa: F401
    except ImportError as exc:
        raise CkptError(f"mmaction2 is not installed ({exc}); install the [mmaction] extra: "
                        "pip install -c constraints.txt 'ckpttool[mmaction]'") from exc
    _install_drn_stand_in()
    _skip_unimportable_multimodal()
    with warnings.catch_warnings():
        # mmcv-lite has no compiled ops; mmcv warns about that on import although no recognizer needs them
        warnings.filterwarnings("ignore", message=".*mmcv-lite.*")
        import mmaction.datasets  # noqa: F401  (registers transforms and datasets)
        import mmaction.engine  # noqa: F401
        import mmaction.evaluation  # noqa: F401
        import mmaction.models  # noqa: F401
        import mmaction.structures  # noqa: F401

    return mmaction


def configs_root() -> Path:
    """The ``configs`` directory shipped inside the installed mmaction2 package (``mmaction/.mim/configs``)."""
    import importlib.util

    spec = importlib.util.find_spec("mmaction")
    if spec is None or not spec.submodule_search_locations:
        raise CkptError("mmaction2 is not installed; install the [mmaction] extra")
    root = Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"
    if not root.is_dir():
        raise CkptError(f"the installed mmaction2 has no shipped configs at {root}")
    return root


def shipped_config(name: str) -> Path:
    """Find a config shipped with mmaction2 by file name, stem or relative path.

    ``shipped_config("slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint")``,
    ``shipped_config("rgbpose_conv3d.py")`` or ``shipped_config("skeleton/posec3d/rgbpose_conv3d/rgbpose_conv3d.py")``.
    """
    root = configs_root()
    rel = name if name.endswith(".py") else name + ".py"
    direct = root / rel
    if direct.is_file():
        return direct
    base = Path(rel).name
    hits = sorted(p for p in root.rglob(base) if "__pycache__" not in p.parts)
    if "/" in rel:
        hits = [p for p in hits if p.as_posix().endswith("/" + rel)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise CkptError(f"no config named {name!r} is shipped with mmaction2 (looked under {root})")
    listing = ", ".join(str(p.relative_to(root)) for p in hits[:5])
    raise CkptError(f"config name {name!r} is ambiguous among mmaction2's shipped configs: {listing}")
