"""The one atomic writer (issue 11 "Writers"): no-clobber by link with no check-then-rename window, outputs that are
never inputs, and nothing half-written or left behind on errors, full disks, SIGTERM/SIGINT or SIGKILL."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.errors import CkptError
from ckpttool.io import load
from ckpttool.io import write as w
from ckpttool.io.write import atomic_output, check_output, save, scratch_file, write_bytes, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOINT = os.path.join(ROOT, "fixtures", "mmaction2-fuse-demo", "joint.pkl")
ENV = dict(os.environ, PYTHONPATH=ROOT)


def default_sigint():
    """Children get SIGINT's default disposition, so Python turns it into KeyboardInterrupt as at a terminal, even
    when the test run itself was started with SIGINT ignored (a background job of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(params=["O_TMPFILE", "named temp"])
def temp_kind(request, monkeypatch):
    """Run a test with unnamed temp files and again with the named-temp fallback (file systems without O_TMPFILE)."""
    if request.param == "named temp":
        monkeypatch.delattr(os, "O_TMPFILE")
    return request.param


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


# --- no-clobber, force, append -------------------------------------------------------------------------------------
def test_link_publishing_refuses_a_name_that_appeared_meanwhile(tmp_path, temp_kind):
    out = tmp_path / "o.bin"
    loser = atomic_output(out)
    f = loser.__enter__()                    # passed the early check: the name does not exist yet
    f.write(b"loser")
    check_output(out)                        # nothing is visible under the name while it is written
    write_bytes(out, b"winner")              # another writer publishes first
    with pytest.raises(CkptError, match=r"o\.bin exists; pass --force to replace it"):
        loser.__exit__(None, None, None)
    assert out.read_bytes() == b"winner"
    assert listing(tmp_path) == ["o.bin"]   # the loser's temp file is gone


def test_force_replaces_by_rename(tmp_path, temp_kind):
    out = tmp_path / "o.bin"
    write_bytes(out, b"old")
    reader = open(out, "rb")
    with pytest.raises(CkptError, match="exists; pass --force"):
        write_bytes(out, b"new")
    write_bytes(out, b"new", force=True)
    assert out.read_bytes() == b"new" and reader.read() == b"old"   # a new inode took the name
    assert listing(tmp_path) == ["o.bin"]


def test_append_copies_then_replaces(tmp_path, temp_kind):
    out = tmp_path / "summary.md"
    write_text(out, "a\n", append=True)
    write_text(out, "b\n", append=True)
    with atomic_output(out, mode="a") as f:
        f.write("c\n")
    assert out.read_text() == "a\nb\nc\n"
    with pytest.raises(RuntimeError):
        with atomic_output(out, mode="a") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert out.read_text() == "a\nb\nc\n" and listing(tmp_path) == ["summary.md"]


def test_an_error_inside_the_block_leaves_the_previous_output_and_no_temp(tmp_path, temp_kind):
    out = tmp_path / "o.bin"
    write_bytes(out, b"previous")
    with pytest.raises(ValueError):
        with atomic_output(out, force=True) as f:
            f.write(b"x" * 100_000)
            raise ValueError("bad value")
    assert out.read_bytes() == b"previous" and listing(tmp_path) == ["o.bin"]


# --- outputs are never inputs -------------------------------------------------------------------------------------
def test_an_output_is_never_an_input(tmp_path):
    src = tmp_path / "in.pth"
    src.write_bytes(b"input")
    (tmp_path / "hard.pth").hardlink_to(src)
    (tmp_path / "soft.pth").symlink_to(src)
    dcp = tmp_path / "dcp"
    dcp.mkdir()
    (dcp / ".metadata").write_bytes(b"m")
    for out, inputs in [(src, [src]), (tmp_path / "hard.pth", [src]), (tmp_path / "soft.pth", [src]),
                        (src, [tmp_path / "soft.pth"]), (dcp / "avg.pth", [dcp]), (dcp / ".metadata", [dcp])]:
        with pytest.raises(CkptError, match="refusing to (overwrite|write)"):
            write_bytes(out, b"output", inputs=inputs, force=True)
    assert src.read_bytes() == b"input" and (dcp / ".metadata").read_bytes() == b"m"
    assert write_bytes(tmp_path / "ok.pth", b"output", inputs=[src, dcp]) == str(tmp_path / "ok.pth")


def test_summary_cannot_append_into_the_baseline(tmp_path):
    base = tmp_path / "m.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--save-metrics", str(base)]).exit_code == 0
    before = base.read_bytes()
    res = runner.invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--baseline", str(base),
                              "--summary", str(base)])
    assert res.exit_code == 2 and "refusing to overwrite the input" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and base.read_bytes() == before
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    res = runner.invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--baseline", str(base),
                              "--summary", str(summary)])
    assert res.exit_code == 0, res.stderr
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "joint.top1" in text
    assert listing(tmp_path) == ["m.json", "summary.md"]


# --- two processes, one name ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three(tmp_path_factory):
    d = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = str(d / f"in{i}.pth")
        save(p, {f"layer{j}.weight": rng.standard_normal(65536, dtype=np.float32) for j in range(40)},
             meta={"epoch": i + 1})
        paths.append(p)
    return paths


