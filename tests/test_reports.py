"""Typed results: each command's library call returns a report whose ``to_dict()`` is exactly the object the CLI
prints with ``--format json`` (same text: keys, values, order), and those keys are the ones the JSON always had
(listed here as captured from the commands before the reports existed)."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass

import numpy as np
import pytest

from ckpttool.plain import plain
from ckpttool.report.output import render_json
from ckpttool.report.result import Report, extra
from tests.support.cli import invoke
from tests.support.workdir_fixtures import COLLAPSE_LOG

INSPECT_KEYS = ["path", "format", "file_bytes", "layout", "meta", "weights_key", "stripped_prefix", "num_tensors",
                "total_params", "total_bytes", "depth", "modules", "sections", "optimizer", "schedulers", "scalars",
                "ema", "foreign_globals", "suspicious_globals", "trusted", "safety", "notes"]
DIFF_KEYS = ["a", "b", "depth", "atol", "rtol", "only_in_a", "only_in_b", "shape_mismatch", "dtype_mismatch",
             "compared", "identical_tensors", "modules", "changed_tensors", "nonfinite_in_b", "meta", "notes"]
GRAFT_KEYS = ["source", "target", "loaded", "new", "mismatched", "unused", "depth", "modules", "rules",
              "on_shape_mismatch", "inflate", "notes", "summary", "dry_run", "output", "failed"]
AVERAGE_KEYS = ["output", "bytes", "tensors", "method", "inputs", "section", "int_buffers", "dtype", "averaged",
                "picked", "skipped", "warnings", "state_dict_bytes", "stripped_prefixes", "bn_stale", "notes"]
PUBLISH_KEYS = ["source", "weights", "output", "meta_keys", "dropped", "cast", "verified", "notes", "dry_run", "size"]
RUNS_KEYS = ["work_dir", "unit", "sources", "collapse_drop", "metrics", "streams", "rows", "events", "checkpoints",
             "last_checkpoint", "runs", "abandoned", "warnings"]
EXPLAIN_KEYS = ["work_dir", "unit", "metric", "collapses", "warnings"]


def cli_json(*args, code: int = 0):
    """`ckpt ARGS --format json`: (stdout, stderr); the exit code must be `code`."""
    got, out, err = invoke(*args, "--format", "json")
    assert got == code, err
    return out, err


def printed(report, out: str, keys: list) -> dict:
    """The CLI printed exactly `report.to_dict()`, whose keys (in order) are `keys`."""
    assert render_json(report.to_dict()) + "\n" == out
    assert render_json(report) == render_json(report.to_dict())        # plain() takes a report as its dict
    obj = json.loads(out)
    assert list(obj) == keys
    return obj


# --- the base ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Toy(Report):
    a: int
    b: list
    c: str | None = None
    failed: str | None = extra()


def test_to_dict_keeps_the_producers_key_order_and_leaves_out_absent_keys():
    r = Toy.from_dict({"b": [1], "a": 2})
    assert list(r.to_dict()) == ["b", "a"] and r.c is None and "c" not in r and r.get("c", 7) == 7
    assert Toy.from_dict({"a": 2, "b": [1], "c": None}).to_dict() == {"a": 2, "b": [1], "c": None}  # present: null
    assert Toy(2, [1]).to_dict() == {"a": 2, "b": [1]} and Toy(2, [1], "x").to_dict()["c"] == "x"   # built directly
    assert r["b"] == [1] and r.passed and plain(r) == {"b": [1], "a": 2}
    with pytest.raises(KeyError):
        r["c"]
    with pytest.raises(TypeError):
        Toy.from_dict({"a": 1, "b": [], "failed": "x"})    # an extra is no JSON key
    with pytest.raises(TypeError):
        Toy.from_dict({"a": 1, "b": [], "d": 0})


def test_reports_are_read_only_and_updated_like_dict_update():
    r = Toy.from_dict({"b": [1], "a": 2}, failed="why")
    with pytest.raises(TypeError):
        r["a"] = 3
    with pytest.raises(FrozenInstanceError):
        r.a = 3
    with pytest.raises(TypeError):
        iter(r)
    u = r.updated(c="new", a=3)
    assert list(u.to_dict()) == ["b", "a", "c"] and u.a == 3 and u.failed == "why" and not u.passed
    assert r.a == 2 and "c" not in r                   # the original is unchanged
    assert r.updated(failed=None).passed and r.updated(failed=None).to_dict() == r.to_dict()


# --- one per command -----------------------------------------------------------------------------------------
def test_inspect(fixtures_dir):
    from ckpttool.summary.inspect import InspectReport, inspect

    path = fixtures_dir / "formats" / "nan_inf.pth"
    out, err = cli_json("inspect", path, "--stats", "--check-finite", code=1)
    report = inspect(str(path), stats=True, check_finite=True)
    obj = printed(report, out, INSPECT_KEYS + ["nonfinite"])
    assert isinstance(report, InspectReport) and not report.passed and report.failed in err
    assert report.nonfinite == obj["nonfinite"] and report.verdict == "data" and report["layout"] == report.layout
    out, _ = cli_json("inspect", path, "--check-finite", code=1)     # values read, module rows without statistics
    report = inspect(str(path), check_finite=True)
    printed(report, out, INSPECT_KEYS + ["nonfinite"])
    assert "min" not in report.modules[0] and report.failed.startswith("2 tensor(s) hold NaN/Inf")
    zip_ = fixtures_dir / "formats" / "zip.pth"
    out, _ = cli_json("inspect", zip_, "--config", "--keys")
    report = inspect(str(zip_), config=True, keys=True)
    printed(report, out, INSPECT_KEYS + ["config", "keys"])
    assert report.config is None and "config" in report and report.passed   # asked for, none stored: null


def test_diff(fixtures_dir):
    from ckpttool.comparison.diff import DiffReport, diff

    a, b = fixtures_dir / "diff" / "base.pth", fixtures_dir / "diff" / "combined.pth"
    out, err = cli_json("diff", a, b, "--fail-on", "keys,nonfinite", code=1)
    report = diff(str(a), str(b), fail_on="keys,nonfinite")
    printed(report, out, DIFF_KEYS)
    assert isinstance(report, DiffReport) and report.failed in err and report.only_in_b == ["head.extra.weight"]
    assert diff(str(a), str(b), fail_on=["keys", "nonfinite"]).failed == report.failed
    ra, rb = fixtures_dir / "diff" / "runner_a.pth", fixtures_dir / "diff" / "runner_b.pth"
    out, _ = cli_json("diff", ra, rb, "--config")
    report = diff(str(ra), str(rb), config=True)
    printed(report, out, DIFF_KEYS + ["config"])
    assert report.passed and report.config


def test_graft(fixtures_dir):
    pytest.importorskip("torch")
    from ckpttool.surgery.graft import GraftReport, run

    L = fixtures_dir / "layouts"
    src, tgt = L / "bevfusion_det.pth", L / "bevfusion_det_map_gca.pth"
    out, _ = cli_json("graft", src, "--into", tgt, "--init", r"task_gca\..*=zeros", "--init", r"heads\.map=default",
                      "--dry-run")
    values, report = run(str(src), str(tgt), [("init", r"task_gca\..*=zeros"), ("init", r"heads\.map=default")],
                         dry_run=True)
    printed(report, out, GRAFT_KEYS)
    assert values is None and isinstance(report, GraftReport) and report.passed and report.output is None
    assert report.new["init"] == {"zeros": 4, "default": 14} and report.summary.startswith("639.91K params loaded")
    out, err = cli_json("graft", src, "--into", tgt, "--fail-on", "new", "--dry-run", code=1)
    _, report = run(str(src), str(tgt), dry_run=True, fail_on=["new"])
    printed(report, out, GRAFT_KEYS)
    assert not report.passed and report.failed == "18 new not covered by a rule (--fail-on)" in err


def _checkpoints(folder, n=3) -> list[str]:
    from ckpttool.io.write import save

    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        sd = {"conv.weight": np.full((4, 3), float(i), dtype=np.float32),
              "bn.num_batches_tracked": np.array(10 * i, dtype=np.int64)}
        paths.append(save(str(folder / f"epoch_{i}.pth"), sd, meta={"epoch": i, "iter": 10 * i})["path"])
    return paths


def test_average(tmp_path):
    from ckpttool.surgery.average import AverageReport
    from ckpttool.surgery.average_job import run_average

    paths = _checkpoints(tmp_path / "wd")
    dest = tmp_path / "avg.pth"
    out, _ = cli_json("average", *paths, "--weights", "1,2,1", "-o", dest)
    report = run_average(paths, str(dest), weights="1,2,1", force=True)     # the same file again
    printed(report, out, AVERAGE_KEYS)
    assert isinstance(report, AverageReport) and report.output == str(dest) and report.method == "weighted"
    assert [i["weight"] for i in report.inputs] == [0.25, 0.5, 0.25] and report.picked == 1
    out, _ = cli_json("average", "--work-dir", tmp_path / "wd", "--last", "2", "-o", dest, "--force")
    report = run_average(work_dir=str(tmp_path / "wd"), last=2, out=str(dest), force=True)
    printed(report, out, AVERAGE_KEYS + ["selected", "metric"])    # after `selected`, where it always was
    assert [s["checkpoint"] for s in report.selected] == ["epoch_2.pth", "epoch_3.pth"] and report.metric is None


def test_publish(manifest, fixtures_dir, tmp_path):
    from ckpttool.surgery.publish import PublishReport, publish

    src = fixtures_dir / manifest["mmengine"]["runs"]["sgd"]["path"]
    out, _ = cli_json("publish", src, "--dry-run")
    report = publish(str(src), dry_run=True)
    printed(report, out, PUBLISH_KEYS)
    assert isinstance(report, PublishReport) and report.output is None and report.bytes_after is None
    dest = tmp_path / "release.pth"
    out, _ = cli_json("publish", src, "-o", dest)
    report = publish(str(src), str(dest), force=True)
    printed(report, out, PUBLISH_KEYS)
    assert report.output["path"] == str(dest) and report.bytes_after == dest.stat().st_size < report.bytes_before


def test_runs_and_explain(tmp_path):
    from ckpttool.workdirs.explain import ExplainReport
    from ckpttool.workdirs.listing import list_runs
    from ckpttool.workdirs.runs import RunsReport, scan

    (tmp_path / "run.log").write_text(COLLAPSE_LOG)
    out, err = cli_json("runs", tmp_path, "--fail-on-collapse", code=1)
    report = list_runs(str(tmp_path), fail_on_collapse=True)
    printed(report, out, RUNS_KEYS + ["shown"])
    assert isinstance(report, RunsReport) and not report.passed and report.failed in err
    assert len(report.collapses) == 3 and report.best["acc/top1"] == report.metrics["acc/top1"]["best"]
    out, _ = cli_json("runs", tmp_path, "--metric", "acc/*1")
    report = list_runs(str(tmp_path), metrics=["acc/*1"])
    printed(report, out, RUNS_KEYS + ["shown"])
    assert report.shown == list(report.metrics) and report.passed
    assert list(scan(str(tmp_path)).to_dict()) == RUNS_KEYS
    out, _ = cli_json("runs", tmp_path, "--explain")
    report = list_runs(str(tmp_path), explain=True)
    printed(report, out, EXPLAIN_KEYS)
    assert isinstance(report, ExplainReport) and [c["step"] for c in report.collapses] == [12]
