"""Deterministic fixture generator for the ckpt test-suite (real files, no mocks).

Every ``write_<family>(out_dir)`` writes one family into ``out_dir/<family>/`` and returns a JSON-able manifest
dict of the facts tests assert against. All paths in manifests are relative to ``out_dir`` (the root, by default
``fixtures/generated``); ``<family>/manifest.json`` holds each family's manifest and ``manifest.json`` at the root
holds ``{family: manifest}`` for all families. :func:`generate` runs families under a lock and skips a family
whose ``<family>/.stamp`` matches :func:`source_hash` (generator sources + key files + library versions).
Use ``tests/conftest.py`` fixtures ``fixtures_dir`` (root Path) and ``manifest`` (combined dict) in tests.

This module imports only the standard library at top level (torch/mmengine/safetensors are imported inside the
functions that need them), so ``scaled_shapes`` and the manifest helpers are cheap to import.

Conventions used in every manifest
----------------------------------
``summary`` (see :func:`summarize`) of a list of ``(key, shape, dtype, kind)`` entries::

    num_keys, num_params, num_buffers        tensor counts (kind = 'param' / 'buffer')
    param_numel, buffer_numel, numel        element counts (numel = all tensors)
    nbytes                                  bytes of all tensors
    dtypes                                  {dtype: number of tensors}
    params_by_module                        {top-level prefix: param numel}       e.g. {'backbone': 808, ...}
    params_by_module_depth2                 {first-two-components prefix: param numel}
    buffers_by_module                       {top-level prefix: buffer numel}
    numel_by_module                         {top-level prefix: numel of all tensors}

Families, files and manifest keys
---------------------------------
``mmengine/`` — :func:`write_mmengine`: real ``mmengine.runner.Runner.from_cfg(Config(...))`` runs of the toy model in
:mod:`tests.support.toy_mmengine` (1 epoch, 16 samples, batch 4 -> 4 iters; CheckpointHook interval 1; EMAHook;
MultiStepLR; LoggerHook interval 1; val loop with ``CkptToyAccuracy``). Not byte-deterministic (mmengine stores
timestamps). mmengine 0.10.7 cannot ``torch.load`` these under torch >= 2.6 without ``weights_only=False`` or safe
globals (HistoryBuffer, numpy) — see ``foreign_globals``.

* ``mmengine/work_dirs/sgd/epoch_1.pth``   SGD(lr 0.05, momentum 0.9, wd 1e-4), seed 42
* ``mmengine/work_dirs/adamw/epoch_1.pth`` AdamW(lr 0.001, wd 0.05), seed 7
  (plus the Runner's own ``last_checkpoint``, ``<timestamp>/`` logs and ``vis_data``.)

manifest: ``runs`` = {'sgd': run, 'adamw': run}; each run::

    path, work_dir, epoch (1), iter (4), max_epochs, seed, lr (config lr), lr_at_save, weight_decay,
    optimizer ('SGD'|'AdamW'), optimizer_state_keys (['momentum_buffer'] | ['exp_avg', 'exp_avg_sq', 'step']),
    num_optimizer_states, experiment_name_prefix ('toy_sgd' — the saved name gets '_<timestamp>' appended),
    experiment_name (as saved), mmengine_version_prefix ('0.10.7': mmengine appends the git hash of the cwd's
    repository to meta.mmengine_version, e.g. '0.10.7' + '3a3940f...'), loss_weights, pipeline,
    top_level_keys (['meta','state_dict','message_hub','optimizer','param_schedulers','ema_state_dict']),
    meta_keys, message_hub_scalar_keys (['train/lr','train/data_time','train/loss',...]),
    message_hub_runtime_info_keys, param_scheduler ('MultiStepLR'), state_dict_keys, summary (see above),
    param_counts ({'backbone.conv': 224, 'backbone.bn': 16, 'head.fc': 36, 'head.aux': 36}), total_params (312),
    cfg_contains (strings that appear in meta.cfg), foreign_globals (from torch's static scan),
    ema: {hook: 'EMAHook', state_dict_holds: 'ema', ema_state_dict_holds: 'raw', ema_state_dict_prefix: 'module.',
          ema_state_dict_extra_keys: ['steps'], steps: 4, momentum: 0.0002,
          check_keys: [...], ema_sums: {key: sum of EMA weights == sum(state_dict[key])},
          raw_sums: {key: sum of raw weights == sum(ema_state_dict['module.'+key])}}

``kaist_mmdet/`` — only on request (``--only kaist_mmdet``, in ``.venv-mmdet``): painted KAIST pairs and a tiny
two-stream Faster R-CNN trained on them by a real Runner; files and manifest in tests/support/kaist_twostream/fixture.py.

``layouts/`` — :func:`write_layouts`: for each name in :data:`LAYOUTS`, ``layouts/<name>.pth`` =
``{'meta': {...}, 'state_dict': OrderedDict}`` (torch zip) with the exact key set of ``fixtures/keys/<name>.txt``;
shapes scaled by :func:`scaled_shapes` (every dim >= 16 is ``// 8``, smaller dims kept), values from
:func:`layout_state_dict` (seeded). ``bevfusion_det_mmdet3d1x_names`` has no dtype/kind column: they are taken by
position from ``bevfusion_det.txt`` (same tensors in the same order; verified shape by shape), so its
``num_batches_tracked`` stay int64 as in a real checkpoint.
manifest: ``layouts`` = {name: {path, keyfile, seed, num_keys_file, full_param_numel, full_numel, summary,
state_dict_order_matches_module (bool: module_from_keys(name).state_dict() has the file's key order)}}.
Python factories for ``ckpt graft``: ``tests.support.fixtures:<name>_model`` (e.g. ``bevfusion_det_map_gca_model``)
return :func:`module_from_keys` modules initialised by ``init_weights()`` (seed differs from the checkpoint's, so
a graft visibly changes values; ``module.init_weights(seed=layout_seed(name))`` reproduces the checkpoint).

``formats/`` — :func:`write_formats`: the same small state dict (:data:`SMALL_ENTRIES`, 11 tensors, 1020 params)::

    zip.pth                 {'state_dict': sd, 'meta': {...}}, torch zip
    legacy.pth              same object in torch's legacy format (see :func:`torch_save_legacy`)
    model.safetensors       sd via safetensors.torch.save_file, metadata {'format': 'pt'}
    sharded/model.safetensors.index.json + model-00001-of-00002.safetensors (backbone.*) +
                            model-00002-of-00002.safetensors (neck.*, head.*)
    ddp_module_prefix.pth   plain OrderedDict, every key 'module.'-prefixed
    compiled_orig_mod.pth   plain OrderedDict, every key '_orig_mod.'-prefixed
    nan_inf.pth             {'state_dict': sd'} with NaN/+Inf/-Inf in module 'neck' only
    truncated.pth           first half of zip.pth's bytes;  empty.pth (0 bytes);  random_bytes.pth (4096 bytes)
    dcp/                    torch.distributed.checkpoint.save({'model': sd, 'step': 7, 'note': ...}) (.metadata +
                            __0_0.distcp); .metadata holds a random save id, so it is not byte-deterministic
    dtypes_views.pth        {'bf16','fp16','int64','base','view_t','view_slice'}: views share base's storage
    timm.pth                {'epoch','arch','state_dict','state_dict_ema','optimizer','version','metric'}
    lightning.ckpt          {'epoch','global_step','pytorch-lightning_version','state_dict' ('model.' keys),
                             'optimizer_states','lr_schedulers','hparams_name','hyper_parameters','callbacks','loops'}
    model_dict.pth          {'model': sd}
    plain_state_dict.pth    sd (the OrderedDict itself)
    mmcv1_bevfusion.pth     {'meta': {'mmcv_version','config','CLASSES','epoch','iter','time'},
                             'state_dict', 'optimizer'}

manifest: ``small`` ({entries: [[key, shape, dtype, kind]...], summary}), ``files`` = {name: {path, format
('torch-zip'|'torch-legacy'|'safetensors'|'safetensors-sharded'|'dcp'|None), layout (the ``ck.layout`` names of
``ckpttool.io``: 'wrapped' ({'state_dict', 'meta'} without mmengine markers)|'state-dict'|'model-dict'|'timm'|
'lightning'|'mmcv1'|None for corrupt files), ...}} plus per file:
``prefix`` (ddp/compiled), ``nonfinite`` (nan_inf: {module, keys: {key: {nan, posinf, neginf}}}),
``corrupt`` (truncated/empty/random: 'truncated'|'empty'|'random'), ``size``, ``tensor_keys``/``bytes_values``
(dcp), ``tensors`` / ``shared_storage`` (dtypes_views), ``shards`` (sharded), ``top_level_keys``, ``meta``.

``malicious/`` — :func:`write_malicious`: pickles whose payload would create ``malicious/SENTINEL_<stem>`` if ever
unpickled for real (the generator only pickles: payload callables are written by name, never referenced). For
each payload ``<name>`` in :data:`MALICIOUS_PAYLOADS`: ``<name>.pth`` (torch zip) and ``<name>_legacy.pth`` (torch
legacy), plus ``plain_pickle.pkl``. Payloads: os_system, posix_system, builtins_eval, builtins_exec,
subprocess_popen, runpy_run_code, getattr_chain, nested_state_dict, in_meta, in_optimizer.
manifest: ``files`` = {stem: {path, form ('zip'|'legacy'|'pickle'), format ('torch-zip'|'torch-legacy'|'pickle'),
payload ('os_system'...), payload_global
('posix.system'...), globals (every non-torch global the payload pickles, e.g. getattr chain:
['builtins.getattr', 'builtins.__import__']), sentinel (absolute path), location (where the payload sits, e.g.
"root['state_dict']['backbone']['layers'][0]['conv']['extra'][1]")}}, ``sentinel_dir``.
Use :func:`pickle_globals` (a static opcode scan; runs nothing) to list the globals a file references.

``diff/`` — :func:`write_diff`: ``base.pth`` ({'meta', 'state_dict'} of :data:`SMALL_ENTRIES`, seed differs from
formats/) and one file per edit: ``scaled.pth`` (module 'neck' x1.5), ``added_key.pth`` ('head.extra.weight' [4]),
``reshaped.pth`` ('head.fc.weight' [4,16] -> [16,4]), ``fp16.pth`` ('neck.fc.weight' -> float16), ``nan.pth``
(3 NaNs in 'backbone.layer1.0.conv.weight', branch 'backbone.layer1'), ``identical.pth`` (byte-identical copy),
``combined.pth`` (all of scale/add/reshape/fp16/nan at once). Plus two real Runner checkpoints
``runner_a.pth`` / ``runner_b.pth`` (same work_dir, seed and experiment_name) whose ``meta.cfg`` differs in exactly:
optimizer lr 0.008 vs 0.005, weight_decay 1e-4 vs 5e-4, ``train_dataloader.dataset.pipeline.0.area_range``
(0.08, 1.0) vs (0.5, 1.0), ``model.loss_weights`` [1.5, 1.0] vs [1.0, 1.0].
manifest: ``base``, ``pairs`` = {name: {path, base, edits: {...}}} where edits use keys ``scaled`` ({module, factor,
keys}), ``added`` ([keys]), ``removed`` ([]), ``reshaped`` ({key: [old_shape, new_shape]}), ``dtype_changed`` ({key:
[old, new]}), ``nan`` ({key: count}), ``nan_branch``, ``unchanged_keys``, ``identical`` (bool); ``runner`` =
{a, b, cfg_diff: {dotted path: [a_value, b_value]}, cfg_diff_paths: {dotted: [path parts]}}.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pickle
import pickletools
import platform
import random
import shutil
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS_DIR = REPO_ROOT / "fixtures" / "keys"
DEFAULT_OUT = REPO_ROOT / "fixtures" / "generated"

FAMILIES = ("mmengine", "layouts", "formats", "malicious", "diff")
#: families generated only on request (``--only`` / ``ensure_fixtures(only=...)``): they need an extra's venv.
#: ``kaist_mmdet`` (the [mmdet] extra): see tests/support/kaist_twostream/fixture.py
OPTIONAL_FAMILIES = ("kaist_mmdet",)
_FAMILY_SOURCES = {"kaist_mmdet": "tests/support/kaist_twostream"}
LAYOUTS = ("rgbpose", "posec3d", "bevfusion_det", "bevfusion_det_map_gca", "kaist_frcnn", "kaist_cascade",
           "bevfusion_det_mmdet3d1x_names")
#: keyfiles without dtype/kind columns borrow them, by position, from this layout
_BORROW_COLUMNS = {"bevfusion_det_mmdet3d1x_names": "bevfusion_det"}

SCALE_DIV = 8
SCALE_MIN = 16
INIT_SEED_OFFSET = 1000  # init_weights() default seed = layout_seed(name) + INIT_SEED_OFFSET
NUM_BATCHES_TRACKED = 1000

#: files whose bytes differ between runs by design (not compared by the determinism test)
NONDETERMINISTIC = ("mmengine/", "kaist_mmdet/", "diff/runner_a.pth", "diff/runner_b.pth", "formats/dcp/.metadata")

_SOURCES = ("tests/support/fixtures.py", "tests/support/toy_mmengine.py")


# ----------------------------------------------------------------------------------------------------------------
# key files, shapes, summaries
# ----------------------------------------------------------------------------------------------------------------
def _keyfile_path(keyfile) -> Path:
    p = Path(keyfile)
    if p.suffix != ".txt" and not p.exists():
        p = KEYS_DIR / f"{keyfile}.txt"
    return p


def read_keyfile(keyfile) -> list:
    """Full-size entries ``[(key, shape tuple, dtype, kind)]`` of a layout name or a ``.txt`` path."""
    path = _keyfile_path(keyfile)
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        shape = tuple(json.loads(parts[1]))
        dtype = parts[2] if len(parts) > 2 else None
        kind = parts[3] if len(parts) > 3 else None
        rows.append((parts[0], shape, dtype, kind))
    if rows and rows[0][2] is None:
        donor = _BORROW_COLUMNS.get(path.stem)
        if donor is not None:
            donor_rows = read_keyfile(path.with_name(f"{donor}.txt"))
            if len(donor_rows) != len(rows) or any(a[1] != b[1] for a, b in zip(rows, donor_rows)):
                raise ValueError(f"{path.name}: shapes do not line up with {donor}.txt")
            rows = [(k, s, d[2], d[3]) for (k, s, _, _), d in zip(rows, donor_rows)]
        else:
            rows = [(k, s, "float32", "param") for k, s, _, _ in rows]
    return rows


def scale_dim(d: int) -> int:
    return d // SCALE_DIV if d >= SCALE_MIN else d


def scaled_shapes(keyfile) -> list:
    """``[(key, scaled shape tuple, dtype, kind)]`` — every dim >= 16 divided by 8 (integer division)."""
    return [(k, tuple(scale_dim(d) for d in s), dt, kind) for k, s, dt, kind in read_keyfile(keyfile)]


_DTYPE_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1,
               "int8": 1, "bool": 1}


def _prefix(key: str, depth: int) -> str:
    parts = key.split(".")
    return ".".join(parts[:depth]) if len(parts) > depth else ".".join(parts[:-1]) or key


def summarize(entries) -> dict:
    """Counts of ``[(key, shape, dtype, kind)]`` (see the module docstring for the keys)."""
    s = dict(num_keys=len(entries), num_params=0, num_buffers=0, param_numel=0, buffer_numel=0, numel=0, nbytes=0,
             dtypes={}, params_by_module={}, params_by_module_depth2={}, buffers_by_module={}, numel_by_module={})
    for key, shape, dtype, kind in entries:
        n = math.prod(shape)
        top, two = _prefix(key, 1), _prefix(key, 2)
        s["numel"] += n
        s["nbytes"] += n * _DTYPE_SIZE[dtype]
        s["dtypes"][dtype] = s["dtypes"].get(dtype, 0) + 1
        s["numel_by_module"][top] = s["numel_by_module"].get(top, 0) + n
        if kind == "param":
            s["num_params"] += 1
            s["param_numel"] += n
            s["params_by_module"][top] = s["params_by_module"].get(top, 0) + n
            s["params_by_module_depth2"][two] = s["params_by_module_depth2"].get(two, 0) + n
        else:
            s["num_buffers"] += 1
            s["buffer_numel"] += n
            s["buffers_by_module"][top] = s["buffers_by_module"].get(top, 0) + n
    return s


def _entries_json(entries):
    return [[k, list(s), d, kind] for k, s, d, kind in entries]


def layout_seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 100_000


# ----------------------------------------------------------------------------------------------------------------
# tensors and modules from entries
# ----------------------------------------------------------------------------------------------------------------
def _tensor_for(torch, key, shape, dtype, g):
    leaf = key.rsplit(".", 1)[-1]
    tdtype = getattr(torch, dtype)
    if dtype == "int64":
        if leaf == "num_batches_tracked" and shape == ():
            return torch.tensor(NUM_BATCHES_TRACKED, dtype=torch.int64)
        high = max(int(shape[-1]) if shape else 2, 2)
        return torch.randint(0, high, shape, generator=g, dtype=torch.int64)
    if leaf == "running_var":
        return (torch.rand(shape, generator=g) + 0.5).to(tdtype)
    if leaf == "running_mean":
        return (torch.randn(shape, generator=g) * 0.1).to(tdtype)
    if tdtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 0.05).to(tdtype)
    return torch.randint(0, 2, shape, generator=g).to(tdtype)


def tensors_from_entries(entries, seed: int) -> "OrderedDict":
    """Deterministic tensors (OrderedDict key -> tensor) for ``[(key, shape, dtype, kind)]``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, _tensor_for(torch, k, tuple(s), d, g)) for k, s, d, _ in entries)


