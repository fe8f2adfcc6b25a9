"""``ckpt eval CONFIG CHECKPOINT --clips …`` (issue 7): real tiny mmaction2 models against mmaction2's own test."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmaction")
torch = pytest.importorskip("torch")

from ckpttool.errors import CkptError  # noqa: E402
from ckpttool.integrations import sampling  # noqa: E402
from ckpttool.engine.tasks import evaluate_recognizer  # noqa: E402
from ckpttool.options import parse_clips  # noqa: E402
from ckpttool.integrations.mmaction import shipped_config  # noqa: E402
from tests.support.ntu_fixtures import (  # noqa: E402,F401  (ntu_workdir is a fixture)
    POSEC3D_CONFIG, model_setups, ntu_workdir, posec3d_options)

pytestmark = pytest.mark.mmaction
TOL = 1e-5


def _setup(workdir, name):
    config, options = model_setups(workdir["data"])[name]
    return config, options, workdir["models"][name]


def _load(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _scores(entry):
    s = entry["pred_score"]
    return {k: v.numpy() for k, v in s.items()} if isinstance(s, dict) else {"": s.numpy()}


def _assert_same_dump(ours, ref, tol=TOL):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert int(a["gt_label"]) == int(b["gt_label"])
        sa, sb = _scores(a), _scores(b)
        assert sa.keys() == sb.keys()
        for key in sa:
            np.testing.assert_allclose(sa[key], sb[key], atol=tol, rtol=0)


# --- exactness against mmaction2's Runner.test() ------------------------------------------------------------------

@pytest.mark.slow
def test_posec3d_matches_mmaction_test_for_every_k(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    ks = sorted(int(k) for k in entry["reference"])
    res = evaluate_recognizer(config, entry["checkpoint"], ks, cfg_options=options, dump=tmp_path)
    assert res["task"] == "ntu60" and [c["k"] for c in res["clips"]] == ks
    assert res["num_samples"] == 5 and res["split"] == "xsub_val"
    for c in res["clips"]:
        assert [r["name"] for r in c["rows"]] == ["pose"]
        assert c["num_views"] == 2 * c["k"]  # GeneratePoseTarget(double=True): each clip and its flip
        _assert_same_dump(_load(tmp_path / f"clips_{c['k']}.pkl"), _load(entry["reference"][str(c["k"])]))
    json.dumps(res)  # the --format json object


@pytest.mark.slow
def test_rgbposeconv3d_matches_mmaction_test_with_shared_decode(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "rgbpose")
    ks = sorted(int(k) for k in entry["reference"])
    res = evaluate_recognizer(config, entry["checkpoint"], ks, cfg_options=options, dump=tmp_path)
    for c in res["clips"]:
        names = [r["name"] for r in c["rows"]]
        assert names == ["rgb", "pose", "RGBPose_1:1", "RGBPose_2:1", "RGBPose_1:2"]
        _assert_same_dump(_load(tmp_path / f"clips_{c['k']}.pkl"), _load(entry["reference"][str(c["k"])]))
    dec = res["decode"]
    # each video is opened once for all k, and frames asked for by several k are decoded once
    assert dec["shared"] and dec["videos_opened"] == res["num_samples"]
    assert 0 < dec["frames_decoded"] < dec["frames_requested"]


@pytest.mark.slow
def test_aggregate_score_matches_head_average_clips_score(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    (k, ref), = entry["reference_score"].items()
    evaluate_recognizer(config, entry["checkpoint"], [int(k)], aggregate="score", cfg_options=options, dump=tmp_path)
    _assert_same_dump(_load(tmp_path / f"clips_{k}.pkl"), _load(ref))


# --- chunking, limit, cache --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_views_per_batch_chunks_give_the_same_scores(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    dumps = {}
    for vpb in (None, 1, 4):
        out = tmp_path / str(vpb)
        evaluate_recognizer(config, entry["checkpoint"], [1, 3], cfg_options=options, views_per_batch=vpb, dump=out)
        dumps[vpb] = {k: _load(out / f"clips_{k}.pkl") for k in (1, 3)}
    for vpb in (1, 4):
        for k in (1, 3):
            _assert_same_dump(dumps[vpb][k], dumps[None][k], tol=1e-6)


def test_view_runner_bounds_batches_and_reassembles(monkeypatch):
    from ckpttool.engine.runner import ViewRunner

    seen = []

    class Fake(ViewRunner):
        def __call__(self, inputs):
            seen.append(inputs.shape[0])
            return {"pose": inputs[:, :1].reshape(inputs.shape[0], 1).clone()}

    r = Fake(forward=None, views_per_batch=4)
    done = {}
    for key, v in (("a", 6), ("b", 1), ("c", 5)):
        x = torch.arange(v, dtype=torch.float32)[:, None] + 100 * ord(key)
        done.update(r.add(key, x))
    done.update(r.flush())
    assert max(seen) <= 4 and sum(seen) == 12 and r.max_batch_views <= 4
    for key, v in (("a", 6), ("b", 1), ("c", 5)):
        np.testing.assert_array_equal(done[key]["pose"][:, 0], np.arange(v) + 100 * ord(key))


@pytest.mark.slow
def test_limit_evaluates_the_first_samples(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    res = evaluate_recognizer(config, entry["checkpoint"], [3], cfg_options=options, limit=2, dump=tmp_path)
    assert res["num_samples"] == 2
    ours = _load(tmp_path / "clips_3.pkl")
    _assert_same_dump(ours, _load(entry["reference"]["3"])[:2])
    # without --clips: the config's own num_clips (10 in the shipped PoseC3D test pipeline)
    res = evaluate_recognizer(config, entry["checkpoint"], None, cfg_options=options, limit=1)
    assert [c["k"] for c in res["clips"]] == [10] and res["clips"][0]["num_views"] == 20


@pytest.mark.slow
def test_cache_hit_runs_no_inference(ntu_workdir, tmp_path, monkeypatch):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    cache = tmp_path / "cache"
    first = evaluate_recognizer(config, entry["checkpoint"], [1, 3], cfg_options=options, cache=cache,
                           dump=tmp_path / "a")
    assert not any(c["cached"] for c in first["clips"])
    assert len(list(cache.glob("clips*.npz"))) == 2

    import ckpttool.engine.runner as runner_mod
    import ckpttool.integrations.openmmlab as om

    def boom(*a, **k):
        raise AssertionError("inference ran on a cache hit")

    monkeypatch.setattr(runner_mod.ViewRunner, "__call__", boom)
    monkeypatch.setattr(om, "build_model", boom)
    again = evaluate_recognizer(config, entry["checkpoint"], [1, 3], cfg_options=options, cache=cache,
                           dump=tmp_path / "b")
    assert all(c["cached"] for c in again["clips"])
    assert again["clips"] == [dict(c, cached=True) for c in first["clips"]]
    for k in (1, 3):
        _assert_same_dump(_load(tmp_path / "b" / f"clips_{k}.pkl"), _load(tmp_path / "a" / f"clips_{k}.pkl"), 0)
    # another aggregation, and a smaller --limit, are served from the same files
    score = evaluate_recognizer(config, entry["checkpoint"], [3], aggregate="score", cfg_options=options, cache=cache,
                           limit=3)
    assert score["clips"][0]["cached"] and score["num_samples"] == 3 and score["aggregate"] == "score"
    # a k that is not cached needs inference
    with pytest.raises(AssertionError, match="inference ran"):
        evaluate_recognizer(config, entry["checkpoint"], [2], cfg_options=options, cache=cache)


# --- configs: wrappers, _base_, errors ---------------------------------------------------------------------------

def _child_config(tmp_path, body: str) -> Path:
    base = shipped_config(POSEC3D_CONFIG)
    path = tmp_path / "child_config.py"
    path.write_text(f"_base_ = [{str(base)!r}]\n" + body)
    return path


@pytest.mark.slow
def test_base_config_with_sampling_step_inside_a_wrapper(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    child = _child_config(tmp_path, """
left_kp = [1, 3, 5, 7, 9, 11, 13, 15]
right_kp = [2, 4, 6, 8, 10, 12, 14, 16]
test_pipeline = [
    dict(type='Compose', transforms=[
        dict(type='UniformSampleFrames', clip_len=12, num_clips=10, test_mode=True),
        dict(type='PoseDecode')]),
    dict(type='PoseCompact', hw_ratio=1., allow_imgpad=True),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='GeneratePoseTarget', sigma=0.6, use_score=True, with_kp=True, with_limb=False, double=True,
         left_kp=left_kp, right_kp=right_kp),
    dict(type='FormatShape', input_format='NCTHW_Heatmap'),
    dict(type='PackActionInputs')]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
