"""Frozen option dataclasses that round-trip through JSON and reject unknown keys."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, TypeVar

from ..errors import InputError

T = TypeVar("T", bound="Options")

#: the network precisions a user may ask for, by name ("auto": the model family's choice for the device;
#: ``nrinv.loading.resolve_dtype``); the one list the CLI, the app and loading read
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


def parse_key_values(items: Any, what: str = "an option") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}``, each value read as JSON (``0.01``, ``true``, ``[1, 2]``)
    or else kept as a string; the one parser of the CLI's ``--option`` and the bench's ``gnri[lam=0.01]``.
    A malformed item raises ``InputError``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise InputError(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


class Options:
    """Mixin for frozen dataclasses: ``from_dict`` rejects unknown keys and values of the wrong kind
    (``InputError``: options are what a user passes), ``to_dict`` is JSON-ready."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
        merged = dict(values or {})
        merged.update(overrides)
        unknown = sorted(set(merged) - set(cls.field_names()))
        if unknown:
            raise InputError(
                f"{cls.__name__} got unknown option(s) {', '.join(unknown)}; "
                f"valid options are: {', '.join(cls.field_names())}"
            )
        _check_numbers(cls, merged)
        return cls(**merged)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: T, **changes: Any) -> T:
        return type(self).from_dict(self.to_dict(), **changes)


def _check_numbers(cls: type, values: Mapping[str, Any]) -> None:
    """Fields declared ``int`` or ``float`` (optionally ``Optional``) get finite numbers: a string or an
    infinity (``--option mixing=inf``) is refused by name instead of failing in a comparison."""
    import math

    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in values:
            continue
        kind = str(f.type).replace("Optional[", "").replace("]", "").replace(" | None", "").strip()
        if kind not in ("int", "float"):
            continue
        value = values[f.name]
        if value is None and ("Optional" in str(f.type) or "None" in str(f.type)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"option {f.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"option {f.name} must be a finite number, got {value!r}")
        if kind == "int" and not float(value).is_integer():
            raise InputError(f"option {f.name} must be a whole number, got {value!r}")
