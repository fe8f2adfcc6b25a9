"""The target of a graft: the new architecture, as an mmengine config, a Python factory or a template checkpoint.

A target knows its keys with shapes and dtypes (in the model's order), the value each key starts from (the
model's own initialisation, or the template's tensor), and how to prove that a state dict loads into it strictly.
"""
from __future__ import annotations

import importlib
import os
import re
from collections import OrderedDict

from ckpttool.errors import CkptError

FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class ModuleTarget:
    """An nn.Module built by a config or factory (or handed in by a Python caller)."""

    def __init__(self, model, kind: str, spec: str, cfg_options=None):
        self.model, self.kind, self.spec, self.cfg_options = model, kind, spec, cfg_options
        self.state = OrderedDict((k, v.detach()) for k, v in model.state_dict().items())
        self.entries = OrderedDict((k, (tuple(v.shape), str(v.dtype).removeprefix("torch.")))
                                   for k, v in self.state.items())

    def initial(self, key):
        return self.state[key].clone()

    def check_strict(self, sd) -> None:
        from ckpttool.integrations.openmmlab import load_state_dict_into

        try:
            load_state_dict_into(self.model, sd, strict=True)
        except RuntimeError as exc:  # the module's own load hooks refused (error_msgs)
            raise CkptError(str(exc).strip().splitlines()[-1].strip()) from None

    def describe(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "class": type(self.model).__name__,
                "cfg_options": self.cfg_options or None, **_counts(self.entries)}


class TemplateTarget:
    """A checkpoint whose state dict defines the target keys and their initial values (opened with our reader)."""

    def __init__(self, path: str, section: str | None = None):
        from ckpttool.io import load

        ck = load(path)
        ck.require_safe()
        self.kind, self.spec, self.path = "template", path, ck.path
        self.sd = ck.state_dict(section)
        self.entries = OrderedDict((k, (tuple(t.shape), t.dtype)) for k, t in self.sd.items())

    def initial(self, key):
        return self.sd[key]

    def check_strict(self, sd) -> None:
        missing = [k for k in self.entries if k not in sd]
        unexpected = [k for k in sd if k not in self.entries]
        wrong = [k for k, (shape, _) in self.entries.items() if k in sd and tuple(sd[k].shape) != shape]
        if missing or unexpected or wrong:
            first = (missing or unexpected or wrong)[0]
            raise CkptError(f"does not match the template: {len(missing)} missing, {len(unexpected)} unexpected, "
                            f"{len(wrong)} of another shape (first: {first})")

    def describe(self) -> dict:
        return {"kind": "template", "spec": self.spec, "stripped_prefix": self.sd.stripped_prefix,
                **_counts(self.entries)}


def _counts(entries) -> dict:
    params = 0
    for shape, _ in entries.values():
        n = 1
        for s in shape:
            n *= s
        params += n
    return {"tensors": len(entries), "params": params}


def resolve_target(spec, cfg_options=None, seed: int | None = 0, section: str | None = None, build: str = "auto",
                   project_root=None):
    """A target from an nn.Module, a config path (`.py`), an existing checkpoint, or `package.module:function`.
    Configs are built with parameters on meta (`build` 'auto': falling back to the CPU with a note; 'meta';
    'cpu'); call `materialise(keys)` on such a target before asking for `initial` values. `project_root` (and
    the current directory) is on sys.path while a config's `custom_imports` or a factory's module is imported."""
    if not isinstance(spec, (str, os.PathLike)):
        return _module_target(lambda: spec, "module", type(spec).__name__, seed, init=False)
    text = os.fspath(spec)
    if cfg_options and not text.endswith(".py"):
        raise CkptError("--cfg-options needs a config (.py) as --into")
    if text.endswith(".py"):
        return _config_target(text, cfg_options, seed, build, project_root)
    if os.path.exists(text):
        return TemplateTarget(text, section)
    if FACTORY.fullmatch(text):
        return _module_target(lambda: _call_factory(text, project_root), "factory", text, seed, init=True)
    raise CkptError(f"target {text!r} is not a config (.py), an existing checkpoint, or a factory "
                    "package.module:function")


BUILDS = ("auto", "meta", "cpu")


