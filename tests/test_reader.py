"""The safe reader against torch's own loader, on every format and layout the fixtures hold."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ckpttool.errors import CkptError, FormatError
from ckpttool.io import load, load_pickle
from tests.support.fixtures import scaled_shapes

SMALL_FORMATS = ["zip", "legacy", "safetensors", "sharded", "ddp", "compiled", "timm", "lightning", "model_dict",
                 "plain", "mmcv1", "dcp"]


def _reference(path, name):
    """The small state dict as torch/safetensors load it (weights only, prefixes as stored)."""
    if name == "safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    if name == "sharded":
        from safetensors.torch import load_file
        index = json.load(open(path))
        out = {}
        for shard in set(index["weight_map"].values()):
            out.update(load_file(path.parent / shard))
        return out
    if name == "dcp":
        import torch.distributed.checkpoint as dcp
        from tests.support.fixtures import small_state_dict
        sd = {"model": {k: torch.empty_like(v) for k, v in small_state_dict().items()}}
        dcp.load(sd, checkpoint_id=str(path))
        return sd["model"]
    obj = torch.load(path, weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return obj


@pytest.mark.parametrize("name", SMALL_FORMATS)
def test_every_format_reads_the_same_tensors_as_torch(fixtures_dir, manifest, name):
    info = manifest["formats"]["files"][name]
    path = fixtures_dir / info["path"]
    ref = _reference(path, name)
    sd = load(path).state_dict()
    expected = {k.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("model."): v for k, v in ref.items()}
    if name != "lightning":  # Lightning's `model.` is the LightningModule attribute, not an automatic prefix
        assert set(sd) == set(expected)
    for key, t in sd.items():
        r = ref[key] if key in ref else expected[key.removeprefix("model.")]
        assert t.dtype == str(r.dtype).removeprefix("torch.") and t.shape == tuple(r.shape), key
        assert torch.equal(t.to_torch(), r), key


def test_automatic_prefixes_are_stripped_only_when_every_key_has_them(fixtures_dir, manifest):
    files = manifest["formats"]["files"]
    assert load(fixtures_dir / files["ddp"]["path"]).state_dict().stripped_prefix == "module."
    assert load(fixtures_dir / files["compiled"]["path"]).state_dict().stripped_prefix == "_orig_mod."
    assert load(fixtures_dir / files["zip"]["path"]).state_dict().stripped_prefix is None


def test_layouts_are_recognised(fixtures_dir, manifest):
    files = manifest["formats"]["files"]
    kinds = {name: load(fixtures_dir / files[name]["path"]).layout.kind
             for name in ("timm", "lightning", "model_dict", "plain", "mmcv1", "zip", "dcp")}
    assert kinds == {"timm": "timm", "lightning": "lightning", "model_dict": "model-dict", "plain": "state-dict",
                     "mmcv1": "mmcv1", "zip": "wrapped", "dcp": "model-dict"}


def test_bf16_fp16_int64_and_strided_views_match_torch(fixtures_dir, manifest):
    info = manifest["formats"]["files"]["dtypes_views"]
    path = fixtures_dir / info["path"]
    ref = torch.load(path, weights_only=True)
    sd = load(path).state_dict()
    for key, facts in info["tensors"].items():
        t = sd[key]
        assert (t.dtype, list(t.shape), list(t.stride), t.offset) == \
            (facts["dtype"], facts["shape"], facts["stride"], facts["storage_offset"])
        assert torch.equal(t.to_torch(), ref[key])
        assert np.array_equal(t.numpy(), ref[key].float().numpy() if key == "bf16" else ref[key].numpy())
    assert sd["view_slice"].storage is sd["base"].storage  # views share their storage, as in the file
    assert sd["view_slice"].numpy().tolist() == info["values"]["view_slice"]


def test_dcp_non_tensor_values(fixtures_dir, manifest):
    info = manifest["formats"]["files"]["dcp"]
    ck = load(fixtures_dir / info["path"])
    for key, value in info["bytes_values"].items():
        assert ck.root[key] == value


@pytest.mark.parametrize("name", ["rgbpose", "posec3d", "bevfusion_det", "bevfusion_det_map_gca", "kaist_frcnn",
                                  "kaist_cascade", "bevfusion_det_mmdet3d1x_names"])
def test_layout_parameter_counts_per_module_are_exact(fixtures_dir, name):
    from ckpttool.summary.tree import module_rows

    sd = load(fixtures_dir / "layouts" / f"{name}.pth").state_dict()
    expected_keys = [k for k, *_ in scaled_shapes(name)]
    assert list(sd) == expected_keys
    expected: dict[str, int] = {}
    for key, shape, *_ in scaled_shapes(name):
        module = ".".join(key.split(".")[:2]) if key.count(".") >= 2 else key.split(".")[0]
        expected[module] = expected.get(module, 0) + int(np.prod(shape))
    assert {r["name"]: r["params"] for r in module_rows(sd, 2)} == expected


def test_mmengine_runner_checkpoint_facts(fixtures_dir, manifest):
    run = manifest["mmengine"]["runs"]["sgd"]
    ck = load(fixtures_dir / run["path"])
    assert ck.layout.kind == "mmengine"
    assert (ck.meta["epoch"], ck.meta["iter"], ck.meta["seed"]) == (run["epoch"], run["iter"], run["seed"])
    assert ck.meta["experiment_name"] == run["experiment_name"]
    assert all(s in ck.meta["cfg"] for s in run["cfg_contains"])
    assert ck.suspicious_globals == []
    assert "mmengine.logging.history_buffer.HistoryBuffer" in ck.foreign_globals


def test_mmengine_ema_swap(fixtures_dir, manifest):
    """EMAHook: `state_dict` holds the EMA weights, `ema_state_dict` the raw ones under `module.` plus `steps`."""
    run = manifest["mmengine"]["runs"]["sgd"]
    ema = run["ema"]
    ck = load(fixtures_dir / run["path"])
    weights, raw = ck.state_dict(), ck.state_dict("ema_state_dict")
    assert raw.stripped_prefix == "module." and set(raw) == set(weights)
    assert int(raw.extras["steps"].numpy()) == ema["steps"]
    for key, total in ema["ema_sums"].items():
        assert weights[key].numpy().astype(np.float64).sum() == pytest.approx(total, rel=1e-6)
    for key, total in ema["raw_sums"].items():
        assert raw[key].numpy().astype(np.float64).sum() == pytest.approx(total, rel=1e-6)


def test_mmaction2_dump_pickle_decodes_tensors_without_running_code(tmp_path):
    import pickle

    data = load_pickle("fixtures/mmaction2-fuse-demo/joint.pkl") if _has_demo() else None
    if data is None:
        pytest.skip("mmaction2 demo dumps not copied yet")
    ref = pickle.load(open("fixtures/mmaction2-fuse-demo/joint.pkl", "rb"))
    assert len(data) == len(ref) == 60
    for a, b in zip(data, ref):
        assert np.array_equal(a["pred_score"].numpy(), b["pred_score"].numpy())
        assert int(a["gt_label"].numpy()[0]) == int(b["gt_label"][0])


def _has_demo():
    import os
    return os.path.exists("fixtures/mmaction2-fuse-demo/joint.pkl")


@pytest.mark.parametrize("name,message", [("truncated", "truncated"), ("empty", "empty file"),
                                          ("random_bytes", "not a checkpoint format")])
def test_corrupt_files_raise_one_clear_error(fixtures_dir, manifest, name, message):
    with pytest.raises(FormatError, match=message):
        load(fixtures_dir / manifest["formats"]["files"][name]["path"])


def test_missing_path_and_plain_directory(tmp_path):
    with pytest.raises(CkptError, match="no such file"):
        load(tmp_path / "nope.pth")
    with pytest.raises(CkptError, match="is a directory"):
        load(tmp_path)


def test_sharded_index_cannot_escape_its_directory(tmp_path, fixtures_dir, manifest):
    import shutil

    src = (fixtures_dir / manifest["formats"]["files"]["sharded"]["path"]).parent
    shutil.copytree(src, tmp_path / "s")
    index = json.load(open(tmp_path / "s" / "model.safetensors.index.json"))
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    json.dump(index, open(tmp_path / "s" / "model.safetensors.index.json", "w"))
    with pytest.raises(FormatError, match="escapes"):
        load(tmp_path / "s")


def test_storage_claims_past_the_end_fail_before_allocation(tmp_path, fixtures_dir, manifest):
    """A safetensors header claiming 10^12 elements is an error, not an allocation."""
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4 * 10**12]}})
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    with pytest.raises(FormatError, match="data buffer holds 16 bytes"):
        load(p)