def test_two_concurrent_averages_to_one_name_exactly_one_wins(three, tmp_path):
    out = tmp_path / "avg.pth"
    weights = {"a": "1,2,3", "b": "3,2,1"}
    for attempt in range(3):
        procs = {name: subprocess.Popen([sys.executable, "-m", "ckpttool", "average", *three, "-o", str(out),
                                         "--weights", wts, "-q", "--format", "json"], cwd=ROOT, env=ENV,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, wts in weights.items()}
        done = {name: (p.wait(), *p.communicate()) for name, p in procs.items()}
        winners = [n for n, (rc, _, _) in done.items() if rc == 0]
        losers = [n for n, (rc, _, _) in done.items() if rc != 0]
        assert len(winners) == 1 and len(losers) == 1, done
        rc, _, err = done[losers[0]]
        assert rc == 2 and err.strip().splitlines() == [f"ckpt: error: {out} exists; pass --force to replace it"]
        assert listing(tmp_path) == ["avg.pth"]
        r = json.loads(done[winners[0]][1])
        wts = np.array([float(x) for x in weights[winners[0]].split(",")])
        wts /= wts.sum()
        ins = [load(p).state_dict()["layer5.weight"].numpy().astype(np.float64) for p in three]
        expect = sum(wt * x for wt, x in zip(wts, ins)).astype(np.float32)
        got = load(str(out)).state_dict()
        assert len(got) == 40 and np.array_equal(got["layer5.weight"].numpy(), expect)   # the winner's, intact
        assert r["output"] == str(out) and os.path.getsize(out) == r["bytes"]
        out.unlink()


# --- signals ------------------------------------------------------------------------------------------------------
WRITER = """
import os, sys, time
if sys.argv[2] == "named":
    del os.O_TMPFILE
from ckpttool.io.write import atomic_output
with atomic_output(sys.argv[1], force=True) as f:
    f.write(b"x" * 1_000_000)
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("kind", ["unnamed", "named"])
def test_signals_while_writing_leave_the_previous_output_and_no_temp(tmp_path, sig, kind):
    if sig == signal.SIGKILL and kind == "named":
        pytest.skip("a SIGKILLed process cannot remove a named temp file; O_TMPFILE is what makes that safe")
    out = tmp_path / "o.bin"
    out.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), kind], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout.readline() == "writing\n"
    if kind == "named":
        assert len(listing(tmp_path)) == 2          # the fallback's hidden temp file exists while writing
    proc.send_signal(sig)
    proc.wait(30)
    assert proc.returncode != 0
    assert listing(tmp_path) == ["o.bin"] and out.read_bytes() == b"previous"


def test_a_sigkilled_scratch_file_is_swept_by_the_next_run(tmp_path):
    near = tmp_path / "avg.pth"
    code = ("import sys, time\nfrom ckpttool.io.write import scratch_file\n"
            "with scratch_file(sys.argv[1]) as p:\n    open(p, 'wb').write(b'x')\n    print(p, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(near)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    stale = proc.stdout.readline().strip()
    assert os.path.exists(stale) and os.path.basename(stale).startswith(".avg.pth.ckpt-")
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert listing(tmp_path) == []               # SIGTERM: removed by the process itself
    proc = subprocess.Popen([sys.executable, "-c", code, str(near)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    stale = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(30)
    assert listing(tmp_path) == [os.path.basename(stale)]   # SIGKILL: left behind ...
    (tmp_path / "other.pth").write_bytes(b"keep")
    with scratch_file(near) as mine:                         # ... and removed by the next one next to avg.pth
        assert listing(tmp_path) == ["other.pth"] and not os.path.exists(mine)
    assert listing(tmp_path) == ["other.pth"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_update_bn_leaves_no_temp_file(tmp_path_factory, tmp_path, sig):
    pytest.importorskip("torch")
    pytest.importorskip("mmengine")
    from tests.support import workdir_fixtures as wf

    work = wf.make_work_dir(tmp_path_factory.getbasetemp() / "ckpt_work_dir")
    out = tmp_path / "avg.pth"
    proc = subprocess.Popen([sys.executable, "-m", "ckpttool", "average", "--work-dir", work["work_dir"], "--last",
                             "3", "-o", str(out), "--update-bn", work["config"], "--bn-batches", "2", "-q"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not any(n.startswith(".avg.pth.ckpt-") for n in os.listdir(tmp_path)):   # averaged; recalibrating
        assert proc.poll() is None and time.monotonic() < deadline, "update-bn ended before its scratch file"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(60)
    assert proc.returncode != 0 and listing(tmp_path) == []
    assert proc.stderr.read().strip().splitlines()[-1:] == ["ckpt: interrupted"]


# --- full disks -----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (needs root); the test is skipped where it cannot be mounted."""
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_full_disk_leaves_no_truncated_plot(tiny_disk):
    pytest.importorskip("matplotlib")
    (tiny_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 16 * 1024))   # 16 KiB left: less than the figure
    out = tiny_disk / "confusion.png"
    res = CliRunner().invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--per-class", "--plot", str(out)])
    assert res.exit_code == 2 and "No space left on device" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert listing(tiny_disk) == ["filler"]


