"""`average(paths, out)`: the (weighted) mean of several checkpoints' weights, streamed one tensor at a time.

For every key the writer asks for, the tensor of every input is read from its memory map in chunks of CHUNK
elements, accumulated in float64 (measured against a compensated float32 sum in docs/average.md: as fast, and
exact to the last bit of the output dtype) and converted to the output dtype (bfloat16: round-to-nearest-even on
the float32 bits, as torch does). Peak anonymous memory is one output tensor plus two float64 chunks; torch is
never imported. Integer/bool tensors are never averaged: `int_buffers` picks them.
"""
from __future__ import annotations

import hashlib
import math
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.io.dtypes import widen_bfloat16
from ckpttool.io import hashing
from ckpttool.report.result import Report

CHUNK = 1 << 16  # elements per accumulation chunk: 512 KiB of float64, accumulator and widened input fit in L2
                 # (thread CPU time of 8 x 145 MB: 64K 0.21-0.24 s, 16K 0.29-0.30 s, 256K 0.30-0.35 s)
PREFETCH_BYTES = 16 << 20  # tensors computed ahead of the writer (a bigger tensor still goes alone)
PREFETCH_TENSORS = 64  # at most this many tensors computed ahead (zero-size ones weigh nothing)
INT_RULES = ("last", "max", "first", "error")
DTYPES = ("keep", "float32", "float16", "bfloat16")
INDEX_RE = re.compile(r"(index|indices|_idx$|^idx)", re.I)           # lookup tables: must agree
COUNTER_RE = re.compile(r"(num_batches_tracked|n_averaged|num_updates|steps?|count(er)?)$", re.I)  # may differ
BN_STATS = ("running_mean", "running_var")


