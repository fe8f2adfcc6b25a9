"""Print a JSON digest of checkpoints as this interpreter's reader sees them (run under NumPy 1.x and 2.x)."""
import json
import sys
import zlib

from ckpttool.io import load


def digest(path):
    try:
        ck = load(path)
    except Exception as exc:  # noqa: BLE001 - the error itself is part of the digest
        return {"error": str(exc)}
    out = {"format": ck.format, "layout": ck.layout.kind, "foreign": ck.foreign_globals,
           "suspicious": ck.suspicious_globals}
    try:
        sd = ck.state_dict()
    except Exception as exc:  # noqa: BLE001 - report, compare across interpreters
        return {**out, "error": str(exc)}
    out["tensors"] = {k: [t.dtype, list(t.shape), zlib.crc32(t.raw().tobytes())] for k, t in sd.items()}
    out["meta"] = json.loads(json.dumps(ck.meta, default=str))
    return out


if __name__ == "__main__":
    print(json.dumps({p: digest(p) for p in sys.argv[1:]}, sort_keys=True))
