"""The whole benchmark suite in one run (`make bench`): every performance target of the issues, side by side, on
this machine. Writes docs/benchmarks.md (machine, versions, each benchmark's report) and bench-out/*.json.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only inspect,diff,average,eval,tta,fuzz]
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import compile_project, machine  # noqa: E402

# name -> (title, target, argv (full, quick))
SUITE = {
    "inspect": ("ckpt inspect on a 1.15 GB mmengine training checkpoint (issue 2)",
                "wall <= 0.25x `import torch`, peak RSS < 100 MB; --stats >= 0.5x a numpy pass",
                ["bench_inspect.py", "--json", "bench-out/inspect.json"], None),
    "diff": ("ckpt diff values on two >= 1 GB checkpoints (issue 3)",
             "value throughput >= 0.5x a numpy pass; peak RSS near the largest tensor pair",
             ["bench_diff.py", "--json", "bench-out/diff.json"], ["bench_diff.py", "--gb", "0.25"]),
    "average": ("ckpt average vs timm-style full-load and torch-mmap streaming averaging (issues 5, 12)",
                "3 and 8 x 145 MB: wall <= 0.3x timm-style and <= 0.5x torch-mmap (verification, fsync kept); "
                "peak RssAnon <= 1.3x one state dict",
                ["bench_average.py", "--repeat", "3"], ["bench_average.py", "--inputs", "3", "--repeat", "1"]),
    "eval": ("KAIST and NTU60 metrics vs straightforward per-image loops (issue 6)",
             "KAIST >= 20x faster than a per-image loop; NTU60-size input well under a second",
             ["bench_eval.py", "--repeat", "3"], ["bench_eval.py", "--repeat", "1"]),
    "tta": ("Multi-clip TTA sweep vs separate mmaction2 test runs (issue 7)",
            "report the sweep vs 4 runs, the decode share, peak RSS by --views-per-batch",
            ["bench_tta.py"], ["bench_tta.py", "--samples", "4", "--skip-memory"]),
    "fuzz": ("Fuzzing every reader (issue 8)",
             ">= 100,000 mutated inputs: 0 uncaught exceptions, 0 hangs, bounded memory",
             ["fuzz.py", "--inputs", "100000", "--json", "bench-out/fuzz.json"], ["fuzz.py", "--inputs", "5000"]),
}


HAND_RUN = "<!-- Sections run by hand: kept as they are by run_all.py -->"


def kept_by_hand(path: str) -> list[str]:
    """The sections of `path` from the HAND_RUN marker on (benchmarks that need another tree or environment)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    at = text.find(HAND_RUN)
    return ["", text[at:].rstrip("\n")] if at >= 0 else []


def versions() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch, numpy, mmengine; "
                          "print(f'torch {torch.__version__}, numpy {numpy.__version__}, mmengine {mmengine.__version__}')"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run; not the reported numbers)")
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(SUITE))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SUITE)
    os.makedirs(os.path.join(ROOT, "bench-out"), exist_ok=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_fixtures.py")], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    compile_project()   # every benchmark runs ckpt from .pyc files, as the contenders' libraries run
    m = machine()
    lines = ["# Benchmarks", "",
             f"Run by `make bench` (`benchmarks/run_all.py{' --quick' if args.quick else ''}`) on "
             f"{datetime.date.today()}: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('mem_gb', '?')} GB, "
             f"Python {m['python']}, {versions()}. Each section is the benchmark's own report, verbatim; the method "
             "is in the docstring of the script named.", "",
             "| benchmark | target | script |", "|---|---|---|"]
    lines += [f"| {SUITE[n][0]} | {SUITE[n][1]} | `benchmarks/{SUITE[n][2][0]}` |" for n in names]
    for name in names:
        title, target, full, quick = SUITE[name]
        argv = (quick or full) if args.quick else full
        print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(HERE, argv[0]), *argv[1:]], cwd=ROOT,
                              capture_output=True, text=True)
        took = time.perf_counter() - t0
        lines += ["", f"## {title}", "", f"Target: {target}. Command: `python benchmarks/{' '.join(argv)}` "
                  f"({took:.0f} s, exit {proc.returncode}).", "", "```", proc.stdout.rstrip() or proc.stderr[-3000:],
                  "```"]
    with open(args.out, "w") as f:
        f.write("\n".join(lines + kept_by_hand(args.out)) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