def layout_state_dict(name: str, seed: int | None = None) -> "OrderedDict":
    """The exact state dict saved in ``layouts/<name>.pth`` (seed defaults to :func:`layout_seed`)."""
    return tensors_from_entries(scaled_shapes(name), layout_seed(name) if seed is None else seed)


def _keyed_module_class():
    import torch
    from torch import nn

    class KeyedModule(nn.Module):
        """nn.Module whose parameters/buffers are exactly ``entries``; nested submodules follow dotted names."""

        def __init__(self, entries, name="keyed", default_seed=0):
            super().__init__()
            self._entries = [tuple(e) for e in entries]
            self._layout_name = name
            self._default_seed = default_seed
            for key, shape, dtype, kind in self._entries:
                *path, leaf = key.split(".")
                mod = self
                for part in path:
                    child = mod._modules.get(part)
                    if child is None:
                        child = nn.Module()
                        mod.add_module(part, child)
                    mod = child
                t = torch.zeros(tuple(shape), dtype=getattr(torch, dtype))
                if kind == "param":
                    mod.register_parameter(leaf, nn.Parameter(t, requires_grad=t.is_floating_point()))
                else:
                    mod.register_buffer(leaf, t)
            self.init_weights()

        def init_weights(self, seed=None):
            """Deterministic values; ``seed=layout_seed(name)`` gives exactly the layout checkpoint's tensors."""
            values = tensors_from_entries(self._entries, self._default_seed if seed is None else seed)
            own = dict(self.named_parameters())
            own.update(dict(self.named_buffers()))
            with torch.no_grad():
                for k, v in values.items():
                    own[k].copy_(v)
            return self

        def forward(self, *args, **kwargs):  # pragma: no cover - weights-only model
            raise NotImplementedError(f"{self._layout_name}: a weights-only fixture model has no forward")

    return KeyedModule


