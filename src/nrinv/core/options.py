"""Frozen option dataclasses that round-trip through JSON and reject unknown keys."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="Options")


class Options:
    """Mixin for frozen dataclasses: ``from_dict`` rejects unknown keys, ``to_dict`` is JSON-ready."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
        merged = dict(values or {})
        merged.update(overrides)
        unknown = sorted(set(merged) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown option(s) {', '.join(unknown)}; "
                f"valid options are: {', '.join(cls.field_names())}"
            )
        return cls(**merged)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: T, **changes: Any) -> T:
        return type(self).from_dict(self.to_dict(), **changes)
