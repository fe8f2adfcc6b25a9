"""`ckpt eval CONFIG CHECKPOINT --task kaist`: a real two-stream mmdetection detector (tests/support/kaist_twostream),
trained by the fixture generator, evaluated under TTA sweeps and compared with mmengine's own Runner.test().

Runs in .venv-mmdet (the [mmdet] extra); scripts/test.sh selects these tests there with `-m mmdet`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, _out_dir, ensure_fixtures

pytestmark = [pytest.mark.mmdet, pytest.mark.slow]
SUPPORT = REPO_ROOT / "tests" / "support"
KEYS = REPO_ROOT / "fixtures" / "keys" / "kaist_frcnn.txt"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)   # the CI machine has 2 cores; two BLAS threads per process contend
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def kx():
    out = ensure_fixtures(_out_dir(), only=["kaist_mmdet"])
    man = json.loads((out / "kaist_mmdet" / "manifest.json").read_text())
    for k in ("config", "checkpoint", "train_ann", "test_ann", "work_dir"):
        man[k] = str(out / man[k])
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    return man


def _eval(kx, tta="none", **kw):
    from ckpttool.engine.tasks import evaluate_detector

    kw.setdefault("project_root", str(SUPPORT))
    kw.setdefault("device", "cpu")
    return evaluate_detector(kx["config"], kx["checkpoint"], kw.pop("ann", kx["test_ann"]), tta=tta, **kw)


def _runner_test(kx, tmp_path, tta=False, dump=None):
    """mmengine's Runner.test() as mmdetection's tools/test.py sets it up (--tta, --out); weights through our
    reader (mmengine's loader refuses its own checkpoints under torch >= 2.6)."""
    from mmengine.config import Config, ConfigDict
    from mmengine.runner import Runner

    from ckpttool.integrations.openmmlab import load_checkpoint

    cfg = Config.fromfile(kx["config"])
    cfg.work_dir = str(tmp_path / "runner")
    cfg.log_level = "WARNING"
    if tta:
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    runner = Runner.from_cfg(cfg)
    if dump:
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=str(dump)))
    load_checkpoint(runner.model.module if tta else runner.model, kx["checkpoint"])
    return runner.test()


# ---------------------------------------------------------------------------------------------------------------
def test_r50_two_stream_state_dict_is_the_reference_layout():
    """The full-size model users build has exactly the tensors of the published two-stream Faster R-CNN."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    sys.path.insert(0, str(SUPPORT))
    cfg = Config.fromfile(str(SUPPORT / "kaist_twostream" / "configs" / "frcnn_r50_kaist.py"))
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    sd = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    ref = [line.split("\t") for line in KEYS.read_text().splitlines() if line.strip()]
    assert {k: list(v.shape) for k, v in sd.items()} == {r[0]: json.loads(r[1]) for r in ref}
    assert {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()} == {r[0]: r[2] for r in ref}
    assert {r[0] for r in ref if r[3] == "param"} == params
    assert sum(v.numel() for k, v in sd.items() if k in params) > 68e6


def test_fixture_is_a_genuine_runner_checkpoint_with_its_val_metric(kx):
    from ckpttool.io import load

    assert Path(kx["checkpoint"]).name == f"best_pascal_voc_mAP_epoch_{kx['best_epoch']}.pth"
    ck = load(kx["checkpoint"])
    ck.require_safe()   # readable without running code from the file
    sd = ck.state_dict()
    assert any(k.startswith("backbone_vis.") for k in sd) and any(k.startswith("neck_lwir.") for k in sd)
    assert 0.0 < kx["best_map"] <= 1.0
    # the val metric save_best kept is what the config's evaluator gives on the test split
    row = _eval(kx)["methods"][0]
    assert row["evaluator"]["pascal_voc/mAP"] == pytest.approx(kx["best_map"], abs=1e-9)


@pytest.fixture(scope="module")
def runner_plain(kx, tmp_path_factory):
    """One plain Runner.test() with tools/test.py's --out dump: (its metrics, the dump pickle)."""
    tmp = tmp_path_factory.mktemp("runner")
    dump = tmp / "runner.pkl"
    return _runner_test(kx, tmp, dump=dump), dump