def module_from_keys(keyfile, scaled: bool = True):
    """An ``nn.Module`` with exactly the keyfile's parameters/buffers (scaled shapes unless ``scaled=False``).

    ``module.init_weights(seed=None)`` fills deterministic values (default seed ``layout_seed + 1000``)."""
    name = _keyfile_path(keyfile).stem
    entries = scaled_shapes(keyfile) if scaled else read_keyfile(keyfile)
    return _keyed_module_class()(entries, name=name, default_seed=layout_seed(name) + INIT_SEED_OFFSET)


def rgbpose_model():
    return module_from_keys("rgbpose")


def posec3d_model():
    return module_from_keys("posec3d")


def bevfusion_det_model():
    return module_from_keys("bevfusion_det")


def bevfusion_det_map_gca_model():
    return module_from_keys("bevfusion_det_map_gca")


def bevfusion_det_mmdet3d1x_names_model():
    return module_from_keys("bevfusion_det_mmdet3d1x_names")


def kaist_frcnn_model():
    return module_from_keys("kaist_frcnn")


def kaist_cascade_model():
    return module_from_keys("kaist_cascade")


# ----------------------------------------------------------------------------------------------------------------
# the small state dict (formats/, diff/)
# ----------------------------------------------------------------------------------------------------------------
SMALL_ENTRIES = [
    ("backbone.conv1.weight", (8, 3, 3, 3), "float32", "param"),
    ("backbone.bn1.weight", (8,), "float32", "param"),
    ("backbone.bn1.bias", (8,), "float32", "param"),
    ("backbone.bn1.running_mean", (8,), "float32", "buffer"),
    ("backbone.bn1.running_var", (8,), "float32", "buffer"),
    ("backbone.bn1.num_batches_tracked", (), "int64", "buffer"),
    ("backbone.layer1.0.conv.weight", (8, 8, 3, 3), "float32", "param"),
    ("neck.fc.weight", (16, 8), "float32", "param"),
    ("neck.fc.bias", (16,), "float32", "param"),
    ("head.fc.weight", (4, 16), "float32", "param"),
    ("head.fc.bias", (4,), "float32", "param"),
]
SMALL_SEED = 1234
DIFF_SEED = 4321


def small_state_dict(seed: int = SMALL_SEED) -> "OrderedDict":
    return tensors_from_entries(SMALL_ENTRIES, seed)


def small_model():
    """A KeyedModule with :data:`SMALL_ENTRIES` (init = small_state_dict())."""
    return _keyed_module_class()(SMALL_ENTRIES, name="small", default_seed=SMALL_SEED)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _rel(out_dir: Path, p: Path) -> str:
    return p.relative_to(out_dir).as_posix()


def _fake_grads(torch, module, seed):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g) * 0.1


