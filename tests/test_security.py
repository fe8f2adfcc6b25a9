"""Malicious pickles are listed by inspect, refused by everything else, and never run (sentinels stay absent)."""
from __future__ import annotations

import json
import os
import pickle

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.errors import UnsafeError
from ckpttool.io import load, load_pickle


def _malicious(manifest):
    return sorted(manifest["malicious"]["files"].items())


def test_corpus_covers_the_payload_styles(manifest):
    payloads = {f["payload_global"] for _, f in _malicious(manifest)}
    assert {"os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen"} <= payloads
    forms = {f["form"] for _, f in _malicious(manifest)}
    assert {"zip", "legacy"} <= forms


def test_every_payload_is_flagged_and_never_runs(fixtures_dir, manifest):
    runner = CliRunner()
    for name, info in _malicious(manifest):
        path = str(fixtures_dir / info["path"])
        ck = load(path)
        assert info["payload_global"] in ck.suspicious_globals or \
            set(info["globals"]) & set(ck.suspicious_globals), name
        with pytest.raises(UnsafeError):
            load_pickle(path)
        listed = runner.invoke(cli, ["inspect", path, "--format", "json"])
        assert listed.exit_code == 0, (name, listed.output)
        assert json.loads(listed.stdout)["suspicious_globals"] == ck.suspicious_globals
        assert "nothing was executed" in listed.stderr
        assert not os.path.exists(info["sentinel"]), f"{name}: payload ran"


def test_inspect_table_shows_a_danger_line(fixtures_dir, manifest):
    info = manifest["malicious"]["files"]["subprocess_popen"]
    out = CliRunner().invoke(cli, ["inspect", str(fixtures_dir / info["path"])])
    assert out.exit_code == 0 and "DANGER" in out.stdout and "subprocess.Popen" in out.stdout


def test_genuine_runner_checkpoints_raise_no_alarm(fixtures_dir, manifest):
    for run in manifest["mmengine"]["runs"].values():
        ck = load(fixtures_dir / run["path"])
        assert ck.suspicious_globals == []
        ck.require_safe()


def _pickle_with_getattr(attr: str) -> bytes:
    """getattr(mmengine HistoryBuffer, attr) as protocol-2 opcodes, the way HistoryBuffer pickles its methods."""
    return (b"\x80\x02c__builtin__\ngetattr\ncmmengine.logging.history_buffer\nHistoryBuffer\n"
            + b"X" + len(attr).to_bytes(4, "little") + attr.encode() + b"\x86R.")


def test_getattr_is_benign_only_for_public_methods_of_known_classes(tmp_path):
    good, bad = tmp_path / "good.pkl", tmp_path / "bad.pkl"
    good.write_bytes(_pickle_with_getattr("min"))
    bad.write_bytes(_pickle_with_getattr("__init__"))
    assert load(good).suspicious_globals == [] and load(good).verdict == "data"
    assert load(bad).verdict == "code"
    assert load(bad).suspicious_globals == ["mmengine.logging.history_buffer.HistoryBuffer.__init__"]


def test_trust_is_the_only_door_and_really_unpickles(fixtures_dir, manifest):
    path = fixtures_dir / manifest["formats"]["files"]["zip"]["path"]
    safe, trusted = load(path).state_dict(), load(path, trust=True).state_dict()
    assert list(safe) == list(trusted)
    assert all((safe[k].raw() == trusted[k].raw()).all() for k in safe)


def test_payload_in_dcp_metadata_is_refused_and_never_runs(tmp_path, fixtures_dir, manifest):
    import shutil

    dcp = tmp_path / "dcp"
    shutil.copytree(fixtures_dir / manifest["formats"]["files"]["dcp"]["path"], dcp)
    sentinel = tmp_path / "SENTINEL_dcp"
    cmd = f"touch {sentinel}".encode()
    # os.system("touch ...") as raw protocol-2 opcodes: nothing in this test can run it
    (dcp / ".metadata").write_bytes(b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.")
    ck = load(dcp)  # the payload makes the metadata unreadable, but the verdict is still the news
    assert ck.verdict == "code" and "os.system" in ck.suspicious_globals
    assert any("could not be read past its payload" in n for n in ck.judge.notes)
    out = CliRunner().invoke(cli, ["inspect", str(dcp)])
    assert out.exit_code == 0 and "DANGER" in out.stdout and "Traceback" not in out.output
    refused = CliRunner().invoke(cli, ["diff", str(dcp), str(dcp)])
    assert refused.exit_code == 2 and "os.system" in refused.stderr
    assert not sentinel.exists()


def test_forged_memo_index_costs_no_memory(tmp_path):
    """LONG_BINPUT 0xFFFFFFF0 makes CPython's C unpickler allocate ~64 GB; ours must reject it cheaply (memo
    indices out of sequence are forged: one line, exit 2)."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(b"\x80\x02]r\xf0\xff\xff\xff.")
    # VmHWM (peak RSS of this address space); ru_maxrss would carry over the parent's peak across execve
    code = ("from ckpttool.io import load_pickle\nfrom ckpttool.errors import FormatError\n"
            f"try:\n    load_pickle({str(bomb)!r})\nexcept FormatError as e:\n    assert 'memo index' in str(e)\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 300 * 1024  # KiB


def test_embedded_storage_fast_path_matches_general_parser():
    """Plain-pickled tensors (mmaction2 dumps) embed a legacy torch file per storage; the byte-exact fast path and
    the general legacy parser must agree, and the tensor must equal torch's."""
    import io

    import torch

    from ckpttool.io.torchfile import _embedded_storage, _read_legacy_stream, read_legacy_bytes
    from ckpttool.io.unpickle import unpickle

    for t in (torch.rand(5), torch.arange(300), torch.zeros(70000, dtype=torch.float16), torch.tensor([True]),
              torch.rand(3).bfloat16(), torch.tensor([1.5], dtype=torch.float64)):
        captured = []  # pickle.dumps(t) embeds torch.save(t.storage(), legacy) for _load_from_bytes
        unpickle(pickle.dumps(t), bytes_loader=lambda b, *rest: captured.append(b) or read_legacy_bytes(b, *rest))
        raw = captured[0]
        fast = _embedded_storage(raw)
        general, _ = _read_legacy_stream(io.BytesIO(raw), data=raw)
        assert fast is not None, t.dtype
        assert (fast.numel, fast.data) == (general.numel, general.data)
        decoded, _ = unpickle(pickle.dumps(t), bytes_loader=read_legacy_bytes)
        assert torch.equal(decoded.to_torch(), t), t.dtype


@pytest.mark.parametrize("command", ["diff", "graft", "average", "eval"])
def test_every_other_command_refuses_every_payload(tmp_path, fixtures_dir, manifest, command):
    runner = CliRunner()
    good = str(fixtures_dir / manifest["formats"]["files"]["zip"]["path"])
    for name, info in _malicious(manifest):
        bad = str(fixtures_dir / info["path"])
        argv = {"diff": ["diff", good, bad],
                "graft": ["graft", bad, "--into", good, "-o", str(tmp_path / "g.pth")],
                "average": ["average", good, bad, "-o", str(tmp_path / "a.pth")],
                "eval": ["eval", "--task", "ntu60", "--preds", bad]}[command]
        out = runner.invoke(cli, argv)
        assert out.exit_code == 2, (command, name, out.output)
        assert "Traceback" not in out.output and len(out.stderr.strip().splitlines()) == 1, (command, name)
        assert not os.path.exists(info["sentinel"]) and not list(tmp_path.iterdir()), (command, name)