def test_evaluator_equals_runner_test_plain_and_with_the_configs_tta(kx, tmp_path, runner_plain):
    result = _eval(kx, tta="none,config")
    rows = {m["name"]: m for m in result["methods"]}
    plain, _ = runner_plain
    tta = _runner_test(kx, tmp_path / "b", tta=True)
    assert set(plain) == {"pascal_voc/mAP", "pascal_voc/AP50"}
    assert rows["none"]["evaluator"] == plain
    assert rows["config"]["evaluator"] == tta
    assert len(rows["config"]["views"]) == 4 and rows["none"]["views"] == [rows["config"]["views"][1]]


def test_mr_equals_preds_on_the_pickle_runner_test_dumps(kx, tmp_path, runner_plain):
    from ckpttool.metrics.kaist import evaluate_kaist

    _, dump = runner_plain
    ours = _eval(kx, dump=str(tmp_path / "dump"))["methods"][0]
    theirs = evaluate_kaist([str(dump)], kx["test_ann"])["methods"][0]
    for key in ("MR", "recall", "AP50", "protocols"):
        assert ours[key] == theirs[key], key
    # our own dumps read back to the same numbers (txt in the published format, pkl as tools/test.py --out)
    txt, pkl = tmp_path / "dump" / "none_result.txt", tmp_path / "dump" / "none.pkl"
    first = txt.read_text().splitlines()[0].split(",")
    assert len(first) == 6 and int(first[0]) >= 1
    for row in evaluate_kaist([str(txt), str(pkl)], kx["test_ann"])["methods"]:
        assert row["MR"] == pytest.approx(ours["MR"], abs=1e-6)
        assert row["recall"] == pytest.approx(ours["recall"], abs=1e-6)


def test_a_detector_returning_the_ground_truth_gives_mr_0_and_recall_100(kx, tmp_path):
    import torch
    from kaist_twostream.oracle import KaistGroundTruthDetector
    from mmdet.registry import MODELS

    @MODELS.register_module(name="KaistGroundTruthWithWeights", force=True)
    class WithWeights(KaistGroundTruthDetector):   # a checkpoint needs a tensor for our reader to load
        def __init__(self, **kw):
            super().__init__(**kw)
            self.unused = torch.nn.Parameter(torch.zeros(1))

    cfg = tmp_path / "oracle.py"
    cfg.write_text(f"_base_ = [{kx['config']!r}]\n"
                   "model = dict(_delete_=True, type='KaistGroundTruthWithWeights',\n"
                   "             data_preprocessor=dict(type='DetDataPreprocessor'))\n")
    ck = tmp_path / "oracle.pth"
    torch.save({"meta": {}, "state_dict": {"unused": torch.zeros(1)}}, ck)
    from ckpttool.engine.tasks import evaluate_detector

    # (not flip: the oracle answers in original coordinates whatever the view, so un-flipping would move its boxes)
    r = evaluate_detector(str(cfg), str(ck), kx["test_ann"], tta="none,scale:320x256:400x320",
                          project_root=str(SUPPORT), device="cpu")
    assert [len(m["views"]) for m in r["methods"]] == [1, 2]
    for row in r["methods"]:
        for proto in ("mlpd", "matlab"):
            assert row["protocols"][proto]["MR"]["all"] == pytest.approx(0.0, abs=1e-6), (row["name"], proto)  # matlab floors misses at 1e-10
            assert row["protocols"][proto]["recall"]["all"] == pytest.approx(100.0), (row["name"], proto)
        assert row["AP50"]["all"] == pytest.approx(100.0)


