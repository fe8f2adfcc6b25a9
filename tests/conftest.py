"""Session fixtures shared by every test.

``fixtures_dir``: Path of the generated fixtures (``fixtures/generated/``, or ``$CKPT_FIXTURES_DIR``), regenerated
by ``scripts/make_fixtures.py`` in a subprocess when a family's stamp is stale (so the test process itself never
imports torch/mmengine for it, nor inherits the Runner's seeds / multiprocessing settings).
``manifest``: the combined manifest dict ``{family: manifest}`` — see the docstring of ``tests/support/fixtures.py``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import fixtures as _fx  # stdlib-only at import time

REPO_ROOT = Path(__file__).resolve().parents[1]

# Digests remembered across runs (ckpttool/io/hashing.py) go to this session's own folder, inherited by the
# commands tests start, never to the user's ~/.cache.
os.environ["CKPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ckpt-tests-cache-")
atexit.register(shutil.rmtree, os.environ["CKPT_CACHE_DIR"], True)


def _out_dir() -> Path:
    return Path(os.environ.get("CKPT_FIXTURES_DIR") or _fx.DEFAULT_OUT).resolve()


def ensure_fixtures(out_dir: Path, only=None) -> Path:
    """Generate stale families of ``out_dir`` (all when ``only`` is None) in a subprocess; return ``out_dir``."""
    if _fx.stale_families(out_dir, only) or not (out_dir / "manifest.json").exists():
        cmd = [sys.executable, str(REPO_ROOT / "scripts" / "make_fixtures.py"), "--out", str(out_dir)]
        if only:
            cmd += ["--only", ",".join(only)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"fixture generation failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out_dir


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return ensure_fixtures(_out_dir())


@pytest.fixture(scope="session")
def manifest(fixtures_dir) -> dict:
    return _fx.load_manifest(fixtures_dir)
