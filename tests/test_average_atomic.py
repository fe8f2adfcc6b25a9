"""SIGKILL `ckpt average` while it writes: the previous output stays intact and no partial file is left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ckpttool.io import load
from ckpttool.io.write import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = b"previous output\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """3 checkpoints of 200 tensors (13 MB each): long enough to catch the writer mid-way."""
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = str(d / f"in{i}.pth")
        save(p, {f"layer{j}.weight": rng.standard_normal(16384, dtype=np.float32) for j in range(200)})
        paths.append(p)
    return d, paths


def temp_output(pid: int, directory: str):
    """Size of the (unnamed) output file the process is writing in `directory`, or None."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
            if target.startswith(directory) and ("(deleted)" in target or os.path.basename(target).startswith(".")):
                return os.stat(os.path.join(fds, fd)).st_size
        except OSError:
            continue
    return None


def kill_when(cmd, directory: str, reached) -> bool:
    """Start cmd, SIGKILL it once the temp output's size satisfies `reached`; False if it finished first."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                size = temp_output(proc.pid, directory)
            except OSError:
                size = None
            if size is not None and reached(size):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.0005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", ["started", "half", "written"])
def test_sigkill_leaves_previous_output_and_no_partial_file(inputs, point):
    d, paths = inputs
    out = d / "avg.pth"
    out.write_bytes(OLD)
    full = os.path.getsize(paths[0])
    reached = {"started": lambda s: True, "half": lambda s: s >= full // 2,
               "written": lambda s: s >= full * 0.99}[point]   # "written": fsync / verification re-read
    cmd = [sys.executable, "-m", "ckpttool", "average", *paths, "-o", str(out), "--force", "-q"]
    for _ in range(3):
        if kill_when(cmd, str(d), reached):
            break
        out.write_bytes(OLD)
    else:
        pytest.fail(f"ckpt average finished three times before reaching {point!r}")
    assert out.read_bytes() == OLD
    assert sorted(os.listdir(d)) == sorted([*map(os.path.basename, paths), "avg.pth"])


def test_uninterrupted_run_replaces_the_output(inputs):
    d, paths = inputs
    out = d / "avg.pth"
    out.write_bytes(OLD)
    proc = subprocess.run([sys.executable, "-m", "ckpttool", "average", *paths, "-o", str(out), "--force", "-q"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sd = load(str(out)).state_dict()
    ref = np.mean([load(p).state_dict()["layer7.weight"].numpy().astype(np.float64) for p in paths], axis=0)
    assert len(sd) == 200 and np.array_equal(sd["layer7.weight"].numpy(), ref.astype(np.float32))
