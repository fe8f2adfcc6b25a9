"""Figures: what a reader of the paper sees, checked on the matplotlib Figure that `ckpt eval --plot` rendered
(axes scales and limits, legend entries and their order, one colour per method in every panel), on the four
published KAIST result files in fixtures/."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.report import plots, style

ROOT = Path(__file__).resolve().parents[1]
KAIST = ROOT / "fixtures" / "kaist"
ANN = str(KAIST / "KAIST_annotation.json")
# input order deliberately not the ranking: colours must follow the method, legends the MR
FILES = [str(KAIST / "detections" / f"{m}_result.txt") for m in ("MSDS-RCNN", "MBNet", "MLPD", "INSANet")]
# MR-2 (%) of the MLPD evaluation script on these files (Reasonable, mlpd protocol), as the papers report them
PUBLISHED = {"all": {"MLPD": 7.58}, "night": {"MLPD": 6.95}}


@pytest.fixture
def rendered(monkeypatch):
    """Every Figure the command renders, in order (captured at the one render function)."""
    figs = []
    real = style.render

    def capture(fig, fmt):
        figs.append((fig, fmt))
        return real(fig, fmt)

    monkeypatch.setattr(style, "render", capture)
    return figs


def ckpt(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def _lines(ax):
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid() and line.get_label()[:1] != "_"}


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.fixture(scope="module")
def kaist_png(tmp_path_factory):
    """One CLI run on the real result files; the rendered figure and the JSON result."""
    mp = pytest.MonkeyPatch()
    figs = []
    real = style.render
    mp.setattr(style, "render", lambda fig, fmt: figs.append(fig) or real(fig, fmt))
    out = tmp_path_factory.mktemp("mr") / "mr.png"
    res = ckpt("--task", "kaist", "--preds", *FILES, "--ann", ANN, "--plot", out, "--format", "json")
    mp.undo()
    assert res.exit_code == 0, res.stderr
    return figs, json.loads(res.stdout), out


def test_mr_fppi_axes_band_and_title(kaist_png):
    (fig,), result, out = kaist_png
    assert out.read_bytes().startswith(b"\x89PNG")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["All (2252 images)", "Day (1455 images)", "Night (797 images)"]
    title = fig._suptitle.get_text()
    assert "KAIST Reasonable" in title and "MLPD protocol" in title
    for ax in axes:
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
        assert ax.get_ylim() == pytest.approx((0.05, 1.0)) and ax.get_xlim() == pytest.approx((1e-3, 10.0))
        assert ax.get_xlabel() == "False positives per image" and ax.get_ylabel() == "Miss rate"
        band = [p for p in ax.patches if p.get_gid() == "mr_band"]
        assert len(band) == 1
        x0, x1 = band[0].get_x(), band[0].get_x() + band[0].get_width()
        assert (x0, x1) == pytest.approx((0.01, 1.0))
        assert [t.get_text() for t in ax.get_yticklabels()][:3] == [".05", ".10", ".20"]
    # one panel a paper column wide, fonts legible at that size
    w, h = fig.get_size_inches()
    assert w / 3 == pytest.approx(3.5) and h < 3.5
    assert min(t.get_fontsize() for ax in axes for t in ax.get_legend().get_texts()) >= 7


def test_mr_fppi_legend_ordered_by_mr_with_published_numbers(kaist_png):
    (fig,), result, _ = kaist_png
    mr = {m["name"]: m["MR"] for m in result["methods"]}
    for ax, sub in zip(fig.get_axes(), ("all", "day", "night")):
        entries = _legend(ax)
        ranked = sorted(mr, key=lambda n: mr[n][sub])
        assert entries == [f"{n} {mr[n][sub]:.2f}%" for n in ranked]
        for name, value in PUBLISHED.get(sub, {}).items():
            assert f"{name} {value:.2f}%" in entries
    assert _legend(fig.get_axes()[0])[0].startswith("INSANet")  # the best method first, not the first file


def test_mr_fppi_one_colour_and_marker_per_method_in_every_panel(kaist_png):
    (fig,), result, _ = kaist_png
    looks = [{name: (line.get_color(), line.get_marker()) for name, line in _lines(ax).items()}
             for ax in fig.get_axes()]
    assert all(set(lk) == {"MSDS-RCNN", "MBNet", "MLPD", "INSANet"} for lk in looks)
    assert looks[0] == looks[1] == looks[2]
    assert len({c for c, _ in looks[0].values()}) == 4 and len({m for _, m in looks[0].values()}) == 4
    # colours follow the --preds order (every panel here ranks the methods alike, so a colour-by-rank bug would
    # still give equal looks across panels; this catches it)
    assert [looks[0][n][0] for n in ("MSDS-RCNN", "MBNet", "MLPD", "INSANet")] == list(style.PALETTE[:4])
    # the legend's handles carry the line's colour (the legend is not re-coloured by rank)
    ax = fig.get_axes()[2]
    for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles):
        assert handle.get_color() == looks[2][text.get_text().rsplit(" ", 1)[0]][0]


def test_mr_fppi_data_in_json_is_what_was_drawn(kaist_png):
    (fig,), result, out = kaist_png
    plot = result["plot"]
    assert plot["files"] == [str(out)] and "curves" not in result["methods"][0]
    data = plot["data"]
    assert data["mr_band_fppi"] == [0.01, 1.0] and data["setup"] == "Reasonable" and data["protocol"] == "mlpd"
    night = data["subsets"]["night"]
    assert [s["name"] for s in night] == [t.rsplit(" ", 1)[0] for t in _legend(fig.get_axes()[2])]
    line = _lines(fig.get_axes()[2])["MLPD"]
    mlpd = next(s for s in night if s["name"] == "MLPD")
    assert np.allclose(line.get_xdata(), mlpd["fppi"]) and np.allclose(line.get_ydata(), mlpd["miss_rate"])
    assert min(mlpd["fppi"]) <= 1e-3 and max(mlpd["fppi"]) >= 0.1   # the curve covers the band
    assert all(a >= b for a, b in zip(mlpd["miss_rate"], mlpd["miss_rate"][1:]))  # miss rate only falls


def test_mr_fppi_matches_a_direct_computation():
    """The thinned curve is the MLPD script's curve at every FPPI in view (a step function drawn exactly)."""
    from ckpttool.metrics.kaist import evaluate_kaist

    r = evaluate_kaist([FILES[2]], ANN, curves=True)
    full = r["methods"][0]["curves"]["all"]
    data = plots.miss_rate_data(r["methods"])
    thin = data["subsets"]["all"][0]
    probe = np.logspace(-3, 1, 200)
    for x in probe:   # the miss rate at the last curve point with fppi <= x, in both
        i = np.searchsorted(full["fppi"], x, side="right") - 1
        j = np.searchsorted(thin["fppi"], x, side="right") - 1
        if i >= 0 and full["miss_rate"][i] >= 0.05:
            assert thin["miss_rate"][j] == pytest.approx(full["miss_rate"][i], rel=1e-5)
    assert len(thin["fppi"]) < len(full["fppi"]) / 4


