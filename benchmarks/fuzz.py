"""Long fuzz run of every reader: N mutated inputs, counting clean rejections, successes, uncaught exceptions,
hangs, crashes and peak memory.

    nice -n 10 .venv/bin/python benchmarks/fuzz.py [--inputs 100000] [--seed 11] [--json OUT] [--families a,b]

Families: the original fixtures (torch zip / legacy, mmengine runs, views, safetensors, sharded index, DCP, the
mmaction2 dump, KAIST results; byte mutations) and issue 11's hostile corpus and genuine torch.save files
(structure-aware mutations from `tests.support.hostile_fuzz`: gadget globals, BUILD on records, protocol bytes, memo
sharing, duplicated / reordered / deflated zip entries). Checkpoint inputs also run two oracles: a payload that ran
(`PayloadRan`) and a file naming a code gadget that ckpt calls data (`VerdictBypass`) count as uncaught bugs.

Each family runs in a worker process under RLIMIT_AS (4 GiB: a memory blow-up is a MemoryError, i.e. a bug, not the
machine's OOM) with a watchdog: an input that runs past HANG_S is a hang, one that kills the worker (SIGSEGV…) a
crash; either way the worker restarts at the next input. Input i of a family is mutated with Random(f"{seed}/{family}/
{i}"), so any finding is reproducible alone: `--families F --replay I` writes that input to ./fuzz-replay.bin.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from common import dump  # noqa: E402

HANG_S = 10
AS_LIMIT = 4 << 30
G = os.path.join(ROOT, "fixtures", "generated")
H = os.path.join(G, "hostile")
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


def hostile_seeds() -> dict[str, list[tuple[str, str | None]]]:
    """family -> [(seed path, inner file)] from issue 11's corpus (generated on first use)."""
    from tests.support import hostile_corpus as hc
    from tests.support import hostile_fuzz as hf

    manifest = hc.generate()
    out = {}
    for fam in hf.FAMILIES:
        picked = []
        for name, info in hf.seeds(manifest, fam):
            path = str(hc.DEFAULT_OUT / info["path"])
            inner = "pytorch_model.bin.index.json" if info["form"] == "sharded" else None
            picked.append((path, inner))
        if picked:
            out[fam] = picked
    return out


def all_families() -> dict[str, list[tuple[str, str | None, str, str]]]:
    """family -> [(seed, inner, exercise kind, mutator)]."""
    fams = {f: [(src, inner, kind, "bytes")] for f, (src, inner, kind) in SEEDS.items() if os.path.exists(src)}
    for f, seeds in hostile_seeds().items():
        fams[f] = [(src, inner, "checkpoint", "hostile") for src, inner in seeds]
    return fams


# ---- worker ---------------------------------------------------------------------------------------------------
_ANN = []


def _exercise_kaist(path, cwd):
    from ckpttool.errors import CkptError
    from ckpttool.metrics import kaist_io

    if not _ANN:
        _ANN.append(kaist_io.load_annotations(f"{ROOT}/fixtures/kaist/KAIST_annotation.json"))
    try:
        kaist_io.load_detections(str(path), _ANN[0])
        return "ok"
    except CkptError:
        return "rejected"


def _exercise_ntu(path, cwd):
    from ckpttool.errors import CkptError
    from ckpttool.metrics import predictions

    try:
        predictions.read_predictions(str(path))
        return "ok"
    except CkptError:
        return "rejected"


def _exercise_checkpoint(path, cwd):
    from tests.support.hostile_fuzz import exercise_hostile

    return exercise_hostile(path, cwd)


EXERCISE = {"checkpoint": _exercise_checkpoint, "kaist": _exercise_kaist, "ntu": _exercise_ntu}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _mutator(kind):
    if kind == "hostile":
        from tests.support.hostile_fuzz import mutate_hostile
        return mutate_hostile
    from tests.support.fuzzing import mutate
    return mutate


def _prepare(seed, inner, work, slot):
    """Copy a folder seed once; return (target, victim, original bytes)."""
    if inner:
        target = os.path.join(work, f"s{slot}")
        if not os.path.exists(target):
            shutil.copytree(seed, target)
        return target, os.path.join(target, inner), open(os.path.join(seed, inner), "rb").read()
    target = os.path.join(work, f"s{slot}" + os.path.splitext(seed)[1])
    return target, target, open(seed, "rb").read()


def input_for(family, seeds, i, seed, work):
    src, inner, kind, mut = seeds[i % len(seeds)]
    target, victim, original = _prepare(src, inner, work, i % len(seeds))
    data = _mutator(mut)(original, random.Random(f"{seed}/{family}/{i}"))
    return target, victim, data, kind


