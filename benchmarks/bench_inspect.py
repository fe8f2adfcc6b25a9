"""Issue 2 targets: `ckpt inspect` on a >= 1 GB mmengine training checkpoint vs `python -c "import torch"`,
`torch.load(mmap=True)` and a full `torch.load`; `--stats` throughput vs a numpy pass over the same bytes.

    .venv/bin/python benchmarks/bench_inspect.py [--keep DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PY, dump, machine, measure, now, warm  # noqa: E402
from bigckpt import make_training_checkpoint  # noqa: E402

CKPT = [PY, "-m", "ckpttool"]


def numpy_pass(path: str) -> float:
    """Seconds for one numpy reduction over every tensor's bytes (located by our reader, mapped the same way)."""
    from ckpttool.io import load

    ck = load(path)
    tensors = list(ck.state_dict().values()) + list(ck.state_dict("optimizer").values())
    t0 = now()
    for t in tensors:
        t.raw().sum()
    return now() - t0


def stats_time(path: str) -> tuple[float, int]:
    from ckpttool.summary.stats import tensor_moments
    from ckpttool.io import load

    ck = load(path)
    tensors = list(ck.state_dict().values()) + list(ck.state_dict("optimizer").values())
    t0 = now()
    for t in tensors:
        tensor_moments(t)
    return now() - t0, sum(t.nbytes for t in tensors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="directory for the generated checkpoint (kept)")
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="ckpt-bench-")
    path = os.path.join(tmp, "epoch_5.pth")
    if not os.path.exists(path):
        make_training_checkpoint(path)
    size = os.path.getsize(path)
    warm(path)
    res = {"machine": machine(), "file_gb": round(size / 1e9, 3)}
    res["import_torch"] = measure([PY, "-c", "import torch"], repeat=3)
    res["ckpt_inspect"] = measure(CKPT + ["inspect", path], repeat=3)
    res["ckpt_inspect_json"] = measure(CKPT + ["inspect", path, "--format", "json"], repeat=3)
    res["torch_load_mmap"] = measure([PY, "-c", f"import torch; torch.load({path!r}, mmap=True, weights_only=False)"],
                                     repeat=2)
    res["torch_load_full"] = measure([PY, "-c", f"import torch; torch.load({path!r}, weights_only=False)"], repeat=2)
    res["ratio_inspect_vs_import_torch"] = res["ckpt_inspect"]["wall_s"] / res["import_torch"]["wall_s"]
    res["ratio_inspect_vs_torch_load_mmap"] = res["ckpt_inspect"]["wall_s"] / res["torch_load_mmap"]["wall_s"]
    res["ratio_inspect_vs_torch_load_full"] = res["ckpt_inspect"]["wall_s"] / res["torch_load_full"]["wall_s"]
    np_s = min(numpy_pass(path) for _ in range(3))
    st_s, nbytes = min(stats_time(path) for _ in range(3))
    res["stats"] = {"bytes": nbytes, "numpy_pass_gbps": nbytes / np_s / 1e9, "stats_gbps": nbytes / st_s / 1e9,
                    "ratio": np_s / st_s}
    res["ckpt_inspect_stats"] = measure(CKPT + ["inspect", path, "--stats"], repeat=1)
    dump(res, args.json)
    if not args.keep:
        os.remove(path)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
