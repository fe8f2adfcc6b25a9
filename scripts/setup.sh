#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and everything ckpt and its tests need.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
# (the stamp covers the per-extra scripts too: a change there must reach their environments through this one)
stamp="$VENV/.ckpt-setup-$(cat pyproject.toml constraints.txt scripts/setup*.sh requirements/*.txt | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"
# This machine's pip config names local index folders that may not exist; pip warns per package. Drop only those
# lines (pipefail keeps pip's own exit status).
quiet() { "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }; }
# torch first, alone: its CPU wheel lies on the machine; an unpinned torch elsewhere would pull CUDA.
quiet $pip install torch==2.13.0
# Then the project with its extras, always under the constraints file.
quiet $pip install -c constraints.txt -e '.[mmaction,test]'
# The genuine corpus's libraries (tests/support/genuine_corpus.py) get their own environment, .venv-corpus: with
# transformers beside mmaction2, mmaction imports its multimodal models -> timm -> torchvision (a CUDA build that
# fails with the CPU torch). torch first, then the project and the libraries under the constraints file; timm
# without its torchvision requirement; transformers 4 as a --target overlay (.venv-tf4/) used by one family.
[ -x .venv-corpus/bin/python ] || "$PY" -m venv .venv-corpus
cpip=".venv-corpus/bin/python -m pip --disable-pip-version-check -q"
quiet $cpip install torch==2.13.0
quiet $cpip install -c constraints.txt -e . -r requirements/genuine.txt
quiet $cpip install -c constraints.txt --no-deps -r requirements/genuine-nodeps.txt
[ -d .venv-tf4/transformers ] || quiet $cpip install --no-deps --target .venv-tf4 -r requirements/genuine-tf4.txt
# A second, torch-free environment with NumPy 2: the reader's core must work under NumPy 1.26 and 2.x
# (tests/test_numpy2.py runs the same files through both and compares).
[ -x .venv-np2/bin/python ] || "$PY" -m venv .venv-np2
quiet .venv-np2/bin/python -m pip --disable-pip-version-check -q install 'numpy>=2,<3' 'click>=8.1' 'tabulate>=0.9' 'pyyaml>=6'
# The [mmdet] extra in its own environment: mmdet 3.x needs mmcv *with compiled ops*, mmaction2 runs on mmcv-lite,
# and both install the same `mmcv` package folder, so they never share a venv (tests marked `mmdet` run here).
bash scripts/setup_mmdet.sh
# The [mmdet3d] extra likewise in its own environment, .venv-mmdet3d (mmcv with ops again, plus mmdet3d's ~3 GB of
# requirements: open3d, nuscenes-devkit, numba ...); tests marked `mmdet3d` run there.
bash scripts/setup_mmdet3d.sh
rm -f "$VENV"/.ckpt-setup-*
touch "$stamp"
echo "setup: $VENV ready ($($VENV/bin/python -c 'import torch,numpy;print("torch",torch.__version__,"numpy",numpy.__version__)'))" >&2
