#!/usr/bin/env bash
# The whole test suite. Fixtures are generated (deterministically) on first use by tests/conftest.py.
# Tests marked `mmdet` need mmcv with compiled ops, which cannot share an environment with [mmaction]'s mmcv-lite:
# they run in .venv-mmdet (made by scripts/setup.sh), everything else in .venv. Pytest arguments pass through to
# both runs; "no tests collected" in one of them is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not mmdet" "$@"
rc=$?
[ -x .venv-mmdet/bin/python ] || { echo "test: .venv-mmdet is missing: run bash scripts/setup.sh" >&2; exit 1; }
.venv-mmdet/bin/python -m pytest -q -p no:cacheprovider -m mmdet "$@"
rc2=$?
# 5 = no tests collected (e.g. a file of only one kind)
if [ $rc -eq 5 ] && [ $rc2 -eq 5 ]; then exit 5; fi
[ $rc -eq 5 ] && rc=0
[ $rc2 -eq 5 ] && rc2=0
exit $(( rc != 0 ? rc : rc2 ))
