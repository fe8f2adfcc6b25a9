"""`ckpt graft SRC --into CONFIG` into a full-size target built from a config: parameters on meta (`--build meta`,
the default) vs the whole model built and initialised on the CPU (`--build cpu`), wall time and peak memory.

    .venv/bin/python benchmarks/bench_graft.py [--sizes default,wide] [--repeat 1] [--json OUT]

Target: mmaction2's RGBPoseConv3D config (`rgbpose_conv3d/rgbpose_conv3d.py`, ~36M parameters); `wide` doubles
both pathways' base_channels by --cfg-options (~4x the parameters). The source is the target's own CPU build
without its lateral connections (written once through ckpt's writer), so the graft loads everything but the
laterals, which are new and must be initialised. Each command is its own process (imports count); memory is the
peak RssAnon polled from /proc (benchmarks/common.py) and ru_maxrss. The runs are interleaved; the machine may be
shared: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PY, dump, machine, measure  # noqa: E402

SIZES = {"default": [], "wide": ["model.backbone.rgb_pathway.base_channels=128",
                                 "model.backbone.pose_pathway.base_channels=64"]}
MAKE_SOURCE = r"""
import sys
from ckpttool.integrations.mmaction import shipped_config
from ckpttool.surgery.target import resolve_target
from ckpttool.io.write import save
cfg, out, *opts = sys.argv[1:]
t = resolve_target(shipped_config(cfg), opts or None, seed=1, build="cpu")
sd = {k: v for k, v in t.state.items() if "_lateral." not in k}
save(out, sd, {"note": "bench_graft source"})
print(sum(v.numel() for v in t.state.values()), sum(v.numel() for v in sd.values()))
"""
CONFIG = "rgbpose_conv3d/rgbpose_conv3d"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="default,wide")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from ckpttool.integrations.mmaction import shipped_config

    config = shipped_config(CONFIG)
    results = {"machine": machine(), "load": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for size in args.sizes.split(","):
            opts = SIZES[size]
            src = os.path.join(tmp, f"{size}_src.pth")
            out = subprocess.run([PY, "-c", MAKE_SOURCE, CONFIG, src, *opts], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            total, loaded = map(int, out.stdout.split()[-2:])
            row = {"target_params": total, "source_params": loaded, "new_params": total - loaded}
            for build in ("meta", "cpu"):
                dst = os.path.join(tmp, f"{size}_{build}.pth")
                cmd = [PY, "-m", "ckpttool", "graft", src, "--into", config, "-o", dst, "--force", "-q",
                       "--build", build, "--format", "json"]
                if opts:
                    cmd += ["--cfg-options", *opts]
                row[build] = measure(cmd, args.repeat)
            row["ratio_wall_cpu_over_meta"] = row["cpu"]["wall_s"] / row["meta"]["wall_s"]
            row["ratio_anon_cpu_over_meta"] = row["cpu"]["peak_anon_mb"] / row["meta"]["peak_anon_mb"]
            results["runs"][size] = row
            print(json.dumps({size: row}), file=sys.stderr)
    dump(results, args.json)


if __name__ == "__main__":
    main()
