"""The typed results of the commands' library calls (``InspectReport``, ``DiffReport``, ``GraftReport``,
``AverageReport``, ``PublishReport``, ``RunsReport``, ``ExplainReport``).

Each is a frozen dataclass whose JSON fields are the keys of the command's ``--format json`` object, declared in that
object's order; ``to_dict()`` is that object, exactly (same keys, same values, same order). Keys a call does not
produce (``keys`` without ``keys=True``, ``config`` without ``config=True`` …) are left out of it and read as None.
Fields declared with :func:`extra` (``failed``: why a requested check failed) are attributes only, not JSON.

For code written against the plain dicts these calls used to return, ``report["key"]``, ``report.get("key")`` and
``"key" in report`` read the JSON object (read-only: a report is never edited; ``updated(**changes)`` makes a new
one, as ``dict.update`` would, so existing keys keep their place and new ones come last).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields


def extra(default=None):
    """A field that is an attribute of the report but not part of its JSON object."""
    return field(default=default, metadata={"json": False})


@dataclass(frozen=True)
class Report:
    """Base of the typed results; see the module docstring."""

    @classmethod
    def json_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("json", True))

    @classmethod
    def from_dict(cls, d: dict, **extras):
        """The report of a JSON object ``d`` (every key a JSON field of ``cls``), with its key order, plus
        ``extras`` (non-JSON fields)."""
        json_names = cls.json_fields()
        unknown = [k for k in d if k not in json_names]
        if unknown or any(k in json_names for k in extras):
            raise TypeError(f"{cls.__name__}: not JSON fields {unknown}, or JSON fields among the extras "
                            f"{sorted(extras)}")
        report = cls(**d, **extras)
        object.__setattr__(report, "_order", tuple(d))
        return report

    def to_dict(self) -> dict:
        """The ``--format json`` object: the keys the call produced, in its order (a report built directly, not
        by ``from_dict``: every required JSON field and the optional ones that hold a value)."""
        order = self.__dict__.get("_order")
        if order is None:
            order = [f.name for f in fields(self) if f.metadata.get("json", True)
                     and (f.default is MISSING and f.default_factory is MISSING or getattr(self, f.name) is not None)]
        return {k: getattr(self, k) for k in order}

    def updated(self, **changes):
        """A new report: this one's JSON object updated with ``changes`` (dict.update order), extras kept."""
        keep = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("json", True)}
        json_changes = {k: v for k, v in changes.items() if k in self.json_fields()}
        keep.update((k, v) for k, v in changes.items() if k not in json_changes)
        return type(self).from_dict({**self.to_dict(), **json_changes}, **keep)

    @property
    def passed(self) -> bool:
        """False when a requested check failed (``failed`` says why)."""
        return getattr(self, "failed", None) is None

    # read-only mapping access, for code written against the plain dicts (not iterable: use to_dict())
    __iter__ = None

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.to_dict()