def test_flipped_view_unflips_exactly_on_a_mirror_symmetric_image(kx, tmp_path):
    import cv2

    from ckpttool.engine.tasks import evaluate_detector
    from ckpttool.integrations.mmdet import parse_settings, setting_views, view_key

    test = json.loads(Path(kx["test_ann"]).read_text())
    im = test["images"][0]
    set_, video, frame = im["im_name"].split("/")
    src = Path(kx["test_ann"]).parent
    for stream in ("visible", "lwir"):
        img = cv2.imread(str(src / set_ / video / stream / f"{frame}.jpg"))
        left = img[:, :320]
        sym = np.concatenate([left, left[:, ::-1]], axis=1)
        assert (sym == sym[:, ::-1]).all()
        d = tmp_path / "data" / set_ / video / stream
        d.mkdir(parents=True)
        (d / f"{frame}.jpg").write_bytes(cv2.imencode(".png", sym)[1].tobytes())   # lossless, any name
    ann = tmp_path / "data" / "test.json"
    ann.write_text(json.dumps({"images": [im], "annotations": [a for a in test["annotations"]
                                                               if a["image_id"] == im["id"]]}))
    opts = [f"test_dataloader.dataset.data_root={tmp_path / 'data'}/", "model.test_cfg.rcnn.score_thr=0.0"]
    evaluate_detector(kx["config"], kx["checkpoint"], str(ann), tta="none,flip", cfg_options=opts,
                          project_root=str(SUPPORT), device="cpu", dump=str(tmp_path / "dump"))
    import pickle

    plain = pickle.load(open(tmp_path / "dump" / "none.pkl", "rb"))[0]["pred_instances"]
    assert len(plain["bboxes"]) > 0
    # the raw flipped view, un-flipped by DetTTAModel's merge_aug_bboxes (what the flip setting merges), with the
    # image meta as the adapter keeps it per view
    import torch

    from ckpttool.engine.pipeline import build_run
    from ckpttool.integrations import mmdet as M
    from ckpttool.integrations.openmmlab import build_dataset, build_model, inner_dataset, load_checkpoint

    build = build_run(kx["config"], opts, project_root=str(SUPPORT))
    model = build_model(build.cfg, "cpu")
    load_checkpoint(model, kx["checkpoint"])
    views = setting_views(parse_settings("flip")[0], build.cfg, inner_dataset(build.dataset_cfg)["pipeline"])
    assert [view_key(v) for v in views] == ["320x256+flip:horizontal", "320x256"]
    adapter = M.DetectorAdapter(str(ann))
    info = build_dataset(build.dataset_cfg).get_data_info(0)
    [(key, inputs)] = list(M.ImageViews({"flipped": views[0]}).sample(info))
    out = adapter.forward(model, inputs, adapter.streams(build, model))
    meta = M._metainfo(out["meta"][0], info)
    assert meta["flip"] is True and meta["flip_direction"] == "horizontal" and meta["ori_shape"] == (512, 640)
    merger = M.build_merger(build.cfg, model)
    unflipped = merger.merge_aug_bboxes([torch.from_numpy(out["bboxes"][0])], None, [meta])
    b = plain["bboxes"].numpy()
    mirrored = np.stack([640 - b[:, 2], b[:, 1], 640 - b[:, 0], b[:, 3]], axis=1)
    np.testing.assert_array_equal(unflipped.numpy(), mirrored)
    np.testing.assert_array_equal(out["scores"][0], plain["scores"].numpy())


