"""`publish`: a training checkpoint → a release file (weights + the meta downstream code needs).

load (our reader; files whose verdict is code are refused) → plan (which weights: EMA or raw; which meta; what is
dropped) → apply (optional cast to fp16/bf16) → verify (the writer reads every byte back; the file is then re-read
by our reader — same keys, shapes, dtypes, bytes and meta — and by `torch.load(weights_only=True)`) → write
(`ckpttool.io.write.save`, atomic). Without an explicit output name the file is written under a scratch name,
hashed, and then named `<stem>-<first 8 hex of its sha256>.pth`, as OpenMMLab's `tools/publish_model.py` names
files (it saves, runs sha256sum on the saved file, then renames).

The output is `{"meta": {...}, "state_dict": OrderedDict}` (torch zip) — readable by `torch.load(weights_only=True)`,
mmengine's `load_checkpoint` / `_load_checkpoint`, timm's `load_checkpoint` — or a safetensors file whose
`__metadata__["ckpt_meta"]` holds the meta as JSON. Meta values are plain dict/list/str/int/float/bool/None only.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ckpttool.errors import CkptError
from ckpttool.io.hashing import crc32, digest
from ckpttool.report.result import Report

WEIGHTS = ("default", "ema", "raw")
DTYPES = ("float16", "bfloat16")
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "float16": "float16", "bf16": "bfloat16",
                 "bfloat16": "bfloat16"}
TIMM_EMA = ("state_dict_ema", "model_ema")


@dataclass
class Dropped:
    """A top-level entry of the source that the published file does not carry."""
    section: str
    tensors: int
    bytes: int
    what: str


@dataclass(frozen=True)
class PublishReport(Report):
    """What `publish` did; `to_dict()` is the `ckpt publish --format json` object (keys: docs/publish.md)."""

    source: dict                   # path, sha256, bytes, format, layout
    weights: dict                  # choice ('ema'|'raw'|'weights'), section, tensors, params
    output: dict | None            # path, sha256, bytes, tensors, params, format, dtype; None on a dry run
    meta_keys: list
    dropped: list                  # [{section, tensors, bytes, what}]: the entries not carried
    cast: dict | None              # {"dtype", "tensors"} when a dtype was given
    verified: list
    notes: list
    dry_run: bool
    size: dict                     # before, after (None on a dry run), ratio

    @property
    def bytes_before(self) -> int:
        return self.size["before"]

    @property
    def bytes_after(self) -> int | None:
        return self.size["after"]


PublishResult = PublishReport  # its name before the typed results had a common base


# --- plan -----------------------------------------------------------------------------------------------------
def choose_weights(ck, which: str = "default"):
    """(section, StateDict, choice, note) for `which` in default / ema / raw.

    mmengine's EMAHook swaps the copies when it saves: `state_dict` holds the EMA weights (what `tools/test.py`
    and `ckpt eval` load) and `ema_state_dict` the raw ones (`module.`-prefixed, plus a `steps` counter).
    timm keeps the raw weights in `state_dict` (what its validate.py loads by default) and the EMA in
    `state_dict_ema`. The default is what evaluation loads: the file's weights section."""
    if which not in WEIGHTS:
        raise CkptError(f"weights must be one of {', '.join(WEIGHTS)}, got {which!r}")
    root = ck.root if isinstance(ck.root, dict) else {}
    kind = ck.layout.kind
    mmengine_ema = kind == "mmengine" and "ema_state_dict" in root
    timm_ema = next((k for k in TIMM_EMA if k in root), None) if "ema_state_dict" not in root else None
    if which == "ema":
        if mmengine_ema:
            return "state_dict", ck.state_dict(), "ema", "EMAHook swapped the EMA weights into state_dict at save"
        if timm_ema:
            return timm_ema, ck.state_dict(timm_ema), "ema", f"timm EMA copy ({timm_ema})"
        raise CkptError(f"{ck.path}: --ema, but the file holds no EMA copy (no ema_state_dict, state_dict_ema or "
                        "model_ema)")
    if which == "raw":
        if mmengine_ema:
            return "ema_state_dict", ck.state_dict("ema_state_dict"), "raw", \
                "EMAHook keeps the raw weights in ema_state_dict (module. prefix and steps counter removed)"
        return _weights_section(ck), ck.state_dict(), "raw", None if not timm_ema else "timm: state_dict is raw"
    sd = ck.state_dict()
    if mmengine_ema:
        return "state_dict", sd, "ema", "the weights evaluation loads: EMAHook swapped the EMA weights in"
    return _weights_section(ck), sd, ("raw" if timm_ema else "weights"), \
        ("the weights evaluation loads: timm's state_dict is raw; --ema takes " + timm_ema) if timm_ema else None


