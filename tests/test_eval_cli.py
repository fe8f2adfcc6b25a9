"""`ckpt eval` through the CLI: JSON contract, multi-value options, errors (exit 2), plots, the gate (exit 1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
ANN = str(ROOT / "fixtures" / "kaist" / "KAIST_annotation.json")
MLPD = str(ROOT / "fixtures" / "kaist" / "detections" / "MLPD_result.txt")
MBNET = str(ROOT / "fixtures" / "kaist" / "detections" / "MBNet_result.txt")
JOINT = str(ROOT / "fixtures" / "mmaction2-fuse-demo" / "joint.pkl")
BONE = str(ROOT / "fixtures" / "mmaction2-fuse-demo" / "bone.pkl")


def ckpt(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def as_json(res):
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_kaist_json_contract():
    r = as_json(ckpt("--task", "kaist", "--preds", MLPD, MBNET, "--ann", ANN, "--format", "json"))
    assert (r["task"], r["protocol"], r["setup"]) == ("kaist", "mlpd", "Reasonable")
    assert [m["name"] for m in r["methods"]] == ["MLPD", "MBNet"]
    m = r["methods"][0]
    for key in ("MR", "recall", "AP50"):
        assert set(m[key]) == {"all", "day", "night"}
    assert set(m["protocols"]) == {"mlpd", "matlab"} and set(m["protocols"]["matlab"]["MR"]) == {"all", "day", "night"}
    assert isinstance(m["images_without_detections"], int)
    assert round(m["MR"]["all"], 2) == 7.58 and round(m["recall"]["all"], 2) == 96.70


def test_kaist_table_and_matlab_headline():
    res = ckpt("--task", "kaist", "--preds", MLPD, "--ann", ANN, "--protocol", "matlab")
    assert res.exit_code == 0, res.stderr
    assert "KAIST Reasonable, matlab protocol" in res.stdout
    line = next(x for x in res.stdout.splitlines() if x.startswith("MLPD "))
    assert line.split()[1:4] == ["7.58", "7.95", "6.95"]


def test_ntu_json_contract_and_both_multi_value_forms():
    a = as_json(ckpt("--task", "ntu60", "--preds", JOINT, BONE, "--coefficients", 1, 2, "--format", "json"))
    b = as_json(ckpt("--task", "ntu60", "--preds", JOINT, "--preds", BONE, "--coefficients", 1,
                     "--coefficients", 2, "--format", "json"))
    assert a["rows"] == b["rows"]
    assert a["task"] == "ntu60" and a["num_samples"] == 60
    assert [r["name"] for r in a["rows"]] == ["joint", "bone", "ensemble(1*joint + 2*bone)"]
    assert all(set(r) >= {"name", "top1", "top5", "mean_class_accuracy"} for r in a["rows"])


def test_ntu_csv_and_markdown():
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--format", "csv")
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == "name,top-1,top-5,mean class acc"
    assert res.stdout.splitlines()[1].startswith("joint,91.6666666")  # raw numbers in CSV (issue 12)
    res = ckpt("--task", "ntu60", "--preds", JOINT, BONE, "--per-class", "--format", "markdown")
    assert "### Per-class accuracy of ensemble(1*joint + 1*bone)" in res.stdout and "### Most confused" in res.stdout


@pytest.mark.parametrize("content, expected", [
    ("1,2,3,4,5,0.5\n1,2,3\n", "bad_result.txt:2: expected 6 comma-separated values"),
    ("1,2,3,4,5,0.5\n9999,2,3,4,5,0.5\n", "bad_result.txt:2: image index 9999 out of range 1..2252"),
    ("1,2,three,4,5,0.5\n", "bad_result.txt:1: not a number: 'three'"),
    ("\n", "bad_result.txt: empty file"),
])
def test_malformed_kaist_input_is_one_line_exit_2(tmp_path, content, expected):
    bad = tmp_path / "bad_result.txt"
    bad.write_text(content)
    res = ckpt("--task", "kaist", "--preds", bad, "--ann", ANN)
    assert res.exit_code == 2
    assert res.stderr.startswith(f"ckpt: error: {expected}")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and res.stdout == ""


def test_wrong_json_shape_and_bad_pickle_exit_2(tmp_path):
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps({"annotations": []}))
    res = ckpt("--task", "kaist", "--preds", bad, "--ann", ANN)
    assert res.exit_code == 2 and res.stderr.startswith("ckpt: error: dets.json: expected a JSON list")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    res = ckpt("--task", "ntu60", "--preds", junk)
    assert res.exit_code == 2 and "junk.pkl" in res.stderr and res.stderr.count("\n") == 1
    res = ckpt("--task", "kaist", "--preds", MLPD)
    assert res.exit_code == 2 and "needs --ann" in res.stderr
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--clips", "1,x")
    assert res.exit_code == 2 and "--clips" in res.stderr


@pytest.mark.parametrize("ext, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_kaist_plot(tmp_path, ext, magic):
    out = tmp_path / f"mr{ext}"
    r = as_json(ckpt("--task", "kaist", "--preds", MLPD, MBNET, "--ann", ANN, "--plot", out, "--format", "json"))
    assert out.read_bytes().startswith(magic)
    assert "curves" not in r["methods"][0]


def test_ntu_plots(tmp_path):
    cm = tmp_path / "cm.png"
    assert ckpt("--task", "ntu60", "--preds", JOINT, "--per-class", "--plot", cm).exit_code == 0
    assert cm.read_bytes().startswith(b"\x89PNG")
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--plot", tmp_path / "x.png")
    assert res.exit_code == 2 and "--clips" in res.stderr
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--plot", tmp_path / "x.jpg")
    assert res.exit_code == 2 and ".pdf, .png or .svg" in res.stderr


def test_gate_passes_then_fails_with_markdown_summary(tmp_path):
    base = tmp_path / "base.json"
    assert ckpt("--task", "kaist", "--preds", MLPD, "--ann", ANN, "--save-metrics", base).exit_code == 0
    saved = json.loads(base.read_text())
    assert saved["task"] == "kaist" and "gate" not in saved
    res = ckpt("--task", "kaist", "--preds", MLPD, "--ann", ANN, "--baseline", base)
    assert res.exit_code == 0 and "Regression gate" in res.stdout and "PASSED" in res.stdout
    # a baseline 0.8 MR points better at night: fails at tolerance 0.5, passes with MR.night=1.0
    saved["methods"][0]["MR"]["night"] -= 0.8
    base.write_text(json.dumps(saved))
    summary = tmp_path / "summary.md"
    res = ckpt("--task", "kaist", "--preds", MLPD, "--ann", ANN, "--baseline", base, "--tolerance", 0.5,
               "--summary", summary, "--format", "markdown")
    assert res.exit_code == 1
    assert "MLPD.MR.night" in res.stdout and "regressed" in res.stdout
    assert "1 metric(s) regressed" in res.stderr
    assert summary.read_text().startswith("### ckpt eval regression gate: FAILED")
    res = ckpt("--task", "kaist", "--preds", MLPD, "--ann", ANN, "--baseline", base, "--tolerance", 0.5,
               "MR.night=1.0", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["gate"]["passed"] is True


def test_save_metrics_refuses_to_overwrite(tmp_path):
    out = tmp_path / "m.json"
    out.write_text("{}")
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--save-metrics", out)
    assert res.exit_code == 2 and "--force" in res.stderr and out.read_text() == "{}"
    assert ckpt("--task", "ntu60", "--preds", JOINT, "--save-metrics", out, "--force").exit_code == 0
    res = ckpt("--task", "ntu60", "--preds", JOINT, "--baseline", out, "--save-metrics", out, "--force")
    assert res.exit_code == 2 and "refusing to overwrite the input" in res.stderr


def test_model_mode_calls_evaluate_recognizer_and_renders_clips(tmp_path, monkeypatch):
    import ckpttool.engine.tasks as tta

    calls = {}
    rows = [{"name": "rgb", "top1": 90.0, "top5": 99.0, "mean_class_accuracy": 89.0},
            {"name": "pose", "top1": 80.0, "top5": 95.0, "mean_class_accuracy": 79.0}]

    def fake(config, checkpoint, **kw):
        calls.update(kw, config=config, checkpoint=checkpoint)
        return {"task": "ntu60", "config": config, "checkpoint": checkpoint,
                "clips": [{"k": k, "rows": [dict(r, top1=r["top1"] + k) for r in rows]} for k in kw["clips"]]}

    monkeypatch.setattr(tta, "evaluate_recognizer", fake)
    cfg, ck = tmp_path / "cfg.py", tmp_path / "model.pth"
    plot = tmp_path / "clips.svg"
    res = ckpt(cfg, ck, "--clips", "1,3", "5", "--aggregate", "score", "--cfg-options", "a=1", "b=2", "--split",
               "xsub_val", "--views-per-batch", 4, "--device", "cpu", "--limit", 8, "--plot", plot)
    assert res.exit_code == 0, res.stderr
    assert calls["clips"] == [1, 3, 5] and calls["aggregate"] == "score" and calls["cfg_options"] == ["a=1", "b=2"]
    assert (calls["split"], calls["views_per_batch"], calls["limit"], calls["launcher"]) == ("xsub_val", 4, 8, "none")
    assert "accuracy with num_clips=k" in res.stdout and "k clips" in res.stdout
    assert plot.read_bytes().startswith(b"<?xml")
    base = tmp_path / "base.json"
    assert ckpt(cfg, ck, "--clips", "1,3,5", "--save-metrics", base).exit_code == 0
    saved = json.loads(base.read_text())
    saved["clips"][0]["rows"][0]["top1"] += 2.0
    base.write_text(json.dumps(saved))
    res = ckpt(cfg, ck, "--clips", "1,3,5", "--baseline", base, "--tolerance", 1, "--format", "json")
    assert res.exit_code == 1
    bad = [c["metric"] for c in json.loads(res.stdout)["gate"]["checks"] if c["status"] == "regressed"]
    assert bad == ["clips1.rgb.top1"]
    res = ckpt(cfg, "--clips", "1")
    assert res.exit_code == 2 and "both CONFIG and CHECKPOINT" in res.stderr