def test_a_sweep_runs_each_distinct_view_once(kx, tmp_path, monkeypatch):
    import kaist_twostream.model as km

    calls = []
    real = km.TwoStreamFasterRCNN.extract_feat
    monkeypatch.setattr(km.TwoStreamFasterRCNN, "extract_feat",
                        lambda self, x: calls.append(tuple(x.shape)) or real(self, x))
    sweep = "none,flip,flip+scale:320x256:400x320"
    r = _eval(kx, tta=sweep, limit=3, cache=str(tmp_path / "cache"))
    # none = 1 view, flip = 2, flip + 2 scales = 4; distinct: 320x256 +-flip, 400x320 +-flip
    assert len(r["views"]["distinct"]) == 4
    assert len(calls) == 4 * 3 == r["views"]["forward_passes"]
    assert [len(m["views"]) for m in r["methods"]] == [1, 2, 4]
    assert r["limit"] == 3 and r["num_images"]["all"] == 3
    # a second sweep reuses the per-view cache: no forward pass, the same rows
    calls.clear()
    again = _eval(kx, tta=sweep, limit=3, cache=str(tmp_path / "cache"))
    assert calls == [] and again["views"]["forward_passes"] == 0 and len(again["views"]["cached"]) == 4
    for a, b in zip(r["methods"], again["methods"]):
        assert a["MR"] == b["MR"] and a["evaluator"] == b["evaluator"]


def _cli(args, cwd, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ckpttool", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _cli_args(kx):
    return ["eval", kx["config"], kx["checkpoint"], "--task", "kaist", "--ann", kx["test_ann"], "--limit", "4",
            "--tta", "none,flip", "--device", "cpu", "--format", "json"]


@pytest.fixture(scope="module")
def cli_single(kx, tmp_path_factory):
    """One single-process CLI run from another directory with --project-root (the CLI and torchrun tests)."""
    return _cli(_cli_args(kx) + ["--project-root", str(SUPPORT)], cwd=tmp_path_factory.mktemp("cli"))


def test_cli_resolves_custom_imports_from_another_directory_with_project_root(kx, tmp_path, cli_single):
    bad = _cli(_cli_args(kx), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "kaist_twostream" in bad.stderr
    assert cli_single.returncode == 0, cli_single.stderr
    out = json.loads(cli_single.stdout)
    assert [m["name"] for m in out["methods"]] == ["none", "flip"]
    assert out["limit"] == 4 and "pascal_voc/mAP" in out["methods"][0]["evaluator"]


def test_bad_tta_and_unknown_images_are_one_line_errors(kx, tmp_path):
    from ckpttool.errors import CkptError, FormatError
    from ckpttool.integrations.mmdet import parse_settings

    assert [s.name for s in parse_settings("none,flip,scale:640x512+flip,config,none")] == [
        "none", "flip", "flip+scale:640x512", "config"]
    for bad in ("mirror", "scale:640", "scale:axb", "flip+flip"):
        with pytest.raises(CkptError, match="--tta"):
            parse_settings(bad)
    other = json.loads(Path(kx["train_ann"]).read_text())   # the test images are not in it
    ann = tmp_path / "train_only.json"
    ann.write_text(json.dumps(other))
    with pytest.raises(FormatError, match=r"img_path .* names no image of the annotation file"):
        _eval(kx, ann=str(ann), limit=1)


def test_launcher_pytorch_shards_the_images_and_gives_the_single_process_rows(kx, tmp_path, cli_single):
    args = _cli_args(kx) + ["--project-root", str(SUPPORT)]
    single = cli_single
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ckpttool"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    dist = subprocess.run(torchrun + args + ["--launcher", "pytorch", "--dump", str(tmp_path / "d")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert dist.returncode == 0, dist.stderr[-2000:]
    a, b = json.loads(single.stdout), json.loads(dist.stdout)   # exactly one JSON object: rank 0 prints
    assert b["world_size"] == 2 and b["views"]["forward_passes"] == a["views"]["forward_passes"] == 8
    for x, y in zip(a["methods"], b["methods"]):
        assert x["MR"] == y["MR"] and x["evaluator"] == y["evaluator"] and x["AP50"] == y["AP50"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["flip.pkl", "flip_result.txt", "none.pkl",
                                                                   "none_result.txt"]