def _weights_section(ck) -> str:
    return ck.weights_key or "(root)"


def publish_meta(ck, source_sha256: str, section: str, choice: str, dtype: str | None) -> dict:
    """The source's meta as plain data (cfg text, dataset_meta, versions, epoch/iter, seed, …) plus a `publish`
    entry: where it came from (sha256), which weights, which dtype."""
    from ckpttool import __version__
    from ckpttool.plain import plain

    meta = plain(ck.meta, finite=True) if isinstance(ck.meta, dict) else {}
    meta = {k: v for k, v in meta.items() if k not in ("__metadata__",)}
    meta["publish"] = {"source": os.path.basename(ck.path), "source_sha256": source_sha256,
                       "weights": choice, "section": section, "dtype": dtype, "ckpt_version": __version__}
    return meta


def dropped_sections(ck, section: str) -> list[Dropped]:
    """Every top-level entry except the published weights and `meta`, with what it held."""
    from ckpttool.io.layout import count_tensors

    root = ck.root
    if not isinstance(root, dict) or ck.layout.weights_key is None:
        return []
    out = []
    for key, value in root.items():
        if key in (section, "meta") or (ck.layout.kind in ("timm", "lightning") and key in ck.meta):
            continue
        n, b = count_tensors(value)
        out.append(Dropped(str(key), n, b, _what(str(key), value)))
    return out


_KNOWN = {"optimizer": "optimizer state", "optimizer_states": "optimizer state", "param_schedulers": "LR schedulers",
          "lr_schedulers": "LR schedulers", "message_hub": "logged scalars and runtime info",
          "ema_state_dict": "the other weight copy (EMAHook)", "state_dict": "the other weight copy",
          "state_dict_ema": "the other weight copy (EMA)", "model_ema": "the other weight copy (EMA)",
          "amp": "AMP loss scaler", "scaler": "AMP loss scaler", "args": "training arguments",
          "loops": "Lightning loop state", "callbacks": "Lightning callback state"}


def _what(key: str, value) -> str:
    return _KNOWN.get(key, "other training state")


# --- apply ----------------------------------------------------------------------------------------------------
def out_tensors(sd, dtype: str | None, crcs: dict, counter: list):
    """(key, OutTensor) pairs: floating tensors cast to `dtype` (others as they are), bytes produced lazily and
    their CRC32 recorded in `crcs` for the re-read check."""
    from ckpttool.io.write import OutTensor

    for key, ref in sd.items():
        target = dtype if dtype and ref.is_floating and ref.dtype != dtype and ref.dtype in CASTABLE else ref.dtype
        if target != ref.dtype:
            counter[0] += 1
        yield key, OutTensor(target, tuple(ref.shape), _producer(key, ref, target, crcs))


CASTABLE = ("float32", "float64", "float16", "bfloat16")


def _producer(key, ref, target, crcs):
    def data():
        raw = _cast(key, ref, target)
        crcs[key] = crc32(raw)
        return raw
    return data