def _optimizer_state(kind: str, seed: int, steps: int = 2):
    """A real optimizer state_dict for the small model after ``steps`` steps on seeded fake gradients."""
    import torch

    model = small_model()
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    elif kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif kind == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    else:
        raise ValueError(kind)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for i in range(steps):
        _fake_grads(torch, model, seed + i)
        opt.step()
        sched.step()
    return opt.state_dict(), sched.state_dict()


def _file_sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# family: layouts
# ----------------------------------------------------------------------------------------------------------------
def write_layouts(out_dir) -> dict:
    import torch

    out_dir = Path(out_dir)
    d = _fresh_dir(out_dir / "layouts")
    layouts = {}
    for name in LAYOUTS:
        entries = scaled_shapes(name)
        full = read_keyfile(name)
        sd = layout_state_dict(name)
        path = d / f"{name}.pth"
        meta = dict(layout=name, keyfile=f"fixtures/keys/{name}.txt", scale=f"dims>={SCALE_MIN} // {SCALE_DIV}",
                    seed=layout_seed(name), epoch=12, iter=12 * 1000)
        torch.save({"meta": meta, "state_dict": sd}, path)
        mod_keys = list(module_from_keys(name).state_dict().keys())
        fs = summarize(full)
        layouts[name] = dict(path=_rel(out_dir, path), keyfile=f"fixtures/keys/{name}.txt", seed=layout_seed(name),
                             num_keys_file=len(full), full_param_numel=fs["param_numel"], full_numel=fs["numel"],
                             summary=summarize(entries), meta=meta,
                             state_dict_order_matches_module=mod_keys == [e[0] for e in entries])
    return dict(layouts=layouts, scale=dict(div=SCALE_DIV, min_dim=SCALE_MIN),
                factories={n: f"tests.support.fixtures:{n}_model" for n in LAYOUTS},
                init_seed_offset=INIT_SEED_OFFSET)


# ----------------------------------------------------------------------------------------------------------------
# family: formats
# ----------------------------------------------------------------------------------------------------------------
MMCV1_CONFIG = """\
point_cloud_range = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
voxel_size = [0.075, 0.075, 0.2]
object_classes = ['car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle', 'bicycle',
                  'pedestrian', 'traffic_cone']
model = dict(type='BEVFusion', encoders=dict(camera=dict(backbone=dict(type='SwinTransformer'))))
optimizer = dict(type='AdamW', lr=0.0002, weight_decay=0.01)
lr_config = dict(policy='cyclic')
runner = dict(type='CustomEpochBasedRunner', max_epochs=20)
"""
NUSCENES_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                    "pedestrian", "traffic_cone")


def write_formats(out_dir) -> dict:
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    d = _fresh_dir(out_dir / "formats")
    sd = small_state_dict()
    keys = list(sd)
    files = {}

    def rec(name, path, fmt, layout, **extra):
        files[name] = dict(path=_rel(out_dir, path), format=fmt, layout=layout, **extra)

    meta = dict(epoch=3, iter=300, note="ckpt fixture formats/")
    # (a) zip, (b) legacy
    torch.save({"state_dict": sd, "meta": meta}, d / "zip.pth")
    rec("zip", d / "zip.pth", "torch-zip", "wrapped", top_level_keys=["state_dict", "meta"], meta=meta)
    torch_save_legacy({"state_dict": sd, "meta": meta}, d / "legacy.pth")
    rec("legacy", d / "legacy.pth", "torch-legacy", "wrapped", top_level_keys=["state_dict", "meta"],
        meta=meta)
    # (c) safetensors, (d) sharded
    st = {k: v.clone().contiguous() for k, v in sd.items()}
    save_file(st, str(d / "model.safetensors"), metadata={"format": "pt"})
    rec("safetensors", d / "model.safetensors", "safetensors", "state-dict", metadata={"format": "pt"})
    sh = d / "sharded"
    sh.mkdir()
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shards = [{k: v for k, v in st.items() if k.startswith("backbone.")},
              {k: v for k, v in st.items() if not k.startswith("backbone.")}]
    weight_map = {}
    for fname, part in zip(shard_names, shards):
        save_file(part, str(sh / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in st.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (sh / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    rec("sharded", sh / "model.safetensors.index.json", "safetensors-sharded", "state-dict",
        shards={f: sorted(p) for f, p in zip(shard_names, shards)}, total_size=total)
    # (e) DDP, (f) torch.compile
    torch.save(OrderedDict((f"module.{k}", v) for k, v in sd.items()), d / "ddp_module_prefix.pth")
    rec("ddp", d / "ddp_module_prefix.pth", "torch-zip", "state-dict", prefix="module.")
    torch.save(OrderedDict((f"_orig_mod.{k}", v) for k, v in sd.items()), d / "compiled_orig_mod.pth")
    rec("compiled", d / "compiled_orig_mod.pth", "torch-zip", "state-dict", prefix="_orig_mod.")
    # (g) NaN / Inf in module 'neck'
    bad = OrderedDict((k, v.clone()) for k, v in sd.items())
    w, b = bad["neck.fc.weight"], bad["neck.fc.bias"]
    w[0, 0] = float("nan")
    w[3, 5] = float("nan")
    w[7, 1] = float("inf")
    b[2] = float("-inf")
    b[9] = float("nan")
    torch.save({"state_dict": bad, "meta": meta}, d / "nan_inf.pth")
    rec("nan_inf", d / "nan_inf.pth", "torch-zip", "wrapped",
        nonfinite=dict(module="neck", keys={"neck.fc.weight": dict(nan=2, posinf=1, neginf=0),
                                           "neck.fc.bias": dict(nan=1, posinf=0, neginf=1)},
                       finite_modules=["backbone", "head"]))
    # (h) corrupt files
    zbytes = (d / "zip.pth").read_bytes()
    (d / "truncated.pth").write_bytes(zbytes[: len(zbytes) // 2])
    rec("truncated", d / "truncated.pth", None, None, corrupt="truncated", size=len(zbytes) // 2,
        original_size=len(zbytes))
    (d / "empty.pth").write_bytes(b"")
    rec("empty", d / "empty.pth", None, None, corrupt="empty", size=0)
    rnd = random.Random(99).randbytes(4096)
    (d / "random_bytes.pth").write_bytes(rnd)
    rec("random_bytes", d / "random_bytes.pth", None, None, corrupt="random", size=4096, first_bytes=rnd[:4].hex())
    # (i) torch.distributed.checkpoint directory
    import warnings

    import torch.distributed.checkpoint as dcp

    dcp_state = {"model": OrderedDict((k, v.clone()) for k, v in sd.items()), "step": 7, "note": "ckpt dcp fixture"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(dcp_state, checkpoint_id=str(d / "dcp"))
    rec("dcp", d / "dcp", "dcp", "model-dict", files=sorted(os.listdir(d / "dcp")),
        tensor_keys=[f"model.{k}" for k in keys], bytes_values={"step": 7, "note": "ckpt dcp fixture"})
    # (j) dtypes and views sharing storage
    g = torch.Generator().manual_seed(77)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    dv = OrderedDict(
        bf16=(torch.randn(4, 4, generator=g)).to(torch.bfloat16),
        fp16=(torch.randn(3, 5, generator=g)).to(torch.float16),
        int64=torch.arange(10, dtype=torch.int64) * 3 - 7,
        base=base,
        view_t=base.t(),
        view_slice=base[1:, ::2],
    )
    torch.save(dv, d / "dtypes_views.pth")
    tinfo = {k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape), stride=list(v.stride()),
                     storage_offset=v.storage_offset(), contiguous=v.is_contiguous()) for k, v in dv.items()}
    rec("dtypes_views", d / "dtypes_views.pth", "torch-zip", "state-dict", tensors=tinfo,
        shared_storage=[["base", "view_t", "view_slice"]], num_storages=4,
        values=dict(base=base.tolist(), view_slice=dv["view_slice"].tolist(), int64=dv["int64"].tolist()))
    # (k) layouts of popular trainers
    sgd_state, _ = _optimizer_state("sgd", 5)
    ema = tensors_from_entries(SMALL_ENTRIES, SMALL_SEED + 1)
    timm = {"epoch": 12, "arch": "resnet_toy", "state_dict": sd, "optimizer": sgd_state, "version": 2,
            "metric": 76.54, "state_dict_ema": ema}
    torch.save(timm, d / "timm.pth")
    rec("timm", d / "timm.pth", "torch-zip", "timm", top_level_keys=list(timm), epoch=12, arch="resnet_toy",
        metric=76.54, ema_section="state_dict_ema")
    adam_state, sched_state = _optimizer_state("adam", 11)
    light = {"epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.1.3",
             "state_dict": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
             "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 4}}}},
             "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": 0.25}},
             "optimizer_states": [adam_state], "lr_schedulers": [sched_state], "hparams_name": "kwargs",
             "hyper_parameters": {"lr": 0.001, "num_classes": 4, "backbone": "toy"}}
    torch.save(light, d / "lightning.ckpt")
    rec("lightning", d / "lightning.ckpt", "torch-zip", "lightning", top_level_keys=list(light), prefix="model.",
        epoch=4, global_step=120, pytorch_lightning_version="2.1.3",
        hyper_parameters=light["hyper_parameters"])
    torch.save({"model": sd}, d / "model_dict.pth")
    rec("model_dict", d / "model_dict.pth", "torch-zip", "model-dict", top_level_keys=["model"])
    torch.save(sd, d / "plain_state_dict.pth")
    rec("plain", d / "plain_state_dict.pth", "torch-zip", "state-dict")
    adamw_state, _ = _optimizer_state("adamw", 21)
    mmcv_meta = {"mmcv_version": "1.4.0", "config": MMCV1_CONFIG, "CLASSES": NUSCENES_CLASSES, "epoch": 20,
                 "iter": 30880, "time": "Thu Jun  2 11:43:06 2022"}
    torch.save({"meta": mmcv_meta, "state_dict": sd, "optimizer": adamw_state}, d / "mmcv1_bevfusion.pth")
    rec("mmcv1", d / "mmcv1_bevfusion.pth", "torch-zip", "mmcv1", top_level_keys=["meta", "state_dict", "optimizer"],
        meta={k: (list(v) if isinstance(v, tuple) else v) for k, v in mmcv_meta.items()})
    return dict(small=dict(entries=_entries_json(SMALL_ENTRIES), summary=summarize(SMALL_ENTRIES), seed=SMALL_SEED),
                files=files)


# ----------------------------------------------------------------------------------------------------------------
# family: malicious
# ----------------------------------------------------------------------------------------------------------------
class GlobalRef:
    """Stands for the global ``module.name``; the fixture pickler writes it as a GLOBAL opcode, by name only.

    Callable so pickle accepts it as the function of a reduce tuple; calling it does nothing but raise."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *a, **k):
        raise RuntimeError("GlobalRef is a name, not a function")

    def __repr__(self):
        return f"GlobalRef({self.module}.{self.name})"


class Call:
    """Pickles as ``func(*args)`` (a REDUCE); ``func`` is a :class:`GlobalRef` or another :class:`Call`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *a, **k):
        raise RuntimeError("Call is a pickling stand-in")


class _FixturePickler(pickle._Pickler):  # the pure-Python pickler lets us write raw GLOBAL opcodes
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, GlobalRef):
            if self.proto >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
            return
        return super().save(obj, save_persistent_id)


