#!/usr/bin/env bash
# The whole test suite. Fixtures are generated (deterministically) on first use by tests/conftest.py.
# Tests marked `mmdet` / `mmdet3d` need mmcv with compiled ops, which cannot share an environment with
# [mmaction]'s mmcv-lite: they run in .venv-mmdet / .venv-mmdet3d (made by scripts/setup.sh), everything else in
# .venv. Pytest arguments pass through to every run; "no tests collected" in some of them is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
for v in .venv-mmdet .venv-mmdet3d; do
  [ -x $v/bin/python ] || { echo "test: $v is missing: run bash scripts/setup.sh" >&2; exit 1; }
done
codes=()
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not mmdet and not mmdet3d" "$@"
codes+=($?)
.venv-mmdet/bin/python -m pytest -q -p no:cacheprovider -m mmdet "$@"
codes+=($?)
.venv-mmdet3d/bin/python -m pytest -q -p no:cacheprovider -m mmdet3d "$@"
codes+=($?)
# 5 = no tests collected (e.g. a file of only one kind): a failure only when no run collected anything
rc=5
for c in "${codes[@]}"; do
  if [ "$c" -ne 0 ] && [ "$c" -ne 5 ]; then rc=$c; break; fi
  [ "$c" -eq 0 ] && rc=0
done
exit $rc
