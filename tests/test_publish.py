"""`ckpt publish`: real mmengine Runner checkpoints (EMAHook) and a timm-layout file → release files that load with
plain `torch.load(weights_only=True)` and mmengine's own loaders, named by the sha256 of the written file."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from ckpttool.cli.main import cli  # noqa: E402
from ckpttool.surgery.publish import default_name, publish  # noqa: E402


def run(*args, cwd=None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(cli, ["publish", "-q", *map(str, args)])
    finally:
        os.chdir(old)


def ok(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def plain_only(obj, where="root"):
    """Every value is dict/list/str/int/float/bool/None (or, under state_dict, a tensor)."""
    if isinstance(obj, dict):
        assert type(obj) in (dict,), f"{where}: {type(obj)}"
        for k, v in obj.items():
            assert isinstance(k, str), where
            plain_only(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            plain_only(v, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool), f"{where}: {type(obj).__name__}"


@pytest.fixture(scope="module")
def runs(manifest, fixtures_dir):
    return {name: {**run_, "abs": fixtures_dir / run_["path"]} for name, run_ in manifest["mmengine"]["runs"].items()}


@pytest.fixture(scope="module")
def toy_model():
    pytest.importorskip("mmengine")
    from tests.support.toy_mmengine import CkptToyClassifier

    return CkptToyClassifier


def test_mmengine_default_is_the_ema_weights_named_by_the_output_hash(runs, toy_model, tmp_path):
    sgd = runs["sgd"]
    r = ok(run(sgd["abs"], "--format", "json", cwd=tmp_path))
    out = r["output"]["path"]
    # OpenMMLab's publish_model.py: save, sha256sum the saved file, rename to <stem>-<sha[:8]>.pth
    assert os.path.dirname(out) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(out)]
    assert os.path.basename(out) == f"epoch_1-{sha256(out)[:8]}.pth" and r["output"]["sha256"] == sha256(out)
    assert r["weights"] == {"choice": "ema", "section": "state_dict", "tensors": 11, "params": 329}
    assert {d["section"] for d in r["dropped"]} == {"optimizer", "param_schedulers", "message_hub", "ema_state_dict"}
    assert r["size"]["before"] == os.path.getsize(sgd["abs"]) and r["size"]["after"] == os.path.getsize(out)
    assert r["size"]["after"] < r["size"]["before"]

    obj = torch.load(out, weights_only=True)            # torch's default since 2.6: no HistoryBuffer, no numpy
    assert set(obj) == {"meta", "state_dict"} and list(obj["state_dict"]) == sgd["state_dict_keys"]
    meta = obj["meta"]
    plain_only(meta)
    for text in sgd["cfg_contains"]:
        assert text in meta["cfg"]
    assert (meta["epoch"], meta["iter"], meta["seed"]) == (sgd["epoch"], sgd["iter"], sgd["seed"])
    assert meta["mmengine_version"].startswith(sgd["mmengine_version_prefix"]) and "classes" in meta["dataset_meta"]
    assert meta["publish"]["source_sha256"] == sha256(sgd["abs"]) == r["source"]["sha256"]
    assert meta["publish"]["weights"] == "ema"
    for key, total in sgd["ema"]["ema_sums"].items():
        assert obj["state_dict"][key].double().sum().item() == pytest.approx(total, rel=1e-6)

    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

    model = toy_model()
    ck = load_checkpoint(model, out, map_location="cpu", strict=True)
    assert ck["meta"]["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, obj["state_dict"][key]), key
    assert set(_load_checkpoint(out, map_location="cpu")) == {"meta", "state_dict"}


def test_mmengine_raw_takes_ema_state_dict_without_its_prefix_and_counter(runs, toy_model, tmp_path):
    sgd = runs["sgd"]
    out = tmp_path / "raw.pth"
    r = ok(run(sgd["abs"], "--raw", "-o", out, "--format", "json"))
    assert r["output"]["path"] == str(out) and r["weights"]["section"] == "ema_state_dict"
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert list(sd) == sgd["state_dict_keys"]                         # no 'module.', no 'steps'
    for key, total in sgd["ema"]["raw_sums"].items():
        assert sd[key].double().sum().item() == pytest.approx(total, rel=1e-6)
    from mmengine.runner.checkpoint import load_checkpoint

    load_checkpoint(toy_model(), str(out), map_location="cpu", strict=True)


def test_timm_default_raw_ema_and_dtype(manifest, fixtures_dir, tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.runner.checkpoint import load_checkpoint

    from tests.support.fixtures import small_model

    path = fixtures_dir / manifest["formats"]["files"]["timm"]["path"]
    src = torch.load(path, weights_only=False)
    r = ok(run(path, "-o", tmp_path, "--format", "json"))               # a directory: the hash name inside it
    out = r["output"]["path"]
    assert os.path.basename(out) == f"timm-{sha256(out)[:8]}.pth"
    assert r["weights"]["choice"] == "raw" and r["weights"]["section"] == "state_dict"
    obj = torch.load(out, weights_only=True)
    assert {k: obj["meta"][k] for k in ("epoch", "arch", "metric")} == {"epoch": 12, "arch": "resnet_toy",
                                                                       "metric": 76.54}
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in src["state_dict"].items())
    assert {d["section"] for d in r["dropped"]} == {"optimizer", "state_dict_ema"}
    load_checkpoint(small_model(), out, map_location="cpu", strict=True)

    ema = tmp_path / "ema_fp16.pth"
    r = ok(run(path, "--ema", "--dtype", "fp16", "-o", ema, "--format", "json"))
    sd = torch.load(ema, weights_only=True)["state_dict"]
    for k, v in src["state_dict_ema"].items():
        want = v.half() if v.is_floating_point() else v
        assert sd[k].dtype == want.dtype and torch.equal(sd[k], want), k
    assert r["cast"] == {"dtype": "float16", "tensors": 10}           # num_batches_tracked stays int64
    model = small_model().half()
    load_checkpoint(model, str(ema), map_location="cpu", strict=True)


def test_bf16_safetensors_matches_torch_rounding_and_keeps_meta(runs, tmp_path):
    from safetensors import safe_open

    sgd = runs["sgd"]
    out = tmp_path / "model.safetensors"
    ok(run(sgd["abs"], "--dtype", "bf16", "-o", out, "--format", "json"))
    src = torch.load(sgd["abs"], weights_only=False)["state_dict"]
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["ckpt_meta"])
        for k, v in src.items():
            want = v.to(torch.bfloat16) if v.is_floating_point() else v
            assert torch.equal(f.get_tensor(k), want), k
    assert meta["epoch"] == 1 and meta["publish"]["dtype"] == "bfloat16" and "cfg" in meta


def test_refuses_code_and_writes_nothing(manifest, fixtures_dir, tmp_path):
    info = manifest["malicious"]["files"]["os_system"]
    res = run(fixtures_dir / info["path"], "-o", tmp_path / "x.pth")
    assert res.exit_code == 2 and res.stdout == "" and res.stderr.count("\n") == 1
    assert "os.system" in res.stderr and os.listdir(tmp_path) == []
    assert not os.path.exists(info["sentinel"])


def test_input_errors_are_one_line(manifest, fixtures_dir, runs, tmp_path):
    plain_file = fixtures_dir / manifest["formats"]["files"]["zip"]["path"]
    res = run(plain_file, "--ema", "-o", tmp_path / "x.pth")
    assert res.exit_code == 2 and "no EMA copy" in res.stderr and res.stderr.count("\n") == 1
    existing = tmp_path / "taken.pth"
    existing.write_bytes(b"keep")
    res = run(runs["sgd"]["abs"], "-o", existing)
    assert res.exit_code == 2 and "exists" in res.stderr and existing.read_bytes() == b"keep"
    res = run(runs["sgd"]["abs"], "-o", tmp_path / "x.txt")
    assert res.exit_code == 2 and ".safetensors" in res.stderr
    res = run(runs["sgd"]["abs"], "--dry-run", "--format", "json", cwd=tmp_path)
    assert res.exit_code == 0 and json.loads(res.stdout)["output"] is None
    assert sorted(os.listdir(tmp_path)) == ["taken.pth"]


def test_fp16_overflow_is_refused(tmp_path):
    src = tmp_path / "big.pth"
    torch.save({"state_dict": {"w": torch.tensor([1.0, 1e6])}, "meta": {"epoch": 3}}, src)
    out = tmp_path / "out"
    out.mkdir()
    res = run(src, "--dtype", "fp16", "-o", out)
    assert res.exit_code == 2 and "overflow float16" in res.stderr and os.listdir(out) == []


def test_library_result_and_name():
    assert default_name("work_dirs/x/depth.pth", "ab" * 32) == "depth-abababab.pth"   # not rstrip('.pth')
    with pytest.raises(Exception):
        publish("/nonexistent.pth")


def test_publishing_twice_refuses_the_existing_hash_name_and_leaves_no_scratch(runs, tmp_path):
    first = ok(run(runs["sgd"]["abs"], "--format", "json", cwd=tmp_path))
    res = run(runs["sgd"]["abs"], cwd=tmp_path)                       # same bytes -> same name
    assert res.exit_code == 2 and "exists" in res.stderr and res.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == [os.path.basename(first["output"]["path"])]   # no hidden scratch file left
    again = ok(run(runs["sgd"]["abs"], "--force", "--format", "json", cwd=tmp_path))
    assert again["output"]["sha256"] == first["output"]["sha256"]     # deterministic output
