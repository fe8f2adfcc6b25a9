"""NTU60 metrics against mmaction2's own functions, its report_accuracy.py and AccMetric, on real dumps too."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ckpttool.errors import CkptError
from ckpttool.metrics.ntu import (aggregate_views, class_names_for, evaluate_ntu, evaluate_scores, mean_class_accuracy, ntu_rows,
                               top_k_accuracy)
from ckpttool.metrics.predictions import read_predictions, read_split_labels

acc = pytest.importorskip("mmaction.evaluation.functional.accuracy")
torch = pytest.importorskip("torch")

FUSE = Path(__file__).resolve().parents[1] / "fixtures" / "mmaction2-fuse-demo"
FILES = [str(FUSE / "joint.pkl"), str(FUSE / "bone.pkl")]


def torch_load(path):
    with open(path, "rb") as f:
        return pickle.load(f)   # our own fixture, trusted: the reference side reads it the way mmengine does


def report_accuracy(paths, coefficients, apply_softmax):
    """tools/analysis_tools/report_accuracy.py, step for step (with mmaction2's own functions)."""
    from scipy.special import softmax

    samples = [torch_load(p) for p in paths]
    score_list = [[s["pred_score"].numpy() for s in d] for d in samples]
    labels = [s["gt_label"].item() for s in samples[0]]
    if apply_softmax:
        score_list = [[softmax(s) for s in scores] for scores in score_list]
    weighted = acc.get_weighted_score(score_list, coefficients)
    return acc.mean_class_accuracy(weighted, labels), *acc.top_k_accuracy(weighted, labels, (1, 5))


@pytest.mark.parametrize("coefficients, apply_softmax", [([1.0, 1.0], False), ([1.0, 2.0], True),
                                                         ([0.5, 1.5], False), ([2.0, 1.0], True)])
def test_ensemble_of_real_dumps_equals_report_accuracy(coefficients, apply_softmax):
    r = evaluate_ntu(FILES, coefficients=coefficients, apply_softmax=apply_softmax)
    mca, top1, top5 = report_accuracy(FILES, coefficients, apply_softmax)
    ens = r["rows"][-1]
    assert ens["name"].startswith("ensemble(")
    assert (ens["mean_class_accuracy"], ens["top1"], ens["top5"]) == (100 * mca, 100 * top1, 100 * top5)
    assert r["num_samples"] == 60 and r["num_classes"] == 120


def test_single_dump_rows_equal_mmaction_functions():
    r = evaluate_ntu(FILES)
    for path, row in zip(FILES, r["rows"]):
        d = torch_load(path)
        scores = [s["pred_score"].numpy() for s in d]
        labels = [s["gt_label"].item() for s in d]
        top1, top5 = acc.top_k_accuracy(scores, labels, (1, 5))
        assert row["name"] == Path(path).stem
        assert (row["top1"], row["top5"]) == (100 * top1, 100 * top5)
        assert row["mean_class_accuracy"] == 100 * acc.mean_class_accuracy(scores, labels)


def test_mean_class_accuracy_counts_classes_only_ever_predicted():
    labels = np.array([0, 0, 1])
    scores = np.eye(3)[[0, 2, 1]]          # predictions 0, 2, 1: class 2 is never a label
    # union {0, 1, 2}: class 0 1/2, class 1 1/1, class 2 has no samples -> 0; mean 1.5 / 3
    assert mean_class_accuracy(scores, labels) == 0.5
    assert acc.mean_class_accuracy(list(scores), list(labels)) == 0.5


def test_top_k_with_ties_matches_mmaction():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.integers(0, 3, size=(50, 12)).astype(np.float32)   # many ties
        labels = rng.integers(0, 12, 50)
        assert top_k_accuracy(scores, labels, (1, 5)) == acc.top_k_accuracy(list(scores), list(labels), (1, 5))
        assert mean_class_accuracy(scores, labels) == acc.mean_class_accuracy(list(scores), list(labels))


def test_rgbpose_rows_equal_accmetric():
    from mmaction.evaluation.metrics.acc_metric import AccMetric

    rng = np.random.default_rng(2)
    rgb, pose = rng.random((40, 60), dtype=np.float32), rng.random((40, 60), dtype=np.float32)
    labels = rng.integers(0, 60, 40)
    rows = {r["name"]: r for r in ntu_rows({"rgb": rgb, "pose": pose}, labels)}
    assert list(rows) == ["rgb", "pose", "RGBPose_1:1", "RGBPose_2:1", "RGBPose_1:2"]
    results = [{"pred": {"rgb": rgb[i], "pose": pose[i]}, "label": int(labels[i])} for i in range(40)]
    ref = AccMetric().compute_metrics(results)
    for name, row in rows.items():
        assert row["top1"] == 100 * ref[f"{name}_top1"]
        assert row["top5"] == 100 * ref[f"{name}_top5"]
        assert row["mean_class_accuracy"] == 100 * ref[f"{name}_mean1"]


def test_ntu_rows_without_fusions_and_shape_check():
    s = np.eye(4)[[0, 1, 2, 3]]
    rows = ntu_rows({"rgb": s, "pose": s}, np.arange(4), fusions=False)
    assert [r["name"] for r in rows] == ["rgb", "pose"] and rows[0]["top1"] == 100.0
    with pytest.raises(CkptError, match="shape"):
        ntu_rows({"x": s[:3]}, np.arange(4))


def test_view_aggregation_matches_average_clip():
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    views = rng.standard_normal((30, 10, 8), dtype=np.float32)
    t = torch.from_numpy(views)
    np.testing.assert_allclose(aggregate_views(views, "prob"), F.softmax(t, dim=2).mean(dim=1).numpy(), rtol=2e-6)
    np.testing.assert_allclose(aggregate_views(views, "score", 3), t[:, :3].mean(dim=1).numpy(), rtol=2e-6)
    assert np.array_equal(aggregate_views(views, "max", 2), np.maximum(views[:, 0], views[:, 1]))


def test_clips_report_the_first_k_views():
    rng = np.random.default_rng(4)
    views = rng.standard_normal((200, 10, 60), dtype=np.float32)
    labels = rng.integers(0, 60, 200)
    r = evaluate_scores({"m": views}, labels, clips=[1, 3, 10], aggregate="score")
    assert [c["k"] for c in r["clips"]] == [1, 3, 10]
    one = ntu_rows({"m": views[:, 0]}, labels)[0]
    assert r["clips"][0]["rows"][0] == one
    assert r["clips"][2]["rows"] == r["rows"]      # all 10 views
    with pytest.raises(CkptError, match="10 view"):
        evaluate_scores({"m": views}, labels, clips=[12])


def write_dump(path, scores, labels, stream_dict=False):
    items = []
    for s, lab in zip(scores, labels):
        score = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()} if stream_dict \
            else torch.from_numpy(np.ascontiguousarray(s))
        items.append({"pred_score": score, "gt_label": torch.tensor([int(lab)])})
    with open(path, "wb") as f:
        pickle.dump(items, f)
    return str(path)


