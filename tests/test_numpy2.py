"""The reader's core gives the same answers under NumPy 1.26 (this env) and NumPy 2 (.venv-np2, no torch),
and reads numpy values pickled by either (`numpy.core.*` vs `numpy._core.*`)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckpttool.io import load_pickle

ROOT = Path(__file__).resolve().parents[1]
NP2 = ROOT / ".venv-np2" / "bin" / "python"
pytestmark = pytest.mark.skipif(not NP2.exists(), reason="run scripts/setup.sh to create .venv-np2")


def _digest(python, paths):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([str(python), "-m", "tests.support.digest", *map(str, paths)], capture_output=True,
                         text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_same_digest_under_numpy_1_and_2(fixtures_dir):
    paths = sorted(p for fam in ("formats", "mmengine/work_dirs/sgd", "malicious", "layouts")
                   for p in (fixtures_dir / fam).iterdir()
                   if p.suffix in (".pth", ".ckpt", ".safetensors", ".pkl") or p.name in ("dcp", "sharded"))
    v1, v2 = _digest(sys.executable, paths), _digest(NP2, paths)
    assert np.__version__.startswith("1.")
    assert v1 == v2


def test_numpy2_pickles_read_under_numpy1(tmp_path):
    code = ("import pickle, numpy as np; pickle.dump({'a': np.arange(6.0).reshape(2, 3), 's': np.float32(1.5), "
            f"'i': np.int64(7)}}, open({str(tmp_path / 'np2.pkl')!r}, 'wb'), protocol=2)")
    subprocess.run([str(NP2), "-c", code], check=True)
    assert b"numpy._core" in (tmp_path / "np2.pkl").read_bytes()
    data = load_pickle(tmp_path / "np2.pkl")
    assert data["a"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and data["s"] == 1.5 and data["i"] == 7


def test_numpy1_pickles_read_under_numpy2(tmp_path):
    pickle.dump({"a": np.arange(4, dtype=np.int32), "s": np.float64(2.5)}, open(tmp_path / "np1.pkl", "wb"),
                protocol=2)
    assert b"numpy.core" in (tmp_path / "np1.pkl").read_bytes()
    code = ("from ckpttool.io import load_pickle; d = load_pickle(%r); "
            "assert d['a'].tolist() == [0, 1, 2, 3] and d['s'] == 2.5, d" % str(tmp_path / "np1.pkl"))
    subprocess.run([str(NP2), "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