def worker(family, start, end, seed, log_path):
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    import warnings

    warnings.simplefilter("ignore")
    seeds = all_families()[family]
    work = tempfile.mkdtemp(prefix="ckpt-fuzz-")
    cwd = tempfile.mkdtemp(prefix="ckpt-fuzz-cwd-")
    signal.signal(signal.SIGALRM, _alarm)
    with open(log_path, "a") as log:
        for i in range(start, end):
            target, victim, data, kind = input_for(family, seeds, i, seed, work)
            with open(victim, "wb") as f:
                f.write(data)
            log.write(f"{i} start\n")
            log.flush()
            signal.alarm(HANG_S)
            try:
                outcome, bug = EXERCISE[kind](target, cwd), ""
            except Hang:
                outcome, bug = "hang", "hang (SIGALRM)"
            except Exception as exc:  # an uncaught exception is a bug
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                outcome, bug = "uncaught", f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}"
            finally:
                signal.alarm(0)
            log.write(f"{i} {outcome} {bug}\n")
            log.flush()
        log.write(f"done {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cwd, ignore_errors=True)


# ---- parent ---------------------------------------------------------------------------------------------------
def run_family(family, n, seed, tmp):
    counts, bugs, examples = collections.Counter(), collections.Counter(), {}
    peak_kb = 0
    log_path = os.path.join(tmp, f"{family}.log")
    start, t0 = 0, time.perf_counter()
    while start < n:
        open(log_path, "w").close()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", family, "--start",
                                 str(start), "--end", str(n), "--seed", str(seed), "--log", log_path],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        seen, current, since, nxt = 0, None, time.monotonic(), n
        while True:
            rc = proc.poll()
            with open(log_path) as f:
                lines = f.read().split("\n")
            complete = lines[:-1]
            for line in complete[seen:]:
                seen += 1
                parts = line.split(" ", 2)
                if parts[0] == "done":
                    peak_kb = max(peak_kb, int(parts[1]))
                    continue
                i, what = int(parts[0]), parts[1]
                if what == "start":
                    current, since = i, time.monotonic()
                    continue
                current = None
                counts[what] += 1
                if what in ("uncaught", "hang"):
                    bugs[parts[2]] += 1
                    examples.setdefault(parts[2], i)
            if current is not None and time.monotonic() - since > HANG_S + 10:
                proc.kill()
                proc.wait()
                counts["hang"] += 1
                bugs["hang (killed by the watchdog)"] += 1
                examples.setdefault("hang (killed by the watchdog)", current)
                nxt = current + 1
                break
            if rc is not None:
                if current is not None:
                    what = f"crash (signal {-rc})" if rc < 0 else f"crash (exit {rc})"
                    counts["crash"] += 1
                    bugs[what] += 1
                    examples.setdefault(what, current)
                    nxt = current + 1
                elif seen == 0:
                    raise RuntimeError(f"fuzz worker {family} failed: {proc.stderr.read().decode()[-2000:]}")
                break
            time.sleep(0.2)
        proc.stderr.close()
        start = nxt
    done = sum(counts.values())
    return {"inputs": done, **counts, "seconds": round(time.perf_counter() - t0, 1), "bugs": dict(bugs),
            "first_input_of_each_bug": examples, "peak_rss_mb": round(peak_kb / 1024, 1)}


def replay(family, i, seed):
    seeds = all_families()[family]
    work = tempfile.mkdtemp(prefix="ckpt-replay-")
    target, victim, data, _ = input_for(family, seeds, i, seed, work)
    with open("fuzz-replay.bin", "wb") as f:
        f.write(data)
    print(f"input {i} of {family}: mutated {victim} (seed file {seeds[i % len(seeds)][0]}) -> ./fuzz-replay.bin")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--families", help="comma-separated subset")
    ap.add_argument("--replay", type=int, help="write input REPLAY of --families (one) to ./fuzz-replay.bin")
    ap.add_argument("--worker")
    ap.add_argument("--start", type=int)
    ap.add_argument("--end", type=int)
    ap.add_argument("--log")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.start, args.end, args.seed, args.log)
    if args.replay is not None:
        return replay(args.families, args.replay, args.seed)
    families = list(all_families())
    if args.families:
        families = [f for f in families if f in args.families.split(",")]
    per = args.inputs // len(families) + 1
    tmp = tempfile.mkdtemp(prefix="ckpt-fuzz-logs-")
    t0 = time.perf_counter()
    try:
        result = {"seed": args.seed, "families": {}}
        for f in families:
            result["families"][f] = run_family(f, per, args.seed, tmp)
            print(f"{f}: {json.dumps(result['families'][f])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fams = result["families"].values()
    keys = ("inputs", "ok", "rejected", "uncaught", "hang", "crash")
    result["total"] = {k: sum(f.get(k, 0) for f in fams) for k in keys}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = max(f["peak_rss_mb"] for f in fams)
    dump(result, args.json)
    t = result["total"]
    sys.exit(1 if t["uncaught"] or t["hang"] or t["crash"] else 0)


if __name__ == "__main__":
    main()
