"""Shared benchmark helpers: run a command in a fresh process and measure wall time and peak memory from outside."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

PY = sys.executable
_PROBE = r"""
import os, resource, subprocess, sys, time, threading
cmd = sys.argv[1:]
t0 = time.perf_counter()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peak_anon = 0
def poll():
    global peak_anon
    path = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.003)
th = threading.Thread(target=poll); th.start()
err = p.communicate()[1]
th.join()
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{wall} {rss} {peak_anon} {p.returncode}")
if p.returncode:
    sys.stderr.write(err.decode(errors="replace")[-2000:])
"""


def measure(cmd: list[str], repeat: int = 1) -> dict:
    """Best-of-`repeat` wall time (s), peak RSS (MB, ru_maxrss) and peak RssAnon (MB, polled from /proc)."""
    best = None
    for _ in range(repeat):
        out = subprocess.run([PY, "-c", _PROBE, *cmd], capture_output=True, text=True)
        wall, rss, anon, rc = out.stdout.split()
        if int(rc) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-1000:]}")
        run = {"wall_s": float(wall), "peak_rss_mb": int(rss) / 1024, "peak_anon_mb": int(anon) / 1024}
        if best is None or run["wall_s"] < best["wall_s"]:
            best = run
    return best


def machine() -> dict:
    import numpy

    info = {"python": platform.python_version(), "numpy": numpy.__version__, "cpus": os.cpu_count(),
            "machine": platform.machine(), "system": platform.platform()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    return info


def warm(path: str) -> None:
    """Read a file (or folder) once so that the page cache is warm for every contender."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def dump(result: dict, path: str | None) -> None:
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def now() -> float:
    return time.perf_counter()


def compile_project() -> None:
    """Byte-compile ckpttool, as pip does for every package it installs: the contenders' torch and numpy come with
    their .pyc files, so ckpt must not pay for compiling its sources in every measured process (an editable
    install under PYTHONDONTWRITEBYTECODE, as this project's test script and some shells set, never writes them)."""
    import compileall

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not compileall.compile_dir(os.path.join(root, "ckpttool"), quiet=1):
        raise RuntimeError("ckpttool does not byte-compile")