def test_full_disk_average_fails_in_one_line_and_leaves_nothing(three, tiny_disk):
    out = tiny_disk / "avg.pth"
    res = subprocess.run([sys.executable, "-m", "ckpttool", "average", *three, "-o", str(out), "-q"], cwd=ROOT,
                         env=ENV, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"ckpt: error: cannot write {out}: No space left on device"]
    assert listing(tiny_disk) == []


# --- what is written, and its verification ----------------------------------------------------------------------------
def reference_zip(entries) -> bytes:
    """The same archive written by Python's zipfile (how io/write wrote it before it wrote zips by hand)."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.file_size = len(data)
            zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT
            start = zf.fp.tell() + 30 + len(name.encode()) + (20 if zip64 else 0)
            pad = (-(start + 4)) % w.ALIGN
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            with zf.open(info, "w", force_zip64=zip64) as out:
                out.write(data)
    return b.getvalue()


@pytest.mark.parametrize("limit", [None, 3000, 40_000])   # lowered limits exercise every ZIP64 branch
def test_hand_written_zip_is_byte_for_byte_what_zipfile_writes(monkeypatch, limit):
    if limit:
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", limit)
        monkeypatch.setattr(w, "ZIP64_LIMIT", limit)
    rng = np.random.default_rng(1)
    sd = {f"t{i}": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate([3, 1000, 0, 17, 5000, 9])}
    sd["count"] = np.array(7, dtype=np.int64)
    b = io.BytesIO()
    written = w.write_torch_zip(b, {"epoch": 2, "s": "é"}, ((k, w.out_tensor(v)) for k, v in sd.items()))
    ours = b.getvalue()
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
        assert zf.testzip() is None          # every CRC right
    assert ours == reference_zip(entries)
    assert sum(n for _, n, _ in written.segments) == len(ours) and written.tensors == len(sd)


def test_verification_catches_bytes_that_differ_from_what_was_produced(tmp_path, monkeypatch):
    out = tmp_path / "o.pth"
    save(out, {"a": np.arange(3.0)})
    before = out.read_bytes()
    lying = w.OutTensor("float32", (4,), lambda: np.arange(4, dtype=np.float32).tobytes(), crc=12345)
    with pytest.raises(CkptError, match="verification failed: o.pth reads back different bytes"):
        save(out, {"b": lying}, force=True)
    assert out.read_bytes() == before and listing(tmp_path) == ["o.pth"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_average_records_the_sha256_of_each_input_file(three, tmp_path, suffix):
    from ckpttool.surgery.average import average

    out = tmp_path / f"avg{suffix}"
    r = average(three, str(out))
    files = {os.path.abspath(p): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in three}
    assert {i["path"]: i["sha256"] for i in r["inputs"]} == files
    from ckpttool.surgery.average import _safetensors_meta

    ck = load(str(out))
    meta = ck.meta if suffix == ".pth" else _safetensors_meta(ck.root)
    assert {i["path"]: i["sha256"] for i in meta["inputs"]} == files


def test_zlib_crc_of_segments_matches_the_file(tmp_path):
    out = tmp_path / "o.safetensors"
    with atomic_output(out) as f:
        written = w.write_safetensors(f, {"m": 1}, [("x", w.out_tensor(np.ones(5, np.float32)))])
        written.verify()
    data = out.read_bytes()
    assert [zlib.crc32(data[o:o + n]) for o, n, _ in written.segments] == [c for _, _, c in written.segments]


def test_sync_behind_while_writing_goes_on_keeps_every_byte_and_the_cleanup(tmp_path, temp_kind):
    """average hands the tensors to the disk (fdatasync on its worker) while the inputs' hashing finishes and the
    meta is still to be written: the published file holds every byte in order; an error after it leaves nothing."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [os.urandom(1 << 20) for _ in range(6)]
    out = tmp_path / "o.bin"
    with atomic_output(out) as f, ThreadPoolExecutor(1) as pool:
        for c in chunks[:4]:
            f.write(c)
        synced = w.sync_behind(f, pool)
        for c in chunks[4:]:
            f.write(c)
        assert synced.result() is None
    assert out.read_bytes() == b"".join(chunks)
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "p.bin") as f, ThreadPoolExecutor(1) as pool:
            f.write(chunks[0])
            w.sync_behind(f, pool)
            raise RuntimeError("a failure after the sync")
    assert listing(tmp_path) == ["o.bin"]


def test_an_io_error_of_averages_early_sync_fails_the_write_and_leaves_nothing(three, tmp_path, monkeypatch):
    """The publishing fsync would not report an error the early fdatasync already consumed: average checks it."""
    import errno

    from ckpttool.surgery.average import average

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", eio)
    before = listing(tmp_path)
    with pytest.raises(CkptError, match="cannot write .*avg.pth: Input/output error"):
        average(three, str(tmp_path / "avg.pth"))
    assert listing(tmp_path) == before
