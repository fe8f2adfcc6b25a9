"""A small synthetic NTU RGB+D 60 dataset in the real formats mmaction2 reads (deterministic, well under 1 MB).

* ``ntu60_2d.pkl`` — the PoseC3D annotation file: ``{"split": {"xsub_train": [...], "xsub_val": [...],
  "xview_train": [...], "xview_val": [...]}, "annotations": [...]}``; each annotation has ``frame_dir``
  (``S001C002P003R001A010``), ``label`` (0-based action), ``img_shape``/``original_shape`` ``(H, W)``,
  ``total_frames`` and 2D COCO-17 ``keypoint`` ``float32 [M, T, 17, 2]`` (pixels) with ``keypoint_score``
  ``float32 [M, T, 17]``. Some samples have a second person who is absent (all zeros) in part of the clip.
* ``videos/<frame_dir>.mp4`` — the RGB stream as the RGBPoseConv3D pipeline reads it (``MMDecode`` opens
  ``data_prefix.video + frame_dir + '.mp4'`` with decord): the skeleton drawn over a class-coloured background.

Splits follow NTU60's rules: cross-subject by the official training subject IDs, cross-view by camera (2, 3 train).
Run as a script to write one: ``python tests/support/ntu_synth.py OUT_DIR [--train N] [--val N]``.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

# COCO-17 rest pose (x, y) in a unit box centred at 0: nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles (left before right).
COCO17 = np.array([
    [0.0, -0.80], [-0.05, -0.85], [0.05, -0.85], [-0.10, -0.82], [0.10, -0.82],
    [-0.20, -0.55], [0.20, -0.55], [-0.30, -0.25], [0.30, -0.25], [-0.35, 0.00], [0.35, 0.00],
    [-0.12, 0.05], [0.12, 0.05], [-0.14, 0.45], [0.14, 0.45], [-0.15, 0.85], [0.15, 0.85],
], dtype=np.float32)
LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15),
         (12, 14), (14, 16), (0, 5), (0, 6)]
XSUB_TRAIN_SUBJECTS = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
XSUB_VAL_SUBJECTS = sorted(set(range(1, 41)) - XSUB_TRAIN_SUBJECTS)


def _person(rng, label: int, t: np.ndarray, size, shift: float) -> np.ndarray:
    """Keypoints [T, 17, 2] in pixels of one person whose arm/leg motion depends on the action label."""
    h, w = size
    freq = 0.5 + (label % 6) * 0.35
    amp = 0.10 + (label % 5) * 0.06
    phase = rng.uniform(0, 2 * np.pi)
    kp = np.repeat(COCO17[None], len(t), axis=0).copy()
    wave = amp * np.sin(2 * np.pi * freq * t / 30.0 + phase)
    arms = [7, 9] if label % 2 == 0 else [8, 10]
    kp[:, arms, 1] -= wave[:, None] * (1 + (label % 3))
    kp[:, [13, 15], 0] += 0.5 * wave[:, None]
    kp[:, :, 0] += 0.02 * np.cos(2 * np.pi * t / 40.0)[:, None] + shift
    kp += rng.normal(0, 0.01, kp.shape).astype(np.float32)
    scale = 0.4 * min(h, w)
    px = np.empty_like(kp)
    px[..., 0] = w / 2 + kp[..., 0] * scale
    px[..., 1] = h / 2 + kp[..., 1] * scale
    return px.astype(np.float32)


def _draw(kp: np.ndarray, label: int, size) -> np.ndarray:
    """BGR frames [T, H, W, 3]: class-coloured background with the skeletons drawn on it."""
    import cv2

    h, w = size
    colour = np.array([(label * 37) % 200 + 30, (label * 71) % 200 + 30, (label * 113) % 200 + 30], np.uint8)
    frames = np.empty((kp.shape[1], h, w, 3), np.uint8)
    for i in range(kp.shape[1]):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colour
        for person in kp[:, i]:
            if np.all(person == 0):
                continue
            pts = [tuple(int(round(v)) for v in p) for p in person]
            for a, b in LIMBS:
                cv2.line(img, pts[a], pts[b], (255, 255, 255), 1)
            for p in pts:
                cv2.circle(img, p, 1, (0, 0, 255), -1)
        frames[i] = img
    return frames


def _write_video(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    import cv2

    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video {path}")
    for f in frames:
        writer.write(f)
    writer.release()


def make_ntu60(root, *, num_train: int = 8, num_val: int = 8, num_classes: int = 60,
               frames: tuple[int, int] = (24, 48), size: tuple[int, int] = (48, 64), rgb: bool = True,
               seed: int = 0) -> dict:
    """Write the dataset under ``root``; returns ``{"root", "ann_file", "video_root", "train", "val"}``.

    ``size`` is ``(H, W)``; ``frames`` the range of clip lengths. Sample ``i`` has label ``(7 * i) % num_classes``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    video_root = root / "videos"
    video_root.mkdir(parents=True, exist_ok=True)
    annotations, train, val = [], [], []
    for i in range(num_train + num_val):
        is_train = i < num_train
        label = (7 * i) % num_classes
        subjects = sorted(XSUB_TRAIN_SUBJECTS) if is_train else XSUB_VAL_SUBJECTS
        subject = subjects[i % len(subjects)]
        camera = 1 + i % 3
        name = f"S{1 + i % 17:03d}C{camera:03d}P{subject:03d}R{1 + i % 2:03d}A{label + 1:03d}"
        total = int(rng.integers(frames[0], frames[1] + 1))
        t = np.arange(total, dtype=np.float32)
        persons = [_person(rng, label, t, size, shift=-0.15 if i % 3 == 0 else 0.0)]
        if i % 3 == 0:  # a second person, absent in the last third of the clip
            second = _person(rng, label, t, size, shift=0.2)
            second[2 * total // 3:] = 0
            persons.append(second)
        kp = np.stack(persons)
        score = rng.uniform(0.3, 1.0, kp.shape[:3]).astype(np.float32)
        score[kp[..., 0] == 0] = 0
        annotations.append(dict(frame_dir=name, label=label, img_shape=size, original_shape=size,
                                total_frames=total, keypoint=kp, keypoint_score=score))
        (train if is_train else val).append(name)
        if rgb:
            _write_video(video_root / f"{name}.mp4", _draw(kp, label, size))
    xview_train = [a["frame_dir"] for a in annotations if int(a["frame_dir"][5:8]) in (2, 3)]
    xview_val = [a["frame_dir"] for a in annotations if int(a["frame_dir"][5:8]) == 1]
    data = {"split": {"xsub_train": train, "xsub_val": val, "xview_train": xview_train, "xview_val": xview_val},
            "annotations": annotations}
    ann_file = root / "ntu60_2d.pkl"
    with open(ann_file, "wb") as fh:
        pickle.dump(data, fh, protocol=4)
    return {"root": str(root), "ann_file": str(ann_file), "video_root": str(video_root) + "/",
            "train": train, "val": val}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--no-rgb", action="store_true")
    args = parser.parse_args(argv)
    info = make_ntu60(args.out, num_train=args.train, num_val=args.val, rgb=not args.no_rgb)
    print(info["ann_file"])


if __name__ == "__main__":
    main()