def test_per_view_dump_and_npz_score_file_agree(tmp_path):
    rng = np.random.default_rng(5)
    views = rng.standard_normal((50, 5, 60), dtype=np.float32)
    labels = rng.integers(0, 60, 50)
    pkl = write_dump(tmp_path / "views.pkl", views, labels)
    npz = tmp_path / "views.npz"
    np.savez(npz, scores=views, labels=labels)
    assert read_predictions(pkl).streams["score"].shape == (50, 5, 60)
    a = evaluate_ntu([pkl], clips=[1, 5], aggregate="prob", per_class=True)
    b = evaluate_ntu([str(npz)], clips=[1, 5], aggregate="prob", per_class=True)
    assert a["rows"][0]["top1"] == b["rows"][0]["top1"]
    assert a["clips"] == b["clips"]
    names = class_names_for(60)
    assert names[0] == "drink water" and names[59] == "walking apart from each other"
    assert all(c["name"] == names[c["label"]] for c in a["per_class"]["classes"])
    assert sum(c["count"] for c in a["per_class"]["classes"]) == 50
    assert all(p["true"] != p["pred"] and p["count"] > 0 for p in a["per_class"]["confused"])


def test_rgbpose_dump_gives_stream_and_fusion_rows(tmp_path):
    rng = np.random.default_rng(6)
    scores = [{"rgb": rng.random(60, dtype=np.float32), "pose": rng.random(60, dtype=np.float32)}
              for _ in range(20)]
    labels = rng.integers(0, 60, 20)
    r = evaluate_ntu([write_dump(tmp_path / "rgbpose.pkl", scores, labels, stream_dict=True)])
    assert [x["name"] for x in r["rows"]] == ["rgb", "pose", "RGBPose_1:1", "RGBPose_2:1", "RGBPose_1:2"]


