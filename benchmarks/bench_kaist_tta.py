"""Detector TTA sweep vs one mmengine Runner.test() per setting, and R-50 two-stream seconds per image pair.

    .venv-mmdet/bin/python benchmarks/bench_kaist_tta.py [--images 16] [--r50-images 4] [--threads 1]

1. ``ckpt eval``'s sweep ``none,flip,flip+scale:320x256:400x320`` on the tiny trained fixture detector
   (fixtures/generated/kaist_mmdet) against three separate ``Runner.test()`` runs set up as tools/test.py does
   (plain; ``--tta`` with a flip TestTimeAug; ``--tta`` with the 2 scales x flip TestTimeAug), same images.
   Forward passes are counted on the detector's ``extract_feat``. Reported: wall time of each side, the ratio, passes.
2. The full-size R-50 two-stream Faster R-CNN (tests/support/kaist_twostream/configs/frcnn_r50_kaist.py) at its
   test scale 640x512 on CPU: seconds per image pair of the ``none`` view (pipeline + test_step), after one warm-up.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
sys.path[:0] = [str(ROOT), str(SUPPORT)]


def _count_passes():
    import kaist_twostream.model as km

    calls = []
    real = km.TwoStreamFasterRCNN.extract_feat

    def counted(self, x):
        calls.append(x.shape[0])
        return real(self, x)

    km.TwoStreamFasterRCNN.extract_feat = counted
    return calls


def _runner_test(config, checkpoint, work_dir, limit, tta_pipeline=None, tta_model=None):
    from mmengine.config import Config, ConfigDict
    from mmengine.runner import Runner

    from ckpttool.integrations.openmmlab import load_checkpoint

    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.log_level = "WARNING"
    cfg.test_dataloader.dataset.indices = limit
    if tta_pipeline is not None:
        cfg.model = ConfigDict(**tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = tta_pipeline
    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model.module if tta_pipeline is not None else runner.model, checkpoint)
    return runner.test()


def _tta_pipeline(cfg, scales, flip=True):
    load, *_ = cfg.test_pipeline
    pack = dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor",
                                                 "flip", "flip_direction"))
    return [copy.deepcopy(load), dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale=s, keep_ratio=True) for s in scales],
        [dict(type="RandomFlip", prob=1.0), dict(type="RandomFlip", prob=0.0)] if flip else [dict(type="RandomFlip", prob=0.0)],
        [dict(type="LoadAnnotations", with_bbox=True)], [pack]])]


def bench_sweep(man, out, n):
    import tempfile

    from mmengine.config import Config

    from ckpttool.engine.tasks import evaluate_detector

    config, ckpt, ann = (str(out / man[k]) for k in ("config", "checkpoint", "test_ann"))
    calls = _count_passes()
    cfg = Config.fromfile(config)
    tta_model = dict(type="DetTTAModel", tta_cfg=dict(nms=dict(type="nms", iou_threshold=0.5), max_per_img=100))
    # warm-up (imports, first-call kernels) for both sides; then wall and process CPU time of each
    evaluate_detector(config, ckpt, ann, tta="none", limit=1, project_root=str(SUPPORT), device="cpu")
    calls.clear()
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        r = evaluate_detector(config, ckpt, ann, tta="none,flip,flip+scale:320x256:400x320", limit=n,
                              project_root=str(SUPPORT), device="cpu")
        t_sweep, c_sweep, p_sweep = time.perf_counter() - t0, time.process_time() - c0, len(calls)
        calls.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        separate = [_runner_test(config, ckpt, Path(tmp) / "a", n),
                    _runner_test(config, ckpt, Path(tmp) / "b", n, _tta_pipeline(cfg, [(320, 256)]), tta_model),
                    _runner_test(config, ckpt, Path(tmp) / "c", n, _tta_pipeline(cfg, [(320, 256), (400, 320)]),
                                 tta_model)]
        t_sep, c_sep, p_sep = time.perf_counter() - t0, time.process_time() - c0, len(calls)
    same = [m["evaluator"] == s for m, s in zip(r["methods"], separate)]
    print(f"TTA sweep none,flip,flip+scale:320x256:400x320 on {n} image pairs (tiny two-stream Faster R-CNN)")
    print(f"  ckpt eval sweep          {t_sweep:7.1f} s wall {c_sweep:7.1f} s CPU  {p_sweep:4d} forward passes")
    print(f"  3 x Runner.test()        {t_sep:7.1f} s wall {c_sep:7.1f} s CPU  {p_sep:4d} forward passes")
    print(f"  ratio                    {t_sweep / t_sep:7.2f}      {c_sweep / c_sep:7.2f}        (goal <= 0.6)   "
          f"evaluator metrics equal: {same}")
    return {"sweep_s": t_sweep, "separate_s": t_sep, "ratio": t_sweep / t_sep, "sweep_cpu_s": c_sweep,
            "separate_cpu_s": c_sep, "cpu_ratio": c_sweep / c_sep, "sweep_passes": p_sweep,
            "separate_passes": p_sep, "evaluator_equal": same}


def bench_r50(man, out, n):
    """The full-size R-50 two-stream model (random weights) through the detector adapter's own view source and
    forward: pipeline + ``test_step`` per image pair, the ``none`` view."""
    import torch

    from ckpttool.engine.pipeline import build_run
    from ckpttool.integrations import mmdet as M
    from ckpttool.integrations.openmmlab import build_dataset, build_model

    data = out / "kaist_mmdet" / "data"
    build = build_run(str(SUPPORT / "kaist_twostream" / "configs" / "frcnn_r50_kaist.py"),
                      [f"test_dataloader.dataset.data_root={data}/", "test_dataloader.dataset.ann_file=test.json"],
                      project_root=str(SUPPORT))
    adapter = M.DetectorAdapter(str(out / man["test_ann"]))
    keys = adapter.views(adapter.settings(build, "none")[0])
    model = build_model(build.cfg, "cpu")
    source, streams = adapter.view_source(build, model, keys), adapter.streams(build, model)
    dataset = build_dataset(build.dataset_cfg)

    def run(indices):
        with torch.no_grad():
            for i in indices:
                for _, inputs in source.sample(dataset.get_data_info(i)):
                    adapter.forward(model, inputs, streams)

    run([0])   # warm-up
    t0 = time.perf_counter()
    run(range(1, n + 1))
    dt = (time.perf_counter() - t0) / n
    print(f"R-50 two-stream Faster R-CNN, 640x512 pairs, CPU, {torch.get_num_threads()} thread(s): "
          f"{dt:.2f} s / image pair ({n} pairs)")
    return {"r50_s_per_pair": dt, "threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--r50-images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tests.conftest import _out_dir, ensure_fixtures

    out = ensure_fixtures(_out_dir(), only=["kaist_mmdet"])
    man = json.loads((out / "kaist_mmdet" / "manifest.json").read_text())
    res = {"images": args.images, **bench_sweep(man, out, args.images)}
    if args.r50_images:
        res.update(bench_r50(man, out, args.r50_images))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
