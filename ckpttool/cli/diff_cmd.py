"""ckpt diff A B — keys, shapes, dtypes, values, meta and training configs of two checkpoints."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import Command, MultiOption, examples, finish, output_options
from ckpttool.report.output import Cell, Table, fmt_num, human_bytes

if TYPE_CHECKING:
    from ckpttool.comparison.diff import DiffReport

SHOW = 20  # rows of a key list in the text formats (json lists all)


@click.command("diff", cls=Command, epilog=examples(
    "ckpt diff work_dirs/rgbpose/epoch_11.pth work_dirs/rgbpose/epoch_12.pth --config",
    "ckpt diff epoch_5.pth grafted.pth --map '^backbone\\.=rgb_backbone.' --fail-on shapes,nonfinite",
    "ckpt diff a.pth b.safetensors --atol 1e-6 --keys --format json"))
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--depth", type=click.IntRange(1, 32), help="Module depth of the ranking (default: as inspect).")
@click.option("--map", "maps", cls=MultiOption, metavar="REGEX=REPL",
              help="Rename B's keys before comparing (re.sub, applied in order; repeatable).")
@click.option("--atol", type=float, default=0.0, show_default=True, help="Values equal when |b-a| <= atol + rtol*|a|.")
@click.option("--rtol", type=float, default=0.0, show_default=True)
@click.option("--section", metavar="NAME", help="Compare this section of both (ema_state_dict, state_dict…).")
@click.option("--section-a", metavar="NAME", help="Section of A (default: its weights).")
@click.option("--section-b", metavar="NAME", help="Section of B (default: its weights).")
@click.option("--config", is_flag=True, help="Also compare the embedded training configs and optimizer groups.")
@click.option("--config-a", metavar="FILE", help="A's config as a file (.py/.json/.yaml); implies --config.")
@click.option("--config-b", metavar="FILE", help="B's config as a file; implies --config.")
@click.option("--fail-on", metavar="KINDS", help="Exit 1 when one of these differs: keys,shapes,dtypes,values,"
                                                  "nonfinite,config (comma-separated).")
@click.option("--keys", is_flag=True, help="List every changed tensor (default: the top 10).")
@output_options
def diff_cmd(a, b, depth, maps, atol, rtol, section, section_a, section_b, config, config_a, config_b, fail_on,
             keys, fmt):
    """Compare checkpoint A with B: keys only in one, shape and dtype mismatches, value changes per tensor and per
    module (ranked by relative L2 change; NaN/Inf appearing in B first), meta, and with --config the training
    configs (meta.cfg, read without running it) plus the optimizer's lr / weight decay / momentum."""
    from ckpttool.comparison.diff import diff

    report = diff(a, b, depth=depth, section_a=section_a or section, section_b=section_b or section, maps=maps,
                  atol=atol, rtol=rtol, config=config, config_a=config_a, config_b=config_b, fail_on=fail_on)
    finish(report.to_dict(), tables(report, keys), fmt, report.failed)


def _cosine(x) -> str:
    return fmt_num(x, 6)


def tables(r: DiffReport, all_keys: bool = False) -> list[Table]:
    out = [Table(["", "A", "B"], header_rows(r), notes=[f"note: {n}" for n in r.notes]),
           Table(["structure", "count", "keys"], structure_rows(r), title="Structure")]
    for found, title in ((r.shape_mismatch, "Shape mismatches"), (r.dtype_mismatch, "Dtype mismatches")):
        if found:
            rows = [[m["key"], _short(m["a"]), _short(m["b"])] for m in found[:SHOW]]
            out.append(Table(["key", "A", "B"], rows, title=title, notes=_more(found)))
    out.append(module_table(r.modules, f"Modules (depth {r.depth}) by relative change ‖b−a‖/‖a‖ of their "
                                          f"floating parameters"))
    changed = r.changed_tensors if all_keys else r.changed_tensors[:10]
    if changed:
        trows = [[t["key"], t["kind"], f"{t['changed_elements']}/{t['numel']}", Cell(t["rel_l2"], fmt_num),
                  Cell(t["max_abs"], fmt_num), Cell(t["cosine"], _cosine),
                  _nonfinite(t) or (f"{t['a']} -> {t['b']}" if "delta" in t else "")] for t in changed]
        more = len(r.changed_tensors) - len(changed)
        out.append(Table(["tensor", "kind", "changed elems", "rel L2", "max |b-a|", "cosine", "NaN/Inf / value"], trows,
                         title="Changed tensors", notes=[f"… {more} more (--keys lists all)"] if more else []))
    if r.config is not None:
        crows = [[c["key"], _value(c["a"], c["change"] == "added"), _value(c["b"], c["change"] == "removed")]
                 for c in r.config]
        out.append(Table(["config key", "A", "B"], crows, title="Config differences"))
    return out