def _cast(key: str, ref, target: str):
    import numpy as np

    from ckpttool.io.write import _contiguous

    if target == ref.dtype:
        return _contiguous(ref.raw())
    values = np.ascontiguousarray(ref.numpy(), dtype=np.float32 if target == "bfloat16" else None)
    if target == "float16":
        with np.errstate(over="ignore"):
            out = values.astype(np.float16)
        bad = np.isinf(out) & np.isfinite(values)
        if bad.any():
            raise CkptError(f"{key}: {int(bad.sum())} value(s) overflow float16 (|x| > 65504), e.g. "
                            f"{float(values[bad].reshape(-1)[0]):g}; publish it as bfloat16 or keep its dtype")
        return _contiguous(out)
    from ckpttool.surgery.average import bf16_bits

    return _contiguous(bf16_bits(values).reshape(values.shape))


# --- verify ---------------------------------------------------------------------------------------------------
def verify_output(path: str, readable: str, keys: list, dtypes: dict, shapes: dict, crcs: dict, meta: dict) -> list:
    """Re-read the finished (still unnamed) file: our reader finds exactly the keys, shapes, dtypes and bytes
    written and the meta, and (for .pth) `torch.load(weights_only=True)` loads it. CkptError otherwise."""
    from ckpttool.io import load

    ck = load(readable)
    if ck.verdict != "data":
        raise CkptError(f"verification failed: {path} reads back with verdict {ck.verdict!r}")
    sd = ck.state_dict()
    if list(sd) != keys:
        raise CkptError(f"verification failed: {path} reads back {len(sd)} keys, {len(keys)} were written")
    for k, ref in sd.items():
        if ref.dtype != dtypes[k] or tuple(ref.shape) != shapes[k]:
            raise CkptError(f"verification failed: {k} reads back as {ref.dtype} {list(ref.shape)}")
        import numpy as np

        if crc32(memoryview(np.ascontiguousarray(ref.raw())).cast("B") if ref.numel else b"") != crcs[k]:
            raise CkptError(f"verification failed: {k} reads back different bytes")
    got = _read_meta(ck)
    if got != meta:
        raise CkptError(f"verification failed: {path}'s meta reads back different")
    checks = ["our reader: same keys, shapes, dtypes, bytes and meta; verdict 'data'"]
    if not path.endswith(".safetensors"):
        checks.append(_torch_load_check(readable, keys))
    return checks


def _read_meta(ck) -> dict:
    if ck.format == "safetensors":
        import json

        return json.loads(ck.root.get("__metadata__", {}).get("ckpt_meta", "{}"))
    return ck.root.get("meta") if isinstance(ck.root, dict) else None


