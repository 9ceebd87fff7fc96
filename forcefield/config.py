"""Typed, validated configs shared by every recipe (pydantic models).

Every recipe's config subclasses :class:`Config`: unknown fields, values of the wrong type (a string where a
number belongs, a float where an integer belongs) and out-of-range values fail at construction, before any
work starts. :func:`config_error` turns pydantic's error into an :class:`~forcefield.errors.InputError` that
names the source (file), the section and the field.
"""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every recipe config: strict types, no unknown fields, checked on assignment too."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False)

    @classmethod
    def build(cls: type[C], data: dict[str, Any] | None = None, source: str = "config", section: str = "") -> C:
        """Validate ``data`` into this config; errors name ``source`` and ``section.field``."""
        try:
            return cls.model_validate(data or {})
        except ValidationError as e:
            raise config_error(e, source, section) from None

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed."""
        return type(self).build({**self.model_dump(), **changes}, source=type(self).__name__)


def config_error(e: ValidationError, source: str, section: str = "") -> InputError:
    """One readable message per wrong field: ``source: section.field = value: what was expected``."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        field = f"{section}.{loc}" if section and loc else (section or loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown field {field!r}")
        elif err["type"] == "missing":
            lines.append(f"{field}: required")
        else:
            lines.append(f"{field} = {err.get('input')!r}: {err['msg']}")
    return InputError(f"{source}: " + "; ".join(lines))
