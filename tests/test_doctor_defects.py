"""Issue 14's smaller defects on real files: gate rows by name, the flat `metrics` object and the greedy lookup,
collapse at chance level, --clips parsing, duplicate --preds names, timm output folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.surgery.soup import _lookup
from ckpttool.workdirs.runs import scan

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "mmaction2-fuse-demo"


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def eval_json(*args):
    code, out, err = invoke("eval", "--task", "ntu60", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_eval_json_has_a_flat_metrics_object_that_greedy_lookup_reads():
    r = eval_json("--preds", DEMO / "joint.pkl", DEMO / "bone.pkl")
    rows = {row["name"]: row for row in r["rows"]}
    assert r["metrics"]["joint/top1"] == rows["joint"]["top1"]
    assert r["metrics"]["bone/mean_class_accuracy"] == rows["bone"]["mean_class_accuracy"]
    assert _lookup(r, "joint/top1") == rows["joint"]["top1"]          # what `--greedy --metric joint/top1` reads


def test_gate_matches_rows_by_name_not_file_name(tmp_path):
    base = tmp_path / "base.json"
    code, _, err = invoke("eval", "--task", "ntu60", "--preds", DEMO / "joint.pkl", "--save-metrics", base)
    assert code == 0, err
    renamed = tmp_path / "dump_2024.pkl"
    shutil.copy(DEMO / "joint.pkl", renamed)
    code, _, err = invoke("eval", "--task", "ntu60", "--preds", renamed, "--baseline", base)
    assert code == 1 and "no row named joint" in err and "dump_2024" in err
    code, _, err = invoke("eval", "--task", "ntu60", "--preds", f"joint={renamed}", "--baseline", base)
    assert code == 0, err


def test_two_preds_with_one_base_name_get_distinct_row_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(DEMO / "joint.pkl", tmp_path / "a" / "joint.pkl")
    shutil.copy(DEMO / "bone.pkl", tmp_path / "b" / "joint.pkl")
    r = eval_json("--preds", tmp_path / "a" / "joint.pkl", tmp_path / "b" / "joint.pkl")
    assert [row["name"] for row in r["rows"]][:2] == ["joint", "joint#2"]
    r = eval_json("--preds", f"j={tmp_path / 'a' / 'joint.pkl'}", f"b={tmp_path / 'b' / 'joint.pkl'}")
    assert [row["name"] for row in r["rows"]][:2] == ["j", "b"]


def test_empty_clip_count_is_refused():
    code, out, err = invoke("eval", "--task", "ntu60", "--preds", DEMO / "joint.pkl", "--clips", "1,,3")
    assert code == 2 and out == "" and "--clips" in err and len(err.strip().splitlines()) == 1


def _log(tmp_path, top1):
    run = tmp_path / "20240101_000000"
    run.mkdir()
    lines = [f"2024/01/01 00:00:00 - mmengine - INFO - Epoch(val) [{e}][10/10]    acc/top1: {v:.4f}"
             for e, v in enumerate(top1, 1)]
    (run / "20240101_000000.log").write_text("\n".join(lines) + "\n")
    return scan(str(tmp_path))


def test_a_drop_at_chance_level_is_no_collapse(tmp_path):
    r = _log(tmp_path, [0.10, 0.07, 0.60, 0.30])
    assert [c["to_step"] for c in r["metrics"]["acc/top1"]["collapses"]] == [4]    # 10% -> 7% is noise


def _timm_dir(tmp_path):
    """A timm train.py output folder: CheckpointSaver's file names and dict, summary.csv as timm writes it."""
    torch = pytest.importorskip("torch")
    out = tmp_path / "timm_run"
    out.mkdir()
    top1 = {0: 41.5, 1: 55.25, 2: 50.0}
    for epoch, m in top1.items():
        sd = {"fc.weight": torch.full((2, 2), float(epoch)), "fc.bias": torch.zeros(2)}
        torch.save({"epoch": epoch, "arch": "resnet18", "state_dict": sd, "optimizer": {}, "version": 2,
                    "metric": m}, out / f"checkpoint-{epoch}.pth.tar")
    shutil.copy(out / "checkpoint-1.pth.tar", out / "model_best.pth.tar")
    shutil.copy(out / "checkpoint-2.pth.tar", out / "last.pth.tar")
    rows = ["epoch,train_loss,eval_loss,eval_top1,eval_top5,lr"]
    rows += [f"{e},{2.0 - e / 2},{1.5 - e / 4},{m},{m + 30},{0.1 / (e + 1)}" for e, m in top1.items()]
    (out / "summary.csv").write_text("\n".join(rows) + "\n")
    return out, top1


def test_timm_output_folder_in_runs_and_average_best(tmp_path):
    out, top1 = _timm_dir(tmp_path)
    code, stdout, err = invoke("runs", out, "--format", "json")
    assert code == 0, err
    r = json.loads(stdout)
    assert {row["epoch"]: row["metrics"]["eval_top1"] for row in r["rows"]} == top1
    assert [row["checkpoint"] for row in r["rows"]] == [f"checkpoint-{e}.pth.tar" for e in top1]
    assert r["metrics"]["eval_top1"]["best"]["step"] == 1
    code, stdout, _ = invoke("runs", out, "--best", "eval_top1", "--path")
    assert stdout.strip() == str(out / "model_best.pth.tar")
    avg = tmp_path / "avg.pth"
    code, stdout, err = invoke("average", "--work-dir", out, "--best", "2", "--metric", "eval_top1", "-o", avg,
                               "--format", "json")
    assert code == 0, err
    res = json.loads(stdout)
    assert [s["epoch"] for s in res["selected"]] == [1, 2]
    from ckpttool.io import load

    assert np.allclose(load(str(avg)).state_dict()["fc.weight"].numpy(), 1.5)


def test_clips_group_flip_views_into_clips(tmp_path):
    """3 clips x flip TTA (flip-major, as mmaction2's GeneratePoseTarget(double=True) lays them out): --clips k with
    --views-per-clip 2 averages the 2k views of the first k clips, not the first k views."""
    rng = np.random.default_rng(3)
    n, c, clips = 40, 5, 3
    labels = rng.integers(0, c, n)
    views = rng.standard_normal((n, 2 * clips, c)).astype(np.float32)
    views[np.arange(n), clips, labels] += 3.0          # only the flipped copy of clip 0 knows the label
    path = tmp_path / "flip.npz"
    np.savez(path, labels=labels, scores=views)

    def top1(idx):
        e = np.exp(views[:, idx] - views[:, idx].max(axis=2, keepdims=True))
        prob = (e / e.sum(axis=2, keepdims=True)).mean(axis=1)
        return 100.0 * float(np.mean(prob.argmax(1) == labels))

    r = eval_json("--preds", path, "--clips", "1,2", "--views-per-clip", "2")
    got = {x["k"]: x["rows"][0]["top1"] for x in r["clips"]}
    assert got == {1: pytest.approx(top1([0, 3])), 2: pytest.approx(top1([0, 1, 3, 4]))}
    assert r["view_layout"] == {"views_per_clip": 2, "order": "flip-major", "clips": 3}
    plain = eval_json("--preds", path, "--clips", "1")
    assert plain["clips"][0]["rows"][0]["top1"] == pytest.approx(top1([0])) and plain["notes"]
    code, _, err = invoke("eval", "--task", "ntu60", "--preds", path, "--views-per-clip", "4")
    assert code == 2 and "multiple" in err
