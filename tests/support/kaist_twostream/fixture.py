"""The ``kaist_mmdet`` fixture family: painted KAIST image pairs and a tiny two-stream Faster R-CNN trained on them
by a real mmengine Runner (``scripts/make_fixtures.py --only kaist_mmdet``; needs the ``[mmdet]`` extra).

Files under ``kaist_mmdet/``:

* ``data/setNN/VNNN/{visible,lwir}/INNNNN.jpg`` — 640 x 512 pairs painted from the real boxes of
  ``fixtures/kaist/KAIST_annotation.json``: each box becomes a figure (body + head), warm and bright in lwir,
  a darker silhouette in visible (night images: a dim, noisy visible frame, so the thermal stream matters).
* ``data/train.json`` / ``data/test.json`` — those images' records of the KAIST annotation (same ids and names).
* ``config.py`` — ``configs/frcnn_tiny_kaist.py`` verbatim (``data_root`` is ``{{fileDirname}}/data/``).
* ``work_dir/best_pascal_voc_mAP_epoch_N.pth`` (+ the Runner's logs) — the checkpoint ``save_best`` kept.

manifest: ``config``, ``checkpoint``, ``work_dir``, ``project_root`` (absolute: ``tests/support``), ``train_ann``,
``test_ann``, ``num_train``, ``num_test``, ``test_image_names``, ``best_epoch``, ``best_map`` (the Runner's val
``pascal_voc/mAP``, a fraction as mmdet logs it), ``max_epochs``, ``seed``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent              # tests/support: holds the `kaist_twostream` package
REPO_ROOT = HERE.parents[2]
ANNOTATION = REPO_ROOT / "fixtures" / "kaist" / "KAIST_annotation.json"
SOURCES = sorted(str(p.relative_to(REPO_ROOT)) for p in list(HERE.glob("*.py")) + list(HERE.glob("configs/*.py")))
NUM_TRAIN, NUM_TEST = 48, 16
SEED = 0


def _pick(data):
    """Deterministic picks: images with at least one tall enough person, day and night; train and test disjoint."""
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    good = [im for im in data["images"]
            if any(a.get("category_id") == 1 and a["bbox"][3] >= 45 for a in by_image.get(im["id"], []))]
    day = [im for im in good if im["im_name"][:5] in ("set06", "set07", "set08")]
    night = [im for im in good if im["im_name"][:5] not in ("set06", "set07", "set08")]
    test = day[5::max(1, len(day) // (NUM_TEST // 2))][:NUM_TEST // 2] + \
        night[3::max(1, len(night) // (NUM_TEST // 2))][:NUM_TEST // 2]
    taken = {im["id"] for im in test}
    rest_day = [im for im in day if im["id"] not in taken]
    rest_night = [im for im in night if im["id"] not in taken]
    train = rest_day[::max(1, len(rest_day) // (NUM_TRAIN * 2 // 3))][:NUM_TRAIN * 2 // 3] + \
        rest_night[::max(1, len(rest_night) // (NUM_TRAIN // 3))][:NUM_TRAIN - NUM_TRAIN * 2 // 3]
    return train, sorted(test, key=lambda im: im["id"]), by_image


def _subset(data, images, by_image):
    ids = {im["id"] for im in images}
    return {"images": sorted(images, key=lambda im: im["id"]),
            "annotations": [a for i in sorted(ids) for a in by_image.get(i, [])],
            "categories": data.get("categories", [])}


def paint_pair(name: str, boxes, night: bool, seed: int):
    """(visible, lwir) uint8 BGR images 512 x 640 with a figure in every box ``[x, y, w, h]``."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = 512, 640
    yy = np.linspace(0, 1, h)[:, None, None]
    if night:
        vis = 12 + 10 * yy + rng.normal(0, 6, (h, w, 3))
    else:
        vis = np.array([170, 160, 150]) - 60 * yy + rng.normal(0, 10, (h, w, 3))
    lwir = 45 + 25 * yy + rng.normal(0, 5, (h, w, 1))
    vis = np.clip(vis, 0, 255).astype(np.uint8)
    lwir = np.clip(np.repeat(lwir, 3, axis=2), 0, 255).astype(np.uint8)
    for x, y, bw, bh in boxes:
        cx, top = int(x + bw / 2), int(y)
        head = max(2, int(bh / 7))
        body_col = (40, 45, 60) if not night else (25, 25, 30)
        warm = int(rng.integers(190, 250))
        for img, col in ((vis, body_col), (lwir, (warm, warm, warm))):
            cv2.ellipse(img, (cx, int(top + bh * 0.55)), (max(1, int(bw * 0.42)), max(1, int(bh * 0.42))),
                        0, 0, 360, col, -1)
            cv2.circle(img, (cx, top + head), head, col, -1)
    return vis, lwir


def write_kaist_mmdet(out_dir) -> dict:
    import logging

    import cv2
    import torch

    # one thread: on a small shared machine two BLAS threads per process contend (5-10x slower training steps)
    torch.set_num_threads(1)

    out = Path(out_dir) / "kaist_mmdet"
    if out.exists():
        shutil.rmtree(out)
    data_dir = out / "data"
    data_dir.mkdir(parents=True)
    data = json.loads(ANNOTATION.read_text())
    train, test, by_image = _pick(data)
    for i, im in enumerate(train + test):
        set_, video, frame = im["im_name"].split("/")
        boxes = [a["bbox"] for a in by_image.get(im["id"], [])]
        vis, lwir = paint_pair(im["im_name"], boxes, night=set_ not in ("set06", "set07", "set08"), seed=SEED + i)
        for stream, img in (("visible", vis), ("lwir", lwir)):
            d = data_dir / set_ / video / stream
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{frame}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    (data_dir / "train.json").write_text(json.dumps(_subset(data, train, by_image)))
    (data_dir / "test.json").write_text(json.dumps(_subset(data, test, by_image)))
    shutil.copyfile(HERE / "configs" / "frcnn_tiny_kaist.py", out / "config.py")

    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(out / "config.py"))
    cfg.work_dir = str(out / "work_dir")
    cfg.log_level = "WARNING"
    runner = Runner.from_cfg(cfg)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    runner.train()
    best = runner.message_hub.get_info("best_score")
    ckpts = sorted((out / "work_dir").glob("best_pascal_voc_mAP_epoch_*.pth"))
    if len(ckpts) != 1 or best is None:
        raise RuntimeError(f"expected one best checkpoint and a best score, got {ckpts} / {best}")
    ckpt = ckpts[0]
    rel = lambda p: str(Path(p).relative_to(Path(out_dir)))  # noqa: E731
    return {
        "config": rel(out / "config.py"), "checkpoint": rel(ckpt), "work_dir": rel(out / "work_dir"),
        "project_root": str(PROJECT_ROOT), "train_ann": rel(data_dir / "train.json"),
        "test_ann": rel(data_dir / "test.json"), "num_train": len(train), "num_test": len(test),
        "test_image_names": [im["im_name"] for im in test],
        "best_epoch": int(ckpt.stem.rsplit("_", 1)[1]), "best_map": float(best),
        "max_epochs": int(cfg.train_cfg.max_epochs), "seed": SEED,
    }
