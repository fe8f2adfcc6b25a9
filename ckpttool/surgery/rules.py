"""Graft rules and the plan: which target tensor comes from which source tensor, decided from names and shapes
only (no tensor values are read, torch is not imported).

Rules are applied in order to the names of the source tensors, with mmengine `revise_keys` semantics for `map`
(`re.sub(regex, repl, name)` on every name). A source tensor may carry several names (`copy` adds one), and it
feeds every target key that one of its names equals. `init` rules decide how target tensors without a source
start; the last matching `init` rule wins.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ckpttool.errors import CkptError

OPTIONS = {"map": "--map", "strip_prefix": "--strip-prefix", "add_prefix": "--add-prefix", "copy": "--copy",
           "drop": "--drop", "only": "--only", "init": "--init"}
POLICIES = ("skip", "error", "slice")
FILE_OPTIONS = ("on_shape_mismatch", "inflate")


@dataclass
class Rule:
    kind: str           # a key of OPTIONS
    value: str          # exactly as given, e.g. '^backbone\\.=backbone.rgb_path.'
    left: str = ""      # regex / prefix / pattern
    right: str = ""     # replacement / destination prefix / init spec
    rx: re.Pattern | None = None

    def text(self) -> str:
        return f"{OPTIONS[self.kind]} {shlex.quote(self.value)}"


def parse_rule(kind: str, value) -> Rule:
    """One rule from its option name (`map`, `strip-prefix`, …) and value; CkptError when it cannot work."""
    kind = str(kind).lstrip("-").replace("-", "_")
    if kind not in OPTIONS:
        raise CkptError(f"unknown graft rule {kind!r} (known: {', '.join(OPTIONS)})")
    if not isinstance(value, str):
        raise CkptError(f"{OPTIONS[kind]} expects a string, got {value!r}")
    rule = Rule(kind, value)
    if kind in ("map", "init", "copy"):
        rule.left, sep, rule.right = value.rpartition("=") if kind != "copy" else value.partition("=")
        if not sep:
            form = {"map": "REGEX=REPL", "copy": "SRC_PREFIX=DST_PREFIX", "init": "PATTERN=SPEC"}[kind]
            raise CkptError(f"{OPTIONS[kind]} expects {form}, got {value!r}")
    else:
        rule.left = value
    if kind in ("map", "drop", "only", "init"):
        rule.rx = _compile(rule.left, rule)
    if kind == "map":
        _check_replacement(rule)
    if kind in ("strip_prefix", "add_prefix") and not value:
        raise CkptError(f"{OPTIONS[kind]} expects a non-empty prefix")
    if kind == "init":
        _check_init_spec(rule)
    return rule


def _compile(pattern: str, rule: Rule) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CkptError(f"bad regex in {rule.text()}: {exc}") from None


def _check_replacement(rule: Rule) -> None:
    try:
        rule.rx.sub(rule.right, "")  # compiles the template: bad group references fail here
    except (re.error, IndexError) as exc:
        raise CkptError(f"bad replacement in {rule.text()}: {exc}") from None


def _check_init_spec(rule: Rule) -> None:
    spec = rule.right
    if spec in ("default", "zeros") or (spec.startswith("copy:") and spec[5:]):
        return
    raise CkptError(f"{rule.text()}: the spec must be default, zeros or copy:PREFIX, got {spec!r}")


# --- rules from files, dicts and the command line -----------------------------------------------------------
def read_rules_file(path) -> tuple[list[Rule], dict]:
    """Rules and options (`on_shape_mismatch`, `inflate`) from a YAML or JSON file: a list of one-key mappings
    (`- map: 'REGEX=REPL'`), or a mapping with `rules:` plus options."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CkptError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        raise CkptError(f"cannot parse rules file {path}: {str(exc).splitlines()[0]}") from None
    options = {}
    if isinstance(data, dict):
        unknown = set(data) - {"rules", *FILE_OPTIONS}
        if unknown:
            raise CkptError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
        options = {k: data[k] for k in FILE_OPTIONS if k in data}
        data = data.get("rules") or []
    if not isinstance(data, list):
        raise CkptError(f"{path}: expected a list of rules")
    return [_rule_from_item(item, path) for item in data], options