def _torch_load_check(readable: str, keys: list) -> str:
    try:
        import torch
    except ImportError:
        return "torch.load not checked (torch is not installed)"
    try:
        obj = torch.load(readable, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CkptError(f"verification failed: torch.load(weights_only=True) refuses the output: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if list(obj.get("state_dict", {})) != keys:
        raise CkptError("verification failed: torch.load(weights_only=True) finds other keys")
    return "torch.load(weights_only=True) loads it"


# --- the whole run --------------------------------------------------------------------------------------------
def default_name(source: str, sha256: str, ext: str = ".pth") -> str:
    """`<stem>-<first 8 hex of sha256>.pth`, like OpenMMLab's publish_model.py (without its `rstrip('.pth')`,
    which also eats trailing p/t/h letters of the stem)."""
    stem = os.path.basename(os.fspath(source))
    for suffix in (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".pkl"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{sha256[:8]}{ext}"


def publish(source, out=None, *, weights: str = "default", dtype: str | None = None, force: bool = False,
            dry_run: bool = False) -> PublishReport:
    """Publish the training checkpoint `source`: its weights (`weights`: 'default' = what evaluation loads,
    'ema', 'raw'), optionally cast to `dtype` ('float16'/'bfloat16', floating tensors only), plus its meta, and
    nothing else (no optimizer, schedulers, message_hub, other weight copy).

    `out`: a file (.pth torch zip, or .safetensors), a directory, or None (the current directory); in a directory
    the name is `<stem>-<sha256[:8]>.pth` of the written file. Refuses (UnsafeError) a file whose verdict is code.
    The file is verified before it gets its name."""
    from ckpttool.io import load
    from ckpttool.io.write import check_output, publish_file, save, scratch_file

    source = os.fspath(source)
    if not os.path.exists(source):
        raise CkptError(f"checkpoint not found: {source}")
    if dtype is not None:
        if dtype not in DTYPE_ALIASES:
            raise CkptError(f"--dtype must be fp16 or bf16, got {dtype!r}")
        dtype = DTYPE_ALIASES[dtype]
    named = out is not None and not os.path.isdir(os.fspath(out))
    if named:
        out = os.fspath(out)
        if not out.endswith((".pth", ".pt", ".safetensors")):
            raise CkptError(f"{out}: the output must end in .pth/.pt (torch zip) or .safetensors")
        if not dry_run:
            check_output(out, [source], force)
    ck = load(source)
    ck.require_safe()
    section, sd, choice, note = choose_weights(ck, weights)
    src_sha = digest(source)
    meta = publish_meta(ck, src_sha, section, choice, dtype)
    dropped = [asdict(d) for d in dropped_sections(ck, section)]
    notes = [n for n in (note,) if n]
    if sd.stripped_prefix:
        notes.append(f"prefix {sd.stripped_prefix!r} removed from every key")
    if sd.extras:
        notes.append(f"non-tensor entries of {section} not carried: {', '.join(sorted(sd.extras))}")
    src = {"path": os.path.abspath(source), "sha256": src_sha, "bytes": ck.file_bytes, "format": ck.format,
           "layout": ck.layout.kind}
    chosen = {"choice": choice, "section": section, "tensors": len(sd), "params": sd.total_params}
    if dry_run:
        return _report(src, chosen, sorted(meta), dropped, notes, dry_run)
    crcs: dict = {}
    counter = [0]
    items = list(out_tensors(sd, dtype, crcs, counter))
    keys = [k for k, _ in items]
    dtypes = {k: t.dtype for k, t in items}
    shapes = {k: tuple(t.shape) for k, t in items}
    checks: list = []

    def verify(readable, path):
        checks[:] = verify_output(path, readable, keys, dtypes, shapes, crcs, meta)

    if named:
        info = save(out, items, meta, inputs=[source], force=force, verify_extra=lambda r: verify(r, out))
        final, sha = info["path"], digest(info["path"])
    else:
        directory = os.path.abspath(os.fspath(out) if out is not None else os.getcwd())
        near = os.path.join(directory, default_name(source, "0" * 8))
        with scratch_file(near, suffix=".pth") as tmp:
            info = save(tmp, items, meta, inputs=[source], force=True, verify_extra=lambda r: verify(r, tmp))
            sha = digest(tmp)
            final = publish_file(tmp, os.path.join(directory, default_name(source, sha)), force=force,
                                 inputs=[source])
    output = {"path": final, "sha256": sha, "bytes": info["bytes"], "tensors": info["tensors"],
              "params": sd.total_params, "format": "safetensors" if final.endswith(".safetensors") else "torch-zip",
              "dtype": dtype}
    return _report(src, chosen, sorted(meta), dropped, notes, dry_run, output,
                   {"dtype": dtype, "tensors": counter[0]} if dtype else None,
                   ["every byte reads back as written"] + checks)


def _report(source: dict, weights: dict, meta_keys: list, dropped: list, notes: list, dry_run: bool,
            output: dict | None = None, cast: dict | None = None, verified=()) -> PublishReport:
    before, after = source["bytes"], output["bytes"] if output else None
    return PublishReport.from_dict({
        "source": source, "weights": weights, "output": output, "meta_keys": meta_keys, "dropped": dropped,
        "cast": cast, "verified": list(verified), "notes": notes, "dry_run": dry_run,
        "size": {"before": before, "after": after, "ratio": after / before if output and before else None}})
