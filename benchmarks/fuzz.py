"""Long fuzz run of every reader: N mutated inputs, counting clean rejections, successes, uncaught exceptions,
hangs (> HANG_S per input) and peak memory.

    .venv/bin/python benchmarks/fuzz.py [--inputs 100000] [--json OUT]
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from common import dump  # noqa: E402
from tests.support.fuzzing import exercise, mutate  # noqa: E402

HANG_S = 10
G = os.path.join(ROOT, "fixtures", "generated")
SEEDS = {  # family -> (seed path, file inside a folder to mutate, exercise function name)
    "torch-zip": (f"{G}/formats/zip.pth", None, "checkpoint"),
    "torch-legacy": (f"{G}/formats/legacy.pth", None, "checkpoint"),
    "mmengine-runner": (f"{G}/mmengine/work_dirs/sgd/epoch_1.pth", None, "checkpoint"),
    "views": (f"{G}/formats/dtypes_views.pth", None, "checkpoint"),
    "safetensors": (f"{G}/formats/model.safetensors", None, "checkpoint"),
    "sharded-index": (f"{G}/formats/sharded", "model.safetensors.index.json", "checkpoint"),
    "dcp-metadata": (f"{G}/formats/dcp", ".metadata", "checkpoint"),
    "mmaction2-dump": (f"{ROOT}/fixtures/mmaction2-fuse-demo/joint.pkl", None, "ntu"),
    "kaist-txt": (f"{ROOT}/fixtures/kaist/detections/MLPD_result.txt", None, "kaist"),
    "kaist-json": (f"{ROOT}/fixtures/kaist/detections/MLPD_result.json", None, "kaist"),
}


_ANN = []


def _exercise_kaist(path):
    from ckpttool.errors import CkptError
    from ckpttool.metrics import kaist_io

    if not _ANN:
        _ANN.append(kaist_io.load_annotations(f"{ROOT}/fixtures/kaist/KAIST_annotation.json"))
    try:
        kaist_io.load_detections(str(path), _ANN[0])
        return "ok"
    except CkptError:
        return "rejected"


def _exercise_ntu(path):
    from ckpttool.errors import CkptError
    from ckpttool.metrics import predictions

    try:
        predictions.read_predictions(str(path))
        return "ok"
    except CkptError:
        return "rejected"


EXERCISE = {"checkpoint": exercise, "kaist": _exercise_kaist, "ntu": _exercise_ntu}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_family(name, n, rng, work):
    src, inner, kind = SEEDS[name]
    if inner:
        target = os.path.join(work, name)
        shutil.copytree(src, target)
        victim = os.path.join(target, inner)
        original = open(os.path.join(src, inner), "rb").read()
    else:
        target = victim = os.path.join(work, name + os.path.splitext(src)[1])
        original = open(src, "rb").read()
    fn = EXERCISE[kind]
    counts, bugs = collections.Counter(), collections.Counter()
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    for _ in range(n):
        with open(victim, "wb") as f:
            f.write(mutate(original, rng))
        signal.alarm(HANG_S)
        try:
            counts[fn(target)] += 1
        except Hang:
            counts["hang"] += 1
        except Exception as exc:  # an uncaught exception is a bug
            counts["uncaught"] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            bugs[f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}"] += 1
        finally:
            signal.alarm(0)
    return {"inputs": n, **counts, "seconds": round(time.perf_counter() - t0, 1), "bugs": dict(bugs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    families = [f for f, (src, _, _) in SEEDS.items() if os.path.exists(src)]
    per = args.inputs // len(families) + 1
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="ckpt-fuzz-")
    try:
        result = {"families": {f: run_family(f, per, rng, work) for f in families}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fams = result["families"].values()
    result["total"] = {k: sum(f.get(k, 0) for f in fams) for k in ("inputs", "ok", "rejected", "uncaught", "hang")}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dump(result, args.json)
    sys.exit(1 if result["total"]["uncaught"] or result["total"]["hang"] else 0)


if __name__ == "__main__":
    main()
