#!/usr/bin/env bash
# The whole test suite. Fixtures are generated (deterministically) on first use by tests/conftest.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