def _fixture_pickle_module():
    import types

    m = types.ModuleType("ckpt_fixture_pickle")
    m.Pickler = _FixturePickler
    m.dump = pickle.dump
    m.HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    m.DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    return m


_LEGACY_KEY_BASE = 140_000_000_000_000  # legacy storage keys are str(storage._cdata): 15-digit addresses


def _first_pickles_end(data: bytes, count: int, start: int = 0) -> list:
    """End offsets of ``count`` consecutive pickles starting at ``start`` (static scan with pickletools)."""
    ends, pos = [], start
    for _ in range(count):
        bio = io.BytesIO(data)
        bio.seek(pos)
        for op, _arg, _p in pickletools.genops(bio):
            if op.name == "STOP":
                break
        pos = bio.tell()
        ends.append(pos)
    return ends


def torch_save_legacy(obj, path) -> None:
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)`` with reproducible bytes.

    torch's legacy writer names storages by memory address (``str(storage._cdata)``) and writes them in the sorted
    order of those names, so its bytes change from run to run. Here the names become address-like numbers in
    order of first appearance and the storage records are written in that order; everything else is torch's own
    output (loads with ``torch.load`` as any legacy file). Payload :class:`GlobalRef` objects are supported."""
    import torch

    keymap, nbytes = {}, {}

    class LegacyPickler(_FixturePickler):
        def save_pers(self, pid):
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                new = keymap.setdefault(pid[2], str(_LEGACY_KEY_BASE + 4096 * len(keymap)))
                nbytes[new] = int(pid[4]) * pid[1].dtype.itemsize
                pid = (pid[0], pid[1], new) + tuple(pid[3:])
            return super().save_pers(pid)

    m = _fixture_pickle_module()
    m.Pickler = LegacyPickler
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=m, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    # magic, protocol version, sys_info, the object, the storage keys; then per storage: int64 numel + bytes
    ends = _first_pickles_end(data, 5)
    written_order = [keymap[k] for k in sorted(keymap)]
    blocks, pos = {}, ends[4]
    for key in written_order:
        size = 8 + nbytes[key]
        blocks[key] = data[pos:pos + size]
        pos += size
    if pos != len(data):
        raise RuntimeError("unexpected legacy layout")
    order = sorted(written_order)  # same-length decimal strings: first-appearance order
    out = data[:ends[3]] + pickle.dumps(order, protocol=2) + b"".join(blocks[k] for k in order)
    Path(path).write_bytes(out)


MALICIOUS_PAYLOADS = ("os_system", "posix_system", "builtins_eval", "builtins_exec", "subprocess_popen",
                      "runpy_run_code", "getattr_chain", "nested_state_dict", "in_meta", "in_optimizer")


def _payload(kind: str, sentinel: str):
    """(payload object, payload_global, all globals) that would create ``sentinel``."""
    import shlex

    touch = f"touch {shlex.quote(sentinel)}"
    write_py = f"open({sentinel!r}, 'w').write('pwned')"
    if kind in ("os_system", "in_meta"):
        return Call(GlobalRef("os", "system"), touch), "os.system", ["os.system"]
    if kind in ("posix_system", "in_optimizer"):
        return Call(GlobalRef("posix", "system"), touch), "posix.system", ["posix.system"]
    if kind == "builtins_eval":
        return (Call(GlobalRef("builtins", "eval"), f"open({sentinel!r}, 'w').close()"), "builtins.eval",
                ["builtins.eval"])
    if kind in ("builtins_exec", "nested_state_dict"):
        return Call(GlobalRef("builtins", "exec"), write_py), "builtins.exec", ["builtins.exec"]
    if kind == "subprocess_popen":
        return (Call(GlobalRef("subprocess", "Popen"), ["touch", sentinel]), "subprocess.Popen",
                ["subprocess.Popen"])
    if kind == "runpy_run_code":
        return Call(GlobalRef("runpy", "_run_code"), write_py, {}), "runpy._run_code", ["runpy._run_code"]
    if kind == "getattr_chain":
        system = Call(GlobalRef("builtins", "getattr"), Call(GlobalRef("builtins", "__import__"), "os"), "system")
        return Call(system, touch), "builtins.getattr", ["builtins.getattr", "builtins.__import__"]
    raise ValueError(kind)


def _malicious_object(kind: str, payload, sd):
    """The object to pickle and a description of where the payload sits."""
    if kind == "nested_state_dict":
        nested = OrderedDict(sd)
        nested["backbone"] = {"layers": [{"conv": {"weight": sd["backbone.conv1.weight"],
                                                   "extra": [1, payload]}}]}
        return ({"meta": {"epoch": 1}, "state_dict": nested},
                "root['state_dict']['backbone']['layers'][0]['conv']['extra'][1]")
    if kind == "in_meta":
        return ({"meta": {"epoch": 1, "iter": 10, "cfg": payload}, "state_dict": sd}, "root['meta']['cfg']")
    if kind == "in_optimizer":
        return ({"meta": {"epoch": 1}, "state_dict": sd,
                 "optimizer": {"state": {0: {"momentum_buffer": payload}},
                               "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}]}},
                "root['optimizer']['state'][0]['momentum_buffer']")
    if kind in ("os_system", "posix_system"):  # the classic proof of concept: the whole file is the payload
        return payload, "root"
    return {"state_dict": sd, "meta": {"epoch": 1}, "hook": payload}, "root['hook']"


def write_malicious(out_dir, sentinel_dir=None) -> dict:
    """``sentinel_dir`` (default ``out_dir/malicious``) is baked into the payloads as an absolute path."""
    import torch

    out_dir = Path(out_dir)
    d = _fresh_dir(out_dir / "malicious")
    sentinel_dir = Path(sentinel_dir).resolve() if sentinel_dir else d.resolve()
    pm = _fixture_pickle_module()
    g = torch.Generator().manual_seed(5)
    sd = OrderedDict([("backbone.conv1.weight", torch.randn(4, 3, 3, 3, generator=g)),
                      ("head.fc.weight", torch.randn(2, 4, generator=g))])
    files = {}
    for kind in MALICIOUS_PAYLOADS:
        for form in ("zip", "legacy"):
            stem = kind if form == "zip" else f"{kind}_legacy"
            sentinel = str(sentinel_dir / f"SENTINEL_{stem}")
            payload, pglobal, globs = _payload(kind, sentinel)
            obj, location = _malicious_object(kind, payload, sd)
            path = d / f"{stem}.pth"
            if form == "zip":
                torch.save(obj, path, pickle_module=pm)
            else:
                torch_save_legacy(obj, path)
            files[stem] = dict(path=_rel(out_dir, path), form=form,
                               format="torch-zip" if form == "zip" else "torch-legacy", payload=kind,
                               payload_global=pglobal,
                               globals=globs, sentinel=sentinel, location=location)
    stem = "plain_pickle"
    sentinel = str(sentinel_dir / f"SENTINEL_{stem}")
    payload, pglobal, globs = _payload("os_system", sentinel)
    obj = [{"pred_score": [0.1, 0.7, 0.2], "gt_label": 1}, {"pred_score": [0.5, 0.25, 0.25], "gt_label": 0,
                                                            "extra": payload}]
    buf = io.BytesIO()
    _FixturePickler(buf, protocol=2).dump(obj)
    (d / f"{stem}.pkl").write_bytes(buf.getvalue())
    files[stem] = dict(path=_rel(out_dir, d / f"{stem}.pkl"), form="pickle", format="pickle", payload="os_system",
                       payload_global=pglobal, globals=globs, sentinel=sentinel, location="root[1]['extra']")
    return dict(files=files, sentinel_dir=str(sentinel_dir))


# ----------------------------------------------------------------------------------------------------------------
# static pickle scan (runs nothing)
# ----------------------------------------------------------------------------------------------------------------
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}


def _globals_in_stream(data: bytes, start: int = 0, max_pickles: int = 1):
    """Globals referenced by up to ``max_pickles`` consecutive pickles in ``data``; returns (globals, end)."""
    found, pos = [], start
    for _ in range(max_pickles):
        if pos >= len(data):
            break
        strings, memo = [], {}
        bio = io.BytesIO(data)
        bio.seek(pos)
        last = None
        for op, arg, p in pickletools.genops(bio):
            if op.name in _STRING_OPS:
                last = arg if isinstance(arg, str) else arg.decode("latin-1")
                strings.append(last)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = last
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = last
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(int(arg))
                strings.append(last)
            elif op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(f"{strings[-2]}.{strings[-1]}")
            else:
                last = None
            if op.name == "STOP":
                pos = bio.tell()
                break
        else:
            break
    return found, pos


def pickle_globals(path) -> list:
    """Every global (``module.name``) referenced by the pickle(s) of a torch zip/legacy file or plain pickle.

    A static opcode scan with :mod:`pickletools` — nothing is imported or executed."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            return _globals_in_stream(z.read(names[0]))[0]
    data = path.read_bytes()
    # torch legacy files: magic, protocol, sys_info, the object, storage keys; a plain pickle has one
    found, end = _globals_in_stream(data, 0, max_pickles=5)
    return found


