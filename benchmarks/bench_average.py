"""`ckpt average` against the two usual ways to average N checkpoints of ~145 MB (N = 3 and 8 by default):

- timm-style (timm's avg_checkpoints.py): torch.load every checkpoint fully, accumulate in float64, torch.save;
- torch-mmap streaming: torch.load(mmap=True, weights_only=True) of all inputs, then per tensor a float64
  accumulator (`add_` of each input's tensor, no full float64 copy of any input), divided and cast back, torch.save.

    .venv/bin/python benchmarks/bench_average.py [--inputs 3,8] [--sizes 145] [--repeat 3] [--before DIR]

Neither baseline hashes its inputs, verifies what it wrote or fsyncs; `ckpt average` does all three (sha256
provenance of every input, every written byte read back against its CRC32, fsync of file and directory).
`ckpt` runs with an empty digest cache every time (`CKPT_CACHE_DIR` a new folder: every input is hashed, the
first-run cost); `ckpt_warm` with the digests of the unchanged inputs remembered by an earlier run (what a second
average, a greedy soup or an eval of the same files costs; ckpttool/io/hashing.py); `ckpt_no_sha256` records no
digests at all.
`--before DIR` also runs `ckpt average` from another checkout (e.g. `git worktree add /tmp/before main`), in the
same interleaved loop, for before/after figures. Each command runs as its own process (so the import of torch
counts). Wall time: from Popen to exit. Memory: the process's /proc/PID/status is polled every 5 ms for RssAnon
(anonymous memory: file-backed pages of memory-mapped inputs and of the page cache are not counted) and VmRSS; the
peak is reported, with ru_maxrss from wait4 as a cross-check of VmRSS. Inputs are written once (numpy, through
ckpt's writer: torch zip files torch.load reads) into a temp dir that is deleted afterwards; all runs see them in
the page cache (warm cache). Medians (and the minimum wall time) over --repeat runs, the commands interleaved; the
load average is printed since the machine may be shared: compare ratios from one run, not figures across runs.
Also measured: float64 vs compensated float32 accumulation.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compile_project  # noqa: E402

BASELINE = """
import sys, torch
paths, out = sys.argv[1:-1], sys.argv[-1]
avg, counts = {}, {}
for c in paths:                       # timm avg_checkpoints.py, with torch.load's weights_only default
    sd = torch.load(c, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in sd.items():
        if k not in avg:
            avg[k] = v.clone().to(dtype=torch.float64)
            counts[k] = 1
        else:
            avg[k] += v.to(dtype=torch.float64)
            counts[k] += 1
for k, v in avg.items():
    v.div_(counts[k])
info = torch.finfo(torch.float32)
torch.save({k: v.clamp(info.min, info.max).to(dtype=torch.float32) for k, v in avg.items()}, out)
"""

TORCH_MMAP = """
import sys, torch
paths, out = sys.argv[1:-1], sys.argv[-1]
sds = [torch.load(c, map_location="cpu", weights_only=True, mmap=True)["state_dict"] for c in paths]
avg = {}
with torch.no_grad():
    for k, v in sds[0].items():          # one tensor at a time, inputs never copied whole
        if not v.is_floating_point():
            avg[k] = sds[-1][k].clone()    # integer buffers: the last input's, as ckpt's --int-buffers last
            continue
        acc = v.to(torch.float64)
        for sd in sds[1:]:
            acc.add_(sd[k])                # float32 operand accumulated in float64, no float64 copy of it
        avg[k] = acc.div_(len(sds)).to(v.dtype)
torch.save({"state_dict": avg}, out)
"""

NO_HASH = """
import sys
from ckpttool.surgery.average import average
average(sys.argv[1:-1], sys.argv[-1], hash_inputs=False)
"""


def make_inputs(directory: str, mb: int, n: int) -> tuple[list[str], int]:
    """n checkpoints of about `mb` MB: conv/linear-like float32 tensors, BN vectors and int64 counters."""
    import numpy as np

    from ckpttool.io.write import save

    shapes = [(256, 256, 3, 3), (1024, 1024), (512,), (512,), (2048, 512), (64, 64, 1, 1)]
    target = mb * 1_000_000
    paths = []
    for i in range(n):
        p = os.path.join(directory, f"in{mb}_{i}.pth")
        rng = np.random.default_rng(i)
        sd, total, j = {}, 0, 0
        while total < target:
            shape = shapes[j % len(shapes)]
            sd[f"layer{j // len(shapes)}.t{j % len(shapes)}"] = rng.standard_normal(shape, dtype=np.float32)
            total += 4 * int(np.prod(shape))
            if j % len(shapes) == 3:
                sd[f"layer{j // len(shapes)}.bn.num_batches_tracked"] = np.array(100 + i, dtype=np.int64)
            j += 1
        if not os.path.exists(p):   # inputs for N=8 reuse those made for N=3
            save(p, sd, meta={"epoch": i + 1})
        paths.append(p)
    return paths, total


def measure(cmd: list[str], env=None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = {"RssAnon": 0, "VmRSS": 0}
    status = f"/proc/{proc.pid}/status"
    while True:
        try:
            with open(status) as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "anon": peak["RssAnon"], "rss": peak["VmRSS"],
            "maxrss": usage.ru_maxrss * 1024}


def median_of(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["wall_min"] = min(r["wall"] for r in runs)
    return out


def bench(directory: str, mb: int, n: int, repeat: int, before: str | None) -> dict:
    paths, sd_bytes = make_inputs(directory, mb, n)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=ROOT)
    outs = {name: os.path.join(directory, f"{name}{mb}x{n}.pth") for name in COMMANDS}
    ckpt = ["-m", "ckpttool", "average", *paths, "-q", "--format", "json", "-o"]
    warm = prime_digests(directory, [py, *ckpt, os.path.join(directory, "prime.pth")], env, paths)
    primed = entries(warm)
    cmds = {"timm-style": ([py, "-c", BASELINE, *paths, outs["timm-style"]], env),
            "torch-mmap": ([py, "-c", TORCH_MMAP, *paths, outs["torch-mmap"]], env),
            "ckpt": ([py, *ckpt, outs["ckpt"]], env),
            "ckpt_warm": ([py, *ckpt, outs["ckpt_warm"]], dict(env, CKPT_CACHE_DIR=warm)),
            "ckpt_no_sha256": ([py, "-c", NO_HASH, *paths, outs["ckpt_no_sha256"]], env)}
    if before:
        cmds["ckpt_before"] = ([py, *ckpt, outs["ckpt_before"]], dict(os.environ, PYTHONPATH=before))
    results = {name: [] for name in cmds}
    for i in range(repeat):
        for name, (cmd, e) in cmds.items():
            if os.path.exists(outs[name]):   # every run writes a new file (no --force: no unlink of the old one)
                os.unlink(outs[name])
            if "CKPT_CACHE_DIR" not in e:     # cold: nothing remembered
                e = dict(e, CKPT_CACHE_DIR=tempfile.mkdtemp(prefix=f"cold{i}_", dir=directory))
            results[name].append(measure(cmd, e))
    if entries(warm) != primed:   # a miss would have hashed that input again and rewritten its entry
        raise RuntimeError("a ckpt_warm run did not find every digest remembered")
    return {"mb": mb, "n": n, "sd_bytes": sd_bytes, "same": same_values(outs["ckpt"], outs["torch-mmap"]),
            **{k: median_of(v) for k, v in results.items()}}


def prime_digests(directory: str, cmd: list[str], env: dict, paths: list[str]) -> str:
    """A digest cache folder holding the digests of `paths`, remembered by one `ckpt average` run (after the
    inputs have settled: io/hashing.py remembers no file changed within the last SETTLED_NS)."""
    from ckpttool.io.hashing import SETTLED_NS

    newest = max(max(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in paths)
    time.sleep(max(0.0, (newest + SETTLED_NS - time.time_ns()) / 1e9 + 0.1))
    folder = tempfile.mkdtemp(prefix="warm_", dir=directory)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(env, CKPT_CACHE_DIR=folder))
    os.unlink(cmd[-1])
    if len(os.listdir(os.path.join(folder, "digests"))) != len(paths):
        raise RuntimeError(f"the digests of the {len(paths)} inputs were not remembered in {folder}")
    return folder


def entries(cache: str) -> dict:
    folder = os.path.join(cache, "digests")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def same_values(ours: str, theirs: str) -> str:
    """Whether `ckpt average` wrote bit for bit the tensors of the torch-mmap streaming average."""
    import torch

    a = torch.load(ours, weights_only=True, mmap=True)["state_dict"]
    b = torch.load(theirs, weights_only=True, mmap=True)["state_dict"]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return "tensors bit-identical to torch-mmap's" if same else "TENSORS DIFFER from torch-mmap's"


COMMANDS = ("timm-style", "torch-mmap", "ckpt", "ckpt_warm", "ckpt_no_sha256", "ckpt_before")


def accumulators(n: int = 1 << 22, k: int = 3) -> list[str]:
    """float64 vs Kahan-compensated float32 accumulation of k float32 arrays: time and error vs exact."""
    import numpy as np

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(n, dtype=np.float32) * np.float32(10 ** (i - 1)) for i in range(k)]
    exact = np.sum([x.astype(np.longdouble) for x in xs], axis=0) / k
    lines = []

    def f64():
        a = xs[0].astype(np.float64)
        for x in xs[1:]:
            a += x
        return (a / k).astype(np.float32)

    def kahan():
        s = xs[0].copy()
        c = np.zeros_like(s)
        for x in xs[1:]:
            y = x - c
            t = s + y
            c = (t - s) - y
            s = t
        return s / np.float32(k)

    for name, fn in (("float64", f64), ("kahan-float32", kahan)):
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            out = fn()
        dt = (time.perf_counter() - t0) / 5
        ulp = np.abs(out.astype(np.longdouble) - exact) / np.spacing(np.abs(exact.astype(np.float32)))
        lines.append(f"  {name:14s} {n * k * 4 / dt / 1e9:5.2f} GB/s of input   max error {float(ulp.max()):.2f} ulp"
                     f"   outputs not correctly rounded: {int((ulp > 0.5).sum())} of {n}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="145", help="MB per checkpoint, comma-separated")
    ap.add_argument("--inputs", default="3,8", help="numbers of checkpoints, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", metavar="DIR", help="also run `ckpt average` from this checkout (before/after)")
    args = ap.parse_args()
    compile_project()
    tmp = tempfile.mkdtemp(prefix="bench_average_")
    try:
        for mb in (int(s) for s in args.sizes.split(",")):
            for n in (int(s) for s in args.inputs.split(",")):
                r = bench(tmp, mb, n, args.repeat, args.before)
                sd = r["sd_bytes"]
                print(f"{n} x {mb} MB (state dict {sd / 1e6:.0f} MB), median of {args.repeat}, "
                      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:")
                for name in (c for c in COMMANDS if c in r):
                    m = r[name]
                    print(f"  {name:15s} wall {m['wall']:6.2f} s (min {m['wall_min']:5.2f}, cpu {m['cpu']:5.2f})   "
                          f"peak RssAnon {m['anon'] / 1e6:7.1f} MB ({m['anon'] / sd:4.2f} x state dict)   "
                          f"peak VmRSS {m['rss'] / 1e6:7.1f} MB")
                for base in ("timm-style", "torch-mmap"):
                    b = r[base]
                    line = "  ".join(f"{name} {r[name]['wall'] / b['wall']:.2f} x (min/min "
                                     f"{r[name]['wall_min'] / b['wall_min']:.2f} x)"
                                     for name in ("ckpt", "ckpt_warm", "ckpt_before") if name in r)
                    print(f"  wall ratio to {base}: {line}")
                o, nh = r["ckpt"], r["ckpt_no_sha256"]
                print(f"  RssAnon ckpt/timm-style {o['anon'] / r['timm-style']['anon']:.2f} x;  "
                      f"ckpt - ckpt_no_sha256 = {o['wall'] - nh['wall']:+.2f} s wall, {o['cpu'] - nh['cpu']:+.2f} s cpu;"
                      f"  {r['same']}")
        print("accumulation of 3 x 4M float32 (in-process):")
        print("\n".join(accumulators()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
