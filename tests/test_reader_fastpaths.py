"""The reader's fast paths (issue 12) read exactly what the general code reads.

The opcode loop reads opcode bytes from the current frame (or the file) itself; handlers read the file straight until
the first FRAME; repeated calls of a global count into the judge's own record; the value-graph walk finishes nodes
whose children are all leaves where it enters them. Each test pins what must not change: the bytes read (against
CPython's pure-Python unpickler, frame edges included), the opcode count the node budget scales with, the expanded
graph size and depth at the budget's boundary, a verdict that turns to code between two calls, the tensor checks.
"""
from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct

import numpy as np
import pytest

from ckpttool.errors import FormatError
from ckpttool.io.dtypes import by_name
from ckpttool.io.tensor import Storage, TensorRef
from ckpttool.io.unpickle import Budget, InertCall, InertObject, Judge, SafeUnpickler, unpickle


def _python_unpickle(data: bytes):
    return pickle._Unpickler(io.BytesIO(data), encoding="latin1").load()


def _frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


def _plain_values(protocol=4):
    small = {"lr": 0.01, "betas": (0.9, 0.999), "milestones": [8, 11], 3: None, (1, "a"): b"\x00\xff", "t": True,
             "s": {1, 2, 3}, "u": "\u00e9\u4e2d", "big": 2 ** 70, "neg": -5}
    if protocol >= 4:  # FROZENSET; earlier protocols call builtins.frozenset, which is not on the list
        small["f"] = frozenset({"x"})
    large = {f"layer{i}.weight": [i, float(i), str(i) * 3, (i, -i)] for i in range(6000)}  # several 64 KiB frames
    return [small, large, [small, small, large]]


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles_read_as_the_python_unpickler_reads_them(protocol):
    for value in _plain_values(protocol):
        data = pickle.dumps(value, protocol=protocol)
        obj, judge = unpickle(data)
        assert obj == _python_unpickle(data) == value
        assert judge.verdict == "data"


P4 = b"\x80\x04"
FRAME_EDGES = {
    "op and argument in one frame": P4 + _frame(b"K\x05") + b".",
    "argument right after the frame": P4 + _frame(b"K") + b"\x05.",
    "4-byte length right after the frame": P4 + _frame(b"X") + b"\x02\x00\x00\x00hi.",
    "argument across the frame's end": P4 + _frame(b"J\x01") + b"\x00\x00\x00.",
    "two frames in a row": P4 + _frame(b"K\x01K\x02") + _frame(b"\x86."),
    "a frame inside an unfinished frame": P4 + _frame(b"K\x01\x95" + struct.pack("<Q", 1) + b"K") + b"\x02\x86.",
    "protocol 2, then a frame": b"\x80\x02K\x01q\x00" + _frame(b"h\x00\x86q\x01") + b".",
    "protocol 2, a frame, then unframed ops": b"\x80\x02" + _frame(b"K\x01") + b"K\x02\x86.",
    "truncated inside a frame": P4 + _frame(b"K\x05"),
    "truncated after a frame": P4 + _frame(b"K\x05") + b"K",
}


@pytest.mark.parametrize("name", FRAME_EDGES)
def test_frame_edges_read_as_the_python_unpickler_reads_them(name):
    data = FRAME_EDGES[name]
    try:
        expected = _python_unpickle(data)
    except Exception:
        with pytest.raises(FormatError):
            unpickle(data)
        return
    assert unpickle(data)[0] == expected


def test_a_frame_claiming_more_than_the_data_is_refused():
    with pytest.raises(FormatError, match="FRAME claims 100 bytes"):
        unpickle(P4 + b"\x95" + struct.pack("<Q", 100) + b"K\x05.")


@pytest.mark.parametrize("protocol", [2, 4])
def test_the_opcode_count_is_every_opcode_read(protocol):
    data = pickle.dumps(_plain_values()[1], protocol=protocol)
    up = SafeUnpickler(io.BytesIO(data), None, None, Judge(), Budget())
    up.load()
    assert up.ops == sum(1 for _ in pickletools.genops(data))


def test_time_is_checked_every_16384_opcodes():
    few, many = pickle.dumps(list(range(100)), protocol=2), pickle.dumps(list(range(20000)), protocol=2)
    assert unpickle(few, budget=Budget(seconds=-1))[0] == list(range(100))
    with pytest.raises(FormatError, match="reading took more than"):
        unpickle(many, budget=Budget(seconds=-1))


def _shared_graph():
    leaf = {"a": 1, "b": "x"}                    # only leaves: 1 + 2 = 3
    mid = [leaf, leaf, (leaf, 3)]                # 1 + 3 + 3 + (1 + 3 + 1) = 12
    return {"m": [mid] * 20, "n": leaf}          # 1 + (1 + 20 * 12) + 3 = 245, shared references expanded


