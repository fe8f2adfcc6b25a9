"""The one plain-data converter: anything the reader, mmengine or numpy hands us -> JSON-able dicts/lists/scalars.

Used for checkpoint meta (``io.layout``), config dicts (``comparison.configdiff``, the eval cache fingerprint) and
every ``--format json`` object (``report.output.to_jsonable``; a typed result, ``report.result.Report``, becomes
its ``to_dict()``)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache


@lru_cache(maxsize=None)
def _reader_types():
    from ckpttool.io.tensor import TensorRef
    from ckpttool.io.unpickle import Inert

    return TensorRef, Inert


@lru_cache(maxsize=None)
def _report_type():
    from ckpttool.report.result import Report

    return Report


def plain(obj, depth: int = 0, *, finite: bool = False, max_depth: int = 20):
    """Mappings (ConfigDicts too) become dicts with str keys; lists, tuples and sets lists; a one-element
    TensorRef its value, others ``"tensor(dtype, [shape])"``; inert objects ``"<qualname>"``; bytes
    ``"<n bytes>"``; numpy scalars and arrays numbers and lists; a typed result (``report.result.Report``) its
    ``to_dict()``; anything else its ``str``. Deeper than
    ``max_depth``: ``"..."``. ``finite``: non-finite floats become strings (``"nan"``), as JSON needs."""
    if depth > max_depth:
        return "..."
    kw = {"finite": finite, "max_depth": max_depth}
    if isinstance(obj, Mapping):
        return {str(k): plain(v, depth + 1, **kw) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1, **kw) for v in obj]
    if isinstance(obj, float):
        return str(obj) if finite and not math.isfinite(obj) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    tensor_ref, inert = _reader_types()
    if isinstance(obj, tensor_ref):
        return _tensor(obj, depth, kw)
    if isinstance(obj, inert):
        return f"<{obj.qualname}>"
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, _report_type()):
        return plain(obj.to_dict(), depth, **kw)
    if hasattr(obj, "item") and getattr(obj, "size", 2) == 1:
        return plain(obj.item(), depth + 1, **kw)
    if hasattr(obj, "tolist"):
        return plain(obj.tolist(), depth + 1, **kw)
    return str(obj)


def _tensor(t, depth, kw):
    if t.numel == 1:
        try:
            return plain(t.numpy().reshape(-1)[0].item(), depth + 1, **kw)
        except Exception:
            pass
    return f"tensor({t.dtype}, {list(t.shape)})"


def json_objects(lines):
    """The JSON objects among ``lines`` (JSON-lines files, a command's output), in order; other lines are skipped."""
    import json

    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj
