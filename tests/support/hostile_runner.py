"""Run the six `ckpt` commands on every file of the hostile corpus, each bounded, and judge the outcomes.

A *job* is one command line on one file. Jobs run in a child Python process (a batch: imports paid once) under
RLIMIT_AS; the parent is a watchdog: a job that runs past ``timeout_s`` or kills its process (SIGSEGV, SIGBUS,
the OOM of the address-space limit) is recorded as such and the batch restarts after it. Every job gets its own
cwd (a payload that ran would leave ``HOSTILE_SENTINEL_*`` there) and its own output folder (which must stay empty
when the command refuses). Peak RSS is per job (``/proc/self/clear_refs`` resets VmHWM before each job).

    python -m tests.support.hostile_runner [--only a,b] [--findings /work/wt/hostile-findings.md]

prints (and optionally writes as markdown) what still gets through, case by case.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from tests.support import hostile_corpus as hc

TIMEOUT_S = 12          # watchdog: the job is killed (a hang)
TIME_LIMIT_S = 10.0     # bounded time: a command slower than this on a <= 2 MB file fails the check
RSS_LIMIT_MB = 1024     # bounded memory: peak RSS of the command (the process holds numpy/torch already)
AS_LIMIT = 3 << 30      # RLIMIT_AS of the batch process
COMMANDS = ("inspect", "diff", "graft", "average", "runs", "eval")
PICKLE_FORMS = {"pickle", "zip", "legacy", "torchscript"}
# a refusal of a file that would run code must say so (not e.g. "holds no tensors")
SAFETY_WORDS = re.compile(r"code|unsafe|danger|refus|trust|not allow|allow-list|verdict|global", re.I)


# ---- jobs ------------------------------------------------------------------------------------------------------
def commands_for(info: dict) -> tuple[str, ...]:
    form = info["form"]
    if form == "workdir":
        return ("runs",)
    cmds = ["inspect", "diff", "graft", "average"]
    if form != "sharded":
        cmds.append("runs")
    if form in PICKLE_FORMS:
        cmds.append("eval")
    return tuple(cmds)


def argv_for(cmd: str, target: str, template: str, cwd: Path, info: dict) -> list[str]:
    out = cwd / "out"
    if cmd == "inspect":
        return ["inspect", target, "--stats", "--format", "json"]
    if cmd == "diff":
        return ["diff", template, target, "--format", "json"]
    if cmd == "graft":
        return ["graft", target, "--into", template, "-o", str(out / "g.pth"), "--format", "json"]
    if cmd == "average":
        return ["average", target, target, "-o", str(out / "a.pth"), "--format", "json"]
    if cmd == "runs":
        if info["form"] == "workdir":
            return ["runs", target, "--format", "json"]
        wd = cwd / "work_dir"
        wd.mkdir(exist_ok=True)
        shutil.copyfile(target, wd / "epoch_1.pth")
        return ["runs", str(wd), "--format", "json"]
    if cmd == "eval":
        return ["eval", "--task", "ntu60", "--preds", target, "--format", "json"]
    raise ValueError(cmd)


def build_jobs(manifest: dict, corpus: Path, work: Path, only=None) -> list[dict]:
    template = str(corpus / manifest["template"])
    jobs = []
    for name, info in sorted(manifest["cases"].items()):
        if only and name not in only:
            continue
        target = str(hc.case_path(corpus, info))
        for cmd in commands_for(info):
            cwd = work / f"{name}--{cmd}"
            (cwd / "out").mkdir(parents=True)
            jobs.append({"id": f"{name}:{cmd}", "group": name, "cmd": cmd, "cwd": str(cwd),
                         "argv": argv_for(cmd, target, template, cwd, info)})
    return jobs


# ---- the batch child -------------------------------------------------------------------------------------------
def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) // 1024
    return -1


def _child(jobs_path: str, start: int, results_path: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    import gc

    import numpy  # noqa: F401 - paid once, not in the first job's time (torch is imported by the jobs needing it)
    from click.testing import CliRunner

    from ckpttool.cli.main import cli

    jobs = json.loads(Path(jobs_path).read_text())
    runner = CliRunner()
    with open(results_path, "a") as out:
        for job in jobs[start:]:
            out.write(json.dumps({"start": job["id"]}) + "\n")
            out.flush()
            os.chdir(job["cwd"])
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            rss0 = _vm("VmRSS")
            t0 = time.perf_counter()
            res = runner.invoke(cli, job["argv"], catch_exceptions=True)
            dt = time.perf_counter() - t0
            exc = None
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                tb = traceback.extract_tb(res.exception.__traceback__)
                where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
                exc = f"{type(res.exception).__name__} at {where}: {str(res.exception)[:200]}"
            os.chdir("/")
            r = {"id": job["id"], "status": "ok", "rc": res.exit_code, "seconds": round(dt, 3),
                 "rss_mb": _vm("VmHWM"), "rss0_mb": rss0, "stdout": res.stdout[-20000:],
                 "stderr": res.stderr[-4000:], "exception": exc,
                 "sentinel": sorted(n for n in os.listdir(job["cwd"]) if n.startswith(hc.SENT)),
                 "written": sorted(os.listdir(os.path.join(job["cwd"], "out")))}
            out.write(json.dumps(r) + "\n")
            out.flush()
            del res, r  # the exception's frames hold what the job built: free it before the next job's peak
            gc.collect()


# ---- the watchdog parent ---------------------------------------------------------------------------------------
def _limit_as():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    os.nice(5)


def _run_batch(jobs: list[dict], workdir: Path, tag: str, timeout_s: float) -> dict[str, dict]:
    jobs_path = workdir / f"jobs-{tag}.json"
    results_path = workdir / f"results-{tag}.jsonl"
    jobs_path.write_text(json.dumps(jobs))
    index = {j["id"]: i for i, j in enumerate(jobs)}
    results: dict[str, dict] = {}
    start = 0
    env = {**os.environ, "PYTHONPATH": str(hc.ROOT), "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
           "CI": "true"}
    while start < len(jobs):
        open(results_path, "w").close()
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from tests.support.hostile_runner import _child;"
                                 "_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])",
                                 str(jobs_path), str(start), str(results_path)],
                                cwd=str(hc.ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=_limit_as)
        current, since, lines_seen = None, time.monotonic(), 0
        next_start = len(jobs)
        while True:
            rc = proc.poll()
            with open(results_path) as f:
                lines = f.read().splitlines()
            for line in lines[lines_seen:]:
                if not line.endswith("}"):
                    break
                lines_seen += 1
                rec = json.loads(line)
                if "start" in rec:
                    current, since = rec["start"], time.monotonic()
                else:
                    results[rec["id"]] = rec
                    current = None
            if current is not None and time.monotonic() - since > timeout_s:
                proc.kill()
                proc.wait()
                results[current] = {"id": current, "status": "timeout", "seconds": timeout_s}
                next_start = _after(jobs, index[current], results)
                break
            if rc is not None:
                if current is not None:  # died inside a job
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    how = f"signal {-rc}" if rc < 0 else f"exit {rc}"
                    results[current] = {"id": current, "status": f"crash ({how})",
                                        "stderr": "\n".join(err[-3:])}
                    next_start = _after(jobs, index[current], results, hung=False)
                elif len(results) < len(jobs) and start < len(jobs) and not any(
                        j["id"] in results for j in jobs[start:]):
                    err = proc.stderr.read().decode(errors="replace")
                    raise RuntimeError(f"hostile batch child failed to start:\n{err[-3000:]}")
                break
            time.sleep(0.05)
        start = next_start
    return results


def _after(jobs, i, results, hung=True) -> int:
    """Index to restart at after job i died; after a hang, skip the same file's remaining commands."""
    j = i + 1
    if hung:
        while j < len(jobs) and jobs[j]["group"] == jobs[i]["group"]:
            results[jobs[j]["id"]] = {"id": jobs[j]["id"], "status": "skipped (an earlier command on this file hung)"}
            j += 1
    return j


