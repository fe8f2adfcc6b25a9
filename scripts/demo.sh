#!/usr/bin/env bash
# A tour of ckpt on the bundled fixtures (real mmengine Runner checkpoints, real key layouts, published KAIST
# results, real mmaction2 dumps). Run through `make demo`, which sets up .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
G=fixtures/generated
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
step() { printf '\n$ %s\n' "$*"; "$@"; }

python scripts/make_fixtures.py >/dev/null

echo "# 1. What is in a training checkpoint? (no torch import, no code from the file runs)"
step ckpt inspect $G/mmengine/work_dirs/sgd/epoch_1.pth

echo "# 2. A file that would run code under torch.load(weights_only=False) is listed, never executed"
step ckpt inspect $G/malicious/os_system.pth --format markdown

echo "# 3. Two runs: which weights moved, and what changed in their configs (lr, weight decay, pipeline, loss)"
step ckpt diff $G/diff/runner_a.pth $G/diff/runner_b.pth --config

echo "# 4. Graft a trained BEVFusion-style detector into the model with new task_gca.object/map + map head"
step ckpt graft $G/layouts/bevfusion_det.pth --into $G/layouts/bevfusion_det_map_gca.pth \
  --init 'task_gca\..*=zeros' -o "$OUT/grafted.pth"

echo "# 5. Average two checkpoints (streamed, verified, torch-free)"
step ckpt average $G/diff/base.pth $G/diff/scaled.pth -o "$OUT/avg.pth"

echo "# 6. KAIST miss rates of four published methods (MLPD protocol; MR-FPPI curve in $OUT)"
step ckpt eval --task kaist --ann fixtures/kaist/KAIST_annotation.json \
  --preds fixtures/kaist/detections/{MLPD,MBNet,MSDS-RCNN,INSANet}_result.txt --plot "$OUT/mr_fppi.png"

echo "# 7. NTU accuracy of two mmaction2 dumps and their 1:1 ensemble"
step ckpt eval --task ntu60 --preds fixtures/mmaction2-fuse-demo/joint.pkl fixtures/mmaction2-fuse-demo/bone.pkl \
  --coefficients 1 1