def test_mr_fppi_panels_files_pdf_and_no_overwrite(tmp_path, rendered):
    out = tmp_path / "mr.pdf"
    res = ckpt("--task", "kaist", "--preds", *FILES[2:], "--ann", ANN, "--setup", "All", "--protocol", "matlab",
               "--plot", out, "--plot-panels", "--format", "json")
    assert res.exit_code == 0, res.stderr
    files = [tmp_path / f"mr_{s}.pdf" for s in ("all", "day", "night")]
    assert json.loads(res.stdout)["plot"]["files"] == [str(f) for f in files]
    assert all(f.read_bytes().startswith(b"%PDF") for f in files) and not out.exists()
    for (fig, fmt), sub in zip(rendered, ("All", "Day", "Night")):
        (ax,) = fig.get_axes()
        assert fmt == "pdf" and fig.get_size_inches()[0] == pytest.approx(3.5)
        assert ax.get_title().startswith(f"KAIST All, {sub}") and "Matlab toolbox protocol" in ax.get_title()
    # an existing figure is never replaced without --force, and nothing is evaluated first
    before = files[1].read_bytes()
    res = ckpt("--task", "kaist", "--preds", FILES[2], "--ann", ANN, "--plot", out, "--plot-panels")
    assert res.exit_code == 2 and "--force" in res.stderr and files[1].read_bytes() == before
    res = ckpt("--task", "kaist", "--preds", FILES[2], "--ann", ANN, "--plot", out, "--plot-panels", "--force")
    assert res.exit_code == 0 and files[1].read_bytes() != before


def test_svg_keeps_text_as_text(tmp_path):
    out = tmp_path / "mr.svg"
    assert ckpt("--task", "kaist", "--preds", FILES[2], "--ann", ANN, "--plot", out).exit_code == 0
    svg = out.read_text()
    assert svg.startswith("<?xml") and "MLPD 7.58%" in svg


