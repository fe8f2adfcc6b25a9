"""The task-adapter protocol: what a model family tells the evaluation engine.

The engine (:func:`ckpttool.engine.pipeline.evaluate`) owns everything a model family does not change: the config
(``--cfg-options``, default scope, ``custom_imports``), the weights (our safe reader), the test dataset (through
dataset wrappers, sharded under torchrun), inference in bounded chunks with a per-view cache, gathering across ranks,
timing and the result's common keys. A *task adapter* (in :mod:`ckpttool.integrations`) says the rest:

========================  ==========================================================================================
engine stage              adapter call
========================  ==========================================================================================
build                     ``settings(build, requested)`` — parse/validate what to evaluate, before any model exists
views                     ``views(setting)`` — the view keys a setting needs; each distinct key runs once per sample
weights                   ``build_model(build, device)`` — build ``cfg.model`` and check the adapter can run it
data → views              ``view_source(build, model, keys)`` → :class:`ViewSource` — a sample's packed view inputs
inference                 ``streams(build, model)``, ``forward(model, inputs, streams)`` — raw outputs of a batch of views
ground truth              ``target(info)`` — what the metrics need of a sample (a label, an image id)
aggregation + metrics     ``report(build, settings, outputs)`` — per setting: aggregate its views, score
dumps                     ``dump(directory, build, settings, results)`` — files in the library's own format
========================  ==========================================================================================

Adapters implement the protocol structurally (they never import this module), so ``integrations`` does not
depend on ``engine``. The recogniser adapter is :class:`ckpttool.integrations.mmaction_recognizer.RecognizerAdapter`
(settings = clip counts ``k``; view key = ``k``, whose pipeline gives clips × crops × flips views);
the detector adapter is :class:`ckpttool.integrations.mmdet.DetectorAdapter` (settings = TTA settings; view key =
what one plain test pipeline does to the image — scale, flip — shared between settings; one image per view).
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Build:
    """The build stage's result: the loaded config and what the cache and the adapter need of it."""

    config: str                # the config path as given
    cfg: Any                   # the mmengine Config (``--cfg-options`` merged, default scope imported)
    dataset_cfg: Any           # ``cfg.test_dataloader.dataset`` (a deep copy; ``--split`` applied)
    split: str | None          # the test split's name (``--split`` or the config's)
    fingerprint: dict          # plain data the cached outputs depend on besides the checkpoint and the view key


# ``results`` handed to ``report``/``dump``: view key -> (targets [n], {stream: ndarray [n, V, …]})
# (an object array of per-sample outputs where samples have different view counts or sizes: per sample the
# ``[V, …]`` array, or a list of V arrays, e.g. a detector's boxes). Targets are what ``target(info)`` returns,
# stacked (int labels -> int64, image paths -> str).
Results = dict


@runtime_checkable
class ViewSource(Protocol):
    """Turns one sample's data info into the packed inputs of each view key (one per run, built by the adapter)."""

    decode_seconds: float      # time spent reading/decoding media, reported as ``timing.decode_s``

    def sample(self, info: dict) -> Iterator[tuple[Hashable, Any]]:
        """Yield ``(view_key, inputs)`` for every key of the run; ``inputs`` is ``[V, …]`` (a tensor, or a dict of
        them for multi-modal models), V the number of views that key gives for this sample."""

    def stats(self) -> dict:
        """Extra top-level result keys about the data stage (e.g. ``{"decode": {...}}``), ``{}`` for none."""


@runtime_checkable
class TaskAdapter(Protocol):
    """A model family's part of the evaluation (see the module docstring for where the engine calls each)."""

    task: str                  # the result's ``"task"`` (``"ntu60"``, ``"kaist"``)
    cache_prefix: str          # score-cache file names start with it (``clips3-<key>.npz``)
    progress_label: str        # the progress bar's label prefix (``"clips"``)
    sample_unit: str           # what the bar counts (``"samples"``, ``"images"``), shown with its rate (images/s)

    def settings(self, build: Build, requested) -> list:
        """The settings to evaluate (``requested`` as the user gave it; None: the config's own). Raise
        :class:`ckpttool.errors.CkptError` for anything wrong, naming what was expected."""

    def views(self, setting) -> Sequence[Hashable]:
        """The view keys ``setting`` needs (hashable, JSON-able, stable across runs: they key the cache)."""

    def build_model(self, build: Build, device: str):
        """The model of ``build.cfg`` on ``device`` in eval mode; CkptError if this adapter cannot evaluate it."""

    def view_source(self, build: Build, model, keys: Sequence[Hashable]) -> ViewSource:
        """The per-run source of packed view inputs for ``keys``."""

    def streams(self, build: Build, model) -> list[str]:
        """Names of the output streams ``forward`` returns (``["pose"]``, ``["rgb", "pose"]``, ``["det"]``)."""

    def forward(self, model, inputs, streams: list[str]) -> dict:
        """Raw outputs of a batch of views (run under ``torch.no_grad()``): ``{stream: tensor [V, …]}`` (or a list of V items per stream)."""

    def target(self, info: dict):
        """The ground truth of a sample that ``report`` needs (an int label for a recogniser)."""

    def report(self, build: Build, settings: list, outputs) -> dict:
        """Aggregate each setting's views and compute its metrics; the task's result keys (e.g. ``{"clips": [...],
        "aggregate": "prob", "num_classes": 60}``). ``outputs`` (:class:`ckpttool.engine.pipeline.Outputs`):
        ``.results`` (:data:`Results`), ``.cached`` (the view keys served from the cache), ``.passes`` (forward
        passes run, all ranks), ``.timing``."""

    def dump(self, directory, build: Build, settings: list, results: Results) -> list[str]:
        """Write per-setting prediction files under ``directory`` (through ``ckpttool.io.write``); their paths."""
