"""Progress bars as a person at a terminal sees them: each command runs under a pseudo-terminal (pty) and the final
state of every bar is read back (100 %, the bytes of the work, the phase); without a terminal, or with --quiet,
stderr stays empty; the library API's ``progress=`` switches bars on and off."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from ckpttool.io.write import save

ROOT = Path(__file__).resolve().parents[1]
KAIST = ROOT / "fixtures" / "kaist"
MiB = 1 << 20


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two 6 MiB checkpoints (one 4 MiB tensor and many small ones), written by our writer (no torch needed)."""
    d = tmp_path_factory.mktemp("bars")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        sd = {"backbone.big.weight": rng.standard_normal((1024, 1024)).astype(np.float32)}
        sd.update({f"head.layer{j}.weight": rng.standard_normal((64, 128)).astype(np.float32) for j in range(64)})
        paths.append(str(d / f"epoch_{i + 1}.pth"))
        save(paths[-1], sd, meta={"epoch": i + 1})
    return d, paths, sum(a.nbytes for a in sd.values())


def run_in_pty(args, cwd, cols=120):
    """Run ``python -m ckpttool ARGS`` with stderr (and stdin) on a pty, stdout on a pipe. Returns
    (returncode, stdout, terminal text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=str(cols))
    proc = subprocess.Popen([sys.executable, "-m", "ckpttool", *map(str, args)], cwd=cwd, env=env,
                            stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("no output for 60 s")
        try:
            data = os.read(master, 65536)
        except OSError:   # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode("utf-8", "replace")


BAR = re.compile(r"^(?P<desc>.*?): +(?P<pct>\d+)%\|.*?\| (?P<n>[\d.]+)(?P<nu>[kMGT]?)/(?P<total>[\d.]+)(?P<tu>[kMGT]?)")
SCALE = {"": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def final_bars(terminal: str) -> dict:
    """{description: (percent, done, total)} from the last redraw of every bar (tqdm redraws with \\r and ends a
    finished bar with a newline)."""
    bars = {}
    for line in terminal.replace("\r\n", "\n").split("\n"):
        last = line.split("\r")[-1].strip()
        m = BAR.match(last)
        if m:
            bars[m["desc"]] = (int(m["pct"]), float(m["n"]) * SCALE[m["nu"]], float(m["total"]) * SCALE[m["tu"]],
                               last)
    return bars


def _assert_done(bars, desc, nbytes=None):
    assert desc in bars, f"no bar {desc!r} in {list(bars)}"
    pct, n, total, text = bars[desc]
    assert pct == 100 and n == total, text
    if nbytes is not None:   # bytes, not tensors: tqdm shows 3 significant digits with binary prefixes
        assert total == pytest.approx(nbytes, rel=0.01), text
        assert "B/s" in text or "B/" in text, text
    return text


def test_average_bar_counts_bytes_to_100_percent(ckpts, tmp_path):
    d, (a, b), nbytes = ckpts
    code, out, term = run_in_pty(["average", a, b, "-o", tmp_path / "avg.pth"], tmp_path)
    assert code == 0, term
    bars = final_bars(term)
    _assert_done(bars, "averaging into avg.pth", nbytes)
    _assert_done(bars, "verifying avg.pth", nbytes)
    assert "avg.pth" in out and "\r" not in out   # the table on stdout, no bar in it


def test_graft_bars_reading_writing_verifying(ckpts, tmp_path):
    d, (a, b), nbytes = ckpts
    code, out, term = run_in_pty(["graft", a, "--into", b, "-o", tmp_path / "g.pth"], tmp_path)
    assert code == 0, term
    bars = final_bars(term)
    _assert_done(bars, "reading epoch_1.pth", os.path.getsize(a))
    _assert_done(bars, "writing g.pth", nbytes)
    _assert_done(bars, "verifying g.pth", nbytes)
    order = [term.find(k) for k in ("reading epoch_1.pth", "writing g.pth", "verifying g.pth")]
    assert order == sorted(order)   # the phases in the order they happen


def test_diff_and_inspect_stats_bars(ckpts, tmp_path):
    d, (a, b), nbytes = ckpts
    code, _, term = run_in_pty(["diff", a, b], tmp_path)
    assert code == 0, term
    _assert_done(final_bars(term), "comparing tensors", 2 * nbytes)
    code, _, term = run_in_pty(["inspect", a, "--stats"], tmp_path)
    assert code == 0, term
    _assert_done(final_bars(term), "reading tensors (statistics)", nbytes)


def test_kaist_bar_counts_files(tmp_path):
    files = [KAIST / "detections" / f for f in ("MLPD_result.txt", "MBNet_result.txt", "INSANet_result.txt")]
    code, out, term = run_in_pty(["eval", "--task", "kaist", "--preds", *files, "--ann",
                                  KAIST / "KAIST_annotation.json", "--format", "json"], tmp_path)
    assert code == 0, term
    text = _assert_done(final_bars(term), "evaluating KAIST results")
    assert "3/3" in text and "files/s" in text
    import json

    assert json.loads(out)["methods"][0]["name"] == "MLPD"   # stdout is still one JSON object


def test_quiet_under_a_terminal_and_no_terminal_print_nothing(ckpts, tmp_path):
    d, (a, b), _ = ckpts
    code, _, term = run_in_pty(["average", a, b, "-o", tmp_path / "q.pth", "--quiet"], tmp_path)
    assert code == 0 and term.strip() == "", term
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["average", a, b, "-o", tmp_path / "p.pth"], ["graft", a, "--into", b, "-o", tmp_path / "g.pth"],
                 ["diff", a, b], ["inspect", a, "--stats"]):
        proc = subprocess.run([sys.executable, "-m", "ckpttool", *map(str, args)], capture_output=True, env=env,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and proc.stderr == b"", (args, proc.stderr)


def test_library_progress_argument(ckpts, tmp_path, capsys):
    from ckpttool.comparison.diff import diff
    from ckpttool.surgery.average import average

    d, (a, b), nbytes = ckpts
    average([a, b], str(tmp_path / "off.pth"), progress=False)
    diff(a, b, progress=False)
    assert capsys.readouterr().err == ""
    average([a, b], str(tmp_path / "on.pth"), progress=True)   # forced on although stderr is not a terminal
    err = capsys.readouterr().err
    assert "averaging into on.pth: 100%" in err and "verifying on.pth: 100%" in err
    average([a, b], str(tmp_path / "auto.pth"))                  # default: only for a terminal
    assert capsys.readouterr().err == ""


def test_bar_falls_back_to_a_stand_in_and_notebook_form():
    from ckpttool.report import progress

    with progress.bar(10, "x", progress=False) as b:
        b.update(10)
    assert isinstance(b, progress._Off) and b.n == 10
    assert list(progress.track(range(3), progress=False)) == [0, 1, 2]
    import tqdm.auto

    # tqdm.auto is what bar() draws with: in Jupyter it is the notebook widget, elsewhere the terminal bar
    assert tqdm.auto.tqdm.__module__ in ("tqdm.std", "tqdm.asyncio", "tqdm.notebook", "tqdm.autonotebook")
