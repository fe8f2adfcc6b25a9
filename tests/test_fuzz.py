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


# ---- issue 11: structure-aware mutations of the hostile corpus and of genuine torch.save files ----------------
HOSTILE_EXAMPLES = 80


@pytest.fixture(scope="module")
def hostile_manifest():
    from tests.support import hostile_corpus as hc

    return hc.generate()


@pytest.mark.parametrize("family", ["hostile-gadget-pickles", "hostile-zip", "hostile-legacy", "hostile-safetensors",
                                    "hostile-numpy", "genuine-torch-save", "genuine-hf-bin-index"])
def test_mutated_hostile_inputs_never_run_fool_or_crash(hostile_manifest, tmp_path_factory, family):
    """Every mutation of a crafted or genuine file reads or is rejected with CkptError; no payload runs
    (PayloadRan) and no file naming a code gadget is called data (VerdictBypass) -- both raise, failing here."""
    from tests.support import hostile_corpus as hc
    from tests.support.hostile_fuzz import exercise_hostile, mutate_hostile, seeds

    picked = seeds(hostile_manifest, family)
    assert picked, family
    work, cwd = tmp_path_factory.mktemp(family), tmp_path_factory.mktemp(family + "-cwd")
    targets = []
    for i, (name, info) in enumerate(picked):
        src = hc.DEFAULT_OUT / info["path"]
        if info["form"] == "sharded":
            shutil.copytree(src, work / f"s{i}")
            targets.append((work / f"s{i}", work / f"s{i}" / "pytorch_model.bin.index.json",
                            (src / "pytorch_model.bin.index.json").read_bytes()))
        else:
            targets.append((work / f"s{i}{src.suffix}", work / f"s{i}{src.suffix}", src.read_bytes()))
    outcomes = []

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.integers(min_value=0, max_value=2**32 - 1))
    def check(seed):
        target, victim, original = targets[seed % len(targets)]
        victim.write_bytes(mutate_hostile(original, random.Random(seed)))
        outcomes.append(exercise_hostile(target, str(cwd)))

    check()
    assert len(outcomes) == HOSTILE_EXAMPLES and "rejected" in outcomes


def test_hostile_mutator_keeps_pickles_structured():
    """The structure-aware mutator really produces what it claims: gadget globals, BUILDs, duplicate zip entries."""
    import io
    import zipfile

    from tests.support import hostile_corpus as hc
    from tests.support.hostile_fuzz import mutate_pickle, mutate_zip

    base = hc.pk(hc.CALL(hc.G("collections", "OrderedDict")))
    outs = [mutate_pickle(base, random.Random(i)) for i in range(200)]
    assert any(b"\ncsubprocess\nPopen\n"[1:] in o or b"cos\nsystem\n" in o for o in outs)
    assert any(o.endswith(b"b.") or b"Rb" in o or b"b" in o[len(base) - 1:] for o in outs)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", base)
        zf.writestr("archive/version", b"3\n")
    names = [zipfile.ZipFile(io.BytesIO(mutate_zip(buf.getvalue(), random.Random(i)))).namelist()
             for i in range(60)]
    assert any(len(n) != len(set(n)) for n in names)  # a duplicated entry
    assert any("archive/constants.pkl" in n for n in names)
