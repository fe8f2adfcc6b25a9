"""`ckttool.comparison.diff` on real files: fixture pairs with known edits, formats, sections, configs, streaming."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpttool.errors import CkptError
from ckpttool.io import load
from ckpttool.comparison import configdiff
from ckpttool.comparison import diff as diffmod
from ckpttool.comparison.diff import compare_pair, diff
from tests.support.diff_fixtures import cfg_checkpoint, key_names, renamed_copy, save_arrays

PAIRS = ("scaled", "added_key", "reshaped", "fp16", "nan", "combined", "identical")
BEVFUSION_MAP = [  # mmdet3d 1.x names -> mit-han-lab names (what a user types)
    r"^bbox_head\.=heads.object.", r"(decoder\.0)\.self_attn\.attn\.=\1.self_attn.",
    r"(decoder\.0)\.cross_attn\.attn\.=\1.multihead_attn.", r"(decoder\.0)\.ffn\.layers\.0\.0\.=\1.linear1.",
    r"(decoder\.0)\.ffn\.layers\.1\.=\1.linear2.", r"(decoder\.0)\.norms\.0\.=\1.norm1.",
    r"(decoder\.0)\.norms\.1\.=\1.norm2.", r"(decoder\.0)\.norms\.2\.=\1.norm3.",
    r"^img_backbone\.=encoders.camera.backbone.", r"^img_neck\.=encoders.camera.neck.",
    r"^view_transform\.=encoders.camera.vtransform.", r"^pts_middle_encoder\.=encoders.lidar.backbone.",
    r"^fusion_layer\.=fuser.", r"^pts_backbone\.=decoder.backbone.", r"^pts_neck\.=decoder.neck.",
]


def oracle(ta, tb) -> dict:
    """Float64 reference values of one pair, computed whole (not streamed), finite positions only."""
    a, b = ta.numpy().astype(np.float64).ravel(), tb.numpy().astype(np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = b - a
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return {"rel_l2": np.linalg.norm(d) / na if na else (0.0 if not d.any() else math.inf),
            "max_abs": float(np.abs(d).max()) if d.size else 0.0,
            "cosine": float(a @ b / (na * nb)) if na and nb else None}


def close(x, y, rel=1e-5, abs_=1e-9):
    if y is None or x is None:
        return x is y
    if math.isinf(y):
        return x == y
    return x == pytest.approx(y, rel=rel, abs=abs_)


@pytest.mark.parametrize("name", PAIRS)
def test_pair_reports_exactly_its_edits(fixtures_dir, manifest, name):
    pair = manifest["diff"]["pairs"][name]
    e = pair["edits"]
    r = diff(fixtures_dir / pair["base"], fixtures_dir / pair["path"])
    assert r["only_in_a"] == e["removed"] and r["only_in_b"] == e["added"]
    assert {m["key"]: [m["a"], m["b"]] for m in r["shape_mismatch"]} == e["reshaped"]
    assert {m["key"]: [m["a"], m["b"]] for m in r["dtype_mismatch"]} == e["dtype_changed"]
    assert {m["key"]: m["nan"] for m in r["nonfinite_in_b"]} == e["nan"]
    assert all(m["inf"] == 0 and m["nonfinite_in_a"] == 0 for m in r["nonfinite_in_b"])
    scaled = set(e["scaled"]["keys"]) if e["scaled"] else set()
    expected_changed = scaled | set(e["dtype_changed"]) | set(e["nan"])
    assert {t["key"] for t in r["changed_tensors"]} == expected_changed
    assert r["identical_tensors"] == len(e["unchanged_keys"])
    assert r["compared"] == len(e["unchanged_keys"]) + len(expected_changed)
    assert sum(m["changed"] for m in r["modules"]) == len(expected_changed)
    assert r["meta"]["changed"] == []
    a, b = load(fixtures_dir / pair["base"]).state_dict(), load(fixtures_dir / pair["path"]).state_dict()
    for t in r["changed_tensors"]:
        ref = oracle(a[t["key"]], b[t["key"]])
        assert all(close(t[k], ref[k]) for k in ("rel_l2", "max_abs", "cosine")), (t, ref)
    by_key = {t["key"]: t for t in r["changed_tensors"]}
    for key in scaled:
        assert by_key[key]["rel_l2"] == pytest.approx(e["scaled"]["factor"] - 1, rel=1e-3)
        assert by_key[key]["cosine"] == pytest.approx(1.0, abs=1e-6)
    for key in set(e["dtype_changed"]) - scaled:  # a cast alone: a tiny but non-zero change
        assert 0 < by_key[key]["rel_l2"] < 1e-3
    if e["nan_branch"]:
        top = r["modules"][0]
        assert top["name"] == e["nan_branch"] and top["nan_b"] == sum(e["nan"].values())


def test_scaled_module_ranks_first_with_its_factor(fixtures_dir, manifest):
    pair = manifest["diff"]["pairs"]["scaled"]
    s = pair["edits"]["scaled"]
    r = diff(fixtures_dir / pair["base"], fixtures_dir / pair["path"], depth=1)
    top = r["modules"][0]
    assert top["name"] == s["module"] and top["changed"] == len(s["keys"])
    assert top["rel_l2"] == pytest.approx(s["factor"] - 1, rel=1e-6)
    assert all(m["rel_l2"] == 0 and m["changed"] == 0 for m in r["modules"][1:])


@pytest.mark.parametrize("rtol_over, equal", [(0.1, True), (-0.1, False)])
def test_tolerance_defines_equal(fixtures_dir, manifest, rtol_over, equal):
    pair = manifest["diff"]["pairs"]["scaled"]
    rtol = pair["edits"]["scaled"]["factor"] - 1 + rtol_over   # |1.5a - a| = 0.5|a|
    r = diff(fixtures_dir / pair["base"], fixtures_dir / pair["path"], rtol=rtol)
    assert (r["changed_tensors"] == []) is equal
    big = max(float(np.abs(t.numpy()).max()) for t in load(fixtures_dir / pair["path"]).state_dict().values())
    assert diff(fixtures_dir / pair["base"], fixtures_dir / pair["path"], atol=big)["changed_tensors"] == []


def test_real_runner_pair_values_and_meta(fixtures_dir, manifest):
    run = manifest["diff"]["runner"]
    r = diff(fixtures_dir / run["a"]["path"], fixtures_dir / run["b"]["path"])
    a, b = load(fixtures_dir / run["a"]["path"]), load(fixtures_dir / run["b"]["path"])
    sa, sb = a.state_dict(), b.state_dict()
    assert r["only_in_a"] == r["only_in_b"] == r["shape_mismatch"] == r["dtype_mismatch"] == []
    assert r["compared"] == len(run["a"]["state_dict_keys"])
    for t in r["changed_tensors"]:
        ref = oracle(sa[t["key"]], sb[t["key"]])
        assert all(close(t[k], ref[k]) for k in ("rel_l2", "max_abs", "cosine")), (t, ref)
    unchanged = [k for k in sa if np.array_equal(sa[k].numpy(), sb[k].numpy())]
    assert r["identical_tensors"] == len(unchanged)
    for key in ("epoch", "iter", "seed"):
        assert r["meta"]["a"][key] == run["a"][key] and r["meta"]["b"][key] == run["b"][key]
    assert set(r["meta"]["changed"]) == {k for k in r["meta"]["a"] if a.meta[k] != b.meta[k]}
    assert "config" not in r


def test_runner_config_diff_is_exactly_the_four_edits_plus_optimizer_groups(fixtures_dir, manifest):
    run = manifest["diff"]["runner"]
    r = diff(fixtures_dir / run["a"]["path"], fixtures_dir / run["b"]["path"], config=True)
    pipeline = run["a"]["pipeline"]
    expected = {}
    for dotted, (va, vb) in run["cfg_diff"].items():
        parts = run["cfg_diff_paths"][dotted]
        if "pipeline" in parts:   # pipeline steps are named by their type
            i = parts.index("pipeline") + 1
            parts = parts[:i] + [pipeline[parts[i]]["type"]] + parts[i + 1:]
        expected[".".join(map(str, parts))] = [va, vb]
    for field, key in (("lr", "lr_at_save"), ("weight_decay", "weight_decay")):
        if run["a"][key] != run["b"][key]:
            expected[f"optimizer.param_groups.0.{field}"] = [run["a"][key], run["b"][key]]
    import torch   # the lr in effect during the saved epoch: message_hub train/lr, read by torch itself
    hub = [torch.load(fixtures_dir / run[s]["path"], weights_only=False)["message_hub"]["log_scalars"]["train/lr"]
           for s in ("a", "b")]
    in_effect = [float(h.current()) for h in hub]
    if in_effect[0] != in_effect[1]:
        expected["train/lr"] = in_effect
    assert {c["key"]: [c["a"], c["b"]] for c in r["config"]} == expected
    assert all(c["change"] == "changed" for c in r["config"])
    same = diff(fixtures_dir / run["a"]["path"], fixtures_dir / run["a"]["path"], config=True)
    assert same["config"] == [] and same["changed_tensors"] == [] and same["notes"] == []


def test_ema_section_against_raw_weights(fixtures_dir, manifest):
    run = manifest["diff"]["runner"]["a"]
    path = fixtures_dir / run["path"]
    r = diff(path, path, section_b="ema_state_dict")
    assert r["b"]["section"] == "ema_state_dict" and r["b"]["stripped_prefix"] == run["ema"]["ema_state_dict_prefix"]
    assert r["only_in_a"] == r["only_in_b"] == [] and r["compared"] == len(run["state_dict_keys"])
    ck = load(path)
    sa, sb = ck.state_dict(), ck.state_dict("ema_state_dict")
    assert {t["key"] for t in r["changed_tensors"]} == {k for k in sa
                                                        if not np.array_equal(sa[k].numpy(), sb[k].numpy())}
    assert r["changed_tensors"]
    both = diff(path, path, section_a="ema_state_dict", section_b="ema_state_dict")
    assert both["changed_tensors"] == [] and both["identical_tensors"] == len(run["state_dict_keys"])


@pytest.mark.parametrize("other", ["legacy", "safetensors", "sharded", "ddp", "compiled", "plain", "model_dict", "dcp"])
def test_same_weights_in_other_formats_are_identical(fixtures_dir, manifest, other):
    files = manifest["formats"]["files"]
    r = diff(fixtures_dir / files["zip"]["path"], fixtures_dir / files[other]["path"])
    n = len(manifest["formats"]["small"]["entries"])
    assert r["only_in_a"] == r["only_in_b"] == r["shape_mismatch"] == r["dtype_mismatch"] == []
    assert r["identical_tensors"] == r["compared"] == n and r["changed_tensors"] == []
    assert r["b"]["format"] == files[other]["format"]


def test_nan_inf_file_against_itself_is_identical_but_reports_nonfinite(fixtures_dir, manifest):
    f = manifest["formats"]["files"]["nan_inf"]
    r = diff(fixtures_dir / f["path"], fixtures_dir / f["path"])
    assert r["changed_tensors"] == []
    want = {k: (v["nan"], v["posinf"] + v["neginf"]) for k, v in f["nonfinite"]["keys"].items()}
    assert {m["key"]: (m["nan"], m["inf"]) for m in r["nonfinite_in_b"]} == want
    assert all(m["nonfinite_in_a"] == sum(want[m["key"]]) for m in r["nonfinite_in_b"])
    clean = diff(fixtures_dir / manifest["formats"]["files"]["zip"]["path"], fixtures_dir / f["path"])
    assert {t["key"] for t in clean["changed_tensors"]} == set(want)


def test_map_lines_up_renamed_layouts(fixtures_dir, manifest, tmp_path):
    src = fixtures_dir / manifest["layouts"]["layouts"]["bevfusion_det"]["path"]
    old, new = key_names("bevfusion_det"), key_names("bevfusion_det_mmdet3d1x_names")
    renamed = renamed_copy(src, tmp_path / "mmdet3d_names.safetensors", old, new)
    plain = diff(src, renamed)
    assert set(plain["only_in_a"]) == set(old) - set(new) and set(plain["only_in_b"]) == set(new) - set(old)
    r = diff(src, renamed, maps=BEVFUSION_MAP)
    assert r["only_in_a"] == r["only_in_b"] == r["shape_mismatch"] == [] and r["changed_tensors"] == []
    assert r["identical_tensors"] == len(old) and r["b"]["map"] == BEVFUSION_MAP
    other = fixtures_dir / manifest["layouts"]["layouts"]["bevfusion_det_mmdet3d1x_names"]["path"]
    real = diff(src, other, maps=BEVFUSION_MAP)   # other values (seed), same tensors under mmdet3d names
    assert real["only_in_a"] == real["only_in_b"] == real["shape_mismatch"] == [] and real["compared"] == len(old)


def test_map_errors(fixtures_dir, manifest):
    base = fixtures_dir / manifest["diff"]["base"]["path"]
    for bad in (["(unclosed=x"], ["noequals"], [r"^.*$=same"], [r"^(b)=\2"]):
        with pytest.raises(CkptError):
            diff(base, base, maps=bad)


def test_embedded_config_is_read_without_running_it(tmp_path):
    sentinel = tmp_path / "ran"
    text = (f"import os\ncustom_imports = dict(imports=['no_such_pkg_xyz'], allow_failed_imports=False)\n"
            f"x = open({str(sentinel)!r}, 'w').write('x')\ny = __import__('os').system('touch {sentinel}')\n"
            "lr = 0.01\noptimizer = dict(type='SGD', lr=lr, betas=(0.9, 0.999), neg=-1)\n")
    a = cfg_checkpoint(tmp_path / "a.pth", text)
    b = cfg_checkpoint(tmp_path / "b.pth", text.replace("lr = 0.01", "lr = 0.02"))
    r = diff(a, b, config=True)
    assert not sentinel.exists()
    assert [(c["key"], c["a"], c["b"]) for c in r["config"]] == [("lr", 0.01, 0.02), ("optimizer.lr", 0.01, 0.02)]
    cfg = configdiff.parse_text(text, "t")
    assert cfg["optimizer"]["betas"] == (0.9, 0.999) and cfg["optimizer"]["neg"] == -1
    assert cfg["x"].startswith("open(") and cfg["custom_imports"]["imports"] == ["no_such_pkg_xyz"]
    with pytest.raises(CkptError):
        configdiff.parse_text("dict(", "t")


def test_config_files_and_missing_config(fixtures_dir, manifest, tmp_path):
    base = fixtures_dir / manifest["diff"]["base"]["path"]
    r = diff(base, base, config=True)
    assert r["config"] == [] and len(r["notes"]) == 2
    (tmp_path / "a.py").write_text("model = dict(type='X', depth=50)\npipeline = [dict(type='Resize'), "
                                   "dict(type='Flip', p=0.5)]\n")
    (tmp_path / "b.py").write_text("model = dict(type='X', depth=101)\npipeline = [dict(type='Resize'), "
                                   "dict(type='ColorJitter', b=0.4), dict(type='Flip', p=0.5)]\n")
    r = diff(base, base, config_a=tmp_path / "a.py", config_b=tmp_path / "b.py")
    assert {c["key"]: (c["a"], c["b"], c["change"]) for c in r["config"]} == {
        "model.depth": (50, 101, "changed"), "pipeline.ColorJitter.type": (None, "ColorJitter", "added"),
        "pipeline.ColorJitter.b": (None, 0.4, "added")}
    with pytest.raises(CkptError):
        diff(base, base, config_a=tmp_path / "missing.py")


def test_flatten_names_repeated_pipeline_types():
    flat = configdiff.flatten({"p": [dict(type="R", s=1), dict(type="R", s=2)], "l": [[1, 2], [3]], "e": []})
    assert flat == {"p.R.type": "R", "p.R.s": 1, "p.R#2.type": "R", "p.R#2.s": 2, "l.0": [1, 2], "l.1": [3], "e": []}


# --- streaming ---------------------------------------------------------------------------------------------
floats = st.floats(-1e3, 1e3, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.lists(floats, min_size=1, max_size=40), data=st.data(),
       dtype=st.sampled_from(["float32", "float16", "float64", "int64"]))
def test_streamed_pair_matches_whole_array_reference(tmp_path_factory, monkeypatch, a, data, dtype):
    monkeypatch.setattr(diffmod, "CHUNK", 7)            # many chunk boundaries
    monkeypatch.setattr(diffmod, "RELEASE_BYTES", 16)   # and page releases in between
    a = np.array(a, dtype=np.float32)
    b = np.array(data.draw(st.lists(floats, min_size=a.size, max_size=a.size)), dtype=np.float32)
    if dtype == "int64":
        a, b = (np.nan_to_num(x, posinf=5, neginf=-5).astype(np.int64) for x in (a, b))
    d = tmp_path_factory.mktemp("pair")
    sa = load(save_arrays(d / "a.pth", {"t": a, "v": a.reshape(1, -1)})).state_dict()
    sb = load(save_arrays(d / "b.safetensors", {"t": b.astype(dtype), "v": b.reshape(1, -1)})).state_dict()
    for key in ("t", "v"):
        s = compare_pair(sa[key], sb[key])
        res, ref = s.result(), oracle(sa[key], sb[key])
        assert all(close(res[k], ref[k], rel=1e-4, abs_=1e-6) for k in ref), (res, ref)
        wa, wb = sa[key].numpy().astype(np.float64), sb[key].numpy().astype(np.float64)
        assert s.equal == bool(np.array_equal(wa, wb, equal_nan=True))
        assert s.nan_b == int(np.isnan(wb).sum()) and s.inf_b == int(np.isinf(wb).sum())


def test_bfloat16_and_strided_views(fixtures_dir, manifest, tmp_path):
    path = fixtures_dir / manifest["formats"]["files"]["dtypes_views"]["path"]
    sd = load(path).state_dict()
    copies = {k: np.ascontiguousarray(sd[k].numpy()) for k in ("view_t", "view_slice", "bf16")}
    copies["view_t_edit"] = copies["view_t"].copy()
    copies["view_t_edit"].flat[-1] += 0.25
    other = load(save_arrays(tmp_path / "copies.pth", copies)).state_dict()
    for key in ("view_t", "view_slice", "bf16"):
        s = compare_pair(sd[key], other[key])
        assert s.equal and s.valued and s.dd == 0
        assert s.aa == pytest.approx(float(np.sum(copies[key].astype(np.float64) ** 2)), rel=1e-6)
    s = compare_pair(sd["view_t"], other["view_t_edit"])
    assert not s.equal and s.max_abs == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("scale", [1e-21, 1e-30, 1e-40])
def test_tiny_and_subnormal_float32_pairs_match_the_float64_reference(tmp_path, scale):
    """Squares of |x| < 2**-63 are subnormal (or 0) in float32: such chunks are summed in float64, so rel_l2 keeps
    full precision (hypothesis found a ~1% error here when only all-zero squares were redone)."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(300) * scale).astype(np.float32)
    b = (a * np.float32(1.25) + (rng.standard_normal(300) * scale * 0.1).astype(np.float32)).astype(np.float32)
    sa = load(save_arrays(tmp_path / "a.pth", {"t": a})).state_dict()
    sb = load(save_arrays(tmp_path / "b.pth", {"t": b})).state_dict()
    s = compare_pair(sa["t"], sb["t"])
    res, ref = s.result(), oracle(sa["t"], sb["t"])
    assert all(close(res[k], ref[k], rel=1e-6, abs_=0) for k in ref), (res, ref)
    assert s.changed_elements == int(np.count_nonzero(a != b))


def test_changed_element_counts_follow_the_tolerances(tmp_path):
    a = np.linspace(-1, 1, 1000, dtype=np.float32)
    b = a.copy()
    b[:10] += 0.5
    b[10:30] += 1e-3
    b[30] = np.nan
    sa = load(save_arrays(tmp_path / "a.pth", {"t": a})).state_dict()
    sb = load(save_arrays(tmp_path / "b.pth", {"t": b})).state_dict()
    assert compare_pair(sa["t"], sb["t"]).changed_elements == 31
    assert compare_pair(sa["t"], sb["t"], atol=1e-2).changed_elements == 11
