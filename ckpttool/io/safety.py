"""What `ckpt` may say about a file, and when commands refuse it.

The verdict comes from the restricted unpickler's `Judge` (see `unpickle` and the allow-list in `allowlist`):
- **data**: every global the file names is on the allow-list and used only as its entry allows;
- **not verified**: besides those, classes outside the list that are only instantiated or referenced (torch.load would
  import their modules and run their own `__new__` / `__setstate__`): listed with a warning; commands proceed unless
  `--strict`;
- **code**: a call of anything outside the list, an attribute chain through it, or a code container (TorchScript):
  `inspect` shows DANGER; every other command refuses.

The policy (`--allow-global`, `--strict`) is set per call (`load(..., allow_globals=..., strict=...)`) or for a
block of work (`with policy(...)`, which the CLI uses); `CKPT_ALLOW_GLOBALS` (comma-separated) adds to it.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

from ckpttool.io import allowlist as AL

ENV_ALLOW = "CKPT_ALLOW_GLOBALS"


@dataclass(frozen=True)
class Policy:
    allow_globals: tuple = ()
    strict: bool = False

    def allowlist(self, base=None):
        return AL.extended(self.allow_globals, base) if self.allow_globals else (AL.ALLOWLIST if base is None
                                                                                  else base)


_POLICY: contextvars.ContextVar = contextvars.ContextVar("ckpt_safety_policy", default=None)


def _env_globals() -> tuple:
    return tuple(n.strip() for n in os.environ.get(ENV_ALLOW, "").split(",") if n.strip())


def current() -> Policy:
    p = _POLICY.get()
    return p if p is not None else Policy(_env_globals(), False)


@contextlib.contextmanager
def policy(allow_globals=(), strict: bool = False):
    """Every `load` inside the block uses these (plus CKPT_ALLOW_GLOBALS)."""
    names = tuple(dict.fromkeys((*_env_globals(), *allow_globals)))
    token = _POLICY.set(Policy(names, strict))
    try:
        yield
    finally:
        _POLICY.reset(token)


def _names(uses: list[dict], verdict: str) -> list[str]:
    return sorted({u["name"] for u in uses if u["verdict"] == verdict})


def summary(verdict: str, uses: list[dict]) -> str:
    """One line that says what torch.load would do with the file; never 'no code runs' unless it is data."""
    if verdict == "data":
        n = len({u["name"] for u in uses})
        return (f"data: all {n} globals it names are on the allow-list and used as allowed; loading it runs no "
                "code from the file" if n else "data: it names no globals; loading it runs no code from the file")
    if verdict == "not verified":
        names = _names(uses, "not verified")
        return (f"not verified: torch.load would import {_few(names)} and run their own __new__/__setstate__ code, "
                "which ckpt did not check (ckpt ran nothing); --strict refuses such files, --allow-global NAME "
                "accepts a class you trust")
    names = _names(uses, "code")
    return (f"DANGER: torch.load(weights_only=False) would run code: {_few(names)}; ckpt ran nothing; every command "
            "but inspect refuses this file")


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
