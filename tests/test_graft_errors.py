"""`ckpt graft` refusals: one stderr line, exit 2, no output file; verification failures; --inflate."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.errors import CkptError
from ckpttool.io import load

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

DET_MAP_GCA = "tests.support.fixtures:bevfusion_det_map_gca_model"


class Picky(nn.Module):
    """A real module whose load hook refuses every checkpoint (as version-checking modules do)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        args[-1].append(f"{type(self).__name__} refuses checkpoints")  # error_msgs


def picky_model():
    return Picky()


@pytest.fixture(scope="module")
def det(fixtures_dir, manifest):
    return fixtures_dir / manifest["layouts"]["layouts"]["bevfusion_det"]["path"]


def refused(*args, out=None):
    """Run `ckpt graft -q ARGS`; assert exit 2, exactly one stderr line, nothing on stdout, no output file."""
    res = CliRunner().invoke(cli, ["graft", "-q", *map(str, args)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("ckpt: error: "), res.output
    assert res.stdout == ""
    if out is not None:
        assert not os.path.exists(out)
        assert not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".")]  # no temp file left
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["--map", "(=x"], "bad regex in --map '(=x'"),
    (["--drop", "[fc"], "bad regex in --drop"),
    (["--map", r"\.weight$=.bias"], "the rules map both"),
    (["--init", "task_gca=ones"], "default, zeros or copy:PREFIX"),
    (["--init", "task_gca.map=copy:nowhere"], "does not have"),
    (["--fail-on", "new,everything"], "--fail-on takes"),
    (["--on-shape-mismatch", "error", "--map", "^heads.object.decoder.0.linear1.=heads.object.decoder.0.linear2."],
     "the rules map both"),
])
def test_bad_rules_are_refused(det, tmp_path, args, message):
    out = tmp_path / "out.pth"
    line = refused(det, "--into", DET_MAP_GCA, "-o", out, *args, out=out)
    assert message in line


def test_collision_names_both_sources(det, tmp_path):
    line = refused(det, "--into", DET_MAP_GCA, "--map", r"\.weight$=.bias", "--dry-run")
    a, b = line.split("both ")[1].split(" onto ")[0].split(" and ")
    assert a.strip("'").rsplit(".", 1)[0] == b.strip("'").rsplit(".", 1)[0]  # x.weight and x.bias → x.bias


def test_missing_and_unusable_inputs(det, tmp_path):
    out = tmp_path / "out.pth"
    assert "source not found" in refused(tmp_path / "nope.pth", "--into", DET_MAP_GCA, "-o", out, out=out)
    assert "config not found" in refused(det, "--into", tmp_path / "nope.py", "-o", out, out=out)
    assert "not a config (.py), an existing checkpoint" in refused(det, "--into", tmp_path / "nope.pth", "-o", out)
    assert "cannot import the factory module" in refused(det, "--into", "no_such_pkg.mod:fn", "-o", out)
    assert "has no 'nothing'" in refused(det, "--into", "tests.support.fixtures:nothing", "-o", out)
    assert "not a torch.nn.Module" in refused(det, "--into", "tests.support.fixtures:small_state_dict", "-o", out)
    assert "the factory tests.support.fixtures:scaled_shapes failed: TypeError" in refused(
        det, "--into", "tests.support.fixtures:scaled_shapes", "-o", out)
    assert "--cfg-options needs a config" in refused(det, "--into", DET_MAP_GCA, "--cfg-options", "a=1", "-o", out)
    assert "--from expects PREFIX=FILE" in refused("--from", det, "--into", DET_MAP_GCA, "-o", out)
    assert "give a SOURCE" in refused("--into", DET_MAP_GCA, "-o", out)
    assert "give each --from its own PREFIX" in refused("--from", f"a={det}", "--from", f"a.={det}", "--into",
                                                        DET_MAP_GCA, "-o", out, out=out)
    assert "give -o OUT" in refused(det, "--into", DET_MAP_GCA)
    bad_rules = tmp_path / "rules.yaml"
    bad_rules.write_text("rules: [{rename: a=b}]\n")
    assert "unknown graft rule" in refused(det, "--into", DET_MAP_GCA, "--rules", bad_rules, "-o", out, out=out)


def test_existing_output_and_input_are_never_overwritten(det, tmp_path):
    out = tmp_path / "exists.pth"
    out.write_bytes(b"keep me")
    assert "pass --force" in refused(det, "--into", DET_MAP_GCA, "-o", out)
    assert out.read_bytes() == b"keep me"
    size = det.stat().st_size
    assert "refusing to overwrite the input" in refused(det, "--into", DET_MAP_GCA, "-o", det, "--force")
    assert det.stat().st_size == size


def test_source_that_would_run_code_is_refused(fixtures_dir, manifest, det, tmp_path):
    mal = manifest["malicious"]["files"]["os_system"]
    out = tmp_path / "out.pth"
    assert "refusing a file that references code" in refused(fixtures_dir / mal["path"], "--into", det, "-o", out,
                                                             out=out)
    assert not os.path.exists(mal["sentinel"])


def test_failed_verification_leaves_no_file(det, tmp_path):
    import ckpttool

    out = tmp_path / "picky.pth"
    src = tmp_path / "fc.pth"
    torch.save(Picky().state_dict(), src)
    with pytest.raises(CkptError, match="verification failed: .*Picky refuses checkpoints"):
        ckpttool.graft(src, Picky(), out=out)
    assert os.listdir(tmp_path) == ["fc.pth"]
    line = refused(src, "--into", "tests.test_graft_errors:picky_model", "-o", out, out=out)
    assert "verification failed" in line


def test_verify_catches_a_changed_tensor(det):
    from ckpttool.surgery import graft as g
    from ckpttool.surgery.rules import make_plan
    from ckpttool.surgery.target import resolve_target

    src = g.source_tensors(g.open_sources(det))
    target = resolve_target(DET_MAP_GCA)
    plan = make_plan({k: (t.shape, t.dtype) for k, t in src.items()}, target.entries, [])
    values = g.apply(plan, src, target)
    assert g.verify(values, plan, src, target)
    tampered = {k: v.to_torch().clone() if hasattr(v, "to_torch") else v for k, v in values.items()}
    tampered["fuser.0.weight"].view(-1)[0] += 1e-6
    with pytest.raises(CkptError, match=r"verification failed: fuser\.0\.weight differs from its source"):
        g.verify(tampered, plan, src, target)


def test_inflate_turns_2d_kernels_into_3d(tmp_path):
    import ckpttool

    conv2d = nn.Conv2d(3, 8, 3)
    src = tmp_path / "conv2d.pth"
    torch.save({"state_dict": conv2d.state_dict()}, src)
    conv3d = nn.Conv3d(3, 8, (5, 3, 3))
    sd, report = ckpttool.graft(src, conv3d, inflate=True, out=tmp_path / "conv3d.pth")
    w = sd["weight"]
    assert w.shape == (8, 3, 5, 3, 3) and report["mismatched"][0]["action"] == "inflate"
    assert all(torch.equal(w[:, :, t], conv2d.weight.detach() / 5) for t in range(5))
    assert torch.equal(sd["bias"], conv2d.bias.detach()) and report["loaded"]["tensors"] == 1
    written = load(tmp_path / "conv3d.pth").state_dict()
    assert torch.equal(written["weight"].to_torch(), w)
    _, skipped = ckpttool.graft(src, conv3d)
    assert skipped["mismatched"][0]["action"] == "skip"
