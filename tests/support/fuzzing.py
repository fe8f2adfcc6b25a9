"""Mutation fuzzing of the readers: every input either reads or fails with CkptError — nothing else escapes.

`mutate(seed_bytes, rng)` flips, truncates, inserts, duplicates and splices bytes (biased towards headers, where
parsers decide sizes). `exercise(path)` drives the full read path a command would: load, sections, the state
dict, every tensor's values and the inspect summary with statistics.
"""
from __future__ import annotations

import random

from ckpttool.errors import CkptError

MAX_VALUE_BYTES = 64 << 20  # a fuzzed tensor claiming more than this is rejected before its values are read


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        if not buf:
            buf += bytes([rng.randrange(256)])
            continue
        # half of the edits land in the first 4 KiB (headers, pickle opcodes, zip local headers)
        hi = len(buf) if rng.random() < 0.5 else min(len(buf), 4096)
        pos = rng.randrange(hi)
        op = rng.randrange(7)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2:
            del buf[pos: pos + rng.randrange(1, 64)]
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 4:
            end = min(len(buf), pos + 8)
            buf[pos:end] = rng.choice((b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\xff"))[: end - pos]
        elif op == 5:
            del buf[rng.randrange(len(buf)):]
        else:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start: start + rng.randrange(1, 256)]
    return bytes(buf)


def exercise(path) -> str:
    """Run the read path; return 'ok' or 'rejected'. Any exception other than CkptError propagates (a bug)."""
    from ckpttool.io import load
    from ckpttool.summary.inspect import inspect

    try:
        ck = load(path)
        ck.sections()
        _ = ck.foreign_globals, ck.meta
        try:
            sd = ck.state_dict()
        except CkptError:
            return "rejected"
        if sum(t.nbytes for t in sd.values()) > MAX_VALUE_BYTES:
            return "rejected"
        for t in sd.values():
            t.numpy() if t.storage.dtype.numpy or t.dtype == "bfloat16" else t.raw()
        inspect(path, stats=True, keys=True)
        return "ok"
    except CkptError:
        return "rejected"