# ----------------------------------------------------------------------------------------------------------------
# family: diff
# ----------------------------------------------------------------------------------------------------------------
def write_diff(out_dir) -> dict:
    import torch

    out_dir = Path(out_dir)
    d = _fresh_dir(out_dir / "diff")
    base = tensors_from_entries(SMALL_ENTRIES, DIFF_SEED)
    meta = dict(epoch=10, iter=1000, note="ckpt fixture diff/ base")
    keys = list(base)

    def save(name, sd):
        path = d / f"{name}.pth"
        torch.save({"meta": meta, "state_dict": sd}, path)
        return path

    def copy():
        return OrderedDict((k, v.clone()) for k, v in base.items())

    pairs = {}

    def edits(**kw):
        e = dict(scaled=None, added=[], removed=[], reshaped={}, dtype_changed={}, nan={}, nan_branch=None,
                 identical=False)
        e.update(kw)
        touched = set(e["added"]) | set(e["reshaped"]) | set(e["dtype_changed"]) | set(e["nan"])
        if e["scaled"]:
            touched |= set(e["scaled"]["keys"])
        e["unchanged_keys"] = [k for k in keys if k not in touched]
        return e

    save("base", base)
    scale_keys = [k for k in keys if k.startswith("neck.")]
    add_key, add_val = "head.extra.weight", torch.linspace(-1, 1, 4)
    nan_key, nan_pos = "backbone.layer1.0.conv.weight", [(0, 0, 0, 0), (3, 2, 1, 1), (7, 7, 2, 2)]

    def apply(sd, what):
        if "scale" in what:
            for k in scale_keys:
                sd[k] = sd[k] * 1.5
        if "add" in what:
            sd[add_key] = add_val.clone()
        if "reshape" in what:
            sd["head.fc.weight"] = sd["head.fc.weight"].reshape(16, 4).clone()
        if "fp16" in what:
            sd["neck.fc.weight"] = sd["neck.fc.weight"].to(torch.float16)
        if "nan" in what:
            for p in nan_pos:
                sd[nan_key][p] = float("nan")
        return sd

    specs = {
        "scaled": (("scale",), dict(scaled=dict(module="neck", factor=1.5, keys=scale_keys))),
        "added_key": (("add",), dict(added=[add_key])),
        "reshaped": (("reshape",), dict(reshaped={"head.fc.weight": [[4, 16], [16, 4]]})),
        "fp16": (("fp16",), dict(dtype_changed={"neck.fc.weight": ["float32", "float16"]})),
        "nan": (("nan",), dict(nan={nan_key: len(nan_pos)}, nan_branch="backbone.layer1")),
        "combined": (("scale", "add", "reshape", "fp16", "nan"),
                     dict(scaled=dict(module="neck", factor=1.5, keys=scale_keys), added=[add_key],
                          reshaped={"head.fc.weight": [[4, 16], [16, 4]]},
                          dtype_changed={"neck.fc.weight": ["float32", "float16"]},
                          nan={nan_key: len(nan_pos)}, nan_branch="backbone.layer1")),
    }
    for name, (what, kw) in specs.items():
        path = save(name, apply(copy(), what))
        pairs[name] = dict(path=_rel(out_dir, path), base="diff/base.pth", edits=edits(**kw))
    shutil.copyfile(d / "base.pth", d / "identical.pth")
    pairs["identical"] = dict(path="diff/identical.pth", base="diff/base.pth", edits=edits(identical=True))
    pairs["combined"]["edits"]["note"] = ("neck.fc.weight is both scaled x1.5 and cast to float16 "
                                          "(scaled first, then cast)")
    pairs["combined"]["edits"]["dtype_changed_and_scaled"] = ["neck.fc.weight"]

    # two real Runner checkpoints whose configs differ in exactly four values
    wd = d / "_work_dir"
    variants = {
        "a": dict(lr=0.008, weight_decay=1e-4, area_range=(0.08, 1.0), loss_weights=[1.5, 1.0]),
        "b": dict(lr=0.005, weight_decay=5e-4, area_range=(0.5, 1.0), loss_weights=[1.0, 1.0]),
    }
    runs = {}
    for tag, v in variants.items():
        if wd.exists():
            shutil.rmtree(wd)
        cfg = _runner_cfg(work_dir=wd, experiment_name="toy_diff", seed=11,
                          optimizer=dict(type="SGD", lr=v["lr"], momentum=0.9, weight_decay=v["weight_decay"]),
                          loss_weights=v["loss_weights"],
                          pipeline=[dict(type="RandomResizedCrop", area_range=v["area_range"]),
                                    dict(type="Flip", flip_ratio=0.5)])
        info = _run_runner(cfg)
        target = d / f"runner_{tag}.pth"
        shutil.copyfile(info.pop("ckpt_abs"), target)
        info["path"] = _rel(out_dir, target)
        info["work_dir"] = _rel(out_dir, wd)  # the cfg's work_dir; removed after both runs
        runs[tag] = info
    shutil.rmtree(wd)
    cfg_diff = {
        "optim_wrapper.optimizer.lr": [0.008, 0.005],
        "optim_wrapper.optimizer.weight_decay": [1e-4, 5e-4],
        "train_dataloader.dataset.pipeline.0.area_range": [[0.08, 1.0], [0.5, 1.0]],
        "model.loss_weights": [[1.5, 1.0], [1.0, 1.0]],
    }
    cfg_paths = {k: [int(p) if p.isdigit() else p for p in k.split(".")] for k in cfg_diff}
    return dict(base=dict(path="diff/base.pth", seed=DIFF_SEED, entries=_entries_json(SMALL_ENTRIES),
                          summary=summarize(SMALL_ENTRIES), meta=meta),
                pairs=pairs,
                runner=dict(a=runs["a"], b=runs["b"], cfg_diff=cfg_diff, cfg_diff_paths=cfg_paths,
                            same=["work_dir", "experiment_name", "randomness.seed", "model.type",
                                  "train_cfg", "param_scheduler", "default_hooks", "custom_hooks"]))