class MetaModuleTarget(ModuleTarget):
    """A config's model built with its parameters and buffers on the meta device (names, shapes and dtypes cost
    nothing). `materialise(keys)` rebuilds it under the target's seed with only `keys` real, holding the values a
    CPU build's initialisation gives them; anything else stays on meta (see integrations/meta_build.py)."""

    def __init__(self, model, builder, kind, spec, seed, fallback):
        super().__init__(model, kind, spec)
        self.builder, self.seed, self.fallback, self.build, self.materialised = builder, seed, fallback, "meta", 0
        self.notes: list[str] = []

    def materialise(self, keys) -> None:
        keys = [k for k in self.entries if k in set(keys)]
        try:
            model = self.builder.materialise(keys, self.seed)
        except CkptError:
            raise
        except Exception as exc:  # a model whose second build or init cannot run on meta: build it on the CPU
            note = (f"target built on the CPU: initialising it with parameters on meta failed "
                    f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
            model, self.build = self.fallback(), "cpu"
            self.notes.append(note)
            from ckpttool.report.progress import warn

            warn(note)
        self.model = model
        self.state = OrderedDict((k, v.detach()) for k, v in model.state_dict().items())
        self.materialised = len(keys) if self.build == "meta" else len(self.state)

    def initial(self, key):
        value = self.state[key]
        if value.is_meta:
            raise CkptError(f"internal error: {key} was not materialised")
        return value.clone()

    def check_strict(self, sd) -> None:
        """Through the model's own `load_state_dict` (its hooks run), with meta stand-ins for the values of the
        tensors that stay on meta: names and shapes are what is checked, no value is read for them (the values
        are checked bit for bit by graft's `verify`)."""
        import warnings

        import torch

        stand_in = OrderedDict()
        for k, v in sd.items():
            own = self.state.get(k)
            if own is not None and own.is_meta and not (isinstance(v, torch.Tensor) and v.is_meta):
                dtype = getattr(torch, v.dtype) if isinstance(v.dtype, str) else v.dtype
                v = torch.empty(tuple(v.shape), dtype=dtype, device="meta")
            stand_in[k] = v
        with warnings.catch_warnings():  # copying into a meta parameter is a no-op
            warnings.simplefilter("ignore", UserWarning)
            super().check_strict(stand_in)

    def describe(self) -> dict:
        return {**super().describe(), "build": self.build, "materialised": self.materialised}


def _config_target(path: str, cfg_options, seed, build: str = "auto", project_root=None):
    from ckpttool.integrations.openmmlab import build_model, init_weights, load_config

    if build not in BUILDS:
        raise CkptError(f"build must be one of {', '.join(BUILDS)}, got {build!r}")
    cfg = load_config(path, cfg_options, project_root)  # CkptError when missing or unreadable
    options = list(cfg_options) if cfg_options and not isinstance(cfg_options, dict) else cfg_options

    def cpu_target():
        return _module_target(lambda: build_model(cfg), "config", path, seed, init=False)

    target, note = None, None
    if build != "cpu":
        from ckpttool.integrations.meta_build import MetaBuild

        builder = MetaBuild(lambda: build_model(cfg, device=None, init=False), init=init_weights)
        try:
            model = builder.layout()
            target = MetaModuleTarget(model, builder, "config", path, seed, lambda: cpu_target().model)
        except Exception as exc:  # a bad config fails the CPU build below the same way, with its own message
            if build == "meta":
                raise CkptError(f"cannot build {path} with parameters on meta: {type(exc).__name__}: {exc}") \
                    from exc
            note = (f"target built on the CPU: building it with parameters on meta failed "
                    f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
    if target is None:
        target = cpu_target()
        if note:
            from ckpttool.report.progress import warn

            warn(note)
        target.notes, target.build = [note] if note else [], "cpu"
    target.cfg_options = options
    return target


def _module_target(make, kind, spec, seed, init):
    import torch

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = make()
        if not isinstance(model, torch.nn.Module):
            raise CkptError(f"target {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
        if init:
            from ckpttool.integrations.openmmlab import init_weights

            init_weights(model)
    return ModuleTarget(model, kind, spec)


def _call_factory(spec: str, project_root=None):
    module_name, _, attr = spec.partition(":")
    from ckpttool.integrations.openmmlab import import_paths

    try:
        with import_paths(project_root):  # like `python -m`, let a factory in the working directory be found
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CkptError(f"cannot import the factory module {module_name!r}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CkptError(f"{module_name!r} has no {attr!r}")
    if not callable(fn):
        raise CkptError(f"{spec} is not callable")
    try:
        return fn()
    except CkptError:
        raise
    except Exception as exc:
        raise CkptError(f"the factory {spec} failed: {type(exc).__name__}: {exc}") from exc
