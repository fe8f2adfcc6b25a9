"""Issue 3 targets: `ckpt diff` value throughput vs a numpy pass over the same bytes, and its peak RSS, on two
>= 1 GB float32 checkpoints (written with ckpttool.io.write.save into a temp dir, deleted afterwards).

    .venv/bin/python benchmarks/bench_diff.py [--gb 1.0] [--keep DIR] [--json OUT]

numpy pass: one `t.raw().sum()` per tensor of A and of B (np.frombuffer on the same memory maps our reader
uses). Compared in-process (the value pass of `compare_pair` over every pair vs the numpy pass) and end to end in
subprocesses (`ckpt diff A B --format json` vs `python -c <load both + numpy pass>`, both with interpreter start-up
and imports); `ckpt diff`'s peak RSS (ru_maxrss) and peak RssAnon are measured from outside. The page cache is
warmed first; every contender is best of 3.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import PY, dump, machine, measure, now, warm  # noqa: E402

BIG, MID, SMALL = 16 << 20, 1 << 20, 25_000   # elements: 64 MiB, 4 MiB, 100 KB tensors


def layout(gb: float) -> list[tuple[str, int]]:
    """(key, numel): 3/4 of the bytes in 64 MiB tensors, 1/4 in 4 MiB ones, plus 512 small ones."""
    total = int(gb * (1 << 30)) // 4
    n_big, n_mid = max(1, total * 3 // 4 // BIG), max(1, total // 4 // MID)
    return ([(f"backbone.stage{i}.conv.weight", BIG) for i in range(n_big)]
            + [(f"neck.block{i}.fc.weight", MID) for i in range(n_mid)]
            + [(f"head.layer{i // 4}.p{i % 4}", SMALL) for i in range(512)])


def write_pair(d: str, gb: float) -> tuple[str, str]:
    import numpy as np

    from ckpttool.io.write import OutTensor, save

    def values(i: int, n: int, edited: bool):
        a = np.random.default_rng(i).standard_normal(n, dtype=np.float32)
        if edited and i % 3:            # two thirds change a little, one third stays identical
            a += np.float32(1e-3) * np.random.default_rng(10_000 + i).standard_normal(n, dtype=np.float32)
        return memoryview(a).cast("B")

    paths = []
    for name, edited in (("a.pth", False), ("b.pth", True)):
        tensors = ((k, OutTensor("float32", (n,), lambda i=i, n=n, e=edited: values(i, n, e)))
                   for i, (k, n) in enumerate(layout(gb)))
        paths.append(save(os.path.join(d, name), tensors, meta={"epoch": int(edited)})["path"])
    return paths[0], paths[1]


def numpy_pass(a: str, b: str) -> float:
    from ckpttool.io import load

    tensors = list(load(a).state_dict().values()) + list(load(b).state_dict().values())
    t0 = now()
    for t in tensors:
        t.raw().sum()
    return now() - t0


def diff_pass(a: str, b: str) -> float:
    from ckpttool.io import load
    from ckpttool.comparison.diff import compare_pair

    sa, sb = load(a).state_dict(), load(b).state_dict()
    t0 = now()
    for key, t in sa.items():
        compare_pair(t, sb[key])
    return now() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="size of each checkpoint (GiB)")
    ap.add_argument("--keep", help="directory for the checkpoints (kept; reused when present)")
    ap.add_argument("--json")
    args = ap.parse_args()
    d = args.keep or tempfile.mkdtemp(prefix="ckpt-bench-diff-")
    try:
        a, b = os.path.join(d, "a.pth"), os.path.join(d, "b.pth")
        if not (os.path.exists(a) and os.path.exists(b)):
            t0 = now()
            a, b = write_pair(d, args.gb)
            print(f"wrote two checkpoints in {now() - t0:.1f}s", file=sys.stderr)
        nbytes = os.path.getsize(a) + os.path.getsize(b)
        warm(a)
        warm(b)
        np_s = min(numpy_pass(a, b) for _ in range(3))
        diff_s = min(diff_pass(a, b) for _ in range(3))
        cli = measure([PY, "-m", "ckpttool", "diff", a, b, "--format", "json"], repeat=3)
        np_cli = measure([PY, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import bench_diff as m; "
                                    f"m.numpy_pass({a!r}, {b!r})"], repeat=3)
        largest_pair_mb = 2 * BIG * 4 / (1 << 20)
        res = {"machine": machine(), "file_gb_each": round(os.path.getsize(a) / 1e9, 3), "bytes_read": nbytes,
               "numpy_pass_s": np_s, "numpy_gbps": nbytes / np_s / 1e9,
               "diff_pass_s": diff_s, "diff_gbps": nbytes / diff_s / 1e9, "ratio_in_process": np_s / diff_s,
               "ckpt_diff": cli, "numpy_pass_subprocess": np_cli, "ratio_end_to_end": np_cli["wall_s"] / cli["wall_s"],
               "largest_tensor_pair_mb": largest_pair_mb}
        dump(res, args.json)
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
