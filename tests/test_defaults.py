"""Defaults that fit the user's machine: cuda when torch sees one (--device overrides, one clear line when cuda is
asked for and absent), `--dump FILE.pkl` for a single setting as tools/test.py writes, and `--help` of every
command ending with real examples that its own parser accepts."""
from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import COMMANDS, cli
from ckpttool.errors import CkptError


def _fake_cuda(monkeypatch, available: bool):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if available else 0)


def test_resolve_device_defaults_to_cuda_only_when_torch_sees_one(monkeypatch):
    from ckpttool.integrations.openmmlab import resolve_device

    _fake_cuda(monkeypatch, True)
    assert resolve_device(None) == "cuda" and resolve_device("cpu") == "cpu" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(CkptError, match="sees 1 CUDA device"):
        resolve_device("cuda:3")
    _fake_cuda(monkeypatch, False)
    assert resolve_device(None) == "cpu"
    with pytest.raises(CkptError, match=r"--device cuda: torch .* sees no CUDA device.*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(CkptError, match="expected cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_cuda_asked_for_but_absent_is_one_line_exit_2(tmp_path, monkeypatch):
    _fake_cuda(monkeypatch, False)
    cfg, ck = tmp_path / "cfg.py", tmp_path / "epoch_1.pth"
    cfg.write_text("model = dict(type='Nothing')\n")
    ck.write_bytes(b"not read")
    for args in (["eval", cfg, ck, "--device", "cuda"],
                 ["average", ck, ck, "-o", tmp_path / "o.pth", "--update-bn", cfg, "--device", "cuda"]):
        res = CliRunner().invoke(cli, list(map(str, args)))
        assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "sees no CUDA device" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.pth").exists()
    res = CliRunner().invoke(cli, ["average", str(ck), str(ck), "-o", str(tmp_path / "o.pth"), "--device", "cpu"])
    assert res.exit_code == 2 and "--update-bn" in res.stderr


def test_model_run_uses_the_resolved_device(tmp_path, monkeypatch):
    """`ckpt eval CONFIG CHECKPOINT` without --device: the library resolves it (cuda when present)."""
    import ckpttool.engine.tasks as tta

    seen = {}

    def fake(config, checkpoint, **kw):
        seen.update(kw)
        return {"task": "ntu60", "clips": [{"k": 1, "rows": [{"name": "rgb", "top1": 1.0, "top5": 1.0,
                                                               "mean_class_accuracy": 1.0}]}]}

    monkeypatch.setattr(tta, "evaluate_recognizer", fake)
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "c.py"), str(tmp_path / "m.pth")])
    assert res.exit_code == 0, res.stderr
    assert seen["device"] is None   # None = auto: resolve_device picks cuda when torch sees one


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_ends_with_real_examples(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0
    tail = res.stdout.rstrip().splitlines()
    start = max(i for i, line in enumerate(tail) if line.strip() == "Examples:")
    lines = [line.strip() for line in tail[start + 1:]]
    assert 2 <= len(lines) <= 3 and all(line.startswith(f"ckpt {name} ") or line == f"ckpt {name}"
                                        for line in lines)
    command = cli.get_command(None, name)
    for line in lines:   # every example parses with the command's own options (no made-up flags)
        words = shlex.split(line.split(" #")[0].split(" > ")[0])[2:]
        ctx = command.make_context(name, words)
        assert ctx.params is not None
