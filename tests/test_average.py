"""`ckpt average`: values against a numpy reference, integer buffers, weights, mismatches, EMA sections, provenance."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_inputs(tmp_path, dtype=torch.float32, n=3, counters=(10, 15, 12), extra=None):
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        sd = OrderedDict()
        sd["backbone.conv.weight"] = (torch.randn(16, 3, 3, 3, generator=g) * 10 ** (i - 1)).to(dtype)
        sd["backbone.bn.running_mean"] = torch.randn(16, generator=g).to(dtype)
        sd["backbone.bn.num_batches_tracked"] = torch.tensor(counters[i % len(counters)])
        sd["attn.relative_position_index"] = torch.arange(12).reshape(3, 4)
        sd["head.fc.weight"] = torch.randn(5, 16, generator=g).to(dtype)
        sd["mask"] = torch.tensor([True, False, True])
        for k, v in (extra or {}).items():
            sd[k] = v(i)
        p = tmp_path / f"epoch_{i + 1}.pth"
        torch.save({"meta": {"epoch": i + 1, "iter": 10 * (i + 1)}, "state_dict": sd}, p)
        paths.append(str(p))
    return paths


def run(*args):
    res = CliRunner().invoke(cli, ["average", *map(str, args)])
    return res.exit_code, res.stdout, res.stderr


def load_sd(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def reference(paths, key, weights=None):
    xs = [load_sd(p)["state_dict"][key].double().numpy() for p in paths]
    if weights is None:
        return np.mean(np.stack(xs), axis=0)
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return np.sum([wi * x for wi, x in zip(w, xs)], axis=0)


def rounded(ref64, dtype):
    """The float64 reference rounded to `dtype`: numpy's correctly rounded casts; bfloat16 via float32 (as torch)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(ref64.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(ref64.astype({torch.float32: np.float32, torch.float16: np.float16}[dtype]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mean_equals_numpy_reference_and_keeps_dtype(tmp_path, dtype):
    paths = make_inputs(tmp_path, dtype)
    out = tmp_path / "avg.pth"
    code, stdout, _ = run(*paths, "-o", out, "--format", "json")
    assert code == 0, stdout
    got = load_sd(out)   # torch reads the file written without torch
    assert set(got) == {"meta", "state_dict"}
    for key in ("backbone.conv.weight", "backbone.bn.running_mean", "head.fc.weight"):
        t = got["state_dict"][key]
        assert t.dtype == dtype
        ref = reference(paths, key)
        assert torch.equal(t, rounded(ref, dtype)), key
        tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
        np.testing.assert_allclose(t.double().numpy(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("src,dst", [(torch.float32, "bfloat16"), (torch.bfloat16, "float32"),
                                     (torch.float32, "float16")])
def test_dtype_option_converts_floating_tensors_only(tmp_path, src, dst):
    paths = make_inputs(tmp_path, src)
    out = tmp_path / "avg.pth"
    assert run(*paths, "-o", out, "--dtype", dst)[0] == 0
    sd = load_sd(out)["state_dict"]
    want = getattr(torch, dst)
    assert sd["head.fc.weight"].dtype == want
    assert torch.equal(sd["head.fc.weight"], rounded(reference(paths, "head.fc.weight"), want))
    assert sd["backbone.bn.num_batches_tracked"].dtype == torch.int64 and sd["mask"].dtype == torch.bool


def test_weights_normalise_and_weighted_reference(tmp_path):
    paths = make_inputs(tmp_path)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    assert run(*paths, "-o", a, "--weights", "1,2,1")[0] == 0
    assert run(*paths, "-o", b, "--weights", "0.25,0.5,0.25")[0] == 0
    sa, sb = load_sd(a), load_sd(b)
    for key, t in sa["state_dict"].items():
        assert torch.equal(t, sb["state_dict"][key])
    ref = reference(paths, "head.fc.weight", [1, 2, 1])
    assert torch.equal(sa["state_dict"]["head.fc.weight"], torch.from_numpy(ref).float())
    assert [i["weight"] for i in sa["meta"]["inputs"]] == [0.25, 0.5, 0.25]
    assert sa["meta"]["method"] == "weighted"
    for bad in ("1,2", "1,-1,1", "0,0,0", "a,b,c"):
        code, _, err = run(*paths, "-o", tmp_path / "c.pth", "--weights", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--weights" in err
        assert not (tmp_path / "c.pth").exists()


@pytest.mark.parametrize("rule", ["last", "first", "max"])
def test_integer_buffers_follow_the_rule(tmp_path, rule):
    counters = (10, 15, 12)
    paths = make_inputs(tmp_path, counters=counters)
    out = tmp_path / "avg.pth"
    code, _, err = run(*paths, "-o", out, "--int-buffers", rule)
    assert code == 0
    sd = load_sd(out)["state_dict"]
    expect = {"last": counters[-1], "first": counters[0], "max": max(counters)}[rule]
    assert sd["backbone.bn.num_batches_tracked"].dtype == torch.int64
    assert int(sd["backbone.bn.num_batches_tracked"]) == expect
    assert sd["mask"].dtype == torch.bool and sd["attn.relative_position_index"].dtype == torch.int64
    assert torch.equal(sd["attn.relative_position_index"], torch.arange(12).reshape(3, 4))
    assert "warning" not in err   # a counter that differs is expected


def test_int_buffers_error_rule_and_index_buffers(tmp_path):
    (tmp_path / "a").mkdir()
    paths = make_inputs(tmp_path / "a")
    code, _, err = run(*paths, "-o", tmp_path / "x.pth", "--int-buffers", "error")
    assert code == 2 and "num_batches_tracked" in err and len(err.strip().splitlines()) == 1
    # an index buffer that differs is an error under every rule; another integer tensor only a warning
    (tmp_path / "b").mkdir()
    paths = make_inputs(tmp_path / "b", extra={"attn.relative_position_index": lambda i: torch.arange(12) + i})
    code, _, err = run(*paths, "-o", tmp_path / "y.pth")
    assert code == 2 and "relative_position_index" in err and not (tmp_path / "y.pth").exists()
    (tmp_path / "c").mkdir()
    paths = make_inputs(tmp_path / "c", extra={"nx": lambda i: torch.tensor([200, 200, 1 + i])})
    out = tmp_path / "z.pth"
    code, _, err = run(*paths, "-o", out)
    assert code == 0 and "nx" in err and "warning" in err
    assert load_sd(out)["state_dict"]["nx"].tolist() == [200, 200, 3]


def test_mismatched_inputs_fail_with_a_listing_or_intersect(tmp_path):
    paths = make_inputs(tmp_path)
    sd = load_sd(paths[1])
    del sd["state_dict"]["head.fc.weight"]
    sd["state_dict"]["backbone.bn.running_mean"] = torch.zeros(8)
    sd["state_dict"]["extra.bias"] = torch.zeros(2)
    torch.save(sd, paths[1])
    out = tmp_path / "avg.pth"
    code, stdout, err = run(*paths, "-o", out)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    for word in ("head.fc.weight", "backbone.bn.running_mean", "extra.bias", "--intersection"):
        assert word in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    code, stdout, _ = run(*paths, "-o", out, "--intersection", "--format", "json")
    assert code == 0
    result = json.loads(stdout)
    assert {s["key"] for s in result["skipped"]} == {"head.fc.weight", "backbone.bn.running_mean", "extra.bias"}
    got = load_sd(out)["state_dict"]
    assert "head.fc.weight" not in got and "extra.bias" not in got
    assert torch.equal(got["backbone.conv.weight"], torch.from_numpy(reference(paths, "backbone.conv.weight")).float())


def test_provenance_meta_and_bn_note(tmp_path):
    paths = make_inputs(tmp_path)
    out = tmp_path / "avg.pth"
    code, stdout, _ = run(*paths, "-o", out, "--format", "json")
    result = json.loads(stdout)
    meta = load_sd(out)["meta"]
    assert meta["method"] == "uniform" and meta["int_buffers"] == "last" and meta["accumulator"] == "float64"
    for row, p in zip(meta["inputs"], paths):
        assert row["path"] == os.path.abspath(p)
        assert row["sha256"] == hashlib.sha256(open(p, "rb").read()).hexdigest()
        assert row["weight"] == pytest.approx(1 / 3)
    assert [r["epoch"] for r in meta["inputs"]] == [1, 2, 3]
    assert result["bn_stale"] and any("--update-bn" in n for n in result["notes"]) and "bn_stats" in meta


def test_safetensors_output_matches_pth(tmp_path):
    from safetensors.torch import load_file

    paths = make_inputs(tmp_path, torch.bfloat16)
    assert run(*paths, "-o", tmp_path / "a.pth")[0] == 0
    assert run(*paths, "-o", tmp_path / "a.safetensors")[0] == 0
    pth = load_sd(tmp_path / "a.pth")["state_dict"]
    st = load_file(str(tmp_path / "a.safetensors"))
    assert set(st) == set(pth)
    for k, t in pth.items():
        assert st[k].dtype == t.dtype and torch.equal(st[k], t), k


def test_ema_sections_of_a_real_mmengine_checkpoint(tmp_path, fixtures_dir, manifest):
    runs = manifest["mmengine"]["runs"]
    a, b = (str(fixtures_dir / runs[t]["path"]) for t in ("sgd", "adamw"))
    ema = runs["sgd"]["ema"]
    for section, sums in ((None, "ema_sums"), ("ema_state_dict", "raw_sums")):
        out = tmp_path / f"{section}.pth"
        args = [a, b, "-o", out, "--format", "json"] + (["--section", section] if section else [])
        code, stdout, err = run(*args)
        assert code == 0, err
        sd = load_sd(out)["state_dict"]
        assert "steps" not in sd and not any(k.startswith("module.") for k in sd)
        assert list(sd) == runs["sgd"]["state_dict_keys"]
        for key in ema["check_keys"]:   # mean of the two runs' sums, as recorded from the live EMAHook
            expect = (runs["sgd"]["ema"][sums][key] + runs["adamw"]["ema"][sums][key]) / 2
            assert float(sd[key].double().sum()) == pytest.approx(expect, rel=1e-5, abs=1e-5)
    assert json.loads(stdout)["stripped_prefixes"] == ["module."]


def test_refuses_unsafe_inputs_existing_output_and_input_as_output(tmp_path, fixtures_dir, manifest):
    paths = make_inputs(tmp_path)
    stem, info = next((s, f) for s, f in manifest["malicious"]["files"].items() if f["form"] == "zip")
    bad = str(fixtures_dir / info["path"])
    out = tmp_path / "avg.pth"
    code, _, err = run(paths[0], bad, "-o", out)
    assert code == 2 and "refusing" in err and not out.exists()
    assert not os.path.exists(info["sentinel"])
    out.write_bytes(b"old")
    code, _, err = run(*paths, "-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"old"
    code, _, err = run(*paths, "-o", paths[0], "--force")
    assert code == 2 and "input" in err
    assert run(*paths, "-o", out, "--force")[0] == 0 and out.read_bytes() != b"old"


def test_average_never_imports_torch(tmp_path):
    paths = make_inputs(tmp_path, torch.bfloat16)
    code = ("import sys\nfrom ckpttool.cli.main import cli\n"
            "try:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code, "average", *paths, "-o", str(tmp_path / "o.pth"), "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH")