def parse_weights(text: str | None, n: int) -> list[float]:
    """'1,2,1' -> [0.25, 0.5, 0.25]; None -> uniform."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [1.0 / n] * n
    try:
        raw = [float(x) for x in text.split(",")] if isinstance(text, str) else [float(x) for x in text]
    except ValueError:
        raise CkptError(f"--weights expects comma-separated numbers, got {text!r}") from None
    if len(raw) != n:
        raise CkptError(f"--weights has {len(raw)} value(s) for {n} checkpoint(s)")
    if any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
        raise CkptError(f"--weights must be finite, non-negative and not all zero, got {text!r}")
    total = sum(raw)
    return [w / total for w in raw]


def open_inputs(paths, section: str | None = None) -> list:
    """(path, Checkpoint, StateDict) per input, through the safe reader; refuses files that would run code."""
    from ckpttool.io import load

    if not paths:
        raise CkptError("no checkpoints to average")
    out = []
    for p in paths:
        ck = load(os.fspath(p))
        ck.require_safe()
        out.append((ck.path, ck, ck.state_dict(section)))
    return out


def plan(inputs, intersection: bool = False) -> tuple[list[str], list[dict]]:
    """Keys to average (first input's order) and the keys left out. Differences are one error unless
    `intersection`, which keeps the keys every input has with one shape and kind."""
    names = [os.path.basename(p) for p, _, _ in inputs]
    sds = [sd for _, _, sd in inputs]
    common = [k for k in sds[0] if all(k in sd for sd in sds[1:])]
    skipped, problems = [], []
    for i, sd in enumerate(sds):
        missing = [k for k in sds[0] if k not in sd] if i else []
        extra = [k for k in sd if k not in sds[0]]
        if missing:
            problems.append(f"{len(missing)} key(s) of {names[0]} missing from {names[i]} ({_few(missing)})")
        if extra:
            problems.append(f"{len(extra)} key(s) only in {names[i]} ({_few(extra)})")
        skipped += [{"key": k, "reason": f"missing from {names[i]}"} for k in missing]
        skipped += [{"key": k, "reason": f"only in {names[i]}"} for k in extra]
    keys = []
    for k in common:
        refs = [sd[k] for sd in sds]
        shapes = {r.shape for r in refs}
        kinds = {_kind(r) for r in refs}
        if len(shapes) > 1:
            desc = " vs ".join(f"{list(r.shape)} in {n}" for r, n in zip(refs, names))
            problems.append(f"shape of {k}: {desc}")
            skipped.append({"key": k, "reason": "shapes differ"})
        elif len(kinds) > 1:
            desc = " vs ".join(f"{r.dtype} in {n}" for r, n in zip(refs, names))
            problems.append(f"dtype of {k}: {desc}")
            skipped.append({"key": k, "reason": "dtypes differ"})
        else:
            keys.append(k)
    if problems and not intersection:
        raise CkptError("inputs do not match (--intersection averages the common keys): " + "; ".join(problems))
    if not keys:
        raise CkptError("the inputs have no key in common")
    return keys, skipped


def _few(keys, n=3):
    return ", ".join(keys[:n]) + (f", … {len(keys) - n} more" if len(keys) > n else "")


def _kind(ref) -> str:
    """Floating tensors may mix precisions (averaged in float64); others must have one dtype."""
    if ref.dtype.startswith("float8"):
        return ref.dtype
    return "complex" if ref.dtype.startswith("complex") else "float" if ref.is_floating else ref.dtype


# --- values ---------------------------------------------------------------------------------------------------
def _flat(ref):
    import numpy as np

    arr = ref.raw()
    return arr.reshape(-1) if ref.is_contiguous() else np.ascontiguousarray(arr).reshape(-1)


def _as_float(src, dtype: str, scratch):
    """A chunk of raw values as something numpy adds exactly into float64 (bfloat16: its float32 bits)."""
    if dtype != "bfloat16":
        return src
    return widen_bfloat16(src, scratch)


def bf16_bits(f32):
    """float32 -> bfloat16 bits (uint16), round-to-nearest-even; NaN -> 0x7FC0 like torch."""
    import numpy as np

    bits = np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32)
    rounded = (bits + ((bits >> 16) & 1) + np.uint32(0x7FFF)) >> 16
    nan = np.isnan(f32)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded.astype(np.uint16)


def mean_bytes(refs, weights, out_dtype: str):
    """The weighted mean of same-shape floating tensors as contiguous little-endian bytes of `out_dtype`;
    `weights` None: the plain mean (sum, then divide by N, as numpy and torch compute it)."""
    import numpy as np

    n = refs[0].numel
    cplx = out_dtype.startswith("complex")
    acc_t = np.complex128 if cplx else np.float64
    out = np.empty(n, dtype=np.uint16 if out_dtype == "bfloat16" else np.dtype(_np_name(out_dtype)))
    if n == 0:
        return b""
    m = min(CHUNK, n)
    acc, tmp = np.empty(m, acc_t), np.empty(m, acc_t)
    scratch = np.empty(m, np.uint32) if any(r.dtype == "bfloat16" for r in refs) else None
    srcs = [_flat(r) for r in refs]
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        a, t = acc[: e - s], tmp[: e - s]
        for i, (src, ref) in enumerate(zip(srcs, refs)):
            dst = t if i else a
            np.copyto(dst, _as_float(src[s:e], ref.dtype, scratch))   # exact widening, an unbuffered loop
            if weights is not None:
                np.multiply(dst, weights[i], out=dst)
            if i:
                np.add(a, t, out=a)
        if out_dtype == "bfloat16":
            if weights is None:
                np.divide(a, len(refs), out=a)
            out[s:e] = bf16_bits(a.astype(np.float32))
        elif weights is None:   # divided in float64, rounded once into the output dtype (as out[s:e] = a / n)
            np.divide(a, len(refs), out=out[s:e], casting="same_kind")
        else:
            out[s:e] = a
    return memoryview(out).cast("B")


def _np_name(dtype: str) -> str:
    from ckpttool.io.dtypes import by_name

    d = by_name(dtype)
    if d.numpy is None:
        raise CkptError(f"cannot average {dtype} tensors")
    return d.numpy


def pick_int(key: str, refs, rule: str, names) -> tuple[object, str | None]:
    """The value an integer/bool tensor gets under `rule`, and a warning when inputs differ unexpectedly.
    Index buffers (e.g. relative_position_index) that differ are an error under every rule."""
    import numpy as np

    vals = [np.asarray(r.raw()) for r in refs]
    same = all(np.array_equal(vals[0], v) for v in vals[1:])
    if same:
        return vals[-1], None
    leaf = key.rsplit(".", 1)[-1]
    which = ", ".join(n for n, v in zip(names, vals) if not np.array_equal(v, vals[0])) or names[-1]
    if rule == "error" or INDEX_RE.search(leaf):
        raise CkptError(f"integer tensor {key} differs between inputs ({names[0]} vs {which})"
                        + ("; an index buffer must be identical" if rule != "error" else " and --int-buffers error"))
    if rule == "first":
        value = vals[0]
    elif rule == "max":
        value = np.maximum.reduce(vals)
    else:
        value = vals[-1]
    warn = None if COUNTER_RE.search(leaf) else f"{key} ({refs[0].dtype}) differs between inputs; took the {rule}"
    return value, warn


# --- provenance -----------------------------------------------------------------------------------------------
class InputDigests:
    """sha256 of every input, computed in the same pass as the average and from the same pages: after each tensor,
    every input file is hashed up to the end of that tensor's storage, through the reader's own memory map, on
    threads (one per core; hashlib releases the GIL) that follow the averaging, so the hash reads what the average
    has just read instead of traversing the inputs again. The rest of each file (pickle, other sections, the zip
    directory) is hashed when the average is done. For a file this is `ckpttool.io.hashing.digest`'s value;
    folders (DCP, sharded) go through `digest` itself."""

    def __init__(self, inputs):
        """Digests `ckpttool.io.hashing` remembers for an unchanged input are taken from there, not recomputed;
        those computed here are handed back to it by `result`."""
        self.paths = [os.path.abspath(p) for p, _, _ in inputs]
        self.stamps = [hashing.stamp(p) for p in self.paths]
        self.started = time.time_ns()
        self.digests = {p: hit for p, key in zip(self.paths, self.stamps) if (hit := hashing.known(key))}
        self.error, self.cancelled = None, False
        self.files = [None if p in self.digests else _mapped_file(p, sd) for p, (_, _, sd) in zip(self.paths, inputs)]
        self.hashes = [None if f is None else hashlib.sha256() for f in self.files]
        self.pos = [0] * len(inputs)
        n = max(1, min(len(inputs), os.cpu_count() or 1))
        self.queues = [queue.SimpleQueue() for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(q,), daemon=True) for q in self.queues]
        for t in self.threads:
            t.start()

    def feed(self, refs) -> None:
        """The average has read `refs` (one TensorRef per input): hash each input up to the end of its storage."""
        for i, ref in enumerate(refs):
            storage = getattr(ref, "storage", None)
            if self.files[i] is not None and getattr(storage, "file", None) is self.files[i]:
                self.queues[i % len(self.queues)].put((i, storage.offset + storage.nbytes))

    def result(self, cancel: bool = False) -> dict:
        """{absolute path: sha256 hex} of every input (waits for the hashing to finish; `cancel`: stop it)."""
        if self.cancelled or not self.threads[0].is_alive() and self.queues[0].empty():
            return self.digests
        self.cancelled = cancel
        for i in range(len(self.paths)):
            self.queues[i % len(self.queues)].put((i, None))
        for q in self.queues:
            q.put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise CkptError(f"cannot hash input: {self.error}")
        if not cancel:
            for p, key, f in zip(self.paths, self.stamps, self.files):
                if f is not None:
                    hashing.remember(p, key, self.digests[p], self.started)
        return self.digests

    def _run(self, q) -> None:
        while (item := q.get()) is not None:
            i, stop = item
            if self.error is not None or self.cancelled:
                continue
            try:
                f = self.files[i]
                if f is None:  # known, a folder, or data the reader does not map from the file itself
                    if self.paths[i] not in self.digests:
                        self.digests[self.paths[i]] = hashing.digest(self.paths[i])
                    continue
                stop = f.size if stop is None else min(stop, f.size)
                if stop > self.pos[i]:
                    self.hashes[i].update(f.view(self.pos[i], stop - self.pos[i]))
                    self.pos[i] = stop
                if item[1] is None:
                    self.digests[self.paths[i]] = self.hashes[i].hexdigest()
            except (OSError, ValueError, CkptError) as exc:
                self.error = exc


def _mapped_file(path: str, sd):
    """The reader's memory map of the file `path` (shared by its tensors), a new one if none, None for folders."""
    if not os.path.isfile(path):
        return None
    real = os.path.realpath(path)
    for ref in sd.values():
        f = getattr(getattr(ref, "storage", None), "file", None)
        if f is not None and hasattr(f, "view") and os.path.realpath(f.path) == real:
            return f
    from ckpttool.io.tensor import MappedFile

    return MappedFile(path)


# --- the command ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AverageReport(Report):
    """What `average` (and `greedy_soup`, `run_average`) did; `to_dict()` is the `ckpt average --format json`
    object (keys: docs/average.md)."""

    output: str                    # the absolute path written
    bytes: int
    tensors: int
    method: str                    # uniform | weighted | greedy-soup
    inputs: list                   # [{path, sha256, weight, epoch, iter, …}]
    section: str
    int_buffers: str
    dtype: str
    averaged: int                  # floating tensors averaged
    picked: int                    # integer/bool tensors taken by `int_buffers`
    skipped: list                  # keys left out (intersection=True), with the reason
    warnings: list
    state_dict_bytes: int
    stripped_prefixes: list
    bn_stale: bool                 # BatchNorm statistics are averages, not statistics of the averaged weights
    notes: list
    metric: str | None = None      # greedy soups, and inputs chosen from a work_dir: the metric
    mode: str | None = None        # greedy soups: max | min
    soup_metric: float | None = None
    steps: list | None = None      # greedy soups: [{candidate, metric, soup_metric, kept}] best-first
    ingredients: list | None = None
    update_bn: dict | None = None  # with update_bn=CONFIG: config, batches, bn_layers, tensors …
    selected: list | None = None   # inputs chosen from a work_dir: [{checkpoint, epoch, iter, metric}]


def average(paths, out: str, weights=None, section: str | None = None, int_buffers: str = "last",
            dtype: str = "keep", intersection: bool = False, force: bool = False, method: str | None = None,
            extra_meta: dict | None = None, hash_inputs: bool = True, progress: bool | None = None) -> AverageReport:
    """Average `paths` into `out` (`{"meta", "state_dict"}` torch zip, or .safetensors); returns an AverageReport.
    `progress`: bars of the bytes averaged and written, then verified (ckpttool.report.progress)."""
    from ckpttool.io.write import check_output

    if int_buffers not in INT_RULES:
        raise CkptError(f"--int-buffers must be one of {', '.join(INT_RULES)}")
    if dtype not in DTYPES:
        raise CkptError(f"--dtype must be one of {', '.join(DTYPES)}")
    inputs = open_inputs(paths, section)
    in_paths = [p for p, _, _ in inputs]
    check_output(out, in_paths, force)
    w = parse_weights(weights, len(inputs))
    keys, skipped = plan(inputs, intersection)
    names = [os.path.basename(p) for p in in_paths]
    sds = [sd for _, _, sd in inputs]
    uniform = None if len(set(w)) == 1 else w

    warnings, out_dtypes, int_keys = [], {}, []
    for k in keys:
        refs = [sd[k] for sd in sds]
        if refs[0].dtype.startswith("float8"):
            raise CkptError(f"{k}: cannot average {refs[0].dtype} tensors")
        if refs[0].is_floating:
            have = sorted({r.dtype for r in refs})
            keep = have[0] if len(have) == 1 else ("complex128" if _kind(refs[0]) == "complex" else "float32")
            out_dtypes[k] = keep if dtype == "keep" or _kind(refs[0]) == "complex" else dtype
            if len(have) > 1 and dtype == "keep":
                warnings.append(f"{k}: inputs mix {', '.join(have)}; written as {keep}")
        else:
            int_keys.append(k)
            _, warn = pick_int(k, refs, int_buffers, names)   # check all before writing anything
            if warn:
                warnings.append(warn)

    bn = [k for k in keys if k.endswith(BN_STATS)]
    meta = _meta(inputs, w, method, section, int_buffers, dtype, intersection, skipped, extra_meta, bool(bn))
    total = sum(sds[0][k].nbytes for k in keys)

    digests = InputDigests(inputs) if hash_inputs else None

    def make(k):
        refs = [sd[k] for sd in sds]
        data = mean_bytes(refs, uniform, out_dtypes[k]) if k in out_dtypes else _int_bytes(k, refs, int_buffers,
                                                                                             names)
        if digests is not None:
            digests.feed(refs)
        return data

    outs = [(k, out_dtypes.get(k, sds[0][k].dtype), sds[0][k].shape) for k in keys]
    try:
        written = write_streamed(out, meta, outs, make, in_paths, force, digests, progress)
    except BaseException:
        if digests is not None:
            digests.result(cancel=True)  # never leave hashing threads behind
        raise
    result = {"output": written["path"], "bytes": written["bytes"], "tensors": written["tensors"],
              "method": meta["method"], "inputs": meta["inputs"], "section": meta["section"],
              "int_buffers": int_buffers, "dtype": dtype, "averaged": len(out_dtypes), "picked": len(int_keys),
              "skipped": skipped, "warnings": warnings, "state_dict_bytes": total,
              "stripped_prefixes": sorted({sd.stripped_prefix for sd in sds if sd.stripped_prefix}),
              "bn_stale": bool(bn), "notes": []}
    if bn:
        result["notes"].append(f"{len(bn)} BatchNorm statistics tensors are averages of the inputs' running "
                               "statistics, not statistics of the averaged weights: recalibrate with --update-bn "
                               "CONFIG (docs/average.md)")
    return AverageReport.from_dict(result)


def write_streamed(out: str, meta: dict, outs, make, inputs, force: bool, digests=None, progress=None) -> dict:
    """Write `outs` [(key, dtype, shape)] whose bytes `make(key)` computes, through `atomic_output`, verified
    against the CRC32 of every byte as it was produced (`Written.verify`, one read-back, no re-parsing).

    torch zip: a worker thread computes (and CRCs, while the bytes are hot) the next tensors while this one is
    written, at most PREFETCH_BYTES ahead, so memory stays about one tensor; the meta (with the inputs' digests)
    is pickled after the last tensor. safetensors lists every tensor (and the meta) in its header before any data:
    the header is written with same-length placeholder digests and rewritten once the data is done."""
    from concurrent.futures import ThreadPoolExecutor

    from ckpttool.io.write import OutTensor, atomic_output, sync_behind, write_safetensors, write_torch_zip
    from ckpttool.report.progress import bar

    name = os.path.basename(str(out))
    ticks = bar(sum(_nbytes(o) for o in outs), f"averaging into {name}", "B", progress)

    def compute(k):
        data = make(k)
        return data, hashing.crc32(data)

    def piped(pool, f):
        pending, todo = deque(), deque(outs)
        queued = 0  # bytes in `pending`, kept as a running sum (the queue is also capped in tensors)
        while todo or pending:
            while todo and len(pending) < PREFETCH_TENSORS and (
                    not pending or queued + _nbytes(todo[0]) <= PREFETCH_BYTES):
                o = todo.popleft()
                queued += _nbytes(o)
                pending.append((o, pool.submit(compute, o[0])))
            (k, dt, shape), fut = pending.popleft()
            queued -= _nbytes((k, dt, shape))
            data, crc = fut.result()
            yield k, OutTensor(dt, shape, _Once(data), crc)  # the writer keeps its OutTensors: drop the bytes
            ticks.update(len(data))                          # back here once the writer has written it
            del data
        if digests is not None:  # the torch-zip writer pickles meta after the last tensor
            syncs.append(sync_behind(f, pool))   # the disk takes the tensors while the inputs' hashing finishes
            _fill_hashes(meta, digests.result())

    def final_meta():
        _fill_hashes(meta, digests.result())
        return meta

    def ticked(k):
        data = make(k)
        ticks.update(len(data))
        return data

    with atomic_output(out, force=force, inputs=inputs) as f:
        with ticks:
            if str(out).endswith(".safetensors"):
                if digests is not None:
                    _fill_hashes(meta, {p: "0" * 64 for p in digests.paths})
                lazy = ((k, OutTensor(dt, shape, lambda k=k: ticked(k))) for k, dt, shape in outs)
                written = write_safetensors(f, meta, lazy, final_meta=final_meta if digests is not None else None)
            else:
                syncs = []
                with ThreadPoolExecutor(1) as pool:   # joined before atomic_output's fsync and close
                    written = write_torch_zip(f, meta, piped(pool, f))
                for fut in syncs:
                    fut.result()   # an I/O error of the early sync fails the write here, before publishing
        written.verify(name, progress)
        size = f.tell()
    return {"path": os.path.abspath(out), "tensors": written.tensors, "bytes": size}


class _Once:
    """A data callable that hands its bytes out once and forgets them."""

    def __init__(self, data):
        self.data = data

    def __call__(self):
        data, self.data = self.data, None
        return data


def _nbytes(o) -> int:
    from ckpttool.io.dtypes import by_name

    return math.prod(o[2]) * by_name(o[1]).itemsize


def _int_bytes(key, refs, rule, names):
    import numpy as np

    value, _ = pick_int(key, refs, rule, names)
    return memoryview(np.ascontiguousarray(value)).cast("B") if np.asarray(value).size else b""


def _fill_hashes(meta: dict, digests: dict) -> None:
    for row in meta["inputs"]:
        row["sha256"] = digests.get(row["path"])


def _meta(inputs, weights, method, section, rule, dtype, intersection, skipped, extra, bn) -> dict:
    uniform = len(set(weights)) == 1
    rows = []
    for (path, ck, sd), w in zip(inputs, weights):
        row = {"path": os.path.abspath(path), "sha256": None, "weight": w}
        for k in ("epoch", "iter"):
            if isinstance(ck.meta.get(k), int):
                row[k] = ck.meta[k]
        rows.append(row)
    meta = {"ckpt_average": 1, "method": method or ("uniform" if uniform else "weighted"), "inputs": rows,
            "section": section or inputs[0][1].weights_key or "(root)", "int_buffers": rule, "dtype": dtype,
            "accumulator": "float64", "intersection": intersection, "skipped_keys": [s["key"] for s in skipped]}
    if bn:
        meta["bn_stats"] = "averaged running statistics (stale); recalibrate with `ckpt average --update-bn`"
    last_meta = inputs[-1][1].meta
    if isinstance(last_meta.get("dataset_meta"), dict):
        meta["dataset_meta"] = last_meta["dataset_meta"]
    meta.update(extra or {})
    return meta


# --- BatchNorm recalibration ----------------------------------------------------------------------------------
def update_bn(path: str, config: str, batches: int = 100, cfg_options=None, device: str | None = None,
              progress: bool | None = None) -> dict:
    """Recompute the BatchNorm statistics of the averaged model in `path` (rewritten atomically): build the
    model of the mmengine `config`, load the weights through the safe reader, reset every BN layer to a
    cumulative average (momentum None) and run `batches` batches of `train_dataloader` in train mode.
    `device=None`: cuda when torch sees one, else cpu. `progress`: a bar of the batches (rate, ETA)."""
    import torch

    from ckpttool.integrations.openmmlab import (build_model, load_checkpoint, load_config, recalibrate_bn,
                                                 resolve_device)
    from ckpttool.io import load
    from ckpttool.io.layout import plain
    from ckpttool.io.write import save

    if batches < 1:
        raise CkptError("--bn-batches must be >= 1")
    cfg = load_config(config, cfg_options)
    if "train_dataloader" not in cfg:
        raise CkptError(f"{config} has no train_dataloader to recalibrate BatchNorm with")
    device = resolve_device(device)
    model = build_model(cfg, device=device)
    load_checkpoint(model, path)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    if not bns:
        raise CkptError("the model of the config has no BatchNorm layers; nothing to recalibrate")
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None
    seen = recalibrate_bn(model, cfg, batches, config, progress)
    new = {}
    for name, m in bns.items():
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(m, buf, None) is not None:
                new[f"{name}.{buf}" if name else buf] = getattr(m, buf).detach().cpu().clone()
    ck = load(path)
    sd = ck.state_dict()
    missing = [k for k in new if k not in sd]
    if missing:
        raise CkptError(f"BatchNorm buffers of the model are not in {path}: {_few(missing)}")
    meta = plain(ck.meta) if ck.meta else _safetensors_meta(ck.root)
    meta["bn_stats"] = f"recalibrated on {seen} batch(es) of train_dataloader of {os.path.abspath(config)}"
    items = ((k, new[k].to(getattr(torch, t.dtype)) if k in new else t) for k, t in sd.items())
    save(path, items, meta=meta, force=True, progress=progress)
    return {"config": os.path.abspath(config), "batches": seen, "bn_layers": len(bns), "tensors": len(new),
            "device": device}


def _safetensors_meta(root) -> dict:
    """The meta our safetensors writer stores as JSON in `__metadata__.ckpt_meta`."""
    import json

    md = root.get("__metadata__") if isinstance(root, dict) else None
    try:
        return json.loads(md["ckpt_meta"]) if isinstance(md, dict) and "ckpt_meta" in md else {}
    except ValueError:
        return {}
