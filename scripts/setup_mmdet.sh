#!/usr/bin/env bash
# Creates .venv-mmdet: CPU torch, mmcv 2.1.0 with its compiled ops, mmdet 3.3.0 and ckpt (`[mmdet,test]` extras).
# Called by scripts/setup.sh; idempotent (a stamp of the inputs), a second run only checks.
# mmcv comes from ../shared/wheels (or $CKPT_SHARED/wheels) when that folder holds the prebuilt wheel (this machine kind), otherwise it is
# built from the PyPI sdist (~14 min on 2 cores; pip caches the wheel for the next environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-mmdet
stamp="$VENV/.ckpt-setup-$(cat pyproject.toml constraints.txt scripts/setup_mmdet.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"
quiet() { "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }; }
quiet $pip install torch==2.13.0
# The mmcv build runs against the installed torch (no isolation), needs setuptools<81 (mmengine also resolves
# `mmdet::` config bases through pkg_resources at run time), numpy<2, ninja and wheel.
quiet $pip install -c constraints.txt 'setuptools<81' wheel ninja numpy
# The project's shared folder sits beside the clone (../shared); CKPT_SHARED points elsewhere.
SHARED=${CKPT_SHARED:-../shared}
links=()
[ -d "$SHARED/wheels" ] && links=(--find-links "$SHARED/wheels")
if ! "$VENV/bin/python" -c 'import mmcv, mmcv.ops' 2>/dev/null; then
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS=-g0 quiet $pip install --no-build-isolation "${links[@]}" \
    -c constraints.txt mmcv==2.1.0
fi
quiet $pip install -c constraints.txt -e '.[mmdet,test]'
"$VENV/bin/python" -c 'import mmcv.ops, mmdet.models' 2>/dev/null \
  || { echo "setup: $VENV: mmcv.ops / mmdet.models do not import" >&2; exit 1; }
rm -f "$VENV"/.ckpt-setup-*
touch "$stamp"
echo "setup: $VENV ready ($($VENV/bin/python -c 'import mmcv,mmdet;print("mmcv",mmcv.__version__,"mmdet",mmdet.__version__)'))" >&2
