"""The training-run doctor on genuine mmaction2 work_dirs written by a real mmengine Runner (tests/support/
doctor_fixtures.py): per-stream tables, lr/loss/grad_norm, --explain, --best --path, resumed runs, clean JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import invoke, runs_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def doc(tmp_path_factory):
    pytest.importorskip("mmaction")
    from tests.support.doctor_fixtures import make_doctor_work_dirs

    return make_doctor_work_dirs(tmp_path_factory.getbasetemp() / "doctor_work_dirs")


def top1(metrics: dict, stream: str) -> float:
    return metrics[f"acc/{stream}_top1"]


def test_table_groups_streams_and_shows_the_logged_numbers(doc):
    c = doc["collapse"]
    code, table, err = invoke("runs", c["work_dir"])
    assert code == 0, err
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120
    head = "\n".join(lines[:3])
    assert all(s in head for s in ("RGB", "Pose", "fusion 1:1", "top1 (%)", "lr", "loss", "grad"))
    for epoch, m in c["metrics"].items():
        [line] = [ln for ln in lines if ln.startswith(f"{epoch} ") and f"epoch_{epoch}.pth" in ln]
        cells = line.split()
        got = [cells[2], cells[3], cells[4]]
        want = [f"{100 * top1(m, s):.2f}" for s in ("rgb", "pose", "RGBPose_1:1")]
        assert [g.rstrip("*v") for g in got] == want, (epoch, line)
    r = runs_json(c["work_dir"])
    assert r["shown"] == ["acc/rgb_top1", "acc/pose_top1", "acc/RGBPose_1:1_top1"]
    for row in r["rows"]:
        assert row["metrics"] == c["metrics"][str(row["epoch"])]            # every logged metric, exact
        assert row["train"]["lr"] == pytest.approx(c["lr"][str(row["epoch"])], rel=1e-12)   # in effect that epoch
    assert set(r["streams"]) == {"rgb", "pose", "RGBPose_1:1", "RGBPose_2:1", "RGBPose_1:2"}


def test_lr_is_the_one_in_effect_not_the_stored_next_epoch_value(doc):
    """MultiStepLR steps after epoch LR_MILESTONE: that checkpoint stores the stepped lr, the epoch trained with
    the old one (message_hub train/lr)."""
    from ckpttool.io import load
    from ckpttool.summary.training import optimizer_summary

    c = doc["collapse"]
    m = c["lr_milestone"]
    row = {r["epoch"]: r for r in runs_json(c["work_dir"])["rows"]}[m]
    stored = optimizer_summary(load(row["path"]).root["optimizer"])["param_groups"][0]["lr"]
    assert row["train"]["lr"] == pytest.approx(c["lr"][str(m)]) and stored == pytest.approx(c["lr"][str(m + 1)])
    assert stored != pytest.approx(row["train"]["lr"])


def test_several_metrics_and_globs(doc):
    c = doc["collapse"]
    r = runs_json(c["work_dir"], "--metric", "acc/pose_*", "acc/rgb_top5")
    assert list(r["metrics"]) == ["acc/pose_mean1", "acc/pose_top1", "acc/pose_top5", "acc/rgb_top5"]  # glob: sorted
    code, _, err = invoke("runs", c["work_dir"], "--metric", "acc/nope*")
    assert code == 2 and "acc/nope*" in err and len(err.strip().splitlines()) == 1


def _expected_collapse(c):
    before, after = c["metrics"][str(c["collapse_epoch"] - 1)], c["metrics"][str(c["collapse_epoch"])]
    return {s: 100 * (top1(after, s) - top1(before, s)) for s in ("rgb", "pose")
            if top1(after, s) < 0.8 * top1(before, s)}


def test_explain_names_the_streams_and_the_module_that_moved_most(doc):
    torch = pytest.importorskip("torch")
    c = doc["collapse"]
    x = runs_json(c["work_dir"], "--explain")
    [ev] = [e for e in x["collapses"] if e["step"] == c["collapse_epoch"]]
    dropped = {m["stream"]: m["change"] for m in ev["streams"] if m["stream"] in ("rgb", "pose")}
    want = _expected_collapse(c)
    assert want and set(dropped) == set(want)
    assert all(dropped[s] == pytest.approx(want[s]) for s in want)
    assert "pose" in dropped
    # independent: torch over the model's floating parameters (names from the live model, not from ckpt)
    a_path, b_path = ev["weights"]["a"], ev["weights"]["b"]
    assert os.path.basename(a_path) == f"epoch_{c['collapse_epoch'] - 1}.pth"
    assert os.path.basename(b_path) == f"epoch_{c['collapse_epoch']}.pth"
    params = _parameter_names()
    sa = torch.load(a_path, map_location="cpu", weights_only=False)["state_dict"]
    sb = torch.load(b_path, map_location="cpu", weights_only=False)["state_dict"]
    per: dict[str, list] = {}
    for k in params:
        mod = ".".join(k.split(".")[:2])
        a, b = sa[k].double(), sb[k].double()
        acc = per.setdefault(mod, [0.0, 0.0])
        acc[0] += float(((b - a) ** 2).sum())
        acc[1] += float((a ** 2).sum())
    ref = sorted(((math.sqrt(d / n), m) for m, (d, n) in per.items()), reverse=True)
    got = [(m["rel_l2"], m["name"]) for m in ev["weights"]["modules"]]
    assert [m for _, m in got] == [m for _, m in ref]
    assert all(g == pytest.approx(r, rel=1e-5) for (g, _), (r, _) in zip(got, ref))
    top = ev["weights"]["modules"][0]
    assert top["name"] == "cls_head.fc_pose"      # the spiked classifier; counters never enter the number
    bn = next(m for m in ev["weights"]["modules"] if m["name"] == "backbone.pose_path")
    iters = c["iters"][str(c["collapse_epoch"])] - c["iters"][str(c["collapse_epoch"] - 1)]
    assert {i["key"]: i["delta"] for i in bn["integer"]} == {"num_batches_tracked": iters}
    assert ev["restart_from"]["path"].endswith(".pth") and ev["restart_from"]["step"] < c["collapse_epoch"]
    code, screen, _ = invoke("runs", c["work_dir"], "--explain")
    assert code == 0 and f"Collapse at epoch {c['collapse_epoch']}" in screen and "restart from" in screen
    assert "Pose" in screen and f"num_batches_tracked +{iters}" in screen


def _parameter_names() -> list[str]:
    """The floating parameters of the live model built from the fixture's config (not buffers, not counters)."""
    code = ("import json;from tests.support import doctor_fixtures as d;d.register();"
            "from mmengine.registry import init_default_scope;init_default_scope('mmaction');"
            "from mmaction.registry import MODELS;m=MODELS.build(d.model_cfg());"
            "print(json.dumps([n for n, p in m.named_parameters() if p.is_floating_point()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_best_path_is_the_file_save_best_kept(doc):
    c = doc["collapse"]
    code, out, err = invoke("runs", c["work_dir"], "--best", c["best_metric"], "--path")
    assert code == 0, err
    [kept] = c["best_files"]
    assert out == os.path.join(c["work_dir"], kept) + "\n"
    code, _, err = invoke("runs", c["work_dir"], "--best", "acc/none", "--path")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_resumed_run_follows_last_checkpoint(doc, tmp_path):
    r = doc["resumed"]
    info = runs_json(r["work_dir"])
    assert [row["checkpoint"] for row in info["rows"]] == ["epoch_1.pth", "epoch_2.pth"]
    assert [row["run"] for row in info["rows"]] == [r["a"]["experiment_name"], r["b"]["experiment_name"]]
    assert info["last_checkpoint"] == r["last_checkpoint"]
    assert any(a["checkpoint"] == "epoch_3.pth" and a["run"] == r["a"]["experiment_name"] for a in info["abandoned"])
    assert info["warnings"] and "epoch_3.pth" in info["warnings"][0]
    for row in info["rows"]:
        run = r["a"] if row["epoch"] == 1 else r["b"]
        assert row["metrics"] == run["metrics"][str(row["epoch"])]
    out = tmp_path / "avg.pth"
    code, stdout, err = invoke("average", "--work-dir", r["work_dir"], "--last", "2", "-o", out, "--format", "json")
    assert code == 0, err
    assert [os.path.basename(i["path"]) for i in json.loads(stdout)["inputs"]] == ["epoch_1.pth", "epoch_2.pth"]
    assert "epoch_3.pth" in err


def _json_once(cmd, env=None):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                                                    **(env or {})))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc


def test_json_is_one_object_under_library_output(doc):
    """`--update-bn` builds a real mmengine Runner, whose logger and FileClient warnings print to stdout."""
    from tests.support.workdir_fixtures import make_work_dir

    work = make_work_dir(Path(doc["collapse"]["work_dir"]).parents[2] / "ckpt_work_dir")
    out = Path(doc["collapse"]["work_dir"]).parents[1] / "bn.pth"
    obj, proc = _json_once([sys.executable, "-m", "ckpttool", "average", "--work-dir", work["work_dir"], "--last",
                            "2", "-o", str(out), "--force", "--update-bn", work["config"], "--bn-batches", "1",
                            "--format", "json"], env={"PYTHONWARNINGS": "always"})
    assert obj["update_bn"]["batches"] == 1 and "Warning" in proc.stderr
    obj, proc = _json_once([sys.executable, "-m", "ckpttool", "average", "--work-dir", work["work_dir"], "--last",
                            "2", "-o", str(out), "--force", "--update-bn", work["config"], "--bn-batches", "1",
                            "--format", "json", "-q"])
    assert obj["update_bn"]["batches"] == 1 and "mmengine - INFO" not in proc.stderr


def test_json_under_torchrun_is_printed_once(doc):
    pytest.importorskip("torch")
    obj, proc = _json_once([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "ckpttool", "runs", doc["collapse"]["work_dir"], "--format", "json"])
    assert obj["rows"] and proc.stdout.count('"work_dir"') == 1


def test_plot_draws_streams_with_lr(doc, tmp_path):
    out = tmp_path / "runs.png"
    code, _, err = invoke("runs", doc["collapse"]["work_dir"], "--plot", out)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = invoke("runs", doc["collapse"]["work_dir"], "--plot", tmp_path / "runs.txt")
    assert code == 2 and "--plot" in err