def run_jobs(jobs: list[dict], workdir: Path, workers: int = 2, timeout_s: float = TIMEOUT_S) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for j in jobs:
        groups.setdefault(j["group"], []).append(j)
    shards: list[list[dict]] = [[] for _ in range(workers)]
    for i, g in enumerate(sorted(groups)):
        shards[i % workers].extend(groups[g])
    results: dict[str, dict] = {}
    errors = []

    def work(k):
        try:
            results.update(_run_batch(shards[k], workdir, str(k), timeout_s))
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers) if shards[k]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ---- judging -------------------------------------------------------------------------------------------------
def verdict_of(stdout: str) -> str | None:
    """The safety verdict `inspect --format json` reports (new API: safety.verdict; old: suspicious_globals)."""
    try:
        obj = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("safety"), dict):
        return obj["safety"].get("verdict")
    return "code" if obj.get("suspicious_globals") else "data"  # the reader before issue 11: no safety.verdict


def new_api(results: dict) -> bool:
    """Whether the reader under test reports `safety.verdict` (issue 11's API) in `inspect --format json`."""
    for r in results.values():
        if r.get("id", "").endswith(":inspect") and r.get("rc") == 0:
            try:
                return "safety" in json.loads(r["stdout"])
            except ValueError:
                continue
    return False


