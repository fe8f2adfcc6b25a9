"""The fixture generator (tests/support/fixtures.py): real files, deterministic bytes, the manifest's facts.

Checks run with torch itself (``weights_only=True``): benign fixtures load; malicious ones are rejected by
torch's weights-only unpickler and their payload globals are found by a static opcode scan. Nothing here ever
unpickles a malicious file for real (no ``weights_only=False`` on them) and every test checks no sentinel appeared.
"""
from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import fixtures as fx

torch = pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _sentinels(manifest):
    return [Path(f["sentinel"]) for f in manifest["malicious"]["files"].values()]


@pytest.fixture(autouse=True)
def _no_sentinel_ever(manifest):
    assert not [s for s in _sentinels(manifest) if s.exists()]
    yield
    assert not [s for s in _sentinels(manifest) if s.exists()], "a malicious payload ran"


# ---------------------------------------------------------------------------------------------------------------
def test_manifest_lists_every_family_and_files_exist(fixtures_dir, manifest):
    for fam in fx.FAMILIES:
        assert manifest[fam]["family"] == fam
        assert (fixtures_dir / fam / ".stamp").read_text() == fx._stamp_value(fam)
    paths = [r["path"] for r in manifest["mmengine"]["runs"].values()]
    paths += [r["path"] for r in manifest["layouts"]["layouts"].values()]
    paths += [r["path"] for r in manifest["formats"]["files"].values()]
    paths += [r["path"] for r in manifest["malicious"]["files"].values()]
    paths += [r["path"] for r in manifest["diff"]["pairs"].values()]
    paths += [manifest["diff"]["runner"][t]["path"] for t in "ab"]
    for p in paths:
        assert (fixtures_dir / p).exists(), p
    assert json.loads(json.dumps(manifest)) == manifest  # JSON-able