# ----------------------------------------------------------------------------------------------------------------
# real mmengine Runner runs (families mmengine, diff)
# ----------------------------------------------------------------------------------------------------------------
def _runner_cfg(work_dir, experiment_name, seed, optimizer, loss_weights=(1.0, 1.0), pipeline=None):
    return dict(
        custom_imports=dict(imports=["tests.support.toy_mmengine"], allow_failed_imports=False),
        model=dict(type="CkptToyClassifier", loss_weights=list(loss_weights)),
        work_dir=str(work_dir),
        experiment_name=experiment_name,
        train_dataloader=dict(
            batch_size=4, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=True),
            collate_fn=dict(type="default_collate"),
            dataset=dict(type="CkptToyDataset", num_samples=16, seed=0,
                         pipeline=pipeline or [dict(type="RandomResizedCrop", area_range=(0.08, 1.0)),
                                               dict(type="Flip", flip_ratio=0.5)])),
        val_dataloader=dict(
            batch_size=8, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
            dataset=dict(type="CkptToyDataset", num_samples=8, seed=1)),
        val_evaluator=dict(type="CkptToyAccuracy"),
        val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=1, val_interval=1),
        optim_wrapper=dict(type="OptimWrapper", optimizer=optimizer),
        param_scheduler=[dict(type="MultiStepLR", by_epoch=True, milestones=[1], gamma=0.1)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[dict(type="EMAHook")],
        randomness=dict(seed=seed),
        log_level="WARNING",
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="gloo")),
        launcher="none",
    )


def _run_runner(cfg: dict) -> dict:
    """Train one epoch with a real Runner; return facts read off the live objects (the file is never loaded)."""
    import logging

    import torch
    from mmengine.config import Config
    from mmengine.hooks import EMAHook
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmengine.visualization import Visualizer

    from tests.support import toy_mmengine  # registers the toy model/dataset/metric

    runner = Runner.from_cfg(Config(cfg))
    facts_hook = toy_mmengine.CkptFactsHook()
    runner.register_hook(facts_hook, priority="LOWEST")  # not in the config: the saved cfg stays as written
    try:
        runner.train()
        ckpt = Path(cfg["work_dir"]) / "epoch_1.pth"
        f = facts_hook.facts
        model = runner.model
        params = dict(model.named_parameters())
        entries = [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""), "param" if k in params else "buffer")
                   for k, v in model.state_dict().items()]
        counts = {}
        for name, p in params.items():
            mod = name.rsplit(".", 1)[0]
            counts[mod] = counts.get(mod, 0) + p.numel()
        assert counts == toy_mmengine.PARAM_COUNTS, counts
        ema_hook = next(h for h in runner.hooks if isinstance(h, EMAHook))
        opt_cfg = cfg["optim_wrapper"]["optimizer"]
        info = dict(
            ckpt_abs=str(ckpt), work_dir=str(cfg["work_dir"]), epoch=runner.epoch, iter=runner.iter,
            max_epochs=runner.max_epochs, seed=runner.seed, lr=opt_cfg["lr"], lr_at_save=f["lr_at_save"],
            weight_decay=opt_cfg["weight_decay"], optimizer=opt_cfg["type"],
            optimizer_state_keys=f["optimizer_state_keys"], num_optimizer_states=f["num_optimizer_states"],
            experiment_name_prefix=cfg["experiment_name"], experiment_name=f["experiment_name"],
            mmengine_version_prefix=_version("mmengine"),
            top_level_keys=f["top_level_keys"], meta_keys=f["meta_keys"],
            message_hub_scalar_keys=f["message_hub_scalar_keys"],
            message_hub_runtime_info_keys=f["message_hub_runtime_info_keys"],
            param_scheduler="MultiStepLR", loss_weights=list(cfg["model"]["loss_weights"]),
            pipeline=json.loads(json.dumps(cfg["train_dataloader"]["dataset"]["pipeline"])),
            state_dict_keys=f["state_dict_keys"], summary=summarize(entries),
            param_counts=dict(toy_mmengine.PARAM_COUNTS), total_params=toy_mmengine.TOTAL_PARAMS,
            cfg_contains=["type='CkptToyClassifier'", "type='EMAHook'", "type='MultiStepLR'",
                          f"experiment_name = '{cfg['experiment_name']}'", f"lr={opt_cfg['lr']}"],
            foreign_globals=sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))),
            ema=dict(hook="EMAHook", state_dict_holds="ema", ema_state_dict_holds="raw",
                     ema_state_dict_prefix="module.", ema_state_dict_extra_keys=["steps"],
                     ema_state_dict_keys=f["ema_state_dict_keys"], steps=f["ema_steps"],
                     momentum=float(ema_hook.ema_model.momentum), check_keys=facts_hook.check_keys,
                     ema_sums=f["ema_sums"], raw_sums=f["raw_sums"],
                     ema_raw_max_abs_diff=f["ema_raw_max_abs_diff"]),
        )
        return info
    finally:
        name = runner.experiment_name
        logger = MMLogger._instance_dict.get(name)
        if logger is not None:
            for h in list(logger.handlers):
                if isinstance(h, logging.FileHandler):
                    h.close()
                    logger.removeHandler(h)
        for cls in (MessageHub, MMLogger, Visualizer, DefaultScope):
            cls._instance_dict.pop(name, None)


