"""Writers: files torch reads back bit for bit, written atomically; refusals before any work."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ckpttool.errors import CkptError
from ckpttool.io import load
from ckpttool.io.write import save


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_is_bit_exact_in_torch(tmp_path, fixtures_dir, manifest, suffix):
    src = fixtures_dir / manifest["formats"]["files"]["dtypes_views"]["path"]
    sd = load(src).state_dict()
    out = tmp_path / f"out{suffix}"
    info = save(out, sd, meta={"epoch": 3, "note": "é", "big": 2**40, "nested": {"a": [1, 2.5, None]}})
    assert info["tensors"] == len(sd)
    if suffix == ".pth":
        obj = torch.load(out, weights_only=True, mmap=True)
        assert obj["meta"] == {"epoch": 3, "note": "é", "big": 2**40, "nested": {"a": [1, 2.5, None]}}
        back = obj["state_dict"]
    else:
        from safetensors.torch import load_file
        back = load_file(out)
    ref = torch.load(src, weights_only=True)
    for key in sd:
        assert torch.equal(back[key], ref[key].contiguous()), key
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temp file left


def test_refuses_inputs_and_existing_outputs(tmp_path, fixtures_dir, manifest):
    src = fixtures_dir / manifest["formats"]["files"]["zip"]["path"]
    sd = load(src).state_dict()
    with pytest.raises(CkptError, match="overwrite the input"):
        save(src, sd, inputs=[src], force=True)
    out = tmp_path / "o.pth"
    save(out, sd)
    with pytest.raises(CkptError, match="exists; pass --force"):
        save(out, sd)
    save(out, sd, force=True)
    with pytest.raises(CkptError, match="does not exist"):
        save(tmp_path / "missing" / "o.pth", sd)


def test_failed_verification_leaves_previous_output_intact(tmp_path, fixtures_dir, manifest):
    src = fixtures_dir / manifest["formats"]["files"]["zip"]["path"]
    sd = load(src).state_dict()
    out = tmp_path / "o.pth"
    save(out, {"only": np.arange(3.0)})
    before = out.read_bytes()

    def reject(path):
        raise CkptError("verification failed: test")

    with pytest.raises(CkptError, match="verification failed"):
        save(out, sd, force=True, verify_extra=reject)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["o.pth"]