def test_second_run_is_a_no_op(fixtures_dir):
    assert fx.stale_families(fixtures_dir) == []
    proc = subprocess.run([sys.executable, "scripts/make_fixtures.py", "--out", str(fixtures_dir)], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    assert "up to date" in proc.stderr


@pytest.mark.slow
def test_generation_is_deterministic(fixtures_dir, tmp_path):
    """Every non-Runner file has the same bytes when generated again into another directory."""
    other = tmp_path / "gen"
    fams = [f for f in fx.FAMILIES if f != "mmengine"]
    subprocess.run([sys.executable, "scripts/make_fixtures.py", "--out", str(other), "--only", ",".join(fams),
                    "--sentinel-dir", str(fixtures_dir / "malicious")], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    # only what make_fixtures writes: other corpora (genuine/, hostile/) live beside it under fixtures/generated/
    mine = {k: v for k, v in fx.file_hashes(fixtures_dir).items()
            if not k.startswith("mmengine/") and ("/" not in k or k.split("/", 1)[0] in fx.FAMILIES)}
    theirs = fx.file_hashes(other)
    assert len(mine) >= 50
    assert mine == theirs
    again = fx.load_manifest(other)
    assert again["layouts"] == fx.load_manifest(fixtures_dir)["layouts"]


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", fx.LAYOUTS)
def test_layout_checkpoint_has_exact_keys_scaled_shapes_and_counts(fixtures_dir, manifest, name):
    entry = manifest["layouts"]["layouts"][name]
    ck = _load(fixtures_dir / entry["path"])
    assert set(ck) == {"meta", "state_dict"} and ck["meta"]["layout"] == name
    sd = ck["state_dict"]
    full = [line.split("\t") for line in (REPO_ROOT / "fixtures/keys" / f"{name}.txt").read_text().splitlines()]
    assert list(sd) == [row[0] for row in full]
    expected = fx.scaled_shapes(name)
    for (key, shape, dtype, kind), row in zip(expected, full):
        full_shape = json.loads(row[1])
        assert tuple(sd[key].shape) == tuple(d // 8 if d >= 16 else d for d in full_shape) == shape
        assert str(sd[key].dtype) == f"torch.{dtype}"
        if len(row) > 2:
            assert (dtype, kind) == (row[2], row[3])
    nbt = [k for k in sd if k.endswith("num_batches_tracked")]
    assert nbt and all(sd[k].dtype == torch.int64 and sd[k].dim() == 0 for k in nbt)
    # counts computed independently from the shapes
    param_numel = sum(math.prod(s) for _, s, _, kind in expected if kind == "param")
    by_top = {}
    for k, s, _, kind in expected:
        if kind == "param":
            by_top[k.split(".")[0]] = by_top.get(k.split(".")[0], 0) + math.prod(s)
    assert entry["summary"]["param_numel"] == param_numel
    assert entry["summary"]["params_by_module"] == by_top
    assert entry["summary"]["numel"] == sum(v.numel() for v in sd.values())
    assert entry["num_keys_file"] == len(full) == entry["summary"]["num_keys"]
    assert (fixtures_dir / entry["path"]).stat().st_size < 8_000_000


def test_mmdet3d1x_names_borrow_dtypes_by_position():
    a, b = fx.scaled_shapes("bevfusion_det"), fx.scaled_shapes("bevfusion_det_mmdet3d1x_names")
    assert [x[1:] for x in a] == [x[1:] for x in b]
    assert [x[0] for x in a] != [x[0] for x in b]  # other names, same tensors in the same order
    assert sum(1 for x in b if x[2] == "int64") > 0


@pytest.mark.parametrize("name", ["bevfusion_det_map_gca", "posec3d"])
def test_module_from_keys_matches_layout_and_init_is_deterministic(fixtures_dir, manifest, name):
    factory = getattr(fx, f"{name}_model")
    m1, m2 = factory(), factory()
    sd1 = m1.state_dict()
    expected = fx.scaled_shapes(name)
    assert list(sd1) == [e[0] for e in expected]
    params = dict(m1.named_parameters())
    buffers = dict(m1.named_buffers())
    for key, shape, dtype, kind in expected:
        assert (key in params) == (kind == "param") and (key in buffers) == (kind == "buffer")
        assert tuple(sd1[key].shape) == shape
    assert sum(p.numel() for p in params.values()) == manifest["layouts"]["layouts"][name]["summary"]["param_numel"]
    assert all(torch.equal(a, b) for a, b in zip(sd1.values(), m2.state_dict().values()))
    ck = _load(fixtures_dir / manifest["layouts"]["layouts"][name]["path"])["state_dict"]
    floats = [k for k, v in ck.items() if v.is_floating_point()]
    assert not all(torch.equal(sd1[k], ck[k]) for k in floats)  # default init differs from the checkpoint
    m1.init_weights(seed=fx.layout_seed(name))
    assert all(torch.equal(m1.state_dict()[k], ck[k]) for k in ck)


# ---------------------------------------------------------------------------------------------------------------
def test_formats_benign_files_load_and_agree(fixtures_dir, manifest):
    files = manifest["formats"]["files"]
    p = lambda name: fixtures_dir / files[name]["path"]  # noqa: E731
    sd = fx.small_state_dict()
    keys = list(sd)

    def same(a):
        assert list(a) == keys
        assert all(torch.equal(a[k], sd[k]) for k in keys)

    same(_load(p("zip"))["state_dict"])
    same(_load(p("legacy"))["state_dict"])
    assert not __import__("zipfile").is_zipfile(p("legacy"))
    same({k[len("module."):]: v for k, v in _load(p("ddp")).items()})
    same({k[len("_orig_mod."):]: v for k, v in _load(p("compiled")).items()})
    same(_load(p("plain")))
    same(_load(p("model_dict"))["model"])
    timm = _load(p("timm"))
    assert sorted(timm) == sorted(files["timm"]["top_level_keys"])
    same(timm["state_dict"])
    assert list(timm["state_dict_ema"]) == keys and timm["metric"] == 76.54
    assert set(timm["optimizer"]["state"][0]) == {"momentum_buffer"}
    light = _load(p("lightning"))
    same({k[len("model."):]: v for k, v in light["state_dict"].items()})
    assert light["pytorch-lightning_version"] == "2.1.3" and light["global_step"] == 120
    assert set(light["optimizer_states"][0]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    mm = _load(p("mmcv1"))
    assert set(mm["meta"]) == {"mmcv_version", "config", "CLASSES", "epoch", "iter", "time"}
    assert mm["meta"]["CLASSES"][0] == "car" and "BEVFusion" in mm["meta"]["config"]
    same(mm["state_dict"])

    from safetensors.torch import load_file

    same({k: load_file(p("safetensors"))[k] for k in keys})
    index = json.loads(p("sharded").read_text())
    merged = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_file(p("sharded").parent / shard)
        assert all(index["weight_map"][k] == shard for k in part)
        merged.update(part)
    same({k: merged[k] for k in keys})
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())


def test_formats_nonfinite_and_corrupt(fixtures_dir, manifest):
    files = manifest["formats"]["files"]
    bad = _load(fixtures_dir / files["nan_inf"]["path"])["state_dict"]
    info = files["nan_inf"]["nonfinite"]
    for k, v in bad.items():
        if k in info["keys"]:
            c = info["keys"][k]
            assert (int(v.isnan().sum()), int(v.isposinf().sum()), int(v.isneginf().sum())) == (
                c["nan"], c["posinf"], c["neginf"])
            assert k.startswith(info["module"] + ".")
        elif v.is_floating_point():
            assert bool(torch.isfinite(v).all())
    for name in ("truncated", "empty", "random_bytes"):
        with pytest.raises(Exception):
            _load(fixtures_dir / files[name]["path"])
    assert (fixtures_dir / files["empty"]["path"]).stat().st_size == 0


def test_formats_dcp_directory(fixtures_dir, manifest):
    import warnings

    import torch.distributed.checkpoint as dcp

    info = manifest["formats"]["files"]["dcp"]
    sd = fx.small_state_dict()
    target = {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "step": 0, "note": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, checkpoint_id=str(fixtures_dir / info["path"]))
    assert all(torch.equal(target["model"][k], sd[k]) for k in sd)
    assert {k: target[k] for k in ("step", "note")} == info["bytes_values"]
    meta = dcp.FileSystemReader(str(fixtures_dir / info["path"])).read_metadata()
    assert sorted(k for k, v in meta.state_dict_metadata.items() if hasattr(v, "size")) == sorted(info["tensor_keys"])


def test_formats_dtypes_and_shared_storage(fixtures_dir, manifest):
    info = manifest["formats"]["files"]["dtypes_views"]
    d = _load(fixtures_dir / info["path"])
    for k, t in info["tensors"].items():
        assert str(d[k].dtype) == f"torch.{t['dtype']}"
        assert list(d[k].shape) == t["shape"] and list(d[k].stride()) == t["stride"]
        assert d[k].storage_offset() == t["storage_offset"] and d[k].is_contiguous() == t["contiguous"]
    assert not d["view_t"].is_contiguous()
    for group in info["shared_storage"]:
        ptrs = {d[k].untyped_storage().data_ptr() for k in group}
        assert len(ptrs) == 1
    assert d["view_slice"].tolist() == info["values"]["view_slice"]


# ---------------------------------------------------------------------------------------------------------------
def test_malicious_files_are_real_attacks_rejected_by_weights_only(fixtures_dir, manifest):
    files = manifest["malicious"]["files"]
    assert len(files) == 2 * len(fx.MALICIOUS_PAYLOADS) + 1
    seen_globals = set()
    for stem, info in files.items():
        path = fixtures_dir / info["path"]
        assert Path(info["sentinel"]).name == f"SENTINEL_{stem}"
        found = fx.pickle_globals(path)  # static scan, runs nothing
        assert set(info["globals"]) <= set(found), (stem, found)
        suspicious = [g for g in found if not g.startswith(("torch.", "collections."))]
        assert set(suspicious) == set(info["globals"]), (stem, found)
        seen_globals.add(info["payload_global"])
        if info["form"] == "zip":
            assert info["payload_global"] in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        else:
            assert info["form"] in ("legacy", "pickle")
        mod, name = info["payload_global"].rsplit(".", 1)
        pattern = rf"GLOBAL ({mod}\.)?{name}\b" if mod == "builtins" else rf"GLOBAL {mod}\.{name}\b"
        with pytest.raises(pickle.UnpicklingError, match=pattern):
            torch.load(path, map_location="cpu", weights_only=True)
        assert not Path(info["sentinel"]).exists()
    assert {"os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "runpy._run_code",
            "builtins.getattr"} <= seen_globals
    forms = {(i["payload"], i["form"]) for i in files.values()}
    assert all((k, f) in forms for k in fx.MALICIOUS_PAYLOADS for f in ("zip", "legacy"))


def test_pickle_globals_on_benign_files(fixtures_dir, manifest):
    found = fx.pickle_globals(fixtures_dir / manifest["formats"]["files"]["legacy"]["path"])
    assert "torch._utils._rebuild_tensor_v2" in found
    assert all(g.startswith(("torch.", "collections.")) for g in found)


# ---------------------------------------------------------------------------------------------------------------
def _mmengine_safe_globals(path):
    import importlib

    objs = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        mod, _, attr = name.rpartition(".")
        objs.append(getattr(importlib.import_module(mod), attr))
    import numpy as np  # HistoryBuffer holds numpy arrays/scalars: their dtype classes are built via getattr

    objs += [type(np.dtype(t)) for t in ("float64", "float32", "int64")]
    return objs


def _load_mmengine(path):
    with torch.serialization.safe_globals(_mmengine_safe_globals(path)):
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("run", ["sgd", "adamw"])
def test_mmengine_runner_checkpoint_facts(fixtures_dir, manifest, run):
    info = manifest["mmengine"]["runs"][run]
    ck = _load_mmengine(fixtures_dir / info["path"])
    assert list(ck) == info["top_level_keys"]
    meta = ck["meta"]
    assert list(meta) == info["meta_keys"]
    assert (meta["epoch"], meta["iter"], meta["seed"]) == (info["epoch"], info["iter"], info["seed"]) == (
        1, 4, info["seed"])
    assert meta["experiment_name"].startswith(info["experiment_name_prefix"] + "_")
    for s in info["cfg_contains"]:
        assert s in meta["cfg"], s
    assert "custom_hooks = [\n    dict(type='EMAHook'),\n]" in meta["cfg"]
    hub = ck["message_hub"]
    assert list(hub["log_scalars"]) == info["message_hub_scalar_keys"]
    assert type(hub["log_scalars"]["train/loss"]).__name__ == "HistoryBuffer"
    opt = ck["optimizer"]
    assert sorted({k for s in opt["state"].values() for k in s}) == info["optimizer_state_keys"]
    assert opt["param_groups"][0]["lr"] == info["lr_at_save"]
    assert opt["param_groups"][0]["weight_decay"] == info["weight_decay"]
    # parameter counts from the shapes
    counts = {}
    for k, v in ck["state_dict"].items():
        mod, leaf = k.rsplit(".", 1)
        if leaf in ("weight", "bias"):
            counts[mod] = counts.get(mod, 0) + v.numel()
    assert counts == info["param_counts"] and sum(counts.values()) == info["total_params"] == 312
    # EMA swap: state_dict holds the EMA weights, ema_state_dict the raw ones under 'module.' plus 'steps'
    ema = info["ema"]
    esd = ck["ema_state_dict"]
    assert list(esd) == ema["ema_state_dict_keys"] and int(esd["steps"]) == ema["steps"] == 4
    assert {k for k in esd if not k.startswith("module.")} == {"steps"}
    assert [k[len("module."):] for k in esd if k != "steps"] == list(ck["state_dict"])
    for k in ema["check_keys"]:
        assert float(ck["state_dict"][k].double().sum()) == pytest.approx(ema["ema_sums"][k], abs=1e-9)
        assert float(esd["module." + k].double().sum()) == pytest.approx(ema["raw_sums"][k], abs=1e-9)
        assert ema["ema_raw_max_abs_diff"][k] > 1e-3


# ---------------------------------------------------------------------------------------------------------------
def test_diff_pairs_have_exactly_the_manifest_edits(fixtures_dir, manifest):
    dm = manifest["diff"]
    base = _load(fixtures_dir / dm["base"]["path"])["state_dict"]
    for name, pair in dm["pairs"].items():
        other = _load(fixtures_dir / pair["path"])["state_dict"]
        e = pair["edits"]
        if e["identical"]:
            assert (fixtures_dir / pair["path"]).read_bytes() == (fixtures_dir / pair["base"]).read_bytes()
        assert set(other) - set(base) == set(e["added"]) and set(base) - set(other) == set(e["removed"])
        for k in e["unchanged_keys"]:
            assert torch.equal(other[k], base[k]), (name, k)
        for k, (old, new) in e["reshaped"].items():
            assert list(base[k].shape) == old and list(other[k].shape) == new
            assert torch.equal(other[k].flatten(), base[k].flatten())
        for k, (old, new) in e["dtype_changed"].items():
            assert str(base[k].dtype) == f"torch.{old}" and str(other[k].dtype) == f"torch.{new}"
        if e["scaled"]:
            for k in e["scaled"]["keys"]:
                expect = base[k] * e["scaled"]["factor"]
                assert torch.allclose(other[k].float(), expect, rtol=1e-3 if k in e["dtype_changed"] else 0)
        for k, n in e["nan"].items():
            assert int(other[k].isnan().sum()) == n and k.startswith(e["nan_branch"] + ".")
            assert torch.equal(other[k].nan_to_num(0), base[k].masked_fill(other[k].isnan(), 0))


def _flatten(obj, prefix=""):
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)) and any(isinstance(x, (dict, list, tuple)) for x in obj):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = list(obj) if isinstance(obj, tuple) else obj
    return out


def test_diff_runner_configs_differ_in_exactly_four_values(fixtures_dir, manifest):
    from mmengine.config import Config

    r = manifest["diff"]["runner"]
    cfgs = []
    for tag in "ab":
        ck = _load_mmengine(fixtures_dir / r[tag]["path"])
        cfgs.append(_flatten(Config.fromstring(ck["meta"]["cfg"], ".py").to_dict()))
    a, b = cfgs
    assert set(a) == set(b)
    differing = {k: [a[k], b[k]] for k in a if a[k] != b[k]}
    assert differing == r["cfg_diff"]
    assert r["a"]["work_dir"] == r["b"]["work_dir"]
