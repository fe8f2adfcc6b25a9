"""Fuzzing every checkpoint reader (bounded for CI; `benchmarks/fuzz.py` runs >= 100,000 inputs).

Each example mutates a real fixture file and runs the whole read path. The only acceptable failure is CkptError
(one clean line, exit 2, in the CLI)."""
from __future__ import annotations

import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzzing import exercise, mutate

# family -> (fixture path relative to fixtures_dir (or repo for committed ones), file to mutate inside a folder)
FAMILIES = {
    "torch-zip": ("formats/zip.pth", None),
    "torch-legacy": ("formats/legacy.pth", None),
    "mmengine-runner": ("mmengine/work_dirs/sgd/epoch_1.pth", None),
    "views": ("formats/dtypes_views.pth", None),
    "safetensors": ("formats/model.safetensors", None),
    "sharded-index": ("formats/sharded", "model.safetensors.index.json"),
    "dcp-metadata": ("formats/dcp", ".metadata"),
    "dcp-data": ("formats/dcp", "__0_0.distcp"),
    "mmaction2-dump": ("../mmaction2-fuse-demo/joint.pkl", None),
}
EXAMPLES = 60


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mutated_inputs_only_raise_ckpt_errors(fixtures_dir, tmp_path_factory, family):
    rel, inner = FAMILIES[family]
    src = (fixtures_dir / rel).resolve()
    work = tmp_path_factory.mktemp(family)
    if inner:
        shutil.copytree(src, work / "ck")
        target, victim = work / "ck", work / "ck" / inner
    else:
        target = victim = work / src.name
    original = (src / inner).read_bytes() if inner else src.read_bytes()
    outcomes = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.integers(min_value=0, max_value=2**32 - 1))
    def check(seed):
        victim.write_bytes(mutate(original, random.Random(seed)))
        outcomes.append(exercise(target))

    check()
    assert len(outcomes) == EXAMPLES and "rejected" in outcomes
