"""Regression gate: metric names, directions, tolerances, the markdown summary, the metrics file."""
from __future__ import annotations

import copy
import json

import pytest

from ckpttool.errors import CkptError
from ckpttool.metrics import gate

KAIST = {"task": "kaist", "protocol": "mlpd", "setup": "Reasonable", "methods": [
    {"name": "MLPD", "MR": {"all": 7.58, "day": 7.96, "night": 6.95}, "recall": {"all": 96.7, "day": 96.5, "night": 97},
     "AP50": {"all": 87.3, "day": 87.0, "night": 88.5}}]}
NTU = {"task": "ntu60", "num_samples": 60, "rows": [{"name": "joint", "top1": 91.67, "top5": 98.33,
                                                     "mean_class_accuracy": 90.16}],
       "clips": [{"k": 1, "rows": [{"name": "joint", "top1": 85.0, "top5": 95.0, "mean_class_accuracy": 84.0}]}]}


def changed(result, path, value):
    out = copy.deepcopy(result)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_metric_names():
    assert set(gate.metrics(KAIST)) == {f"MLPD.{m}.{s}" for m in ("MR", "recall", "AP50")
                                        for s in ("all", "day", "night")}
    assert gate.metrics(NTU) == {"joint.top1": 91.67, "joint.top5": 98.33, "joint.mean_class_accuracy": 90.16,
                                 "clips1.joint.top1": 85.0, "clips1.joint.top5": 95.0,
                                 "clips1.joint.mean_class_accuracy": 84.0}


def test_mr_is_better_lower_everything_else_higher():
    worse_mr = changed(KAIST, ["methods", 0, "MR", "night"], 7.5)          # +0.55 MR: worse
    better_mr = changed(KAIST, ["methods", 0, "MR", "night"], 6.0)
    lower_ap = changed(KAIST, ["methods", 0, "AP50", "all"], 86.0)
    g = gate.compare(worse_mr, KAIST, 0.5)
    assert not g["passed"] and [c["metric"] for c in g["checks"] if c["status"] == "regressed"] == ["MLPD.MR.night"]
    assert gate.compare(better_mr, KAIST)["passed"]
    assert [c["status"] for c in gate.compare(better_mr, KAIST)["checks"] if c["metric"] == "MLPD.MR.night"] \
        == ["improved"]
    assert not gate.compare(lower_ap, KAIST, 1.0)["passed"]
    assert gate.compare(lower_ap, KAIST, 1.5)["passed"]


def test_tolerance_is_in_metric_points_with_overrides():
    cur = changed(KAIST, ["methods", 0, "MR", "night"], 7.9)               # +0.95
    default, overrides = gate.parse_tolerance(["0.5", "MR.night=1.0"])
    assert (default, overrides) == (0.5, {"MR.night": 1.0})
    assert gate.compare(cur, KAIST, default, overrides)["passed"]
    assert not gate.compare(cur, KAIST, default, {"MR.night": 0.9})["passed"]
    # the longest matching pattern wins; wildcards work
    assert gate.tolerance_for("MLPD.MR.night", 0.1, {"MR.*": 2.0, "MLPD.MR.night": 0.3}) == 0.3
    assert gate.tolerance_for("MLPD.MR.day", 0.1, {"MR.*": 2.0, "MLPD.MR.night": 0.3}) == 2.0
    assert gate.tolerance_for("MLPD.recall.day", 0.1, {"MR.*": 2.0}) == 0.1
    with pytest.raises(CkptError, match="METRIC=NUMBER"):
        gate.parse_tolerance(["MR.night=abc"])
    with pytest.raises(CkptError, match="no baseline metric matches 'MR.nite'"):
        gate.compare(cur, KAIST, 0.0, {"MR.nite": 1.0})


def test_missing_metric_fails_and_new_metric_is_listed():
    cur = changed(NTU, ["clips"], [])
    g = gate.compare(cur, NTU, 10.0)
    assert not g["passed"] and {c["status"] for c in g["checks"] if c["metric"].startswith("clips1.")} == {"missing"}
    more = changed(NTU, ["rows"], NTU["rows"] + [{"name": "bone", "top1": 1, "top5": 2, "mean_class_accuracy": 3}])
    g = gate.compare(more, NTU)
    assert g["passed"] and "bone.top1" in g["new_metrics"]


def test_task_mismatch_is_an_error():
    with pytest.raises(CkptError, match="baseline is a 'kaist' result"):
        gate.compare(NTU, KAIST)


def test_markdown_summary():
    g = gate.compare(changed(NTU, ["rows", 0, "top1"], 90.0), NTU, 0.5)
    md = gate.summary_markdown(g, "base.json")
    assert md.startswith("### ckpt eval regression gate: FAILED (1 regression(s))")
    assert "| joint.top1 | 91.67 | 90.00 | -1.67 | 0.5 | higher | **regressed** |" in md
    assert "Baseline: `base.json`" in md


def test_save_and_load_metrics(tmp_path):
    path = tmp_path / "m.json"
    gate.save_metrics(NTU, str(path))
    assert json.loads(path.read_text()) == NTU
    assert gate.load_baseline(str(path)) == NTU
    with pytest.raises(CkptError, match="exists; pass --force"):
        gate.save_metrics(NTU, str(path))
    gate.save_metrics(KAIST, str(path), force=True)
    assert gate.load_baseline(str(path))["task"] == "kaist"
    (tmp_path / "bad.json").write_text("{\n  oops")
    with pytest.raises(CkptError, match=r"^bad.json:2: invalid JSON"):
        gate.load_baseline(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CkptError, match="not a metrics file"):
        gate.load_baseline(str(tmp_path / "list.json"))
