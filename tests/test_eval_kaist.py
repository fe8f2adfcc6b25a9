"""KAIST evaluation: published numbers, hand-computed cases, the protocols' differences, AP, input formats."""
from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ckpttool.errors import CkptError, FormatError
from ckpttool.metrics.kaist import SETUPS, evaluate_detections, evaluate_kaist, gt_ignored
from ckpttool.metrics.kaist_io import load_annotations, load_detections

ROOT = Path(__file__).resolve().parents[1]
KAIST = ROOT / "fixtures" / "kaist"
ANN = KAIST / "KAIST_annotation.json"
DETS = KAIST / "detections"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "benchmarks" / "bench_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ann():
    return load_annotations(str(ANN))


@pytest.fixture(scope="module")
def bench():
    return _bench()


def write_ann(tmp_path, names, gts):
    """gts: (image index, [x, y, w, h], height, occlusion, ignore[, id]) tuples."""
    images = [{"id": i, "im_name": n} for i, n in enumerate(names)]
    anns = [{"id": g[5] if len(g) > 5 else k + 1, "image_id": g[0], "category_id": 1, "bbox": g[1],
             "height": g[2], "occlusion": g[3], "ignore": g[4]} for k, g in enumerate(gts)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return str(path)


def write_txt(tmp_path, rows, name="M_result.txt"):
    path = tmp_path / name
    path.write_text("".join(",".join(repr(v) for v in r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, names, gts, dets, setup="Reasonable"):
    ann_path = write_ann(tmp_path, names, gts)
    return evaluate_kaist([write_txt(tmp_path, dets)], ann_path, setup=setup)["methods"][0]


# -- the shipped real files -------------------------------------------------------------------------------------
def test_mlpd_file_reproduces_published_numbers():
    r = evaluate_kaist([str(DETS / "MLPD_result.txt")], str(ANN))
    m = r["methods"][0]
    assert m["name"] == "MLPD"
    assert [round(m["MR"][s], 2) for s in ("all", "day", "night")] == [7.58, 7.96, 6.95]
    assert round(m["recall"]["all"], 2) == 96.70
    assert m["protocols"]["mlpd"]["MR"] == m["MR"]
    assert round(m["protocols"]["matlab"]["MR"]["day"], 2) == 7.95
    matlab = evaluate_kaist([str(DETS / "MLPD_result.txt")], str(ANN), protocol="matlab")["methods"][0]
    assert matlab["MR"] == m["protocols"]["matlab"]["MR"]


def test_json_results_match_the_txt_results():
    r = evaluate_kaist([str(DETS / "MLPD_result.txt"), str(DETS / "MLPD_result.json")], str(ANN))
    txt, js = r["methods"]
    assert js["name"] == "MLPD#2"
    for s in ("all", "day", "night"):
        assert round(js["MR"][s], 2) == round(txt["MR"][s], 2)


@pytest.mark.parametrize("name", ["MLPD", "MBNet", "MSDS-RCNN", "INSANet"])
def test_vectorised_equals_per_image_loop_on_real_files(ann, bench, name):
    det = load_detections(str(DETS / f"{name}_result.txt"), ann)
    for setup in (SETUPS if name == "MLPD" else ["Reasonable"]):
        ignored = gt_ignored(ann, setup)
        got = evaluate_detections(ann, det, setup)["protocols"]
        ref = bench.loop_kaist(ann, det, ignored)
        for proto in ("mlpd", "matlab"):
            for s in ("all", "day", "night"):
                assert got[proto]["MR"][s] == 100 * ref[proto][s][0], (setup, proto, s)
                assert got[proto]["recall"][s] == 100 * ref[proto][s][1], (setup, proto, s)


def test_the_benchmarks_mlpd_script_gives_the_published_numbers():
    """bench_eval.py's baseline is the MLPD script's evaluate() re-implemented step for step: same numbers."""
    spec = importlib.util.spec_from_file_location("mlpd_script", ROOT / "benchmarks" / "mlpd_script.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    got = script.evaluate(str(ANN), str(DETS / "MLPD_result.txt"))
    assert [round(100 * got[s], 2) for s in ("all", "day", "night", "recall")] == [7.58, 7.96, 6.95, 96.70]
    ours = evaluate_kaist([str(DETS / "MLPD_result.txt")], str(ANN))["methods"][0]
    for s in ("all", "day", "night"):
        assert 100 * got[s] == pytest.approx(ours["MR"][s], abs=1e-9)
    assert 100 * got["recall"] == pytest.approx(ours["recall"]["all"], abs=1e-9)


def test_ap_equals_per_image_loop_on_a_real_file(ann, bench):
    det = load_detections(str(DETS / "MBNet_result.txt"), ann)
    got = evaluate_detections(ann, det, "Reasonable")
    ignored = gt_ignored(ann, "Reasonable")
    for s in ("all", "night"):
        ap11, area = bench.loop_voc_ap(ann, det, ignored, s)
        assert got["AP50"][s] == 100 * ap11
        assert got["AP50_area"][s] == 100 * area


# -- hand-computed cases -----------------------------------------------------------------------------------------
DAY, NIGHT = "set06/V000/I00019", "set09/V000/I00019"
BOX = [100, 100, 40, 100]            # height 100: counted under Reasonable


def test_images_without_detections_are_skipped_by_mlpd_only(tmp_path):
    # image 0: a true positive then a false positive; image 1: a GT and no detection
    m = run(tmp_path, [DAY, DAY.replace("19", "39")], [(0, BOX, 100, 0, 0), (1, BOX, 100, 0, 0)],
            [(1, 100, 100, 40, 100, 0.9), (1, 300, 100, 40, 100, 0.8)])
    mlpd, matlab = m["protocols"]["mlpd"], m["protocols"]["matlab"]
    # mlpd: 1 GT counted, recall 1 at every FPPI point -> MR 0; matlab: 2 GTs, recall 1/2 -> MR 50
    assert mlpd["MR"]["all"] == 0.0 and mlpd["recall"]["all"] == 100.0
    assert matlab["MR"]["all"] == pytest.approx(50.0, abs=1e-12) and matlab["recall"]["all"] == 50.0
    assert m["images_without_detections"] == 1
    assert m["mlpd_differences"]["all"] == {"images_without_detections": 1, "gts_not_counted": 1, "gt_id0_matches": 0}
    assert any("1 images have no detection: their 1 GTs are not counted under mlpd" in n for n in m["notes"])


def test_match_to_gt_with_id_zero_is_a_false_positive_under_mlpd(tmp_path):
    gts = [(0, BOX, 100, 0, 0, 0), (0, [300, 100, 40, 100], 100, 0, 0, 1)]
    m = run(tmp_path, [DAY], gts, [(1, 100, 100, 40, 100, 0.9), (1, 300, 100, 40, 100, 0.8)])
    # mlpd: the first detection is a FP (GT id 0) at FPPI 1 (one image), then a TP -> recall 1/2 at FPPI 1
    assert m["protocols"]["mlpd"]["recall"]["all"] == 50.0
    assert m["protocols"]["matlab"]["recall"]["all"] == 100.0
    assert m["mlpd_differences"]["day"]["gt_id0_matches"] == 1
    assert m["mlpd_differences"]["night"]["gt_id0_matches"] == 0
    assert any("1 detection(s) matched to the GT with id 0" in n for n in m["notes"])


def test_ignored_gts_absorb_detections_by_intersection_over_detection_area(tmp_path):
    big_ignored = (0, [50, 50, 300, 300], 300, 0, 1)          # ignore flag set in the file
    small = (0, [400, 100, 20, 50], 50, 0, 0)                   # height 50 < 55: ignored under Reasonable
    m = run(tmp_path, [DAY], [(0, BOX, 100, 0, 0), big_ignored, small],
            [(1, 100, 100, 40, 100, 0.9),      # TP
             (1, 200, 200, 30, 60, 0.8),       # inside the ignored box: IoU small, inter/det area 1 -> dropped
             (1, 400, 100, 20, 50, 0.7)])      # on the small GT -> dropped under Reasonable
    assert m["MR"]["all"] == 0.0              # no false positive at all
    m_all = run(tmp_path, [DAY], [(0, BOX, 100, 0, 0), big_ignored, small],
                [(1, 100, 100, 40, 100, 0.9), (1, 200, 200, 30, 60, 0.8), (1, 400, 100, 20, 50, 0.7)],
                setup="All")
    assert m_all["recall"]["all"] == 100.0    # the small GT counts (and is found) under All


def test_a_second_detection_on_a_used_gt_is_a_false_positive(tmp_path):
    gts = [(i, BOX, 100, 0, 0) for i in range(100)]
    names = [f"set06/V000/I{i:05d}" for i in range(100)]
    dets = [(1, 100, 100, 40, 100, 0.9), (1, 101, 100, 40, 100, 0.95)]
    m = run(tmp_path, names, gts, dets)
    # the higher-scored duplicate takes the GT; the other is one FP over 100 images (FPPI 0.01)
    # mlpd counts only image 0's GT: recall 1 from the start -> MR 0
    assert m["protocols"]["mlpd"]["MR"]["all"] == 0.0
    # matlab: recall 1/100 everywhere
    assert m["protocols"]["matlab"]["MR"]["all"] == pytest.approx(99.0)


def test_fppi_point_below_the_first_false_positive_wraps_under_mlpd(tmp_path):
    # 20 images; the first detection is a FP (FPPI 0.05), then a TP in every image
    names = [f"set06/V000/I{i:05d}" for i in range(20)]
    gts = [(i, BOX, 100, 0, 0) for i in range(20)]
    dets = [(1, 400, 300, 40, 100, 0.99)] + [(i + 1, 100, 100, 40, 100, 0.5) for i in range(20)]
    m = run(tmp_path, names, gts, dets)
    # mlpd: the 3 points below FPPI 0.05 take the final recall (1): MR 0.
    assert m["protocols"]["mlpd"]["MR"]["all"] == 0.0
    # matlab: recall 0 at those 3 points (miss rate 1), 1 at the other 6 (miss rate clamped to 1e-10)
    assert m["protocols"]["matlab"]["MR"]["all"] == pytest.approx(100 * np.exp(6 * np.log(1e-10) / 9))


def test_day_and_night_come_from_the_image_names(tmp_path):
    m = run(tmp_path, [DAY, NIGHT], [(0, BOX, 100, 0, 0), (1, BOX, 100, 0, 0)],
            [(1, 100, 100, 40, 100, 0.9), (2, 300, 300, 40, 100, 0.9)])
    assert m["recall"]["day"] == 100.0 and m["recall"]["night"] == 0.0


def test_unsorted_detections_give_the_sorted_numbers(tmp_path, ann):
    lines = (DETS / "MLPD_result.txt").read_text().splitlines()
    rng = np.random.default_rng(0)
    shuffled = tmp_path / "MLPD_result.txt"
    shuffled.write_text("\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n")
    a = evaluate_kaist([str(DETS / "MLPD_result.txt")], str(ANN))["methods"][0]
    b = evaluate_kaist([str(shuffled)], str(ANN))["methods"][0]
    assert a["unsorted_images"] == 0 and b["unsorted_images"] > 100
    for key in ("protocols", "AP50", "AP50_area"):
        assert a[key] == b[key]


def test_ap_hand_computed(tmp_path):
    gts = [(0, BOX, 100, 0, 0), (0, [300, 100, 40, 100], 100, 0, 0)]
    dets = [(1, 100, 100, 40, 100, 0.9), (1, 500, 300, 40, 100, 0.8), (1, 300, 100, 40, 100, 0.7)]
    m = run(tmp_path, [DAY], gts, dets)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: area = 1/2 * 1 + 1/2 * 2/3; 11 points = (6 * 1 + 5 * 2/3) / 11
    assert m["AP50_area"]["all"] == pytest.approx(100 * (0.5 + 1 / 3), rel=1e-6)
    assert m["AP50"]["all"] == pytest.approx(100 * (6 + 10 / 3) / 11, rel=1e-6)


# -- input formats -----------------------------------------------------------------------------------------------
def test_mmdet_pickle_gives_the_same_numbers_as_txt(tmp_path, ann):
    arr = np.loadtxt(DETS / "MLPD_result.txt", delimiter=",")[:2000]
    arr[:, 1:5] = np.round(arr[:, 1:5] * 4) / 4                  # exactly representable in float32
    arr[:, 5] = arr[:, 5].astype(np.float32)
    txt = tmp_path / "A_result.txt"
    txt.write_text("".join(f"{int(r[0])},{r[1]!r},{r[2]!r},{r[3]!r},{r[4]!r},{r[5]!r}\n" for r in arr))
    items = []
    for i in np.unique(arr[:, 0]).astype(int):
        rows = arr[arr[:, 0] == i]
        x1y1x2y2 = np.column_stack([rows[:, 1], rows[:, 2], rows[:, 1] + rows[:, 3], rows[:, 2] + rows[:, 4]])
        items.append((int(i - 1), x1y1x2y2, rows[:, 5]))
    pkl = _mmdet_dump(tmp_path, ann, items, "B_result.pkl")
    a, b = evaluate_kaist([str(txt), str(pkl)], str(ANN))["methods"]
    for key in ("protocols", "AP50", "AP50_area", "images_without_detections"):
        assert a[key] == b[key]


def _one_line_error(path, ann):
    with pytest.raises(FormatError) as e:
        load_detections(str(path), ann)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("text, where, what", [
    ("1,2,3,4,5,0.5\n2,3,x,5,6,0.5\n", ":2:", "not a number: 'x'"),
    ("1,2,3,4,5,0.5\n1,2,3,4,5\n", ":2:", "expected 6 comma-separated values image_index,x,y,w,h,score, got 5"),
    ("1,2,3,4,5,0.5\n1,2,3,4,5,0.5,7\n", ":2:", "expected 6 comma-separated values"),
    ("1,2,3,4,5,0.5\n\n2253,2,3,4,5,0.5\n", ":3:", "image index 2253 out of range 1..2252"),
    ("0,2,3,4,5,0.5\n", ":1:", "image index 0 out of range"),
    ("1,2,3,4,5,0.5\n1.5,2,3,4,5,0.5\n", ":2:", "image index must be an integer, got 1.5"),
    ("1,2,3,4,5,0.5\n1,2,nan,4,5,0.5\n", ":2:", "values must be finite numbers"),
    ("1,2,3,4,5,inf\n", ":1:", "values must be finite numbers"),
    ("1,2,3,4,5,0.5\n1,2,3,-4,5,0.5\n", ":2:", "box width and height must not be negative"),
    ("1,2,3,4,-0.5,0.5\n", ":1:", "box width and height must not be negative"),
    # the first bad line wins, whatever its problem
    ("1,2,3,4,5,0.5\n1,2,3,-4,5,0.5\n1,2,3,4,5\n", ":2:", "must not be negative"),
    ("1,2,3,4,5,0.5\n1,2,3,4,5,2\n1,x,3,4,-5,0.5\n", ":3:", "not a number: 'x'"),
    ("1,2,3,4,5,0.5\n1,x,3,4,5,0.5\n1,2,3,4,5,2\n", ":2:", "not a number: 'x'"),
    ("", "", "empty file"),
])
def test_malformed_txt_names_file_and_line(tmp_path, ann, text, where, what):
    path = tmp_path / "bad_result.txt"
    path.write_text(text)
    msg = _one_line_error(path, ann)
    assert msg.startswith("bad_result.txt" + where + (" " if where else "")) and what in msg, msg


def test_txt_image_index_the_annotation_does_not_have(tmp_path):
    ann = load_annotations(write_ann(tmp_path, [DAY, DAY.replace("19", "39")], [(0, BOX, 100, 0, 0)]))
    ann.image_ids[1] = 5   # ids 0 and 5: index 3 is in range 1..6 but names no image
    path = write_txt(tmp_path, [(1, 1, 2, 3, 4, 0.5), (6, 1, 2, 3, 4, 0.5), (3, 1, 2, 3, 4, 0.5)])
    assert _one_line_error(path, ann) == "M_result.txt:3: image index 3 names no image of the annotation file"


def _record(**kw):
    return {"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5, **kw}


@pytest.mark.parametrize("items, k, what", [
    ([_record(bbox=[1, 2, 3])], 0, "'bbox' must be 4 finite numbers [x, y, w, h], got [1, 2, 3]"),
    ([_record(), _record(bbox=[[1, 2], [3, 4]])], 1, "'bbox' must be 4 finite numbers"),
    ([_record(), _record(bbox=[1, 2, "3", 4])], 1, "'bbox' must be 4 finite numbers"),
    ([_record(), _record(bbox=[1, 2, float("nan"), 4])], 1,
     "'bbox' must be 4 finite numbers [x, y, w, h], got [1, 2, nan, 4]"),
    ([_record(), _record(score=float("nan"))], 1, "'score' must be a finite number, got nan"),
    ([_record(), _record(score=float("inf"))], 1, "'score' must be a finite number, got inf"),
    ([_record(), _record(bbox=[1, 2, -3, 4])], 1, "'bbox' width and height must not be negative, got [1, 2, -3, 4]"),
    ([_record(), _record(bbox=[1, 2, 3, -0.5])], 1, "'bbox' width and height must not be negative"),
    ([_record(), _record(image_id=1.5)], 1, "image_id must be an integer, got 1.5"),
    ([_record(), _record(image_id=5000)], 1, "image_id 5000 is not in the annotation file"),
    ([_record(), _record(image_id=-1)], 1, "image_id -1 is not in the annotation file"),
    ([_record(), _record(image_id="0")], 1, "'image_id' must be a finite number, got '0'"),
    ([_record(), _record(image_id=True)], 1, "'image_id' must be a finite number, got True"),
    ([_record(), _record(score=None)], 1, "'score' must be a finite number, got None"),
    ([_record(), {"image_id": 0, "bbox": [1, 2, 3, 4]}], 1, "'score' must be a finite number, got None"),
    ([_record(), [0, 1, 2, 3]], 1, "expected an object, got list"),
    ([_record(), _record(category_id="person")], 1, "'category_id' must be a finite number, got 'person'"),
    # the first bad item wins, whatever its problem and whichever path (whole arrays or item by item) finds it
    ([_record(), _record(score=2.0), _record(score="high")], 2, "'score' must be a finite number, got 'high'"),
    ([_record(), _record(bbox=[1, 2, -3, 4]), {"image_id": 0}], 1, "must not be negative"),
    ([_record(), _record(image_id=7.5), _record(score=True)], 1, "image_id must be an integer, got 7.5"),
    ([_record(), _record(score=True), _record(score=7)], 1, "'score' must be a finite number, got True"),
])
def test_malformed_json_names_file_and_item(tmp_path, ann, items, k, what):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(items))      # NaN and Infinity as Python's json writes them
    msg = _one_line_error(path, ann)
    assert msg.startswith(f"bad.json:item {k}: ") and what in msg, msg


@pytest.mark.parametrize("text, what", [
    ('{"image_id": 0}', "bad.json: expected a JSON list of {image_id, bbox, score} objects, got dict"),
    ("[]", "bad.json: empty list (no detections)"),
    ('[{"image_id": 0,', "bad.json:1: invalid JSON"),
    ("[" * 100000 + "]" * 100000, "bad.json"),
    ("", "bad.json: empty file"),
])
def test_json_that_is_not_a_result_list(tmp_path, ann, text, what):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert _one_line_error(path, ann).startswith(what)


def test_json_read_item_by_item_gives_the_whole_array_result(tmp_path, ann):
    """A JSON true anywhere sends the file to the item-by-item path; the arrays are the same."""
    items = json.loads((DETS / "MLPD_result.json").read_text())
    fast = load_detections(str(DETS / "MLPD_result.json"), ann)
    items[-1]["iscrowd"] = False
    path = tmp_path / "MLPD_result.json"
    path.write_text(json.dumps(items))
    slow = load_detections(str(path), ann)
    for key in ("img", "box", "score"):
        a, b = getattr(fast, key), getattr(slow, key)
        assert np.array_equal(a, b) and a.dtype == b.dtype


def _mmdet_dump(tmp_path, ann, items, name="bad.pkl"):
    """A tools/test.py --out pickle: items are (image index or 'setNN/VNNN/INNNNN', bboxes x1y1x2y2, scores)."""
    torch = pytest.importorskip("torch")
    results = []
    for i, b, s in items:
        set_, v, frame = ann.im_names[i].split("/") if isinstance(i, int) else i.split("/")
        b, s = np.asarray(b, dtype=np.float32), np.asarray(s, dtype=np.float32)
        results.append({"img_id": i, "img_path": f"data/kaist/test/{set_}/{v}/lwir/{frame}.png",
                        "pred_instances": {"bboxes": torch.from_numpy(b.reshape(len(b), -1)),
                                           "scores": torch.from_numpy(s),
                                           "labels": torch.zeros(len(s), dtype=torch.int64)}})
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(results, f)
    return path


GOOD = (0, [[10, 20, 30, 60]], [0.5])


@pytest.mark.parametrize("items, where, what", [
    ([GOOD, (1, [[10, 20, 30]], [0.5])], "item 1", "pred_instances shapes do not fit: bboxes (1, 3), scores (1,)"),
    ([GOOD, (1, [[10, 20, 30, 60]], [0.5, 0.6])], "item 1", "pred_instances shapes do not fit"),
    ([GOOD, (1, [[10, 20, 30, 60], [10, float("nan"), 30, 60]], [0.5, 0.6])], "item 1, box 1",
     "bboxes must be finite numbers, got [10.0, nan, 30.0, 60.0]"),
    ([GOOD, (1, [[10, 20, 30, 60]], [float("inf")])], "item 1, box 0", "scores must be finite numbers"),
    ([GOOD, (1, [[10, 20, 30, 60], [30, 20, 10, 60]], [0.5, 0.6])], "item 1, box 1",
     "bboxes are x1, y1, x2, y2 with x2 >= x1 and y2 >= y1, got [30.0, 20.0, 10.0, 60.0]"),
    ([GOOD, ("set99/V000/I00001", [[10, 20, 30, 60]], [0.5])], "item 1", "names no image of the annotation file"),
    # the first bad item wins
    ([GOOD, (1, [[10, 20, 30, 60]], [float("nan")]), (2, [[10, 20, 30]], [0.5])], "item 1, box 0",
     "scores must be finite numbers"),
    ([GOOD, ("set99/V000/I00001", [[10, 20, 30, 60]], [0.5]), (2, [[10, 20, 30, 60]], [float("inf")])], "item 1",
     "names no image"),
])
def test_malformed_mmdet_dump_names_file_item_and_box(tmp_path, ann, items, where, what):
    msg = _one_line_error(_mmdet_dump(tmp_path, ann, items), ann)
    assert msg.startswith(f"bad.pkl:{where}: ") and what in msg, msg


def test_mmdet_dump_without_pred_instances(tmp_path, ann):
    path = _mmdet_dump(tmp_path, ann, [GOOD])
    data = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(data + [{"img_path": data[0]["img_path"]}]))
    assert _one_line_error(path, ann).startswith("bad.pkl:item 1: expected a dict with 'pred_instances'")


def test_bad_annotation_and_options(tmp_path):
    bad = tmp_path / "ann.json"
    bad.write_text(json.dumps({"images": [{"id": 0, "im_name": DAY}], "annotations": [{"image_id": 0}]}))
    with pytest.raises(FormatError, match=r"^ann.json:annotations\[0\]: 'bbox'"):
        load_annotations(str(bad))
    gts = [{"id": 1, "image_id": 0, "bbox": [1, 2, 3, 4], "height": 4, "occlusion": 0},
           {"id": 2, "image_id": 3, "bbox": [1, 2, 3, 4], "height": 4, "occlusion": 0}]
    bad.write_text(json.dumps({"images": [{"id": 0, "im_name": DAY}], "annotations": gts}))
    with pytest.raises(FormatError, match=r"^ann.json:annotations\[1\]: image_id 3 is not in 'images'$"):
        load_annotations(str(bad))
    with pytest.raises(CkptError, match="unknown setup"):
        evaluate_kaist([str(DETS / "MLPD_result.txt")], str(ANN), setup="Easy")


# -- random scenes: the vectorised code against the per-image loops ----------------------------------------------
def random_scene(seed):
    from ckpttool.metrics.kaist_io import Annotations, Detections

    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(1, 7))
    names = [f"set{rng.choice(['06', '10'])}/V000/I{i:05d}" for i in range(n_img)]
    gt_img = np.sort(rng.integers(0, n_img, int(rng.integers(0, 12))))
    base = rng.uniform(0, 560, (len(gt_img), 2))
    gt_box = np.column_stack([base, rng.uniform(10, 40, len(gt_img)), rng.uniform(30, 120, len(gt_img))]).round()
    ann = Annotations("scene.json", np.arange(n_img), names, np.array([n.startswith("set06") for n in names]),
                      gt_img, gt_box, gt_box[:, 3].copy(), rng.integers(0, 3, len(gt_img)),
                      rng.random(len(gt_img)) < 0.2, rng.permutation(len(gt_img)))
    n_det = int(rng.integers(0, 25))
    src = rng.integers(0, max(len(gt_img), 1), n_det)
    on_gt = (rng.random(n_det) < 0.7) & (len(gt_img) > 0)
    box = np.where(on_gt[:, None], gt_box[src % max(len(gt_img), 1)] if len(gt_img) else 0, 0.0) \
        + rng.normal(0, 4, (n_det, 4))
    box[~on_gt] = np.column_stack([rng.uniform(0, 600, (n_det, 2)), rng.uniform(10, 40, n_det),
                                   rng.uniform(30, 120, n_det)])[~on_gt]
    box[:, 2:] = np.abs(box[:, 2:]) + 1
    img = np.where(on_gt, gt_img[src % max(len(gt_img), 1)] if len(gt_img) else 0, rng.integers(0, n_img, n_det))
    score = rng.choice([0.3, 0.5, 0.7, 0.9], n_det) if seed % 2 else rng.random(n_det)   # ties on odd seeds
    return ann, Detections("scene_result.txt", "scene", img.astype(np.int64), box, score)


@pytest.mark.parametrize("seed", range(150))
def test_random_scenes_match_the_loops(bench, seed):
    ann, det = random_scene(seed)
    for setup in ("Reasonable", "All"):
        ignored = gt_ignored(ann, setup)
        got = evaluate_detections(ann, det, setup)
        ref = bench.loop_kaist(ann, det, ignored)
        for proto in ("mlpd", "matlab"):
            for s in ("all", "day", "night"):
                mr, rec = ref[proto][s]
                assert got["protocols"][proto]["MR"][s] == (None if mr is None else 100 * mr), (setup, proto, s)
                assert got["protocols"][proto]["recall"][s] == (None if rec is None else 100 * rec)
        for s in ("all", "day"):
            ap11, area = bench.loop_voc_ap(ann, det, ignored, s)
            assert (got["AP50"][s], got["AP50_area"][s]) == (100 * ap11, 100 * area), (setup, s)


# -- random result files: the whole-array checks against a record-by-record reference ---------------------------
def _ref_first_bad_item(items, ids):
    """The index of the first bad item of a COCO-style result list, checked one item at a time, or None."""
    def num(v):
        return type(v) is float or (type(v) is int and -1e308 < v < 1e308)

    for i, d in enumerate(items):
        if not isinstance(d, dict):
            return i
        b, fields = d.get("bbox"), [d.get("image_id"), d.get("score"), d.get("category_id", 1)]
        if not isinstance(b, list) or len(b) != 4 or not all(map(num, b + fields)):
            return i
        x, y, w, h, image_id, score, cat = map(float, b + fields)
        if not all(map(np.isfinite, (x, y, w, h, image_id, score, cat))) or w < 0 or h < 0 \
                or image_id != round(image_id) or (cat == 1 and image_id not in ids):
            return i
    return None


def _random_value(rng, good):
    odd = [True, False, None, "1", float("nan"), float("inf"), -1, 1.5, 2**70, 10**400, [1], {"a": 1}, -0.5, 2.0, 5000]
    return good if rng.random() < 0.9 else odd[rng.integers(len(odd))]


@pytest.mark.parametrize("seed", range(4))
def test_random_json_results_fail_on_the_first_bad_item(tmp_path, ann, seed):
    rng = np.random.default_rng(seed)
    ids = set(ann.image_ids.tolist())
    path = tmp_path / "r.json"
    for _ in range(100):
        items = [{"image_id": int(rng.integers(2252)), "category_id": 1, "bbox": rng.uniform(0, 100, 4).tolist(),
                  "score": float(rng.random())} for _ in range(int(rng.integers(1, 20)))]
        for d in items[1:] if rng.random() < 0.7 else ():      # some files stay clean
            for key in list(d):
                d[key] = _random_value(rng, d[key]) if key != "bbox" else [_random_value(rng, v) for v in d[key]]
            if rng.random() < 0.02:
                del d["score"]
        try:
            path.write_text(json.dumps(items))
        except OverflowError:
            continue
        want = _ref_first_bad_item(items, ids)
        if want is None:
            det = load_detections(str(path), ann)
            person = [d for d in items if d.get("category_id", 1) == 1]
            assert det.box.tolist() == [[float(v) for v in d["bbox"]] for d in person]
            assert det.score.tolist() == [float(d["score"]) for d in person]
            assert ann.image_ids[det.img].tolist() == [int(d["image_id"]) for d in person]
        else:
            assert _one_line_error(path, ann).startswith(f"r.json:item {want}: ")


@pytest.mark.parametrize("seed", range(4))
def test_random_txt_results_fail_on_the_first_bad_line(tmp_path, ann, seed):
    rng = np.random.default_rng(seed)
    odd = ["x", "", " ", "nan", "inf", "-1", "1.5", "2253", "0", " 3 ", "1e400", "-0.0"]
    path = tmp_path / "r_result.txt"
    for _ in range(100):
        lines = []
        for _ in range(int(rng.integers(1, 20))):
            vals = [str(int(rng.integers(1, 2253)))] + [repr(float(v)) for v in rng.uniform(0, 100, 4)] + \
                [repr(float(rng.random()))]
            vals = [v if rng.random() < 0.95 else odd[rng.integers(len(odd))] for v in vals]
            lines.append(",".join(vals[:int(rng.choice([6] * 30 + [5, 7]))]) if rng.random() > 0.03 else "")
        path.write_text("\n".join(lines) + "\n")
        want = None
        for n, line in enumerate(lines, 1):
            try:
                i, x, y, w, h, s = map(float, line.split(",")) if line.strip() else [1, 0, 0, 0, 0, 0]
            except ValueError:
                want = n
                break
            if not all(map(np.isfinite, (i, x, y, w, h, s))) or w < 0 or h < 0 \
                    or i != round(i) or not 1 <= i <= 2252:
                want = n
                break
        if not any(line.strip() for line in lines):
            assert "empty file" in _one_line_error(path, ann)
        elif want is None:
            rows = [list(map(float, line.split(","))) for line in lines if line.strip()]
            det = load_detections(str(path), ann)
            assert det.box.tolist() == [r[1:5] for r in rows] and det.score.tolist() == [r[5] for r in rows]
            assert (det.img + 1).tolist() == [int(r[0]) for r in rows]
        else:
            assert _one_line_error(path, ann).startswith(f"r_result.txt:{want}: ")


def test_unbounded_scores_are_read_and_only_their_order_counts(tmp_path):
    """Older detectors (ACF and other margin-based ones) publish scores outside [0, 1]: the MLPD script and the
    Matlab toolbox read them, and so does ckpt; an order-preserving rescale gives the same tables."""
    published = DETS / "MLPD_result.txt"
    rows = [line.split(",") for line in published.read_text().splitlines() if line.strip()]
    margins = tmp_path / "Margins_result.txt"
    margins.write_text("".join(",".join(r[:5] + [repr(40 * float(r[5]) - 12)]) + "\n" for r in rows))
    a, b = (evaluate_kaist([str(p)], str(ANN))["methods"][0] for p in (published, margins))
    assert a["MR"] == b["MR"] and a["recall"] == b["recall"] and a["AP50"] == b["AP50"]
