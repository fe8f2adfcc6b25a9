"""Graft rules and the plan: names and shapes only (no tensors, no torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ckpttool.errors import CkptError
from ckpttool.surgery.rules import collect_rules, copy_order, make_plan, parse_rule, read_rules_file, rename

F = "float32"


def shapes(**kw):
    return {k.replace("__", "."): (v, F) for k, v in kw.items()}


def plan(source, target, *rules, **kw):
    return make_plan(source, target, [parse_rule(k, v) for k, v in rules], **kw)


def by_key(p):
    return {e.key: e for e in p.entries}


def test_map_has_revise_keys_semantics_every_occurrence_in_order():
    rules = [parse_rule("map", r"a=b"), parse_rule("map", r"^b\.=c.")]
    names, dropped, matched = rename(["a.xa.w", "z.w"], rules)
    assert names == {"a.xa.w": ["c.xb.w"], "z.w": ["z.w"]}  # re.sub replaces every match, rules run in order
    assert matched == [1, 1] and dropped == {}


def test_prefix_rules_only_touch_names_that_have_the_prefix():
    rules = [parse_rule("strip-prefix", "backbone."), parse_rule("add_prefix", "net.")]
    names, _, matched = rename(["backbone.conv.w", "head.fc.w"], rules)
    assert names == {"backbone.conv.w": ["net.conv.w"], "head.fc.w": ["net.head.fc.w"]}
    assert matched == [1, 2]


def test_copy_feeds_several_targets_and_drop_removes_a_source():
    src = shapes(conv1__weight=(4, 3), fc__weight=(10, 4))
    tgt = shapes(vis__conv1__weight=(4, 3), lwir__conv1__weight=(4, 3), neck__w=(2,))
    p = plan(src, tgt, ("drop", r"^fc\."), ("copy", "=vis."), ("copy", "=lwir."))
    e = by_key(p)
    assert e["vis.conv1.weight"].source == e["lwir.conv1.weight"].source == "conv1.weight"
    assert e["neck.w"].status == "new" and e["neck.w"].init == "default"
    assert p.unused == [{"key": "fc.weight", "shape": [10, 4], "params": 40, "reason": "dropped by --drop '^fc\\.'",
                         "dropped": True}]


def test_only_keeps_matching_names_and_unmatched_sources_are_unused_not_dropped():
    src = shapes(a__w=(2,), b__w=(2,))
    p = plan(src, shapes(a__w=(2,), b__w=(2,)), ("only", r"^a\."))
    assert by_key(p)["b.w"].status == "new"
    assert p.unused[0]["key"] == "b.w" and p.unused[0]["dropped"]
    p = plan(shapes(x__w=(2,)), shapes(a__w=(2,)))
    assert p.unused[0]["reason"] == "no target key named 'x.w'" and not p.unused[0]["dropped"]


def test_two_sources_onto_one_key_is_an_error_naming_both():
    with pytest.raises(CkptError, match=r"both 'rgb\.fc\.w' and 'pose\.fc\.w' onto 'fc\.w'"):
        plan(shapes(rgb__fc__w=(2,), pose__fc__w=(2,)), shapes(fc__w=(2,)), ("map", r"^(rgb|pose)\.="))


def test_shape_mismatch_policies():
    src, tgt = shapes(fc__w=(60, 8), fc__b=(60,)), shapes(fc__w=(120, 8), fc__b=(120,))
    assert by_key(make_plan(src, tgt, [], policy="slice"))["fc.w"].action == "slice"
    assert by_key(make_plan(src, tgt, [], policy="skip"))["fc.w"].action == "skip"
    with pytest.raises(CkptError, match=r"2 shape mismatch.*fc\.w \(source fc\.w \[60, 8\] vs target \[120, 8\]\)"):
        make_plan(src, tgt, [], policy="error")
    with pytest.raises(CkptError, match="must be one of"):
        make_plan(src, tgt, [], policy="pad")


def test_slice_needs_equal_rank_and_inflate_needs_the_flag():
    src = shapes(conv__w=(8, 3, 7, 7), fc__w=(4, 2))
    tgt = shapes(conv__w=(8, 3, 5, 7, 7), fc__w=(4, 2, 1))
    assert by_key(make_plan(src, tgt, [], policy="slice"))["conv.w"].action == "skip"
    p = make_plan(src, tgt, [], policy="slice", inflate=True)
    assert by_key(p)["conv.w"].action == "inflate" and by_key(p)["fc.w"].action == "skip"


def test_init_last_matching_rule_wins_and_copy_resolves_the_key():
    tgt = shapes(gca__object__w=(4, 2), gca__map__w=(4, 2), gate__g=(1,))
    p = plan({}, tgt, ("init", "gca=zeros"), ("init", r"gca\.map=copy:gca.object"), ("init", "gate=zeros"))
    e = by_key(p)
    assert (e["gca.object.w"].init, e["gca.map.w"].init, e["gate.g"].init) == \
        ("zeros", "copy:gca.object.w", "zeros")
    assert p.matched == [2, 1, 1]
    assert [x.key for x in copy_order(p.entries)] == ["gca.map.w"]


def test_init_copy_chains_are_ordered_and_bad_copies_refused():
    tgt = shapes(a__w=(2,), b__w=(2,), c__w=(2,), d__w=(3,))
    p = plan({}, tgt, ("init", "^c=copy:b"), ("init", "^b=copy:a"))
    assert [x.key for x in copy_order(p.entries)] == ["b.w", "c.w"]
    with pytest.raises(CkptError, match="cycle"):
        plan({}, tgt, ("init", "^a=copy:b"), ("init", "^b=copy:a"))
    with pytest.raises(CkptError, match="does not have"):
        plan({}, tgt, ("init", "^a=copy:zz"))
    with pytest.raises(CkptError, match="shape"):
        plan({}, tgt, ("init", "^d=copy:a"))


@pytest.mark.parametrize("kind,value,message", [
    ("map", "(unclosed=x", "bad regex in --map"),
    ("map", r"^a=\3", "bad replacement in --map"),
    ("drop", "[", "bad regex in --drop"),
    ("map", "no-equals-sign", "expects REGEX=REPL"),
    ("copy", "nothing", "expects SRC_PREFIX=DST_PREFIX"),
    ("init", "x=ones", "default, zeros or copy:PREFIX"),
    ("strip-prefix", "", "non-empty"),
    ("rename", "a=b", "unknown graft rule"),
])
def test_bad_rules_are_refused(kind, value, message):
    with pytest.raises(CkptError, match=message.replace("(", r"\(")):
        parse_rule(kind, value)


def test_lookahead_regex_keeps_its_equals_sign():
    rule = parse_rule("map", r"^a(?=\.x)=b")
    assert (rule.left, rule.right) == (r"^a(?=\.x)", "b")
    assert rename(["a.x", "a.y"], [rule])[0] == {"a.x": ["b.x"], "a.y": ["a.y"]}


def test_rules_files_yaml_and_json_expand_in_place(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("on_shape_mismatch: slice\ninflate: true\nrules:\n  - map: '^a\\.=b.'\n  - drop: x\n")
    j = tmp_path / "r.json"
    j.write_text(json.dumps([{"copy": "b.=c."}]))
    rules, options = collect_rules([("map", "^q=a"), ("rules", str(y)), {"rules": str(j)}, ("init", "c=zeros")])
    assert [r.text() for r in rules] == ["--map '^q=a'", "--map '^a\\.=b.'", "--drop x", "--copy b.=c.",
                                         "--init c=zeros"]
    assert options == {"on_shape_mismatch": "slice", "inflate": True}
    assert read_rules_file(j)[1] == {}


@pytest.mark.parametrize("text,message", [("rules: [{map: a=b}]\nextra: 1\n", "unknown top-level"),
                                          ("- [a, b, c]\n", "one-key mapping"),
                                          ("rules: {map: a=b}\n", "list of rules"),
                                          ("- map: [\n", "cannot parse")])
def test_bad_rules_files(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(CkptError, match=message):
        read_rules_file(p)
    with pytest.raises(CkptError, match="cannot read rules file"):
        read_rules_file(tmp_path / "missing.yaml")


def test_planning_imports_no_torch():
    code = ("import sys, ckpttool, ckpttool.surgery.rules as r, ckpttool.cli.graft_cmd;"
            "r.make_plan({'a': ((2,), 'float32')}, {'a': ((2,), 'float32')}, [r.parse_rule('map', 'x=y')]);"
            "assert callable(ckpttool.graft); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