def module_table(modules: list[dict], title: str, limit: int | None = None) -> Table:
    """The module ranking (also `ckpt runs --explain`): parameters' numbers, buffers' rel L2 apart, integer
    counters by value."""
    from ckpttool.comparison.diff import integer_text

    shown = modules if limit is None else modules[:limit]
    rows = [[m["name"], m["tensors"], m["changed"], m["rel_l2"], m["max_abs"], m["cosine"],
             Cell(m["norm_b"] / m["norm_a"] if m.get("norm_a") else None, lambda x: f"{x:.3f}"),
             (m["buffers"] or {}).get("rel_l2"),
             _integers(m["integer"], integer_text),
             _nonfinite(m)] for m in shown]
    notes = [f"… {len(modules) - len(shown)} more modules"] if len(shown) < len(modules) else []
    return Table(["module", "tensors", "changed", "rel L2", "max |b-a|", "cosine", "norm b/a", "buffers rel L2",
                  "integer", "NaN/Inf in B"], rows, title=title, primary=True, notes=notes,
                 formats={3: fmt_num, 4: fmt_num, 5: _cosine, 7: fmt_num})


def _integers(changes: list[dict], text) -> str:
    """Integer tensors that changed, identical ones counted: `num_batches_tracked +19 (x52)`."""
    counts: dict[str, int] = {}
    for c in changes:
        counts[text(c)] = counts.get(text(c), 0) + 1
    items = [t + (f" (x{n})" if n > 1 else "") for t, n in counts.items()]
    return "; ".join(items[:2]) + (" …" if len(items) > 2 else "")


def header_rows(r: DiffReport) -> list[list]:
    a, b = r.a, r.b
    rows = [["path", a["path"], b["path"]], ["format", a["format"], b["format"]], ["layout", a["layout"], b["layout"]]]
    rows.append(["weights", _weights(a), _weights(b)])
    if b["map"]:
        rows.append(["--map", "", "; ".join(b["map"])])
    meta = r.meta
    for key in meta["changed"]:
        rows.append([key, _value(meta["a"].get(key), key not in meta["a"]),
                     _value(meta["b"].get(key), key not in meta["b"])])
    return rows


def _weights(side: dict) -> str:
    return f"{side['section'] or '(root)'}: {side['tensors']} tensors, {human_bytes(side['bytes'])}" + \
        (f" (prefix {side['stripped_prefix']!r} stripped)" if side["stripped_prefix"] else "")


def structure_rows(r: DiffReport) -> list[list]:
    nf = r.nonfinite_in_b
    return [
        ["only in A", len(r.only_in_a), _keys(r.only_in_a)],
        ["only in B", len(r.only_in_b), _keys(r.only_in_b)],
        ["shape mismatch", len(r.shape_mismatch), _keys([m["key"] for m in r.shape_mismatch])],
        ["dtype mismatch", len(r.dtype_mismatch), _keys([m["key"] for m in r.dtype_mismatch])],
        ["values compared", r.compared, ""],
        ["identical", r.identical_tensors, f"equal within atol {r.atol:g}, rtol {r.rtol:g}"],
        ["changed", len(r.changed_tensors), _keys([t["key"] for t in r.changed_tensors])],
        ["NaN/Inf in B", len(nf), _keys([t["key"] for t in nf])],
    ]


def _keys(keys: list, n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n})" if len(keys) > n else "")


def _more(items: list) -> list[str]:
    return [f"… {len(items) - SHOW} more (--format json lists all)"] if len(items) > SHOW else []


def _short(v) -> str:
    return "x".join(map(str, v)) or "scalar" if isinstance(v, list) else str(v)


def _value(v, missing: bool = False) -> str:
    if missing:
        return "-"
    if isinstance(v, float):
        return fmt_num(v, 6)
    return repr(v) if isinstance(v, str) else str(v)


def _nonfinite(row: dict) -> str:
    nan, inf = row.get("nan_b", row.get("nan", 0)), row.get("inf_b", row.get("inf", 0))
    return "" if not (nan or inf) else f"{nan} NaN, {inf} Inf"