# --- accuracy vs clips ----------------------------------------------------------------------------------------------
def _views_file(tmp_path, n=40, views=6, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    noise = lambda s: rng.normal(0, s, (n, views, classes)).astype(np.float32)  # noqa: E731
    onehot = np.eye(classes, dtype=np.float32)[labels][:, None, :]
    path = tmp_path / "views.npz"
    np.savez(path, labels=labels, scores_rgb=onehot + noise(1.2), scores_pose=onehot + noise(1.5))
    return path


@pytest.mark.parametrize("metric, label, key", [("top1", "Top-1 (%)", "top1"), ("top5", "Top-5 (%)", "top5"),
                                                ("mean_class", "Mean class accuracy (%)", "mean_class_accuracy")])
def test_clips_from_predictions(tmp_path, rendered, metric, label, key):
    out = tmp_path / "clips.png"
    res = ckpt("--task", "ntu60", "--preds", _views_file(tmp_path), "--clips", "1,2,4,6", "--plot", out,
               "--plot-metric", metric, "--format", "json")
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    (fig, fmt), = rendered
    (ax,) = fig.get_axes()
    assert ax.get_ylabel() == label and ax.get_xlabel().startswith("Views averaged")
    assert list(ax.get_xticks()) == [1, 2, 4, 6]
    assert _legend(ax)[:3] == ["RGB", "Pose", "RGB+Pose 1:1"]
    rgb = _lines(ax)["rgb"]
    assert list(rgb.get_ydata()) == [next(r[key] for r in c["rows"] if r["name"] == "rgb") for c in result["clips"]]
    assert result["plot"]["data"]["ylabel"] == label and result["plot"]["data"]["marked"] == 6  # all stored views
    assert fig.get_size_inches()[0] == pytest.approx(3.5)


def test_clips_model_run_marks_the_configs_num_clips(tmp_path, rendered, monkeypatch):
    import ckpttool.engine.tasks as tta

    rows = [{"name": "rgb", "top1": 80.0, "top5": 95.0, "mean_class_accuracy": 79.0},
            {"name": "pose", "top1": 85.0, "top5": 97.0, "mean_class_accuracy": 84.0},
            {"name": "RGBPose_1:1", "top1": 88.0, "top5": 98.0, "mean_class_accuracy": 87.0}]

    def fake(config, checkpoint, clips, **kw):
        return {"task": "ntu60", "config": config, "checkpoint": checkpoint, "split": "xsub_val",
                "config_num_clips": 10, "clips": [{"k": k, "rows": [dict(r, top1=r["top1"] + k / 10) for r in rows]}
                                                  for k in clips]}

    monkeypatch.setattr(tta, "evaluate_recognizer", fake)
    out = tmp_path / "clips.svg"
    res = ckpt(tmp_path / "cfg.py", tmp_path / "epoch_24.pth", "--clips", "1,5,10,20", "--plot", out,
               "--format", "json")
    assert res.exit_code == 0, res.stderr
    (fig, fmt), = rendered
    (ax,) = fig.get_axes()
    assert fmt == "svg" and ax.get_xlabel() == "Test clips (num_clips)" and ax.get_ylabel() == "Top-1 (%)"
    assert _legend(ax) == ["RGB", "Pose", "RGB+Pose 1:1"]
    assert ax.get_title() == "epoch_24.pth, xsub_val"
    marks = [line for line in ax.get_lines() if line.get_linestyle() == "--" and not line.get_gid()]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [10, 10]
    assert any(t.get_text() == "config: num_clips=10" for t in ax.texts)
    assert list(_lines(ax)["pose"].get_ydata()) == [85.1, 85.5, 86.0, 87.0]
    assert json.loads(res.stdout)["plot"]["data"]["x"] == [1, 5, 10, 20]


def test_style_helpers_for_other_figures(tmp_path):
    """What `ckpt runs --plot` builds on: stable looks, legend order, atomic no-overwrite writing."""
    look = style.series_styles(["rgb", "pose", "rgb"])
    assert list(look) == ["rgb", "pose"] and look["rgb"]["color"] != look["pose"]["color"]
    with style.context():
        fig, (ax,) = style.new_figure()
        for name in ("b", "a"):
            ax.plot([1, 2], [1, 2], label=name, **style.series_styles(["a", "b"])[name])
        style.legend(ax, order=["a", "b"])
    assert _legend(ax) == ["a", "b"]
    path = tmp_path / "f.png"
    written = style.save_figure(fig, str(path))
    assert written["format"] == "png" and path.read_bytes().startswith(b"\x89PNG")
    from ckpttool.errors import CkptError

    with pytest.raises(CkptError, match="--force"):
        style.save_figure(fig, str(path))
    with pytest.raises(CkptError, match=r"\.pdf, \.png or \.svg"):
        style.check_figure_path(str(tmp_path / "f.jpg"))
    assert style.render(fig, "pdf") == style.render(fig, "pdf")  # reproducible bytes (no dates)


def test_confusion_matrix_rows_normalised(tmp_path, rendered):
    joint = ROOT / "fixtures" / "mmaction2-fuse-demo" / "joint.pkl"
    out = tmp_path / "cm.pdf"
    res = ckpt("--task", "ntu60", "--preds", joint, "--per-class", "--plot", out, "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert out.read_bytes().startswith(b"%PDF")
    (fig, fmt), = rendered
    ax = fig.get_axes()[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Predicted class", "True class", "joint")
    shown = np.asarray(ax.get_images()[0].get_array())
    counts = np.asarray(json.loads(res.stdout)["plot"]["data"]["confusion"], dtype=float)
    seen = counts.sum(axis=1) > 0
    assert np.allclose(shown[seen].sum(axis=1), 1.0) and np.allclose(shown[~seen], 0.0)
    assert shown.shape == counts.shape
