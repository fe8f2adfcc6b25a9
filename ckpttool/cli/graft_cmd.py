"""ckpt graft SOURCE --into TARGET -o OUT [rules] — partial loading into a changed architecture, verified."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import ORDER_KEY, Command, MultiOption, OrderedOption, examples, finish, output_options
from ckpttool.report.output import Cell, Table, human_bytes, human_count

if TYPE_CHECKING:
    from ckpttool.surgery.graft import GraftReport


def rule_option(name, metavar, help_):
    return click.option(name, cls=OrderedOption, metavar=metavar, help=help_)


@click.command("graft", cls=Command, epilog=examples(
    "ckpt graft epoch_5.pth --into configs/bevfusion_det_map_gca.py --init 'task_gca.map=copy:task_gca.object' "
    "-o init.pth",
    "ckpt graft --from rgb=rgb.pth --from pose=pose.pth --into rgbpose_conv3d.py -o rgbpose_init.pth --dry-run",
    "ckpt graft epoch_20.pth --into template.pth --rules fixtures/rules/bevfusion_to_mmdet3d.yaml -o out.pth"))
@click.argument("source", required=False, type=click.Path())
@click.option("--into", "target", required=True, metavar="TARGET",
              help="New architecture: an mmengine config (.py), package.module:function, or a template checkpoint.")
@click.option("-o", "--out", type=click.Path(), help="Output checkpoint (.pth torch zip, or .safetensors).")
@click.option("--from", "sources", multiple=True, metavar="PREFIX=FILE",
              help="A source whose keys are named PREFIX.key (repeatable, for several sources).")
@click.option("--cfg-options", cls=MultiOption, metavar="K=V", help="Override config entries (config targets).")
@click.option("--project-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Config / factory targets: put DIR (and the current directory) on sys.path for custom_imports.")
@rule_option("--map", "REGEX=REPL", "Rename: re.sub(REGEX, REPL, name), like mmengine revise_keys.")
@rule_option("--strip-prefix", "P", "Remove P from names that start with it.")
@rule_option("--add-prefix", "P", "Put P in front of every name.")
@rule_option("--copy", "SRC=DST", "Names starting with SRC also feed DST + rest (one source, several targets).")
@rule_option("--drop", "REGEX", "Leave out source names matching REGEX (e.g. '^fc\\.').")
@rule_option("--only", "REGEX", "Keep only source names matching REGEX.")
@rule_option("--init", "PATTERN=SPEC", "How target keys matching PATTERN start when nothing loads into them: "
             "default, zeros or copy:PREFIX (last matching rule wins).")
@rule_option("--rules", "FILE", "YAML/JSON file with rules (and on_shape_mismatch / inflate), applied here.")
@click.option("--on-shape-mismatch", "policy", type=click.Choice(["skip", "error", "slice"]),
              help="Same name, other shape: keep the target's init (skip, the default), fail, or copy the "
                   "overlapping block (slice).")
@click.option("--inflate", is_flag=True, default=None, help="Inflate 2D conv kernels into 3D ones (I3D).")
@click.option("--section", metavar="NAME", help="Source section holding the weights (e.g. ema_state_dict).")
@click.option("--build", type=click.Choice(["auto", "meta", "cpu"]), default="auto", show_default=True,
              help="Config targets: build with parameters on meta and make real only what receives no weights "
                   "(auto falls back to the CPU with a note), or build all on the CPU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the target's initialisation.")
@click.option("--depth", type=click.IntRange(1, 32), help="Module depth of the report (default: the parts).")
@click.option("--keys", is_flag=True, help="One row per target tensor.")
@click.option("--dry-run", is_flag=True, help="Print the report, write nothing.")
@click.option("--fail-on", metavar="LIST", help="Exit 1 when any of new,mismatched,unused is not covered by a rule.")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@output_options
def graft_cmd(source, target, out, sources, cfg_options, project_root, policy, inflate, section, build, seed, depth,
              keys, dry_run, fail_on, force, fmt, **_rule_values):
    """Load SOURCE into the architecture TARGET by explicit rules; report what was loaded, what is new (and how
    it starts), what mismatched and what was left unused; write OUT and prove it loads strictly into TARGET
    with every loaded tensor bit-identical to its source. Optimizer state is not carried."""
    from ckpttool.errors import CkptError
    from ckpttool.surgery.graft import run

    checks = [c.strip() for c in (fail_on or "").split(",") if c.strip()]
    if out is None and not dry_run:
        raise CkptError("give -o OUT (or --dry-run)")
    src = source_spec(source, sources)
    rules = click.get_current_context().meta.get(ORDER_KEY, [])
    _, report = run(src, target, rules, cfg_options=list(cfg_options) or None, on_shape_mismatch=policy,
                    inflate=inflate, section=section, seed=seed, depth=depth, keys=keys, out=out, force=force,
                    dry_run=dry_run, fail_on=checks, build=build, project_root=project_root)
    warn_unmatched(report)
    finish(report.to_dict(), tables(report), fmt, failed=report.failed)


def source_spec(source, sources):
    from ckpttool.errors import CkptError

    pairs = [(None, source)] if source else []
    for item in sources:
        prefix, sep, path = item.partition("=")
        if not sep or not prefix or not path:
            raise CkptError(f"--from expects PREFIX=FILE, got {item!r}")
        pairs.append((prefix, path))
    if not pairs:
        raise CkptError("give a SOURCE checkpoint (or --from PREFIX=FILE)")
    return pairs


def warn_unmatched(r: GraftReport) -> None:
    from ckpttool.report.progress import warn

    for rule in r.rules:
        if rule["matched"] == 0:
            warn(f"rule {rule['text']} matched nothing")
    skipped = [m["key"] for m in r.mismatched if m["action"] == "skip"]
    if skipped:
        warn(f"{len(skipped)} shape-mismatched tensor(s) keep the target's initialisation (--on-shape-mismatch "
             f"skip), e.g. {skipped[0]}")


# --- tables -----------------------------------------------------------------------------------------------------
def tables(r: GraftReport) -> list[Table]:
    out = [Table(["", ""], header_rows(r)),
           Table(["module", "tensors", "params", "loaded", "new (init)", "mismatched (action)", "from"],
                 module_table(r), title=f"Modules (depth {r.depth})", primary=True)]
    if r.mismatched:
        out.append(Table(["key", "source", "source shape", "target shape", "action"],
                         [[m["key"], m["source"], _shape(m["source_shape"]), _shape(m["target_shape"]),
                           m["action"]] for m in r.mismatched], title="Shape mismatches"))
    if r.unused:
        out.append(Table(["source tensor", "shape", "params", "reason"],
                         [[u["key"], _shape(u["shape"]), u["params"], u["reason"]] for u in r.unused],
                         title="Unused source tensors"))
    if r.rules:
        out.append(Table(["#", "rule", "matched"], [[i + 1, x["text"], x["matched"]] for i, x in enumerate(r.rules)],
                         title="Rules (in order)"))
    if r.keys is not None:
        out.append(Table(["key", "shape", "status", "action", "source", "init"],
                         [[k["key"], _shape(k["shape"]), k["status"], k["action"], k["source"], k["init"]]
                          for k in r.keys], title="Tensors"))
    out[-1].notes.extend(r.notes)
    return out


def header_rows(r: GraftReport) -> list[list]:
    rows = [["source", f"{s['prefix']}={s['path']}" if s["prefix"] else s["path"]] for s in r.source]
    t = r.target
    rows.append(["target", f"{t['kind']} {t['spec']}: {t['tensors']} tensors, {human_count(t['params'])} params"])
    rows.append(["result", r.summary])
    out = r.output
    if out:
        rows.append(["written", f"{out['path']} ({out['tensors']} tensors, {human_bytes(out['bytes'])}), verified: "
                     + "; ".join(out["verified"][1:])])
    else:
        rows.append(["written", "nothing (--dry-run)" if r.dry_run else "nothing (a --fail-on check failed)"])
    return rows


def module_table(r: GraftReport) -> list[list]:
    rows = []
    for m in r.modules:
        init = ",".join(f"{k} {v}" for k, v in m["init"].items())
        acts = ",".join(f"{k} {v}" for k, v in m["actions"].items())
        rows.append([m["name"], m["tensors"], Cell(m["params"], human_count), m["loaded"],
                     f"{m['new']} ({init})" if m["new"] else 0, f"{m['mismatched']} ({acts})" if m["mismatched"] else 0,
                     m["from"] or "-"])
    return rows


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"
