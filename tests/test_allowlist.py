"""The allow-list as documented, and reader rules no corpus file isolates."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ckpttool.errors import FormatError
from ckpttool.io import allowlist, load

ROOT = Path(__file__).resolve().parents[1]


def test_security_page_prints_the_allowlist_the_code_has():
    doc = (ROOT / "docs" / "security.md").read_text()
    assert allowlist.with_table(doc) == doc, "run: python -m ckpttool.io.allowlist --write docs/security.md"


def test_every_entry_says_what_it_accepts():
    for name, entry in allowlist.ALLOWLIST.items():
        assert name in (entry.name, *entry.aliases) and entry.why and entry.uses


def _pickle(tmp_path, body: bytes, name="x.pkl"):
    p = tmp_path / name
    p.write_bytes(body)
    return p


def test_protocol2_spellings_are_resolved_like_cpython(tmp_path):
    # __builtin__.eval under protocol 2 is builtins.eval: called, so code; under protocol 3 it is not remapped
    two = _pickle(tmp_path, b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.")
    ck = load(two)
    assert ck.verdict == "code" and ck.suspicious_globals == ["builtins.eval"]
    three = _pickle(tmp_path, b"\x80\x03c__builtin__\nlong\nX\x01\x00\x00\x001\x85R.", "p3.pkl")
    assert load(three).suspicious_globals == ["__builtin__.long"]
    ref = _pickle(tmp_path, b"\x80\x02c__builtin__\nlong\n.", "ref.pkl")  # int as a value (OmegaConf metadata)
    assert load(ref).verdict == "data"


def test_a_class_only_instantiated_is_not_verified_and_strict_refuses(tmp_path):
    class_obj = _pickle(tmp_path, b"\x80\x02ctrain\nMyConfig\n)\x81}X\x01\x00\x00\x00aK\x01sb.")
    ck = load(class_obj)
    assert ck.verdict == "not verified" and ck.unverified_globals == ["train.MyConfig"]
    ck.require_safe()
    with pytest.raises(Exception, match="--strict"):
        load(class_obj, strict=True).require_safe()
    assert load(class_obj, allow_globals=["train.MyConfig"]).verdict == "data"
    with_args = _pickle(tmp_path, b"\x80\x02cnumpy\nmemmap\nX\x01\x00\x00\x00f\x85\x81.", "memmap.pkl")
    assert load(with_args).verdict == "code"  # NEWOBJ hands file-chosen arguments to __new__


def test_getattr_only_on_allowed_names_and_never_called(tmp_path):
    hb = b"cmmengine.logging.history_buffer\nHistoryBuffer\n"
    ok = _pickle(tmp_path, b"\x80\x02c__builtin__\ngetattr\n" + hb + b"X\x03\x00\x00\x00min\x86R.")
    assert load(ok).verdict == "data"
    called = _pickle(tmp_path, b"\x80\x02c__builtin__\ngetattr\n" + hb + b"X\x03\x00\x00\x00min\x86R)R.", "c.pkl")
    assert load(called).verdict == "code"
    module = _pickle(tmp_path, b"\x80\x02c__builtin__\ngetattr\ncpathlib\nos\nX\x06\x00\x00\x00system\x86R.",
                     "m.pkl")
    assert load(module).verdict == "code"
    dotted = _pickle(tmp_path, b"\x80\x04\x8c\x05torch\x8c\tos.system\x93.", "d.pkl")
    assert load(dotted).verdict == "code"


def test_build_only_reaches_inert_records(tmp_path):
    """BUILD on the reader's own values is refused (the hostile corpus does it to tensor records inside zips)."""
    for body in (b"\x80\x02}}b.", b"\x80\x02]}b.", b"\x80\x02ccollections\nOrderedDict\n}b."):
        with pytest.raises(FormatError, match="changes the state"):
            load(_pickle(tmp_path, body))
    ok = load(_pickle(tmp_path, b"\x80\x02ctrain\nCfg\n)\x81}X\x01\x00\x00\x00aK\x01sb.", "ok.pkl"))
    assert ok.root.state == {"a": 1}


def test_deep_keys_cycles_and_dags_are_bounded(tmp_path):
    deep = b"\x80\x02}" + b"(" * 300 + b")" + b"t" * 300 + b"K\x01s."
    with pytest.raises(FormatError, match="dict key"):
        load(_pickle(tmp_path, deep, "deep.pkl"))
    cycle = b"\x80\x02]q\x00h\x00a."  # L = [L]: the back reference is cut (OmegaConf nodes point at parents)
    root = load(_pickle(tmp_path, cycle, "cyc.pkl")).root
    assert len(root) == 1 and "cycle" in root[0].qualname
    dag = b"\x80\x02]q\x00" + b"h\x00h\x00\x86q\x01" + b"".join(
        b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(1, 60)) + b"."
    with pytest.raises(FormatError, match="budget exceeded"):
        load(_pickle(tmp_path, dag, "dag.pkl"))


def test_numpy_object_dtypes_never_reach_numpy(tmp_path):
    import numpy as np

    arr = pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)
    with pytest.raises(FormatError, match="dtype"):
        load(_pickle(tmp_path, arr, "obj.pkl"))
    fine = load(_pickle(tmp_path, pickle.dumps({"a": np.arange(3.0), "s": np.float32(2)}, protocol=2), "ok.pkl"))
    assert fine.verdict == "data" and fine.root["a"].tolist() == [0.0, 1.0, 2.0] and fine.root["s"] == 2


def test_stride0_expansion_is_bounded(tmp_path):
    import torch

    p = tmp_path / "e.pth"
    torch.save({"e": torch.zeros(1).expand(1000)}, p)  # a genuine expand view: fine
    assert load(p).state_dict()["e"].shape == (1000,)
    big = tmp_path / "big.pth"
    torch.save({"e": torch.zeros(1).expand(10 ** 9)}, big)  # 4 GB of values from a 4-byte storage
    with pytest.raises(FormatError, match="expand"):
        load(big)
