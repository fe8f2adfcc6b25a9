"""`ckpt eval CONFIG CHECKPOINT --dump FILE.pkl` (one clip count) writes the file itself, as mmaction2's
`tools/test.py --dump` does; several clip counts need a folder. The samples bar reaches its total with its rate."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("mmaction")
pytest.importorskip("torch")

from ckpttool.errors import CkptError  # noqa: E402
from ckpttool.engine.tasks import evaluate_recognizer  # noqa: E402
from tests.support.ntu_fixtures import model_setups, ntu_workdir  # noqa: E402,F401  (ntu_workdir is a fixture)

pytestmark = pytest.mark.mmaction


@pytest.mark.slow
def test_dump_file_pkl_matches_tools_test_and_bar_ends_at_total(ntu_workdir, tmp_path, capsys):
    config, options = model_setups(ntu_workdir["data"])["posec3d"]
    entry = ntu_workdir["models"]["posec3d"]
    out = tmp_path / "results.pkl"
    res = evaluate_recognizer(config, entry["checkpoint"], [3], cfg_options=options, limit=2, dump=str(out),
                         progress=True)
    assert out.is_file() and res["dump"] == [str(out)] and res["device"] == "cpu"
    with open(out, "rb") as fh:
        ours = pickle.load(fh)
    with open(entry["reference"]["3"], "rb") as fh:
        ref = pickle.load(fh)[:2]
    assert len(ours) == 2
    for a, b in zip(ours, ref):
        assert int(a["gt_label"]) == int(b["gt_label"])
        np.testing.assert_allclose(a["pred_score"].numpy(), b["pred_score"].numpy(), atol=1e-5, rtol=0)
    err = capsys.readouterr().err
    import re

    final = [seg for seg in re.split(r"[\r\n]", err) if seg.startswith("clips 3")][-1]
    assert "clips 3: 100%" in final and "2/2" in final and "samples/s" in final
    with pytest.raises(CkptError, match="one file holds one setting"):
        evaluate_recognizer(config, entry["checkpoint"], [1, 3], cfg_options=options, limit=1, dump=str(out))
