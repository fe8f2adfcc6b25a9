"""Training configs of two checkpoints, flattened to dotted keys and compared.

The config embedded in a checkpoint (`meta.cfg` of mmengine, `meta.config` of mmcv 1.x) is Python text. mmengine's
`Config.fromstring` would *execute* it (and import its `custom_imports`), so embedded text is read here by walking
its syntax tree: only literals, `dict(...)` and names bound earlier are evaluated; anything else (imports, calls,
lambdas) is kept as its source text and never run. Config files the user names (`--config-a/--config-b`) are
their own code and are loaded with `mmengine.Config.fromfile(import_custom_modules=False)`, so `_base_` works.
"""
from __future__ import annotations

import ast
import math

from ckpttool.errors import CkptError

SCALARS = (str, int, float, bool, type(None))
GROUP_FIELDS = ("lr", "weight_decay", "momentum", "betas")
MISSING = object()


# --- reading ------------------------------------------------------------------------------------------------
def parse_text(text: str, origin: str) -> dict:
    """Evaluate the assignments of config text without running it (see the module doc)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as exc:
        raise CkptError(f"{origin}: the config text is not valid Python ({exc})") from None
    env: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            value = _value(stmt.value, env)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            env[stmt.target.id] = _value(stmt.value, env)
    return env


def _value(node, env, depth=0):
    if depth > 100:
        return ast.unparse(node)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_value(e, env, depth + 1) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            return ast.unparse(node)
        return {_key(k, env, depth): _value(v, env, depth + 1) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
            and not node.args and all(kw.arg for kw in node.keywords):
        return {kw.arg: _value(kw.value, env, depth + 1) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand, env, depth + 1)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id in ("inf", "nan"):
            return float(node.id)
    return ast.unparse(node)   # kept as text, never evaluated


def _key(node, env, depth):
    k = _value(node, env, depth + 1)
    return k if isinstance(k, SCALARS) else str(k)


def load_file(path: str) -> dict:
    """A config file named by the user (.py/.json/.yaml) via mmengine, without importing `custom_imports`."""
    from ckpttool.integrations.openmmlab import read_config_file

    from ckpttool.plain import plain

    return plain(read_config_file(path), max_depth=1000)


def embedded(ck) -> dict | None:
    """The config stored in a checkpoint as a dict, or None when it has none."""
    cfg = ck.meta.get("cfg", ck.meta.get("config"))
    if cfg is None and ck.layout.kind == "lightning":
        cfg = ck.meta.get("hyper_parameters")
    if isinstance(cfg, dict):
        return cfg
    if isinstance(cfg, str) and cfg.strip():
        return parse_text(cfg, ck.path)
    return None


def optimizer_groups(root) -> dict:
    """`optimizer.param_groups.<i>.<lr|weight_decay|momentum|betas>` from the checkpoint's optimizer state."""
    from ckpttool.io.layout import plain

    if not isinstance(root, dict):
        return {}
    opt = root.get("optimizer", root.get("optimizer_states"))
    named = {}
    if isinstance(opt, list):
        named = {f"optimizer.{i}" if len(opt) > 1 else "optimizer": o for i, o in enumerate(opt)}
    elif isinstance(opt, dict) and "param_groups" in opt:
        named = {"optimizer": opt}
    elif isinstance(opt, dict):   # mmengine OptimWrapperDict: {name: optimizer state}
        named = {f"optimizer.{k}": v for k, v in opt.items() if isinstance(v, dict) and "param_groups" in v}
    out = {}
    for name, o in named.items():
        groups = o.get("param_groups") if isinstance(o, dict) else None
        for i, g in enumerate(groups if isinstance(groups, list) else ()):
            for field in GROUP_FIELDS:
                if isinstance(g, dict) and field in g:
                    out[f"{name}.param_groups.{i}.{field}"] = _norm(plain(g[field]))
    return out


# --- flattening and comparing ----------------------------------------------------------------------------
def flatten(obj, prefix: str = "", out: dict | None = None) -> dict:
    """Dotted keys: dicts by key, lists of scalars as one value, lists of `dict(type=...)` (pipelines, hooks) by
    type (`pipeline.RandomResizedCrop.area_range`; a repeated type gets `#2`), other lists by index."""
    out = {} if out is None else out
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            flatten(v, f"{prefix}{k}.", out)
    elif isinstance(obj, (list, tuple)) and obj and not all(isinstance(v, SCALARS) for v in obj):
        typed = all(isinstance(v, dict) and isinstance(v.get("type"), str) for v in obj)
        seen: dict = {}
        for i, v in enumerate(obj):
            if typed:
                seen[v["type"]] = seen.get(v["type"], 0) + 1
                name = v["type"] + (f"#{seen[v['type']]}" if seen[v["type"]] > 1 else "")
            else:
                name = str(i)
            flatten(v, f"{prefix}{name}.", out)
    elif prefix:
        out[prefix.rstrip(".")] = _norm(obj)
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {} if not v else {k: _norm(x) for k, x in v.items()}
    return v


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def compare(flat_a: dict, flat_b: dict) -> list[dict]:
    """Changed keys as [{"key", "a", "b", "change": changed|added|removed}] in A's order, then B's new keys."""
    rows = []
    for key in list(flat_a) + [k for k in flat_b if k not in flat_a]:
        a, b = flat_a.get(key, MISSING), flat_b.get(key, MISSING)
        if a is MISSING:
            rows.append({"key": key, "a": None, "b": b, "change": "added"})
        elif b is MISSING:
            rows.append({"key": key, "a": a, "b": None, "change": "removed"})
        elif not _same(a, b):
            rows.append({"key": key, "a": a, "b": b, "change": "changed"})
    return rows


def config_diff(ck_a, ck_b, file_a: str | None = None, file_b: str | None = None) -> tuple[list[dict], list[str]]:
    """(rows, notes): the changed config keys plus the optimizer's param groups of both checkpoints."""
    notes = []
    cfgs = []
    for tag, ck, path in (("A", ck_a, file_a), ("B", ck_b, file_b)):
        cfg = load_file(path) if path else embedded(ck)
        if cfg is None:
            notes.append(f"{tag} ({ck.path}) holds no training config; give one with --config-{tag.lower()} FILE")
        cfgs.append(cfg)
    rows = compare(flatten(cfgs[0]), flatten(cfgs[1])) if None not in cfgs else []
    groups = compare(optimizer_groups(ck_a.root), optimizer_groups(ck_b.root))
    rows += groups
    rows += compare(lr_in_effect(ck_a.root), lr_in_effect(ck_b.root))
    if any(r["key"].endswith(".lr") for r in groups):
        notes.append("optimizer.param_groups.*.lr is stored after the end-of-epoch scheduler step: it is the next "
                     "epoch's lr; train/lr (message_hub) is the lr in effect during the saved epoch")
    return rows, notes


def lr_in_effect(root) -> dict:
    """`train/lr`: the lr logged during the saved epoch (message_hub), not the stored next-epoch value."""
    from ckpttool.summary.training import last_scalars

    if not isinstance(root, dict):
        return {}
    lr = last_scalars(root.get("message_hub")).get("train/lr")
    return {"train/lr": lr} if lr is not None else {}