@pytest.mark.parametrize("protocol", [2, 4])
def test_the_node_budget_counts_shared_references_expanded(protocol):
    data = pickle.dumps(_shared_graph(), protocol=protocol)
    assert unpickle(data, budget=Budget(max_nodes=245, nodes_per_op=0))[0] == _shared_graph()
    with pytest.raises(FormatError, match="expand to more than 244 values"):
        unpickle(data, budget=Budget(max_nodes=244, nodes_per_op=0))
    ops = sum(1 for _ in pickletools.genops(data))  # the limit is max(max_nodes, nodes_per_op * opcodes read)
    below = 244 // ops
    with pytest.raises(FormatError, match=f"expand to more than {below * ops} values"):
        unpickle(data, budget=Budget(max_nodes=0, nodes_per_op=below))
    unpickle(data, budget=Budget(max_nodes=0, nodes_per_op=below + 1))


@pytest.mark.parametrize("innermost", [[1], [], {"k": "v"}, ([1], 2)])
def test_the_depth_budget_holds_for_leaf_only_containers(innermost):
    def nested(levels):
        value = innermost
        for _ in range(levels - 1):
            value = [value]
        return value

    extra = 1 if isinstance(innermost, tuple) else 0  # the tuple's [1] is one level deeper
    budget = 10
    ok = pickle.dumps(nested(budget + 1 - extra), protocol=2)  # depths 0 .. budget
    assert unpickle(ok, budget=Budget(max_depth=budget))[0] == nested(budget + 1 - extra)
    with pytest.raises(FormatError, match="nested deeper than 10 levels"):
        unpickle(pickle.dumps(nested(budget + 2 - extra), protocol=2), budget=Budget(max_depth=budget))


def test_a_back_edge_among_other_children_is_cut():
    # L = [{"x": 1}, L, [2]]: the walk cuts L's reference to itself and still walks the other children
    data = b"\x80\x02]q\x00(}q\x01X\x01\x00\x00\x00xK\x01sh\x00]q\x02K\x02ae."
    root, judge = unpickle(data)
    assert root[0] == {"x": 1} and root[2] == [2] and type(root[1]).__name__ == "BackRef"
    assert judge.verdict == "data"


def test_a_call_is_judged_anew_after_its_verdict_turned_to_code():
    # OrderedDict() (data), NEWOBJ OrderedDict(1) (file values to a class's __new__: code), OrderedDict() again
    data = (b"\x80\x02](ccollections\nOrderedDict\nq\x00)R"
            b"h\x00K\x01\x85\x81"
            b"h\x00)Re.")
    root, judge = unpickle(data)
    assert type(root[0]) is collections.OrderedDict and not root[0]
    assert isinstance(root[1], InertObject)
    assert isinstance(root[2], InertCall)  # the stand-in no longer runs
    assert judge.verdict == "code"
    call = [u for u in judge.global_uses() if u["name"] == "collections.OrderedDict" and u["use"] == "call"]
    assert len(call) == 1 and call[0]["count"] == 3 and call[0]["verdict"] == "code"


def test_repeated_calls_are_counted_once_each():
    n = 50
    data = b"\x80\x02](ccollections\nOrderedDict\nq\x00)R" + b"h\x00)R" * (n - 1) + b"e."
    root, judge = unpickle(data)
    assert root == [collections.OrderedDict()] * n
    (use,) = [u for u in judge.global_uses() if u["use"] == "call"]
    assert use["count"] == n and use["verdict"] == "data" and use["allowed_by"] == "collections.OrderedDict"


@pytest.mark.parametrize("key", [2 ** 62, -(2 ** 62), ("a", 2 ** 62)])
def test_dict_keys_beside_str_keys_are_still_checked(key):
    with pytest.raises(FormatError, match="dict key integer out of range"):
        unpickle(pickle.dumps({"a": 1, key: 2, "b": 3}, protocol=2))


def test_ordered_dict_from_pairs_is_still_checked():
    assert unpickle(pickle.dumps(collections.OrderedDict(a=1), protocol=2))[0] == {"a": 1}
    data = b"\x80\x02ccollections\nOrderedDict\n]K\x01a\x85R."  # OrderedDict([1])
    with pytest.raises(FormatError, match="key/value pairs"):
        unpickle(data)


def test_tensor_views_are_checked_against_their_storage():
    st = Storage("0", by_name("float32"), 12)
    assert TensorRef(st, 0, (3, 4), (4, 1)).nbytes == 48
    assert TensorRef(st, 0, (np.int64(3), 4), [np.int32(4), 1]).shape == (3, 4)
    assert TensorRef(st, 11, (0, 5), (5, 1)).numel == 0  # empty: no element to reach
    assert TensorRef(st, 0, (12,), (0,)).nbytes == 48   # stride 0 stays inside
    assert TensorRef(st, 11, (), ()).nbytes == 4
    for offset, shape, stride, match in [(1, (3, 4), (4, 1), "reaches past"), (0, (3, 4), (5, 1), "reaches past"),
                                         (12, (), (), "reaches past"), (0, (3, -4), (4, 1), "negative tensor shape"),
                                         (0, (3, 4), (4, -1), "does not fit"), (0, (3, 4), (4,), "does not fit"),
                                         (-1, (2,), (1,), "negative storage offset")]:
        with pytest.raises(FormatError, match=match):
            TensorRef(st, offset, shape, stride)
