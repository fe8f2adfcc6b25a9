"""`ckpt graft SRC --into CONFIG` into a full-size target built from a config: parameters on meta (`--build meta`,
the default) vs the whole model built and initialised on the CPU (`--build cpu`), wall time and peak memory.

    .venv/bin/python benchmarks/bench_graft.py [--target mmaction] [--sizes default,wide] [--repeat 1] [--json OUT]
    .venv-mmdet3d/bin/python benchmarks/bench_graft.py --target mmdet3d [--sizes default,wide]

`--target mmaction`: mmaction2's RGBPoseConv3D config (`rgbpose_conv3d/rgbpose_conv3d.py`, ~36M parameters);
`wide` doubles both pathways' base_channels by --cfg-options (~4x the parameters). The source is the target's own
CPU build without its lateral connections, so the graft loads everything but the laterals, which are new.
`--target mmdet3d`: BEVFusion in mmdet3d 1.x names (tests/support/mmdet3d_project: mmdet3d keeps BEVFusion in
its projects/ folder, so the project module there assembles its 40.8M-parameter layout from mmdet3d / mmdet / mmcv
parts, see bevfusion_project/__init__.py); the source is the CPU build of `bevfusion_det.py` (40.8M), the target
`bevfusion_det_map_gca.py` (45.8M: plus task_gca.object / task_gca.map and a map head, which are new); `wide`
widens the Swin camera backbone (embed_dims 192, depths 2-2-8-2) in both: 137.7M into 142.7M.
Sources are written once through ckpt's writer. Each command is its own process (imports count); memory is the
peak RssAnon polled from /proc (benchmarks/common.py) and ru_maxrss. `build_only_s`: building the target alone
(`resolve_target`, after the imports), in another process. The runs are interleaved; the machine may be
shared: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import PY, dump, machine, measure  # noqa: E402

MMDET3D_PROJECT = os.path.join(ROOT, "tests", "support", "mmdet3d_project")
TARGETS = {
    "mmaction": dict(
        source="rgbpose_conv3d/rgbpose_conv3d", target="rgbpose_conv3d/rgbpose_conv3d", drop="_lateral\\.",
        project_root=None,
        sizes={"default": [], "wide": ["model.backbone.rgb_pathway.base_channels=128",
                                       "model.backbone.pose_pathway.base_channels=64"]}),
    "mmdet3d": dict(
        source=os.path.join(MMDET3D_PROJECT, "bevfusion_det.py"),
        target=os.path.join(MMDET3D_PROJECT, "bevfusion_det_map_gca.py"), drop=None, project_root=MMDET3D_PROJECT,
        sizes={"default": [], "wide": ["model.img_backbone.embed_dims=192", "model.img_backbone.depths=[2,2,8,2]",
                                       "model.img_backbone.num_heads=[6,12,24,48]",
                                       "model.img_neck.in_channels=[384,768,1536]"]}),
}
MAKE_SOURCE = r"""
import re, sys
from ckpttool.surgery.target import resolve_target
from ckpttool.io.write import save
source, target, out, root, drop, *opts = sys.argv[1:]
root, drop = (None if v == "-" else v for v in (root, drop))
t = resolve_target(source, opts or None, seed=1, build="cpu", project_root=root)
sd = {k: v for k, v in t.state.items() if drop is None or not re.search(drop, k)}
save(out, sd, {"note": "bench_graft source"})
total = resolve_target(target, opts or None, build="meta", project_root=root).describe()["params"]
print(total, sum(v.numel() for v in sd.values()))
"""

# the build alone, after the imports (a first meta build imports every registry and custom module): seconds
BUILD = r"""
import sys, time
from ckpttool.surgery.target import resolve_target
target, root, build, *opts = sys.argv[1:]
root = None if root == "-" else root
resolve_target(target, opts or None, build="meta", project_root=root)
t0 = time.perf_counter()
resolve_target(target, opts or None, build=build, project_root=root)
print(time.perf_counter() - t0)
"""


def build_seconds(target_cfg, root, build, opts) -> float:
    out = subprocess.run([PY, "-c", BUILD, target_cfg, root or "-", build, *opts], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.split()[-1])


def config_path(kind: str, name: str) -> str:
    if kind == "mmaction":
        from ckpttool.integrations.mmaction import shipped_config

        return shipped_config(name)
    return name


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=sorted(TARGETS), default="mmaction")
    ap.add_argument("--sizes", default="default,wide")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    spec = TARGETS[args.target]
    source_cfg, target_cfg = (config_path(args.target, spec[k]) for k in ("source", "target"))
    root = spec["project_root"]
    results = {"machine": machine(), "target": args.target, "load": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for size in args.sizes.split(","):
            opts = spec["sizes"][size]
            src = os.path.join(tmp, f"{size}_src.pth")
            out = subprocess.run([PY, "-c", MAKE_SOURCE, source_cfg, target_cfg, src, root or "-",
                                  spec["drop"] or "-", *opts], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            total, loaded = map(int, out.stdout.split()[-2:])
            row = {"target_params": total, "source_params": loaded, "new_params": total - loaded}
            for build in ("meta", "cpu"):
                dst = os.path.join(tmp, f"{size}_{build}.pth")
                cmd = [PY, "-m", "ckpttool", "graft", src, "--into", target_cfg, "-o", dst, "--force", "-q",
                       "--build", build, "--format", "json"]
                cmd += ["--project-root", root] if root else []
                cmd += ["--cfg-options", *opts] if opts else []
                row[build] = measure(cmd, args.repeat)
                row[build]["build_only_s"] = build_seconds(target_cfg, root, build, opts)
            row["ratio_wall_cpu_over_meta"] = row["cpu"]["wall_s"] / row["meta"]["wall_s"]
            row["ratio_anon_cpu_over_meta"] = row["cpu"]["peak_anon_mb"] / row["meta"]["peak_anon_mb"]
            results["runs"][size] = row
            print(json.dumps({size: row}), file=sys.stderr)
    results["load_after"] = os.getloadavg()
    dump(results, args.json)


if __name__ == "__main__":
    main()
