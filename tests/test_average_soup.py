"""Greedy soups on a toy whose metric follows from the weights, and --update-bn on a real mmengine model."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.io import load
from ckpttool.io.write import save
from ckpttool.surgery.soup import greedy_soup

# Each toy model is w = v * ones(8); the held-out metric is acc = 100 - 10 * |mean(w)|.
VALUES = {"a.pth": 1.0, "b.pth": -1.2, "c.pth": 3.0, "d.pth": -2.0}
EVAL = """import json, sys
from ckpttool.io import load
w = load(sys.argv[1]).state_dict()["w"].numpy()
print("evaluating", sys.argv[1])
print(json.dumps({"acc": 100 - 10 * abs(float(w.mean())), "err": 10 * abs(float(w.mean()))}))
"""


def acc(values) -> float:
    w = np.mean([np.full(8, v, dtype=np.float32).astype(np.float64) for v in values], axis=0).astype(np.float32)
    return 100 - 10 * abs(float(w.mean()))


@pytest.fixture
def toy(tmp_path):
    for name, v in VALUES.items():
        save(str(tmp_path / name), {"w": np.full(8, v, dtype=np.float32)}, meta={})
    script = tmp_path / "eval.py"
    script.write_text(EVAL)
    return tmp_path, f"{sys.executable} {script} {{ckpt}}"


def expected_steps():
    """Wortsman et al.: sort by individual metric, add best-first, keep if the soup does not get worse."""
    order = sorted(VALUES, key=lambda n: -acc([VALUES[n]]))
    soup, best, steps = [order[0]], acc([VALUES[order[0]]]), [(order[0], True)]
    for n in order[1:]:
        trial = acc([VALUES[m] for m in soup + [n]])
        steps.append((n, trial >= best))
        if trial >= best:
            soup, best = soup + [n], trial
    return steps, soup, best


def test_greedy_soup_keeps_and_drops_as_expected(toy):
    d, cmd = toy
    steps, soup, best = expected_steps()
    # by construction: a (90) and b (88) average to 99; adding d or c makes it worse
    assert steps == [("a.pth", True), ("b.pth", True), ("d.pth", False), ("c.pth", False)]
    out = d / "soup.pth"
    paths = [str(d / n) for n in ("c.pth", "a.pth", "d.pth", "b.pth")]   # training order is not metric order
    res = CliRunner().invoke(cli, ["average", *paths, "--greedy", "--eval-cmd", cmd, "--metric", "acc",
                                   "-o", str(out), "--format", "json"])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert [(os.path.basename(s["candidate"]), s["kept"]) for s in r["steps"]] == steps
    assert [s["metric"] for s in r["steps"]] == [pytest.approx(acc([VALUES[n]])) for n, _ in steps]
    assert r["soup_metric"] == pytest.approx(best)
    assert sorted(os.path.basename(p) for p in r["ingredients"]) == sorted(soup)
    w = load(str(out)).state_dict()["w"].numpy()
    mean = np.mean(np.array([VALUES[n] for n in soup], dtype=np.float32).astype(np.float64))
    assert np.array_equal(w, np.full(8, mean, dtype=np.float32))
    meta = load(str(out)).meta
    assert meta["method"] == "greedy-soup" and len(meta["greedy"]["steps"]) == 4
    assert sorted(os.listdir(d)) == sorted([*VALUES, "eval.py", "soup.pth"])   # trial files removed


def test_min_mode_and_known_order(toy):
    d, cmd = toy
    paths = [str(d / n) for n in VALUES]
    # lower err is better: the same sequence as acc
    r = greedy_soup(paths, str(d / "min.pth"), cmd, "err", mode="min")
    assert [(os.path.basename(s["candidate"]), s["kept"]) for s in r["steps"]] == expected_steps()[0]
    # metrics known from a work_dir set the order; the first soup is still evaluated by the command
    known = {str(d / "c.pth"): 0.9, str(d / "a.pth"): 0.8, str(d / "b.pth"): 0.1, str(d / "d.pth"): 0.2}
    r = greedy_soup(paths, str(d / "known.pth"), cmd, "acc", known=known)
    assert [os.path.basename(s["candidate"]) for s in r["steps"]] == ["c.pth", "a.pth", "d.pth", "b.pth"]
    assert r["steps"][0]["soup_metric"] == pytest.approx(acc([VALUES["c.pth"]]))


def test_eval_cmd_errors(toy):
    d, cmd = toy
    paths = [str(d / n) for n in VALUES]
    for bad, words in ((f"{sys.executable} -c 'import sys; sys.exit(3)' {{ckpt}}", "exited with 3"),
                       ("echo no json {ckpt}", "no JSON"),
                       (cmd, "no numeric 'top1'"),
                       ("echo {}", "{ckpt}")):
        metric = "top1" if "top1" in words else "acc"
        res = CliRunner().invoke(cli, ["average", *paths, "--greedy", "--eval-cmd", bad, "--metric", metric,
                                       "-o", str(d / "x.pth")])
        assert res.exit_code == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(d)) == sorted([*VALUES, "eval.py"])


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_update_bn_recomputes_batchnorm_statistics(tmp_path_factory, tmp_path, ext):
    torch = pytest.importorskip("torch")
    pytest.importorskip("mmengine")
    import torch.nn.functional as F
    from mmengine.registry import DATASETS

    from tests.support import workdir_fixtures as wf

    work = wf.make_work_dir(tmp_path_factory.getbasetemp() / "ckpt_work_dir")
    wf.register()
    out = tmp_path / f"avg{ext}"
    res = CliRunner().invoke(cli, ["average", "--work-dir", work["work_dir"], "--last", "3", "-o", str(out),
                                   "--update-bn", work["config"], "--bn-batches", "2", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["update_bn"]["batches"] == 2 and not r["bn_stale"] and r["output"] == str(out)
    assert sorted(os.listdir(tmp_path)) == [out.name]
    ck = load(str(out))
    sd = {k: t.to_torch() for k, t in ck.state_dict().items()}
    if ext == ".pth":   # the rewritten file is still one torch reads
        theirs = torch.load(out, weights_only=True)["state_dict"]
        assert all(torch.equal(theirs[k], v) for k, v in sd.items())
    last3 = sorted(int(e) for e in work["metrics"])[-3:]
    ins = [load(os.path.join(work["work_dir"], f"epoch_{e}.pth")).state_dict() for e in last3]
    assert torch.equal(sd["conv.weight"], (sum(i["conv.weight"].to_torch().double() for i in ins) / 3).float())
    # the statistics the averaged conv produces on the first two train batches (batch 8, no shuffle)
    cfg = wf.runner_cfg("unused", "unused")["train_dataloader"]
    ds = DATASETS.get(cfg["dataset"]["type"])(num_samples=cfg["dataset"]["num_samples"], seed=cfg["dataset"]["seed"])
    b = cfg["batch_size"]
    ys = [F.conv2d(ds.images[i * b:(i + 1) * b], sd["conv.weight"], sd["conv.bias"], padding=1) for i in range(2)]
    mean = torch.stack([y.mean((0, 2, 3)) for y in ys]).mean(0)
    var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in ys]).mean(0)
    torch.testing.assert_close(sd["bn.running_mean"], mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sd["bn.running_var"], var, rtol=1e-5, atol=1e-6)
    assert int(sd["bn.num_batches_tracked"]) == 2
    meta = ck.meta if ext == ".pth" else json.loads(ck.root["__metadata__"]["ckpt_meta"])
    assert "recalibrated on 2" in meta["bn_stats"] and len(meta["inputs"]) == 3
    bad = CliRunner().invoke(cli, ["average", "--work-dir", work["work_dir"], "--last", "2", "-o",
                                   str(tmp_path / "b.pth"), "--update-bn", str(tmp_path / "none.py")])
    assert bad.exit_code == 2 and "config not found" in bad.stderr and sorted(os.listdir(tmp_path)) == [out.name]
