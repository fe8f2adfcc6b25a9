"""`ckpt runs DIR` / `ckpt inspect DIR` / `ckpt average --work-dir`: a real mmengine work_dir and real log text."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.support.cli import invoke, runs_json
from ckpttool.workdirs.runs import parse_log_text, scan
from tests.support.workdir_fixtures import COLLAPSE_LOG, COLLAPSE_TOP1, make_work_dir


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    pytest.importorskip("mmengine")
    return make_work_dir(tmp_path_factory.getbasetemp() / "ckpt_work_dir")


def best_epoch(metrics: dict, name: str) -> int:
    return max(metrics, key=lambda e: (metrics[e][name], int(e)))


def test_lists_checkpoints_with_the_metrics_the_runner_computed(work):
    r = runs_json(work["work_dir"])
    facts = {int(e): m for e, m in work["metrics"].items()}
    assert [row["epoch"] for row in r["rows"]] == list(range(1, work["epochs"] + 1))
    for row in r["rows"]:
        path = os.path.join(work["work_dir"], f"epoch_{row['epoch']}.pth")
        assert row["checkpoint"] == f"epoch_{row['epoch']}.pth" and row["bytes"] == os.path.getsize(path)
        assert row["iter"] == work["iters"][str(row["epoch"])]
        assert row["metrics"] == facts[row["epoch"]]     # scalars.json holds the exact floats
    for name in ("acc/top1", "acc/mean1"):
        best = best_epoch(work["metrics"], name)
        assert r["metrics"][name]["best"]["step"] == int(best)
        assert r["metrics"][name]["best"]["checkpoint"] == f"epoch_{best}.pth"
        assert [row["epoch"] for row in r["rows"] if name in row["best"]] == [int(best)]
    assert any(s.endswith("scalars.json") for s in r["sources"]) and any(s.endswith(".log") for s in r["sources"])
    assert r["last_checkpoint"].endswith(f"epoch_{work['epochs']}.pth")


def test_log_lines_alone_give_the_same_metrics(work, tmp_path):
    copy = tmp_path / "wd"
    shutil.copytree(work["work_dir"], copy, ignore=shutil.ignore_patterns("vis_data"))
    r = scan(str(copy))
    assert all(s.endswith(".log") for s in r["sources"]) and r["sources"]
    for row in r["rows"]:
        for name, value in work["metrics"][str(row["epoch"])].items():
            assert row["metrics"][name] == pytest.approx(value, abs=5e-5)   # the log prints 4 decimals


def test_inspect_on_a_work_dir_shows_the_runs_listing(work):
    a = invoke("inspect", work["work_dir"], "--format", "json")
    b = invoke("runs", work["work_dir"], "--format", "json")
    assert a[0] == 0 and a[1] == b[1]
    code, table, _ = invoke("inspect", work["work_dir"])
    assert code == 0 and "epoch_1.pth" in table and "acc/top1 (%)" in table
    top1 = work["metrics"][best_epoch(work["metrics"], "acc/top1")]["acc/top1"]
    assert f"{100 * top1:.2f}" in table     # fractions shown as percentages


def test_hand_written_log_with_a_collapse(tmp_path):
    unit, evals = parse_log_text(COLLAPSE_LOG)
    assert unit == "epoch" and {e: m["acc/top1"] for e, m in evals.items()} == COLLAPSE_TOP1
    assert "data_time" not in evals[11] and "time" not in evals[11]
    run_dir = tmp_path / "20240302_101112"
    run_dir.mkdir()
    (run_dir / "20240302_101112.log").write_text(COLLAPSE_LOG)
    r = runs_json(tmp_path, "--metric", "acc/top1")
    top1 = r["metrics"]["acc/top1"]
    assert top1["best"]["step"] == max(COLLAPSE_TOP1, key=COLLAPSE_TOP1.get)
    [c] = top1["collapses"]
    assert (c["from_step"], c["to_step"], c["from"], c["to"]) == (11, 12, COLLAPSE_TOP1[11], COLLAPSE_TOP1[12])
    assert c["drop"] == pytest.approx((COLLAPSE_TOP1[11] - COLLAPSE_TOP1[12]) / COLLAPSE_TOP1[11])
    code, table, _ = invoke("runs", tmp_path)
    assert "57.45 -> 32.64" in table and "collapse acc/top1" in table
    assert runs_json(tmp_path, "--collapse-drop", "0.5")["metrics"]["acc/top1"]["collapses"] == []
    code, _, err = invoke("runs", tmp_path, "--fail-on-collapse")
    assert code == 1 and "collapse" in err


def test_iteration_based_log_and_min_mode(tmp_path):
    text = "\n".join([
        "2024/01/01 00:00:00 - mmengine - INFO - Iter(train) [ 1000/3000]  lr: 1.0000e-02  loss: 0.9000",
        "2024/01/01 00:01:00 - mmengine - INFO - Iter(val) [50/50]    MR: 0.3100  data_time: 0.0010  time: 0.0100",
        "2024/01/01 00:02:00 - mmengine - INFO - Iter(train) [ 2000/3000]  lr: 1.0000e-02  loss: 0.5000",
        "2024/01/01 00:03:00 - mmengine - INFO - Iter(val) [50/50]    MR: 0.2200  data_time: 0.0010  time: 0.0100",
        "2024/01/01 00:04:00 - mmengine - INFO - Iter(train) [ 3000/3000]  lr: 1.0000e-02  loss: 0.4000",
        "2024/01/01 00:05:00 - mmengine - INFO - Iter(val) [50/50]    MR: 0.2900  data_time: 0.0010  time: 0.0100",
    ])
    (tmp_path / "run.log").write_text(text)
    r = scan(str(tmp_path))
    assert r["unit"] == "iter" and [row["iter"] for row in r["rows"]] == [1000, 2000, 3000]
    mr = r["metrics"]["MR"]
    assert mr["mode"] == "min" and mr["best"]["step"] == 2000
    assert [c["to_step"] for c in mr["collapses"]] == [3000]    # 0.22 -> 0.29 is 32% worse for a miss rate


@pytest.mark.parametrize("how", [("--last", "2"), ("--best", "2", "--metric", "acc/top1"),
                                 ("--best", "1", "--metric", "acc/mean1")])
def test_average_picks_checkpoints_from_the_work_dir(work, tmp_path, how):
    from ckpttool.io import load

    out = tmp_path / "avg.pth"
    code, stdout, err = invoke("average", "--work-dir", work["work_dir"], *how, "-o", out, "--format", "json")
    assert code == 0, err
    epochs = sorted(int(e) for e in work["metrics"])
    if how[0] == "--last":
        want = epochs[-int(how[1]):]
    else:
        ranked = sorted(epochs, key=lambda e: (work["metrics"][str(e)][how[3]], e), reverse=True)
        want = sorted(ranked[: int(how[1])])
    result = json.loads(stdout)
    assert [s["epoch"] for s in result["selected"]] == want
    assert [os.path.basename(i["path"]) for i in result["inputs"]] == [f"epoch_{e}.pth" for e in want]
    inputs = [load(os.path.join(work["work_dir"], f"epoch_{e}.pth")).state_dict() for e in want]
    got = load(str(out)).state_dict()
    for key in ("conv.weight", "fc.bias"):
        ref = np.mean([sd[key].numpy().astype(np.float64) for sd in inputs], axis=0).astype(np.float32)
        assert np.array_equal(got[key].numpy(), ref)


def test_work_dir_errors_are_one_line(work, tmp_path):
    out = tmp_path / "o.pth"
    cases = [("runs", tmp_path / "nothing"),
             ("runs", work["work_dir"], "--metric", "no/such"),
             ("average", "--work-dir", work["work_dir"], "--best", "2", "--metric", "no/such", "-o", out),
             ("average", "--work-dir", work["work_dir"], "--last", "9", "-o", out),
             ("average", "--work-dir", work["work_dir"], "--best", "2", "-o", out),
             ("average", "--work-dir", work["work_dir"], "--last", "2", "--best", "1", "--metric", "acc/top1",
              "-o", out),
             ("average", work["work_dir"] + "/epoch_1.pth", "--work-dir", work["work_dir"], "--last", "2", "-o", out)]
    (tmp_path / "nothing").mkdir()
    for args in cases:
        code, stdout, err = invoke(*args)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, (args, err)
    assert not out.exists()
