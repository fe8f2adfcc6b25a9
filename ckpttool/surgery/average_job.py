"""``ckpt average`` as one library call: choose the inputs, average (or greedy-soup) them, optionally recalibrate
BatchNorm, publish the output atomically."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.errors import CkptError

if TYPE_CHECKING:
    from ckpttool.surgery.average import AverageReport


def run_average(paths=(), out=None, *, work_dir=None, last=None, best=None, metric=None, mode=None, weights=None,
                select_metric=None, greedy=False, eval_cmd=None, update_bn=None, bn_batches=100, cfg_options=None,
                force=False, device=None, progress=None, **common) -> AverageReport:
    """What ``ckpt average`` does, for scripts and notebooks; returns an
    :class:`~ckpttool.surgery.average.AverageReport` (``.to_dict()``: the ``--format json`` object).

    ``paths``: checkpoints, or ``work_dir`` with ``last=N`` / ``best=N, metric=NAME`` (``greedy``: every
    checkpoint of the work_dir is a candidate). ``common``: ``section``, ``int_buffers``, ``dtype``,
    ``intersection`` of :func:`ckpttool.surgery.average.average`. With ``update_bn=CONFIG`` the average is
    written to a scratch file next to ``out``, its BatchNorm statistics are recomputed on ``bn_batches`` batches of
    the config's ``train_dataloader`` (on ``device``: by default cuda when torch sees one), and only then it is
    published as ``out``. ``progress``: bars on stderr (ckpttool.report.progress)."""
    if device and not update_bn:
        raise CkptError("--device is where --update-bn runs the model; averaging itself needs no device")
    paths, known, selected = _inputs(list(paths), work_dir, last, best, select_metric or metric, mode, greedy)
    if select_metric and select_metric != metric:
        known = None   # logged values of another metric than the soup's: the soup evaluates its own
    job = dict(weights=weights, greedy=greedy, metric=metric, mode=mode, eval_cmd=eval_cmd, known=known,
               progress=progress, **common)
    result = _with_update_bn(paths, out, update_bn, bn_batches, cfg_options, force, job, device) if update_bn \
        else _average(paths, out, force, **job)
    if selected is not None:
        chosen_by = {} if "metric" in result else {"metric": select_metric or metric}
        result = result.updated(selected=selected, **chosen_by)
    return result


def _inputs(paths, work_dir, last, best, metric, mode, greedy):
    from ckpttool.workdirs.runs import choose

    known = selected = None
    if work_dir:
        if paths:
            raise CkptError("give checkpoints or --work-dir, not both")
        paths, known, selected = choose(work_dir, last=last, best=best, metric=metric, mode=mode, every=greedy)
    elif last is not None or best is not None:
        raise CkptError("--last/--best choose checkpoints from --work-dir DIR")
    if not paths:
        raise CkptError("give checkpoints to average, or --work-dir DIR with --last N / --best N --metric NAME")
    return paths, known, selected


def _with_update_bn(paths, out, config, batches, cfg_options, force, job, device=None) -> AverageReport:
    """Average into a scratch file next to ``out``, recalibrate it, then publish: ``out`` appears only when done."""
    from ckpttool.integrations.openmmlab import load_config, resolve_device
    from ckpttool.io.write import check_output, publish_file, scratch_file
    from ckpttool.surgery.average import update_bn

    final = check_output(out, paths, force)
    device = resolve_device(device)   # --device cuda without a GPU fails before any work
    load_config(config, cfg_options)  # a bad config fails before any work
    with scratch_file(final, ".safetensors" if final.endswith(".safetensors") else "") as tmp:
        result = _average(paths, tmp, False, **job)
        bn = update_bn(tmp, config, batches, cfg_options, device, job["progress"])
        publish_file(tmp, final, force=force, inputs=paths)
    notes = [n for n in result.notes if "BatchNorm" not in n]
    notes.append(f"BatchNorm statistics recalibrated on {bn['batches']} batch(es) of the config's train_dataloader")
    return result.updated(update_bn=bn, output=final, bn_stale=False, notes=notes)


def _average(paths, out, force, *, weights, greedy, metric, mode, eval_cmd, known, progress=None,
             **common) -> AverageReport:
    from ckpttool.surgery.average import average
    from ckpttool.workdirs import runs

    if greedy:
        from ckpttool.surgery.soup import greedy_soup

        if weights:
            raise CkptError("--weights cannot be combined with --greedy")
        if not metric:
            raise CkptError("--greedy needs --metric NAME")
        return greedy_soup(paths, out, eval_cmd, metric, mode or runs.metric_mode(metric), known=known,
                           force=force, **common)
    if eval_cmd:
        raise CkptError("--eval-cmd is used by --greedy")
    return average(paths, out, weights=weights, force=force, progress=progress, **common)
