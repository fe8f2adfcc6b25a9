"""Structure-aware mutations of the hostile corpus and of genuine torch.save files, and the oracles the fuzzer checks.

`mutate_hostile(data, rng)` edits what parsers decide on: the GLOBAL names of a pickle (swapped for stdlib gadgets,
protocol-2 spellings, dotted names), BUILD/state appended to records, the protocol byte, memo sharing, big integer
literals; and for zips the entries (duplicated, reordered, deflated, renamed, a constants.pkl added, data.pkl itself
pickle-mutated). Half of the inputs still get the generic byte mutations of `tests.support.fuzzing.mutate`.

`exercise_hostile(path)` runs the read path (`tests.support.fuzzing.exercise`) inside a throwaway cwd and adds two
oracles that turn a silent failure into an exception the fuzzer counts:
- `PayloadRan`: a ``HOSTILE_SENTINEL_*`` file appeared (a payload executed);
- `VerdictBypass`: the file names a known code-running gadget and ckpt still calls it data.
"""
from __future__ import annotations

import io
import os
import random
import re
import struct
import zipfile

from tests.support import hostile_corpus as hc
from tests.support.fuzzing import exercise, mutate

GADGETS = [("os", "system"), ("posix", "system"), ("pydoc", "pipepager"), ("builtins", "eval"),
           ("__builtin__", "eval"), ("cStringIO", "open"), ("commands", "getoutput"), ("typing", "_eval_type"),
           ("subprocess", "Popen"), ("uuid", "_get_command_stdout"), ("imaplib", "IMAP4_stream"),
           ("logging.config", "_resolve"), ("timeit", "timeit"), ("numpy", "memmap"), ("torch.serialization", "os"),
           ("pathlib", "os"), ("argparse", "_os"), ("builtins", "getattr"), ("ckpttool.surgery.soup", "run_eval"),
           ("torch.storage", "_load_from_bytes"), ("copyreg", "_reconstructor"), ("builtins", "bytearray"),
           ("builtins", "range"), ("torch", "Size"), ("collections", "OrderedDict"), ("numpy", "dtype"),
           ("torch._utils", "_rebuild_tensor_v2"), ("pathlib", "os.system"), ("argparse", "_os.system")]
# globals that run code when called: a file naming one of these is never data (builtins.getattr is not one: it is
# allowed on allow-listed classes, e.g. mmengine's HistoryBuffer methods)
CODE_GADGETS = ({f"{m}.{n}" for m, n in GADGETS[:19]} - {"builtins.getattr"}) | {
    "pathlib.os.system", "argparse._os.system", "io.open", "subprocess.getoutput"}  # + names after _compat_pickle

_GLOBAL_RE = re.compile(rb"c([A-Za-z_][\w.]{0,60})\n([A-Za-z_][\w.]{0,60})\n")


class PayloadRan(Exception):
    pass


class VerdictBypass(Exception):
    pass