def test_labels_from_annotation_split_follow_posedataset(tmp_path):
    from mmaction.datasets.pose_dataset import PoseDataset

    annos = [{"frame_dir": f"S001C001P001R001A{i:03d}", "label": i % 60, "total_frames": 1} for i in range(30)]
    split = {"xsub_val": [a["frame_dir"] for a in annos[::-3]], "xsub_train": [a["frame_dir"] for a in annos[1::2]]}
    path = tmp_path / "ntu60_2d.pkl"
    with open(path, "wb") as f:
        pickle.dump({"split": split, "annotations": annos}, f)
    ds = PoseDataset(str(path), pipeline=[], split="xsub_val", test_mode=True)
    expected = [d["label"] for d in ds.load_data_list()]
    assert read_split_labels(str(path), "xsub_val").tolist() == expected
    with pytest.raises(CkptError, match="no split 'xview_val'"):
        read_split_labels(str(path), "xview_val")
    rng = np.random.default_rng(7)
    views = rng.random((len(expected), 60), dtype=np.float32)
    pkl = write_dump(tmp_path / "p.pkl", views, np.zeros(len(expected)))
    r = evaluate_ntu([pkl], ann=str(path), split="xsub_val")
    assert r["rows"][0] == ntu_rows({"p": views}, np.array(expected))[0]
    with pytest.raises(CkptError, match="split .xsub_train. of ntu60_2d.pkl has 15 samples"):
        evaluate_ntu([pkl], ann=str(path), split="xsub_train")


def test_input_errors_name_the_file(tmp_path):
    with pytest.raises(CkptError, match="2 coefficients for 1 prediction files"):
        evaluate_ntu(FILES[:1], coefficients=[1, 1])
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"not": "a list"}, f)
    with pytest.raises(CkptError, match="^bad.pkl: expected a non-empty list"):
        evaluate_ntu([str(bad)])
    short = write_dump(tmp_path / "short.pkl", np.eye(120, dtype=np.float32)[:10], np.zeros(10))
    with pytest.raises(CkptError, match="short.pkl has 10 samples, joint.pkl has 60"):
        evaluate_ntu([FILES[0], short])
    npz = tmp_path / "nolabels.npz"
    np.savez(npz, scores=np.zeros((3, 60), np.float32))
    with pytest.raises(CkptError, match="nolabels.npz has no labels"):
        evaluate_ntu([str(npz)])


def test_score_cache_file_of_model_runs_is_read(tmp_path):
    from ckpttool.engine.score_cache import ScoreCache

    rng = np.random.default_rng(8)
    views = {"rgb": rng.random((25, 4, 60), dtype=np.float32), "pose": rng.random((25, 4, 60), dtype=np.float32)}
    labels = rng.integers(0, 60, 25)
    path = ScoreCache(tmp_path, "clips", {}, "k" * 64, None).save(4, labels, views)
    p = read_predictions(str(path))
    assert list(p.streams) == ["rgb", "pose"] and np.array_equal(p.labels, labels)
    r = evaluate_ntu([str(path)], aggregate="score")
    assert r["rows"] == ntu_rows({s: v.mean(axis=1) for s, v in views.items()}, labels)


def test_malformed_dumps_name_the_item(tmp_path):
    good = {"pred_score": torch.rand(60), "gt_label": torch.tensor([1])}
    cases = {
        "shape.pkl": ([good, {"pred_score": torch.rand(59), "gt_label": torch.tensor([1])}],
                      r"^shape.pkl: item 1: pred_score\['score'\] has shape \(59,\), item 0 has \(60,\)"),
        "multi.pkl": ([good, {"pred_score": torch.rand(60), "gt_label": torch.tensor([1, 2])}],
                      "^multi.pkl: item 1: gt_label must be one class index"),
        "nolabel.pkl": ([good, {"pred_score": torch.rand(60)}], "^nolabel.pkl: item 1: no 'gt_label'"),
        "ints.pkl": ([{"pred_score": torch.arange(60), "gt_label": torch.tensor([1])}], "must be float arrays"),
        "noscore.pkl": ([{"gt_label": torch.tensor([1])}], "^noscore.pkl: item 0: no 'pred_score'"),
    }
    for name, (items, message) in cases.items():
        with open(tmp_path / name, "wb") as f:
            pickle.dump(items, f)
        with pytest.raises(CkptError, match=message):
            read_predictions(str(tmp_path / name))
