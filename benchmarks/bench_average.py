"""`ckpt average` against the common approach (timm's avg_checkpoints.py: torch.load every checkpoint fully,
accumulate in float64, torch.save), on 3 checkpoints of 145 MB and 3 of 300 MB.

    .venv/bin/python benchmarks/bench_average.py [--sizes 145,300] [--repeat 3]

Each command runs as its own process (so the import of torch counts). Wall time: from Popen to exit. Memory: the
process's /proc/PID/status is polled every 5 ms for RssAnon (anonymous memory: file-backed pages of memory-mapped
inputs and of the page cache are not counted) and VmRSS; the peak is reported, with ru_maxrss from wait4 as a
cross-check of VmRSS. Inputs are written once (numpy, through ckpt's writer: torch zip files torch.load reads) into
a temp dir that is deleted afterwards; all runs see them in the page cache. Medians (and the minimum wall time)
over --repeat runs, the commands interleaved; the load average is printed since the machine may be shared.
Also measured: the share of sha256 (provenance) in ckpt's time, and float64 vs compensated float32 accumulation.
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

NO_HASH = """
import sys
from ckpttool.surgery.average import average
average(sys.argv[1:-1], sys.argv[-1], hash_inputs=False)
"""


def make_inputs(directory: str, mb: int, n: int = 3) -> tuple[list[str], int]:
    """n checkpoints of about `mb` MB: conv/linear-like float32 tensors, BN vectors and int64 counters."""
    import numpy as np

    from ckpttool.io.write import save

    shapes = [(256, 256, 3, 3), (1024, 1024), (512,), (512,), (2048, 512), (64, 64, 1, 1)]
    target = mb * 1_000_000
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        sd, total, j = {}, 0, 0
        while total < target:
            shape = shapes[j % len(shapes)]
            sd[f"layer{j // len(shapes)}.t{j % len(shapes)}"] = rng.standard_normal(shape, dtype=np.float32)
            total += 4 * int(np.prod(shape))
            if j % len(shapes) == 3:
                sd[f"layer{j // len(shapes)}.bn.num_batches_tracked"] = np.array(100 + i, dtype=np.int64)
            j += 1
        p = os.path.join(directory, f"in{mb}_{i}.pth")
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


def bench_size(directory: str, mb: int, repeat: int) -> dict:
    paths, sd_bytes = make_inputs(directory, mb)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=ROOT)
    base_out, ours_out, nohash_out = (os.path.join(directory, f"{n}{mb}.pth") for n in ("base", "ours", "nohash"))
    cmds = {"baseline": [py, "-c", BASELINE, *paths, base_out],
            "ckpt": [py, "-m", "ckpttool", "average", *paths, "-o", ours_out, "--force", "-q", "--format", "json"],
            "ckpt_no_sha256": [py, "-c", NO_HASH, *paths, nohash_out]}
    results = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            if name == "ckpt_no_sha256" and os.path.exists(nohash_out):
                os.unlink(nohash_out)
            results[name].append(measure(cmd, env))
    t0 = time.perf_counter()
    from ckpttool.io.hashing import digest
    for p in paths:
        digest(p)
    sha = time.perf_counter() - t0
    return {"mb": mb, "sd_bytes": sd_bytes, "sha256_s": sha, **{k: median_of(v) for k, v in results.items()}}


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
    ap.add_argument("--sizes", default="145,300", help="MB per checkpoint, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_average_")
    try:
        for mb in (int(s) for s in args.sizes.split(",")):
            r = bench_size(tmp, mb, args.repeat)
            sd = r["sd_bytes"]
            print(f"3 x {mb} MB (state dict {sd / 1e6:.0f} MB), median of {args.repeat}, "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:")
            for name in ("baseline", "ckpt", "ckpt_no_sha256"):
                m = r[name]
                print(f"  {name:15s} wall {m['wall']:6.2f} s (min {m['wall_min']:5.2f}, cpu {m['cpu']:5.2f})   "
                      f"peak RssAnon {m['anon'] / 1e6:7.1f} MB ({m['anon'] / sd:4.2f} x state dict)   "
                      f"peak VmRSS {m['rss'] / 1e6:7.1f} MB")
            b, o = r["baseline"], r["ckpt"]
            print(f"  ratio ckpt/baseline: wall {o['wall'] / b['wall']:.2f} x "
                  f"(min/min {o['wall_min'] / b['wall_min']:.2f} x), "
                  f"RssAnon {o['anon'] / b['anon']:.2f} x;"
                  f"  sha256 of the inputs alone {r['sha256_s']:.2f} s "
                  f"(ckpt - ckpt_no_sha256 = {o['wall'] - r['ckpt_no_sha256']['wall']:+.2f} s)")
        print("accumulation of 3 x 4M float32 (in-process):")
        print("\n".join(accumulators()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