def _int_literal(rng: random.Random) -> bytes:
    v = rng.choice((0, -1, 1 << 31, (1 << 31) - 1, 1 << 40, 1 << 62, 10 ** 18, 150_000_000))
    return hc.L(v)


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(6)
        globals_ = list(_GLOBAL_RE.finditer(bytes(buf)))
        if op == 0 and globals_:  # swap one GLOBAL for a gadget
            m = rng.choice(globals_)
            mod, name = rng.choice(GADGETS)
            buf[m.start(): m.end()] = hc.G(mod, name)
        elif op == 1 and len(buf) > 4:  # a state + BUILD just before STOP or after a REDUCE
            state = rng.choice((hc.L((None, {"shape": (1 << 20,)})), hc.L((None, {"stride": (1 << 30,)})),
                                hc.L((None, {"numel": 1 << 28})), hc.L({"x": 1}),
                                hc.L((3, "|", None, None, None, -1, -1, 0))))
            spots = [i + 1 for i, b in enumerate(buf) if b == ord("R")] or [len(buf) - 1]
            pos = rng.choice(spots)
            buf[pos:pos] = state + b"b"
        elif op == 2 and len(buf) > 2 and buf[0] == 0x80:  # another protocol
            buf[1] = rng.randrange(6)
        elif op == 3 and len(buf) > 4:  # memoise something and reuse it (sharing, cycles)
            pos = rng.randrange(2, len(buf))
            buf[pos:pos] = b"\x94h\x00" if rng.random() < 0.5 else b"h\x00"
        elif op == 4:  # a big integer where an int was
            ints = [i for i, b in enumerate(buf) if b in (ord("K"), ord("M"))]
            if ints:
                i = rng.choice(ints)
                width = 2 if buf[i] == ord("K") else 3
                buf[i: i + width] = _int_literal(rng)
        else:  # dotted / protocol-4 global
            if globals_:
                m = rng.choice(globals_)
                mod, name = rng.choice((("pathlib", "os.system"), ("torch.serialization", "os.system"),
                                        ("collections", "OrderedDict.fromkeys")))
                buf[m.start(): m.end()] = hc.SG(mod, name)
    return bytes(buf)


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    except Exception:  # noqa: BLE001 - not (any more) a zip: byte mutations only
        return mutate(data, rng)
    if not entries:
        return mutate(data, rng)
    op = rng.randrange(6)
    deflate = set()
    if op == 0:  # duplicate an entry (a changed copy first or last)
        i = rng.randrange(len(entries))
        name, payload = entries[i]
        copy = (name, mutate_pickle(payload, rng) if name.endswith(".pkl") else mutate(payload, rng))
        entries.insert(rng.choice((0, len(entries))), copy)
    elif op == 1:
        rng.shuffle(entries)
    elif op == 2:
        deflate = {n for n, _ in entries if rng.random() < 0.5}
    elif op == 3:  # a second folder or a TorchScript marker
        entries.append(rng.choice((("archive/constants.pkl", hc.pk(hc.L(()))), ("archive/code/x.py", b"x"),
                                   ("other/data.pkl", hc.pk(hc.L({}))))))
    else:
        entries = [(n, mutate_pickle(b, rng) if n.endswith("data.pkl") else b) for n, b in entries]
    out = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(out, "w") as zf:
            for name, payload in entries:
                info = zipfile.ZipInfo(name, hc.ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
                zf.writestr(info, payload)
    return out.getvalue()


def mutate_hostile(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.5:
        return mutate(data, rng)
    if data[:4] == b"PK\x03\x04":
        return mutate_zip(data, rng)
    if data[:1] == b"\x80" or _GLOBAL_RE.search(data):
        return mutate_pickle(data, rng)
    return mutate(data, rng)


def _names(ck) -> set[str]:
    uses = getattr(ck, "global_uses", None)
    if uses is not None:
        return {u["name"] for u in uses}
    return set(getattr(ck, "globals", {}) or {})


def _says_data(ck) -> bool:
    v = getattr(ck, "verdict", None)
    if v is not None:
        return v == "data"
    return not ck.suspicious_globals


def exercise_hostile(path, cwd: str) -> str:
    """`exercise(path)` in `cwd`, then the two oracles. Returns 'ok' | 'rejected' (raises on a bug)."""
    from ckpttool.errors import CkptError
    from ckpttool.io import load

    old = os.getcwd()
    os.chdir(cwd)
    try:
        outcome = exercise(path)
        try:  # the verdict oracle, whether or not the file has weights
            ck = load(path)
        except CkptError:
            ck = None
        if ck is not None and _says_data(ck) and _names(ck) & CODE_GADGETS:
            raise VerdictBypass(f"verdict data for a file naming {sorted(_names(ck) & CODE_GADGETS)}")
    finally:
        os.chdir(old)
        ran = [n for n in os.listdir(cwd) if n.startswith(hc.SENT)]
        for n in ran:
            os.unlink(os.path.join(cwd, n))
    if ran:
        raise PayloadRan(ran)
    return outcome


# seeds: name -> predicate over (case name, manifest entry); heavy files (bombs, collisions, crashes of the
# current reader that would end an in-process run) are left to the corpus test, which isolates every command
HEAVY = {"zip_deflate_bomb_datapkl", "zip_deflate_bomb_storage", "hash_collision_dict", "hash_collision_set",
         "deep_tuple_dict_key", "deep_tuple_frozenset", "deep_list_in_meta", "deep_dict_in_state_dict",
         "numpy_dtype_object_flag_cleared", "numpy_dtype_object_field", "module_prefix_300k",
         "shared_tensor_many_keys", "module_prefix_many_keys", "bytearray_huge", "bytes_huge", "list_of_range",
         "set_of_range", "counter_of_range", "deque_of_range", "torch_size_range", "numpy_reconstruct_huge",
         "stride0_view_1e8", "stride0_many_views", "build_tensor_stride", "build_tensor_shape",
         "build_tensor_offset", "build_storage_numel", "build_tensor_setstate_tuple"}
FAMILIES = {
    "hostile-gadget-pickles": lambda n, c: c["cls"] == "1" and c["form"] == "pickle",
    "hostile-zip": lambda n, c: c["form"] in ("zip", "torchscript") and c["cls"] in ("1", "2", "3"),
    "hostile-legacy": lambda n, c: c["form"] == "legacy" and c["cls"] == "1",
    "hostile-safetensors": lambda n, c: c["form"] == "safetensors",
    "hostile-numpy": lambda n, c: n.startswith("numpy_") or n.startswith("memo_") or n.endswith("_lie"),
    "genuine-torch-save": lambda n, c: c["cls"] == "4" and c["form"] in ("zip", "legacy"),
    "genuine-hf-bin-index": lambda n, c: n == "hf_bin_sharded_folder",
}


def seeds(manifest: dict, family: str) -> list[tuple[str, dict]]:
    pick = FAMILIES[family]
    return [(n, c) for n, c in sorted(manifest["cases"].items()) if pick(n, c) and n not in HEAVY]
