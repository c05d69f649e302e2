"""Turning parameter validation failures into messages that name the valid range."""

from __future__ import annotations

from typing import Any, TypeVar

import annotated_types as at
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ParameterError(ValueError):
    """A simulation parameter is missing, malformed or out of its valid range."""


def _unit(name: str) -> str:
    for suffix, unit in (("_nm", " nm"), ("_us", " us"), ("_deg", " deg"), ("_pa", " pA"), ("_a2", " e/A^2")):
        if name.endswith(suffix):
            return unit
    return ""


def valid_range(model: type[BaseModel], name: str) -> str:
    """Human-readable valid range of field ``name`` of ``model``, e.g. ``"> 0 and <= 4096 nm"``."""
    field = model.model_fields[name]
    parts = []
    for m in field.metadata:
        for cls, op, attr in ((at.Gt, ">", "gt"), (at.Ge, ">=", "ge"), (at.Lt, "<", "lt"), (at.Le, "<=", "le")):
            if isinstance(m, cls):
                parts.append(f"{op} {getattr(m, attr):g}")
    return (" and ".join(parts) + _unit(name)) if parts else "a finite value"


def checked(model: type[M], **values: Any) -> M:
    """Build ``model`` from ``values``; on failure raise :class:`ParameterError` naming each bad field.

    Raises
    ------
    ParameterError
        With one line per invalid field: its name, its valid range and the value given.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            name = str(loc[0]) if loc else model.__name__
            if name in model.model_fields:
                given = values.get(name, "<missing>")
                lines.append(f"{name} must be {valid_range(model, name)} (got {given!r}): {err['msg']}")
            elif err["type"] == "extra_forbidden":
                lines.append(f"{name} is not a parameter of {model.__name__} (valid: {', '.join(model.model_fields)})")
            else:
                lines.append(f"{model.__name__}: {err['msg']}")
        raise ParameterError("; ".join(lines)) from None
