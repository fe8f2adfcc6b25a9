"""Extra files for the `ckpt diff` tests, written with ckpttool's own torch-free writer into a test's tmp dir.

* :func:`renamed_copy`: a checkpoint's tensors, byte for byte, under other names (mmdet3d 1.x vs mit-han-lab).
* :func:`cfg_checkpoint`: an mmengine-like checkpoint whose ``meta.cfg`` is the given text (e.g. text with code).
* :func:`save_arrays`: numpy arrays as a torch-zip or safetensors checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from tests.support.fixtures import KEYS_DIR


def key_names(keyfile: str) -> list[str]:
    """The keys of ``fixtures/keys/<keyfile>.txt`` in file order."""
    lines = (KEYS_DIR / f"{keyfile}.txt").read_text().splitlines()
    return [line.split("\t")[0] for line in lines if line.strip()]


def renamed_copy(src, dst, old_names: list[str], new_names: list[str]) -> Path:
    """Write ``src``'s weights to ``dst`` with ``old_names[i]`` renamed to ``new_names[i]`` (same bytes)."""
    from ckpttool.io import load
    from ckpttool.io.write import save

    sd = load(src).state_dict()
    rename = dict(zip(old_names, new_names))
    save(str(dst), [(rename[k], t) for k, t in sd.items()], meta={"note": "renamed copy"})
    return Path(dst)


def cfg_checkpoint(path, cfg_text: str, arrays: dict | None = None) -> Path:
    """An mmengine-layout checkpoint (meta with mmengine_version and cfg text) holding ``arrays``."""
    import numpy as np

    from ckpttool.io.write import save

    arrays = arrays or {"backbone.w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save(str(path), arrays, meta={"cfg": cfg_text, "mmengine_version": "0.10.7", "epoch": 1, "iter": 10})
    return Path(path)


def save_arrays(path, arrays: dict, meta: dict | None = None) -> Path:
    from ckpttool.io.write import save

    save(str(path), arrays, meta=meta)
    return Path(path)