""")
    # the model and data options, without the ones that address the parent's test pipeline by index
    opts = {k: v for k, v in options.items() if not k.startswith("test_dataloader.dataset.pipeline")}
    found = sampling.find_sampling_steps(
        __import__("ckpttool.integrations.openmmlab", fromlist=["x"]).load_config(child, opts)
        .test_dataloader.dataset.pipeline)
    assert found[0][0] == (0, "transforms", 0)
    evaluate_recognizer(child, entry["checkpoint"], [3], cfg_options=opts, dump=tmp_path)
    _assert_same_dump(_load(tmp_path / "clips_3.pkl"), _load(entry["reference"]["3"]))


def test_missing_sampling_step_is_an_error_naming_it(tmp_path):
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": {}}, ckpt)
    child = _child_config(tmp_path, """
test_dataloader = dict(dataset=dict(pipeline=[dict(type='PoseDecode'), dict(type='PackActionInputs')]))
""")
    with pytest.raises(CkptError, match="no frame-sampling step.*UniformSampleFrames.*PoseDecode, PackActionInputs"):
        evaluate_recognizer(child, ckpt, [1, 3])


def test_sampling_helpers_on_nested_wrappers():
    pipeline = [dict(type="DecordInit"),
                dict(type="RandomChoice", transforms=[[dict(type="SampleFrames", clip_len=8, num_clips=1)],
                                                       [dict(type="KeyMapper", transforms=[
                                                           dict(type="DenseSampleFrames", num_clips=2)])]]),
                dict(type="DecordDecode")]
    paths = [p for p, _ in sampling.find_sampling_steps(pipeline)]
    assert paths == [(1, "transforms", 0, 0), (1, "transforms", 1, 0, "transforms", 0)]
    new = sampling.with_num_clips(pipeline, 7)
    assert [s["num_clips"] for _, s in sampling.find_sampling_steps(new)] == [7, 7]
    assert pipeline[1]["transforms"][0][0]["num_clips"] == 1  # the input is not modified
    assert sampling.stream_kind(pipeline) == "rgb"
    assert sampling.stream_kind([dict(type="UniformSampleFrames"), dict(type="PoseDecode")]) == "pose"


def test_argument_errors(tmp_path):
    assert parse_clips("10,1,3,3") == [1, 3, 10] and parse_clips(5) == [5] and parse_clips([2, 1]) == [1, 2]
    for bad in ("", "0,1", "a", [-1], "1,,3"):
        with pytest.raises(CkptError, match="--clips"):
            parse_clips(bad)
    config = shipped_config(POSEC3D_CONFIG)
    with pytest.raises(CkptError, match="checkpoint not found"):
        evaluate_recognizer(config, tmp_path / "missing.pth", [1])
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(CkptError, match="--aggregate"):
        evaluate_recognizer(config, ckpt, [1], aggregate="median")
    with pytest.raises(CkptError, match="--limit"):
        evaluate_recognizer(config, ckpt, [1], limit=0)


# --- dump files --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dump_files_read_by_mmengine_and_our_reader(ntu_workdir, tmp_path):
    import mmengine

    from ckpttool.io import load_pickle

    config, options, entry = _setup(ntu_workdir, "rgbpose")
    res = evaluate_recognizer(config, entry["checkpoint"], [1], cfg_options=options, dump=tmp_path, limit=3)
    assert res["dump"] == [str(tmp_path / "clips_1.pkl")]
    via_mmengine = mmengine.load(str(tmp_path / "clips_1.pkl"))
    assert len(via_mmengine) == 3 and set(via_mmengine[0]["pred_score"]) == {"rgb", "pose"}
    ours = load_pickle(str(tmp_path / "clips_1.pkl"))
    data = getattr(ours, "root", ours)
    assert len(data) == 3
    first = data[0]
    assert first["pred_score"]["rgb"].shape == (60,) and first["gt_label"].shape == (1,)
    np.testing.assert_allclose(first["pred_score"]["pose"].numpy(), via_mmengine[0]["pred_score"]["pose"].numpy())


# --- distributed -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    args = {"data": ntu_workdir["data"], "model": "posec3d", "checkpoint": entry["checkpoint"], "clips": [1, 3],
            "dump": str(tmp_path / "dist"), "out": str(tmp_path / "dist.json")}
    spec = tmp_path / "args.json"
    spec.write_text(json.dumps(args))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), "-m", "tests.support.ntu_dist_eval",
                           str(spec)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dist_res = json.loads((tmp_path / "dist.json").read_text())
    assert dist_res["world_size"] == 2
    single = evaluate_recognizer(config, entry["checkpoint"], [1, 3], cfg_options=options, dump=tmp_path / "single")
    assert [c["rows"] for c in dist_res["clips"]] == [c["rows"] for c in single["clips"]]
    for k in (1, 3):
        _assert_same_dump(_load(tmp_path / "dist" / f"clips_{k}.pkl"), _load(tmp_path / "single" / f"clips_{k}.pkl"),
                          1e-6)
        _assert_same_dump(_load(tmp_path / "dist" / f"clips_{k}.pkl"), _load(entry["reference"][str(k)]))


# --- a checkpoint written by `ckpt graft` ------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_grafted_by_ckpt_graft_evaluates_like_its_source(ntu_workdir, tmp_path):
    config, options, entry = _setup(ntu_workdir, "posec3d")
    out = tmp_path / "grafted.pth"
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "ckpttool", "graft", entry["checkpoint"], "--into", str(config), "-o", str(out),
           "--cfg-options", *[f"{k}={v!r}" for k, v in options.items()], "--quiet"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluate_recognizer(config, out, [3], cfg_options=options, dump=tmp_path)
    _assert_same_dump(_load(tmp_path / "clips_3.pkl"), _load(entry["reference"]["3"]))


@pytest.mark.slow
def test_cli_json_is_the_only_thing_on_stdout(ntu_workdir, tmp_path):
    """mmengine logs to stdout; under ``--format json`` the one JSON object must be all there is."""
    config, options, entry = _setup(ntu_workdir, "rgbpose")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "ckpttool", "eval", str(config), entry["checkpoint"], "--clips", "1", "--limit", "1",
           "--format", "json", "--cfg-options", *[f"{k}={v!r}" for k, v in options.items()]]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["task"] == "ntu60" and res["num_samples"] == 1 and res["weights"]["missing"] == []


@pytest.mark.slow
def test_unknown_split_lists_the_splits_of_the_annotation(ntu_workdir):
    from ckpttool.errors import CkptError

    config, options, entry = _setup(ntu_workdir, "posec3d")
    with pytest.raises(CkptError) as err:
        evaluate_recognizer(config, entry["checkpoint"], [1], cfg_options=options, split="xsub_nope")
    assert "xsub_nope" in str(err.value) and "the annotation file has:" in str(err.value) \
        and "xsub_val" in str(err.value)
