#!/usr/bin/env bash
# Creates .venv-mmdet3d: CPU torch, mmcv 2.1.0 with its compiled ops, mmdet 3.3.0, mmdet3d 1.4.0 and ckpt
# (`[mmdet3d,test]` extras). Called by scripts/setup.sh; idempotent (a stamp of the inputs), a second run only checks.
# Its own environment (not .venv-mmdet): mmdet3d brings open3d, nuscenes-devkit, numba ... (~3 GB) that the KAIST
# detector tests do not need. mmcv as in scripts/setup_mmdet.sh: the prebuilt wheel from ../shared/wheels
# (or $CKPT_SHARED/wheels) when it is there, otherwise built from the PyPI sdist (pip reuses the wheel it cached
# while building .venv-mmdet). No spconv: the models the tests build (CenterPoint pillar) use no sparse conv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-mmdet3d
stamp="$VENV/.ckpt-setup-$(cat pyproject.toml constraints.txt scripts/setup_mmdet3d.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"
quiet() { "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }; }
quiet $pip install torch==2.13.0
quiet $pip install -c constraints.txt 'setuptools<81' wheel ninja numpy
SHARED=${CKPT_SHARED:-../shared}
links=()
[ -d "$SHARED/wheels" ] && links=(--find-links "$SHARED/wheels")
if ! "$VENV/bin/python" -c 'import mmcv, mmcv.ops' 2>/dev/null; then
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS=-g0 quiet $pip install --no-build-isolation "${links[@]}" \
    -c constraints.txt mmcv==2.1.0
fi
quiet $pip install -c constraints.txt -e '.[mmdet3d,test]'
"$VENV/bin/python" -c 'import mmcv.ops, mmdet3d.models, mmdet3d.utils; mmdet3d.utils.register_all_modules()' 2>/dev/null \
  || { echo "setup: $VENV: mmcv.ops / mmdet3d.models do not import" >&2; exit 1; }
rm -f "$VENV"/.ckpt-setup-*
touch "$stamp"
echo "setup: $VENV ready ($($VENV/bin/python -c 'import mmcv,mmdet,mmdet3d;print("mmcv",mmcv.__version__,"mmdet",mmdet.__version__,"mmdet3d",mmdet3d.__version__)'))" >&2
