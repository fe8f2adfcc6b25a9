"""Build a model without parameter memory: parameters and buffers go to the meta device as they are registered.

Not `with torch.device("meta")`: that sends every tensor a constructor makes to meta, and constructors that read
values (`.item()` on a `torch.linspace` drop-path schedule, as Swin's does) fail. Here only what is registered as a
parameter or buffer moves to meta; everything else a constructor computes stays on the CPU.

Graft builds twice (`MetaBuild`):
1. `layout()`: parameters and buffers on meta, no initialisation: names, shapes, dtypes for the plan.
2. `materialise(keys, seed)`: the same constructor again under the same seed, keeping on the CPU only the tensors
   named in `keys` (those that receive no weights), then `init_weights()`. Random initialisers that hit a meta
   tensor are replayed on a CPU scratch tensor of the same shape, strides and dtype, so the CPU generator is
   consumed exactly as in a full CPU build: the kept tensors get the values a CPU build under that seed gives
   them (what training would start from), and the peak memory is one tensor, not the model. A meta value copied
   to the CPU (mmengine's init-info log does `param.data.mean().cpu()`) reads as zeros; a model whose
   initialisation really computes with values of tensors left on meta must be built with `--build cpu`.
"""
from __future__ import annotations

import contextlib

RANDOM_INPLACE = ("uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_",
                  "log_normal_")


@contextlib.contextmanager
def registration_on_meta(keep=None):
    """Inside the block, `register_parameter` / `register_buffer` put the tensor on the meta device, except the
    registrations whose running index (counted from 0 in registration order) is in `keep`. Yields the list of
    `(module, name)` registrations in order."""
    import torch
    from torch import nn

    order: list = []
    keep = keep or set()
    old_param, old_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(module, name, param):
        old_param(module, name, param)
        index = len(order)
        order.append((module, name))
        p = module._parameters.get(name)
        if p is not None and index not in keep and not p.is_meta:
            kwargs = dict(p.__dict__)
            kwargs["requires_grad"] = p.requires_grad
            module._parameters[name] = type(p)(p.to("meta"), **kwargs)

    def register_buffer(module, name, tensor, persistent=True):
        old_buffer(module, name, tensor, persistent=persistent)
        index = len(order)
        order.append((module, name))
        b = module._buffers.get(name)
        if b is not None and index not in keep and not b.is_meta:
            module._buffers[name] = b.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
    try:
        with torch.no_grad():
            yield order
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = old_param, old_buffer


def replay_random_on_meta():
    """A TorchDispatchMode: an in-place random op on a meta tensor runs on a fresh CPU tensor of the same shape,
    strides and dtype instead (then freed), so the random generator advances as if the tensor were real."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    buffers: dict = {}

    def scratch(t):
        """A CPU tensor like `t`: a view of one reused buffer per dtype (allocating and freeing one per tensor
        leaves the freed pages resident in glibc's heap)."""
        if not t.is_contiguous():
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
        buf = buffers.get(t.dtype)
        if buf is None or buf.numel() < t.numel():
            buffers[t.dtype] = buf = None
            buf = buffers[t.dtype] = torch.empty(t.numel(), dtype=t.dtype)
        return buf[: t.numel()].view(t.shape)

    class ReplayRandomOnMeta(TorchDispatchMode):
        def __exit__(self, *exc):
            buffers.clear()
            return super().__exit__(*exc)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.__name__.split(".")[0] in RANDOM_INPLACE and args and isinstance(args[0], torch.Tensor) \
                    and args[0].is_meta:
                t = args[0]
                func(scratch(t), *args[1:], **kwargs)
                return t
            if func is torch.ops.aten._to_copy.default and args and isinstance(args[0], torch.Tensor) \
                    and args[0].is_meta and str(kwargs.get("device", "meta")) != "meta":
                # a meta value copied out (mmengine's init_weights logs `param.data.mean().cpu()` to see which
                # parameters an initialiser changed): zeros; that bookkeeping is all it feeds
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            return func(*args, **kwargs)

    return ReplayRandomOnMeta()


def registration_index(model, order) -> dict:
    """{state_dict key: index of the registration that put it there (the last one of that module and name)}."""
    last = {}
    for i, (module, name) in enumerate(order):
        last[(id(module), name)] = i
    out = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for name in list(module._parameters) + list(module._buffers):
            if (id(module), name) in last:
                out[f"{mod_name}.{name}" if mod_name else name] = last[(id(module), name)]
    return out


class MetaBuild:
    """A model constructor (`make()`, e.g. an mmengine registry build) run on meta, then materialised in part."""

    def __init__(self, make, init=None):
        self.make, self.init = make, init

    def layout(self):
        """The model with every parameter and buffer on meta (no initialisation) and {key: registration index}."""
        with registration_on_meta() as order:
            model = self.make()
        self.index = registration_index(model, order)
        return model

    def materialise(self, keys, seed):
        """Build again under `seed` with only `keys` real (initialised as a CPU build initialises them); the rest
        on meta. Raises if the rebuild registers differently or a key is not a registered tensor."""
        import torch

        missing = [k for k in keys if k not in self.index]
        if missing:
            raise RuntimeError(f"{missing[0]} is not a registered parameter or buffer")
        keep = {self.index[k] for k in keys}
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            with replay_random_on_meta(), registration_on_meta(keep) as order:
                model = self.make()
                if self.init is not None:
                    self.init(model)
        if registration_index(model, order) != self.index:
            raise RuntimeError("the model registers its tensors differently when built again")
        return model
