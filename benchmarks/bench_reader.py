"""Issue 12: the CPU time of the safe reader, for one or more ckpt source trees measured side by side.

Per tree, in fresh processes, interleaved round by round (so trees compare on a shared, busy machine), the minimum
over the rounds of:
- `load` of the 1.15 GB mmengine training checkpoint (bench_inspect's file) and of the 16,487-sample NTU60 mmaction2
  dump pickle (bench_eval's), in process (`time.process_time()`, numpy imported first: every tree imports it);
- `python -m ckpttool inspect` of the checkpoint (user + sys of the child), as the environment runs it and, with
  `--pyc`, with ckpt's bytecode cached (a private PYTHONPYCACHEPREFIX; PYTHONDONTWRITEBYTECODE makes every run compile
  ckpt's modules, which costs more the more code there is).

    .venv/bin/python benchmarks/bench_reader.py --keep DIR [--repeat 11] [--pyc] [TREE ...]

A TREE is a directory holding `ckpttool/` (default: this checkout), e.g. the reader before the allow-list rewrite:
`git archive ad4a447 | tar -x -C /tmp/pre`. Ratios are against the first tree.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import PY, machine  # noqa: E402

LOADS = r"""
import json, sys, time
import numpy
from ckpttool.io import load
out = {}
for name, path in (("load_ckpt", sys.argv[1]), ("load_dump", sys.argv[2])):
    t = time.process_time()
    load(path)
    out[name] = time.process_time() - t
print(json.dumps(out))
"""


def inputs(directory: str) -> tuple[str, str]:
    from bench_eval import ntu_scores, write_ntu_dump
    from bigckpt import make_training_checkpoint

    ckpt, dump = os.path.join(directory, "epoch_5.pth"), os.path.join(directory, "results.pkl")
    if not os.path.exists(ckpt):
        make_training_checkpoint(ckpt)
    if not os.path.exists(dump):
        write_ntu_dump(dump, *ntu_scores())
    return ckpt, dump


def child_cpu(cmd: list[str], env: dict, cwd: str) -> tuple[float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1000:]}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, proc.stdout


def one_round(tree: str, ckpt: str, dump: str, pyc_dir: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cwd = os.path.dirname(ckpt)  # not a source tree: `-m ckpttool` imports the tree on PYTHONPATH
    res = json.loads(child_cpu([PY, "-c", LOADS, ckpt, dump], env, cwd)[1])
    res["cli_inspect"] = child_cpu([PY, "-m", "ckpttool", "inspect", ckpt], env, cwd)[0]
    if pyc_dir:
        cached = dict(env, PYTHONPYCACHEPREFIX=os.path.join(pyc_dir, tree.strip(os.sep).replace(os.sep, "_")))
        cached.pop("PYTHONDONTWRITEBYTECODE", None)
        res["cli_inspect_pyc"] = child_cpu([PY, "-m", "ckpttool", "inspect", ckpt], cached, cwd)[0]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="*", default=[os.path.dirname(HERE)])
    ap.add_argument("--keep", help="directory for the generated inputs (kept; reused when present)")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--pyc", action="store_true", help="also time the CLI with ckpt's bytecode cached")
    args = ap.parse_args()
    trees = [os.path.abspath(t) for t in args.trees]
    directory = args.keep or tempfile.mkdtemp(prefix="ckpt-bench-")
    ckpt, dump = inputs(directory)
    with tempfile.TemporaryDirectory() as pyc_dir:
        best: dict = {t: {} for t in trees}
        for _ in range(args.repeat):
            for t in trees:
                for key, value in one_round(t, ckpt, dump, pyc_dir if args.pyc else None).items():
                    best[t][key] = min(best[t].get(key, float("inf")), value)
    load = os.getloadavg()
    print(f"CPU seconds, min of {args.repeat} interleaved rounds; load average {load[0]:.2f} / {load[1]:.2f} on "
          f"{machine()['cpus']} CPUs")
    keys = list(best[trees[0]])
    print("tree".ljust(40) + "".join(k.rjust(16) for k in keys))
    for t in trees:
        print(t.ljust(40) + "".join(f"{best[t][k]:16.3f}" for k in keys))
    for t in trees[1:]:
        print(f"  ratio {os.path.basename(t)} / {os.path.basename(trees[0])}".ljust(40)
              + "".join(f"{best[t][k] / best[trees[0]][k]:15.2f}x" for k in keys))
    if not args.keep:
        for path in (ckpt, dump):
            os.remove(path)
        os.rmdir(directory)


if __name__ == "__main__":
    main()