def _rule_from_item(item, where) -> Rule:
    if isinstance(item, Rule):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return parse_rule(*item)
    if isinstance(item, dict) and len(item) == 1:
        return parse_rule(*next(iter(item.items())))
    raise CkptError(f"{where}: each rule is a one-key mapping like {{map: 'REGEX=REPL'}}, got {item!r}")


def collect_rules(items) -> tuple[list[Rule], dict]:
    """Rules in order from Rule objects, (kind, value) pairs, {kind: value} dicts and ('rules', FILE) entries
    (expanded in place). Returns (rules, options read from files)."""
    rules, options = [], {}
    for item in items or ():
        kind, value = _kind_value(item)
        if kind == "rules":
            more, opts = read_rules_file(value)
            rules.extend(more)
            options.update(opts)
        else:
            rules.append(_rule_from_item(item, "rules"))
    return rules, options


def _kind_value(item):
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]).lstrip("-"), item[1]
    if isinstance(item, dict) and len(item) == 1:
        return next(iter(item.items()))
    return None, item


# --- renaming -------------------------------------------------------------------------------------------------
def apply_to_names(rule: Rule, names: list[str]) -> list[str]:
    """One rule on the names of one source tensor."""
    k = rule.kind
    if k == "map":
        return [rule.rx.sub(rule.right, n) for n in names]
    if k == "strip_prefix":
        return [n[len(rule.left):] if n.startswith(rule.left) else n for n in names]
    if k == "add_prefix":
        return [rule.left + n for n in names]
    if k == "copy":
        return names + [rule.right + n[len(rule.left):] for n in names if n.startswith(rule.left)]
    if k == "drop":
        return [n for n in names if not rule.rx.search(n)]
    if k == "only":
        return [n for n in names if rule.rx.search(n)]
    return names


def rename(sources, rules: list[Rule]) -> tuple[dict, dict, list[int]]:
    """Apply the name rules to every source name. Returns ({source: [names]}, {source: index of the rule that
    removed its last name}, [number of source tensors each rule changed])."""
    changed = [0] * len(rules)
    names_of, dropped = {}, {}
    for src in sources:
        names = [src]
        for i, rule in enumerate(rules):
            if rule.kind == "init":
                continue
            new = list(dict.fromkeys(apply_to_names(rule, names)))
            changed[i] += new != names
            names = new
            if not names:
                dropped[src] = i
                break
        names_of[src] = names
    return names_of, dropped, changed


# --- the plan -------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """What one target tensor becomes."""
    key: str
    shape: tuple
    dtype: str
    status: str = "new"            # loaded | new | mismatched
    action: str = "init"           # copy | init | skip | slice | inflate
    source: str | None = None      # source name feeding it
    source_shape: tuple | None = None
    source_dtype: str | None = None
    init: str | None = None        # default | zeros | copy:KEY — the starting value (new, skip, slice)
    init_rule: int | None = None   # index of the --init rule that chose it

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Plan:
    entries: list[Entry]
    unused: list[dict]
    rules: list[Rule]
    matched: list[int]
    policy: str = "skip"
    inflate: bool = False
    notes: list[str] = field(default_factory=list)


def make_plan(source: dict, target: dict, rules: list[Rule], policy: str = "skip", inflate: bool = False) -> Plan:
    """`source` and `target` map names to (shape, dtype). Raises CkptError for ambiguous rules, an `error`
    policy that meets a shape mismatch, or an `--init copy:` that cannot work."""
    if policy not in POLICIES:
        raise CkptError(f"--on-shape-mismatch must be one of {', '.join(POLICIES)}, got {policy!r}")
    names_of, dropped, matched = rename(source, rules)
    feeder = _feeders(names_of)
    entries = [_entry(key, shape, dtype, feeder.get(key), source, policy, inflate)
               for key, (shape, dtype) in target.items()]
    _refuse_mismatches(entries, policy)
    _choose_inits(entries, rules, matched)
    _check_copies(entries, target)
    used = {e.source for e in entries if e.source is not None}
    unused = [_unused(src, source[src], names_of[src], dropped.get(src), rules) for src in source if src not in used]
    plan = Plan(entries, unused, rules, matched, policy, inflate)
    plan.notes = _dtype_notes(entries)
    return plan


def _feeders(names_of: dict) -> dict:
    feeder = {}
    for src, names in names_of.items():
        for n in names:
            other = feeder.setdefault(n, src)
            if other != src:
                raise CkptError(f"the rules map both {other!r} and {src!r} onto {n!r}")
    return feeder


