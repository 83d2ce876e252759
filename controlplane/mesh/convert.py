"""Schema object -> model dataclass, field by field, for the leaf settings.

Most of a DestinationRule's traffic policy (and parts of a VirtualService route) carry over
from the validated pydantic object to the model unchanged: same attribute names, lists become
tuples and nested objects become the nested dataclass the model field names. Spelling that out
per class would be a hundred lines of ``x=spec.x``; this walks the model's own type hints
instead, so a field added to both sides carries over and a field only in the schema
(``Unsupported`` ones) is left behind.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel

from controlplane.mesh import model

T = TypeVar("T")


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(model))


def _dataclass_in(hint: Any) -> type[Any] | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = _dataclass_in(arg)
            if found is not None:
                return found
    return None


def to_model(cls: type[T], source: BaseModel) -> T:
    """Build the model dataclass ``cls`` from the schema object ``source``."""
    hints = _hints(cls)  # type: ignore[arg-type]  # classes are hashable
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not hasattr(source, f.name):
            continue  # model-only field (filled by the loader) keeps its default
        value = getattr(source, f.name)
        if isinstance(value, BaseModel):
            target = _dataclass_in(hints[f.name])
            if target is None:
                raise TypeError(f"{cls.__name__}.{f.name}: no dataclass for {type(value)}")
            value = to_model(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)