def write_mmengine(out_dir) -> dict:
    out_dir = Path(out_dir)
    d = _fresh_dir(out_dir / "mmengine")
    runs = {}
    specs = {
        "sgd": dict(seed=42, optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4),
                    loss_weights=[1.0, 0.5]),
        "adamw": dict(seed=7, optimizer=dict(type="AdamW", lr=0.001, weight_decay=0.05), loss_weights=[1.0, 1.0]),
    }
    for tag, s in specs.items():
        wd = d / "work_dirs" / tag
        cfg = _runner_cfg(work_dir=wd, experiment_name=f"toy_{tag}", seed=s["seed"], optimizer=s["optimizer"],
                          loss_weights=s["loss_weights"])
        info = _run_runner(cfg)
        info["path"] = _rel(out_dir, Path(info.pop("ckpt_abs")))
        info["work_dir"] = _rel(out_dir, wd)
        runs[tag] = info
    return dict(runs=runs)


# ----------------------------------------------------------------------------------------------------------------
# orchestration
# ----------------------------------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def source_hash() -> str:
    """Hash of the generator sources, key files and library versions (stdlib only; imports no torch)."""
    h = hashlib.sha256()
    for rel in _SOURCES:
        h.update(rel.encode() + b"\0" + (REPO_ROOT / rel).read_bytes())
    for p in sorted(KEYS_DIR.glob("*.txt")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    for dist in ("torch", "mmengine", "safetensors", "numpy"):
        h.update(f"{dist}={_version(dist)}".encode())
    h.update(platform.python_version().encode())
    return h.hexdigest()


def _stamp_value(family: str, sentinel_dir=None) -> str:
    extra = f"sentinel={Path(sentinel_dir).resolve()}" if (family == "malicious" and sentinel_dir) else ""
    if family in _FAMILY_SOURCES:  # the family's own sources and libraries
        h = hashlib.sha256()
        for p in sorted((REPO_ROOT / _FAMILY_SOURCES[family]).rglob("*.py")):
            h.update(p.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + p.read_bytes())
        h.update((REPO_ROOT / "fixtures" / "kaist" / "KAIST_annotation.json").read_bytes())
        for dist in ("mmdet", "mmcv", "opencv-python"):
            h.update(f"{dist}={_version(dist)}".encode())
        extra = h.hexdigest()
    return f"{source_hash()} {family} {extra}".strip()


def stale_families(out_dir=DEFAULT_OUT, only=None, sentinel_dir=None) -> list:
    out_dir = Path(out_dir)
    result = []
    for fam in only or FAMILIES:
        stamp = out_dir / fam / ".stamp"
        man = out_dir / fam / "manifest.json"
        if not (stamp.exists() and man.exists() and stamp.read_text() == _stamp_value(fam, sentinel_dir)):
            result.append(fam)
    return result


@contextlib.contextmanager
def _locked(out_dir: Path):
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-able: {type(o)}")


def load_manifest(out_dir=DEFAULT_OUT) -> dict:
    return json.loads((Path(out_dir) / "manifest.json").read_text())


def generate(out_dir=DEFAULT_OUT, only=None, force=False, sentinel_dir=None, log=None) -> dict:
    """Write the (stale or all, with ``force``) families into ``out_dir``; return the combined manifest.

    ``only``: iterable of family names. ``sentinel_dir``: see :func:`write_malicious` (part of its stamp)."""
    import time

    out_dir = Path(out_dir).resolve()
    only = list(only) if only else list(FAMILIES)
    unknown = set(only) - set(FAMILIES) - set(OPTIONAL_FAMILIES)
    if unknown:
        raise ValueError(f"unknown families: {sorted(unknown)}; known: {FAMILIES + OPTIONAL_FAMILIES}")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    writers = dict(mmengine=write_mmengine, layouts=write_layouts, formats=write_formats,
                   malicious=lambda o: write_malicious(o, sentinel_dir=sentinel_dir), diff=write_diff,
                   kaist_mmdet=_write_kaist_mmdet)
    with _locked(out_dir):
        todo = only if force else stale_families(out_dir, only, sentinel_dir)
        for fam in todo:
            t0 = time.perf_counter()
            stamp = out_dir / fam / ".stamp"
            if stamp.exists():
                stamp.unlink()
            man = writers[fam](out_dir)
            man["family"] = fam
            (out_dir / fam / "manifest.json").write_text(json.dumps(man, indent=1, default=_json_default) + "\n")
            stamp.write_text(_stamp_value(fam, sentinel_dir))
            if log:
                log(f"fixtures: {fam} written in {time.perf_counter() - t0:.1f}s")
        if log and not todo:
            log("fixtures: up to date")
        combined = {}
        for fam in FAMILIES + OPTIONAL_FAMILIES:
            p = out_dir / fam / "manifest.json"
            if p.exists():
                combined[fam] = json.loads(p.read_text())
        combined["_generator"] = dict(source_hash=source_hash(), out_dir=str(out_dir))
        tmp = out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(combined, indent=1) + "\n")
        os.replace(tmp, out_dir / "manifest.json")
    return combined


def _write_kaist_mmdet(out_dir) -> dict:
    # imported as the top-level package `kaist_twostream`, the name its configs' custom_imports use (mmengine's
    # registries refuse a second registration under another module name)
    support = str(REPO_ROOT / "tests" / "support")
    if support not in sys.path:
        sys.path.insert(0, support)
    from kaist_twostream.fixture import write_kaist_mmdet

    return write_kaist_mmdet(out_dir)


def file_hashes(out_dir, include_nondeterministic=False) -> dict:
    """``{relative path: sha256}`` of every generated file (minus manifests/stamps and :data:`NONDETERMINISTIC`)."""
    out_dir = Path(out_dir)
    result = {}
    for p in sorted(out_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(out_dir).as_posix()
        if p.name in (".stamp", ".lock", "manifest.json", "manifest.json.tmp"):
            continue
        if not include_nondeterministic and any(rel == n or (n.endswith("/") and rel.startswith(n))
                                                for n in NONDETERMINISTIC):
            continue
        result[rel] = _file_sha256(p)
    return result