def _entry(key, shape, dtype, src, source, policy, inflate) -> Entry:
    e = Entry(key, tuple(shape), dtype)
    if src is None:
        return e
    s_shape, s_dtype = source[src]
    e.source, e.source_shape, e.source_dtype = src, tuple(s_shape), s_dtype
    if e.source_shape == e.shape:
        e.status, e.action = "loaded", "copy"
        return e
    e.status = "mismatched"
    if inflate and inflatable(e.source_shape, e.shape):
        e.action = "inflate"
    elif policy == "slice" and len(e.source_shape) == len(e.shape):
        e.action = "slice"
    else:
        e.action = "error" if policy == "error" else "skip"
    return e


def inflatable(src: tuple, dst: tuple) -> bool:
    """A 2D kernel (O, I, kh, kw) that becomes a 3D one (O, I, kt, kh, kw)."""
    return len(src) == 4 and len(dst) == 5 and src[:2] == dst[:2] and src[2:] == dst[3:]


def _refuse_mismatches(entries, policy) -> None:
    bad = [e for e in entries if e.action == "error"]
    if bad:
        first = ", ".join(f"{e.key} (source {e.source} {list(e.source_shape)} vs target {list(e.shape)})"
                          for e in bad[:2])
        raise CkptError(f"{len(bad)} shape mismatch(es) with --on-shape-mismatch error: {first}"
                        + (" …" if len(bad) > 2 else ""))


def _choose_inits(entries, rules, matched) -> None:
    inits = [(i, r) for i, r in enumerate(rules) if r.kind == "init"]
    for e in entries:
        if e.action not in ("init", "skip", "slice"):
            continue
        e.init = "default"
        for i, r in inits:
            m = r.rx.search(e.key)
            if m:
                matched[i] += 1
                e.init_rule = i
                e.init = "copy:" + e.key[:m.start()] + r.right[5:] + e.key[m.end():] \
                    if r.right.startswith("copy:") else r.right


def _check_copies(entries, target) -> None:
    by_key = {e.key: e for e in entries}
    for e in entries:
        if not (e.init or "").startswith("copy:"):
            continue
        src = e.init[5:]
        if src not in target:
            raise CkptError(f"{e.key}: --init copy: needs the target key {src!r}, which the target does not have")
        if tuple(target[src][0]) != e.shape:
            raise CkptError(f"{e.key}: --init copy: from {src!r} of shape {list(target[src][0])}, "
                            f"but the key has shape {list(e.shape)}")
        seen = {e.key}
        while (by_key[src].init or "").startswith("copy:") and by_key[src].status != "loaded":
            if src in seen:
                raise CkptError(f"--init copy: rules form a cycle through {src!r}")
            seen.add(src)
            src = by_key[src].init[5:]


def copy_order(entries) -> list[Entry]:
    """Entries whose value copies another target key, ordered so every copied key is ready before it is read."""
    by_key = {e.key: e for e in entries}
    done, order = set(), []

    def visit(e):
        if e.key in done:
            return
        src = by_key[e.init[5:]]
        if src.status != "loaded" and (src.init or "").startswith("copy:"):
            visit(src)
        done.add(e.key)
        order.append(e)

    for e in entries:
        if (e.init or "").startswith("copy:"):
            visit(e)
    return order


def _unused(src, shape_dtype, names, drop_rule, rules) -> dict:
    shape = list(shape_dtype[0])
    n = 1
    for s in shape:
        n *= s
    if drop_rule is not None:
        reason = f"dropped by {rules[drop_rule].text()}"
    else:
        shown = ", ".join(repr(x) for x in names[:2]) + (" …" if len(names) > 2 else "")
        reason = f"no target key named {shown}"
    return {"key": src, "shape": shape, "params": n, "reason": reason, "dropped": drop_rule is not None}


def _dtype_notes(entries) -> list[str]:
    diff = [e for e in entries if e.status == "loaded" and e.source_dtype != e.dtype]
    if not diff:
        return []
    e = diff[0]
    return [f"{len(diff)} loaded tensor(s) keep their source dtype where the target's differs (e.g. {e.key}: "
            f"{e.source_dtype} vs {e.dtype}); load_state_dict casts on load"]