def tensors_of(stdout: str):
    try:
        return json.loads(stdout).get("num_tensors")
    except (ValueError, AttributeError):
        return None


def problems(info: dict, results: dict[str, dict]) -> list[str]:
    """Everything wrong with how the commands treated this case (empty: the case is handled)."""
    out = []
    name, expect = info["name"], info["expect"]
    for cmd in commands_for(info):
        r = results.get(f"{name}:{cmd}")
        if r is None:
            out.append(f"{cmd}: no result")
            continue
        if r["status"] != "ok":
            out.append(f"{cmd}: {r['status']}" + (f" [{r.get('stderr', '')[-200:]}]" if r.get("stderr") else ""))
            continue
        rc, err = r["rc"], r["stderr"].strip()
        tag = f"{cmd}: exit {rc}, {r['seconds']:.2f}s, {r['rss_mb']} MB"
        if r["sentinel"]:
            out.append(f"{tag}: PAYLOAD RAN ({r['sentinel']})")
        if r["exception"]:
            out.append(f"{tag}: uncaught {r['exception']}")
        if rc not in (0, 1, 2):
            out.append(f"{tag}: exit code not 0/1/2")
        if "Traceback" in err:
            out.append(f"{tag}: traceback on stderr")
        if rc == 2 and len(err.splitlines()) != 1:
            out.append(f"{tag}: stderr is {len(err.splitlines())} lines, not one")
        if rc == 2 and r["written"]:
            out.append(f"{tag}: refused but wrote {r['written']}")
        if r["seconds"] > TIME_LIMIT_S:
            out.append(f"{tag}: slower than {TIME_LIMIT_S:.0f}s")
        if r["rss_mb"] > RSS_LIMIT_MB:
            out.append(f"{tag}: peak RSS over {RSS_LIMIT_MB} MB")
        first = err.splitlines()[0][:160] if err else ""
        if cmd == "inspect":
            v = verdict_of(r["stdout"]) if rc == 0 else None
            if expect == "code" and not (rc == 0 and v == "code") and not (info.get("structural") and rc == 2):
                out.append(f"{tag}: expected DANGER (verdict 'code'), got " + (f"verdict {v!r}" if rc == 0 else
                                                                               f"refusal: {first}"))
            elif expect == "unsafe" and not (rc == 2 or v == "code"):
                out.append(f"{tag}: expected a refusal (or verdict 'code'), got verdict {v!r}")
            elif expect == "data":
                if rc != 0:
                    out.append(f"{tag}: a genuine file was refused: {first}")
                elif v != "data":
                    out.append(f"{tag}: a genuine file got verdict {v!r}")
                want = info.get("tensors") or (info.get("torch") or {}).get("tensors")
                if rc == 0 and want is not None and tensors_of(r["stdout"]) != want:
                    out.append(f"{tag}: read {tensors_of(r['stdout'])} tensors, torch reads {want}")
        elif expect in ("code", "unsafe"):
            # `runs` lists a work_dir's checkpoints by name and its logs' metrics without opening the checkpoints:
            # it may list the file (exit 0) as long as it never calls it safe; it may also flag or refuse it
            listed = cmd == "runs" and rc == 0 and '"verdict": "data"' not in r["stdout"]
            if rc != 2 and not listed:
                out.append(f"{tag}: expected a refusal (exit 2)")
            elif (rc == 2 and expect == "code" and not info.get("structural")
                  and not SAFETY_WORDS.search(first)):
                out.append(f"{tag}: refused, but not for safety: {first}")
        elif expect == "data":
            strict = {"diff": (0, 1), "average": (0,), "runs": (0,)}
            if info["cls"] == "4":
                strict["graft"] = (0, 1)
            if cmd in strict and rc not in strict[cmd]:
                out.append(f"{tag}: a genuine file failed: {first}")
    return out


