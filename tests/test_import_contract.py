"""The import graph matches docs/architecture.md: heavy libraries only where its table says, inside functions;
commands that read files only never import torch."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ckpttool"


def _table(marker: str) -> dict[str, list[str]]:
    """The two-column table between ``<!-- marker -->`` and ``<!-- /marker -->`` in docs/architecture.md:
    first cell's name -> the backquoted names of the second."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    rules = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rules[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[1])
    return rules


def _contract() -> dict[str, list[str]]:
    return _table("import-contract")


def _imports(path: Path):
    """(top-level package, line, at module top level?) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports directly under `if`/`try` at module level are top-level too
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], node.lineno, id(node) in top


INFRASTRUCTURE = {"errors", "options", "plain", "__version__", "io", "report"}


def _room(module: str) -> str:
    """``ckpttool.engine.pipeline`` -> ``engine``, ``ckpttool.plain`` -> ``plain``, ``ckpttool`` -> ``ckpttool``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ckpttool"


def _room_rules() -> dict[str, set[str]]:
    return {room: set(names) for room, names in _table("room-contract").items()}


def _room_edges():
    """(from room, to room, file, line) of every import of one room of ckpttool by another."""
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _room("ckpttool." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ckpttool"):
                names = [node.module] if node.module != "ckpttool" else [f"ckpttool.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("ckpttool.")]
            else:
                continue
            for name in names:
                dst = _room(name)
                if dst != src:
                    yield src, dst, path.relative_to(ROOT).as_posix(), node.lineno


def test_rooms_import_only_the_rooms_the_architecture_names():
    rules = _room_rules()
    assert set(rules) == {"metrics", "summary", "integrations", "comparison", "workdirs", "surgery", "engine", "cli"}
    wrong = []
    for src, dst, where, line in _room_edges():
        if src in ("cli", "__init__", "__main__") or dst in INFRASTRUCTURE:   # the CLI and the package facade
            continue
        allowed = rules.get(src, set())   # infrastructure rooms may import only each other
        if dst not in allowed:
            wrong.append(f"{where}:{line} {src} -> {dst}")
    assert not wrong, "imports against docs/architecture.md's room table:\n" + "\n".join(wrong)


def test_the_contract_table_is_there():
    rules = _contract()
    assert {"torch", "mmengine", "mmaction", "mmdet", "matplotlib"} <= set(rules)
    assert rules["mmengine"] == ["ckpttool/integrations/"] and rules["matplotlib"] == ["ckpttool/report/plots.py", "ckpttool/report/style.py"]


def test_heavy_imports_only_where_the_architecture_says_and_lazily():
    rules = _contract()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for lib, line, at_top in _imports(path):
            if lib not in rules:
                continue
            if not any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in rules[lib]):
                wrong.append(f"{rel}:{line} imports {lib}")
            elif at_top:
                wrong.append(f"{rel}:{line} imports {lib} at module top level")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f():\n    from mmengine.config import Config\n")
    assert [(lib, top) for lib, _, top in _imports(bad)] == [("torch", True), ("mmengine", False)]


def _no_torch(*args: str) -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ckpttool.cli.main import cli\n"
            f"r = CliRunner().invoke(cli, {list(args)!r})\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = sorted(m for m in ('torch', 'mmengine', 'mmaction', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ntu60_metrics_from_files_never_import_torch():
    demo = ROOT / "fixtures" / "mmaction2-fuse-demo"
    _no_torch("eval", "--task", "ntu60", "--preds", str(demo / "joint.pkl"), str(demo / "bone.pkl"),
              "--clips", "1", "--format", "json")


def test_kaist_metrics_from_files_never_import_torch():
    kaist = ROOT / "fixtures" / "kaist"
    _no_torch("eval", "--task", "kaist", "--preds", str(kaist / "detections" / "MLPD_result.txt"),
              "--ann", str(kaist / "KAIST_annotation.json"), "--format", "csv")


def test_light_io_modules_do_not_import_the_reader():
    """`ckpttool.io.hashing` / `io.write` (digests, atomic writes: used by eval, runs and the digest cache) stay
    light: the safe unpickler, zipfile and the format readers load only when `ckpttool.io.load` is first used."""
    code = ("import sys\nimport ckpttool.io.hashing, ckpttool.io.write, ckpttool.surgery.average\n"
            "reader = sorted(m for m in ('ckpttool.io.unpickle', 'ckpttool.io.torchfile', 'ckpttool.io.checkpoint', "
            "'zipfile') if m in sys.modules)\nassert not reader, reader\n"
            "from ckpttool.io import load, Checkpoint, StateDict, TensorRef\n"
            "assert load.__module__ == 'ckpttool.io.checkpoint' and 'ckpttool.io.unpickle' in sys.modules\n"
            "import ckpttool.io as io\nassert {'load', 'TensorRef'} <= set(dir(io))\n"
            "try:\n    io.nothing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_engine_functions_are_short():
    """The engine reads as a pipeline of short steps (issue 12: no function longer than ~40 lines)."""
    long = []
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 40:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