def summary_line(info: dict, results: dict[str, dict]) -> str:
    bits = []
    for cmd in commands_for(info):
        r = results.get(f"{info['name']}:{cmd}") or {}
        if r.get("status") != "ok":
            bits.append(f"{cmd}={r.get('status', '?')}")
            continue
        extra = f"/{verdict_of(r['stdout'])}" if cmd == "inspect" and r["rc"] == 0 else ""
        bits.append(f"{cmd}={r['rc']}{extra} {r['seconds']:.1f}s {r['rss_mb']}MB")
    return "; ".join(bits)


def run_corpus(only=None, workers=2, keep=False, out: Path = hc.DEFAULT_OUT):
    manifest = hc.generate(out)
    for name, info in manifest["cases"].items():
        info["name"] = name
    work = Path(tempfile.mkdtemp(prefix="hostile-run-"))
    try:
        jobs = build_jobs(manifest, Path(out), work, only)
        t0 = time.monotonic()
        results = run_jobs(jobs, work, workers)
        took = time.monotonic() - t0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return manifest, results, took


def findings_markdown(manifest: dict, results: dict, took: float, head: str) -> str:
    lines = [f"# Hostile corpus findings ({head})", "",
             f"{len(manifest['cases'])} cases, {len(results)} command runs in {took:.0f} s "
             f"(2 workers, shared machine). Limits: {TIME_LIMIT_S:.0f} s and {RSS_LIMIT_MB} MB per command, "
             f"RLIMIT_AS {AS_LIMIT >> 30} GiB, watchdog {TIMEOUT_S} s. Reader API: "
             + ("issue 11 (`safety.verdict`)" if new_api(results) else
                "old (no `safety.verdict`: 'code' = suspicious_globals non-empty, else 'data')") + ". Regenerate: "
             "`PYTHONPATH=$PWD .venv/bin/python -m tests.support.hostile_runner --findings FILE`.", "",
             "Expectations: **code** = torch.load runs code / calls an unlisted global: `inspect` DANGER, others "
             "exit 2; **unsafe** = attacks the reader: exit 2 (inspect may show DANGER); **bounded** = any of "
             "0/1/2 in time and memory; **data** = genuine: read like torch.", ""]
    failing, passing = [], []
    for name, info in sorted(manifest["cases"].items(), key=lambda kv: (kv[1]["cls"], kv[0])):
        probs = problems(info, results)
        (failing if probs else passing).append((name, info, probs))
    lines += [f"## Still getting through: {len(failing)} of {len(manifest['cases'])}", ""]
    cls_now = None
    for name, info, probs in failing:
        if info["cls"] != cls_now:
            cls_now = info["cls"]
            lines += [f"### class {cls_now}", ""]
        t = info.get("torch") or {}
        truth = (f"torch.load: {t.get('outcome')}, payload ran: {t.get('payload_ran')}, tensors: {t.get('tensors')}"
                 if t else "no torch ground truth (work_dir)")
        lines.append(f"- **{name}** (`{info['gen']}`, expect {info['expect']}) — {info['title']}. _{truth}_")
        for p in probs[:8]:
            lines.append(f"  - {p}")
        if len(probs) > 8:
            lines.append(f"  - … {len(probs) - 8} more")
    lines += ["", f"## Handled: {len(passing)}", ""]
    for name, info, _ in passing:
        lines.append(f"- {name} (class {info['cls']}, {info['expect']}): {summary_line(info, results)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--findings")
    ap.add_argument("--head", default="")
    ap.add_argument("--out", default=str(hc.DEFAULT_OUT), help="corpus folder (generated there if stale)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    manifest, results, took = run_corpus(only, out=Path(args.out))
    if only:
        manifest["cases"] = {k: v for k, v in manifest["cases"].items() if k in only}
    md = findings_markdown(manifest, results, took, args.head or "this worktree")
    if args.findings:
        Path(args.findings).write_text(md)
    print(md)
