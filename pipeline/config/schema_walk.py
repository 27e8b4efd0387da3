"""Find which keys a config section accepts at a given key path (for 'did you mean' hints)."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined


def _candidates(annotation: Any) -> list[Any]:
    """Unwrap Annotated / Optional / Union / list[...] down to the possible item types."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _candidates(arg)]
    if origin in (list, tuple, set):
        return [c for arg in typing.get_args(annotation) for c in _candidates(arg)]
    return [annotation]


def _model_for(annotation: Any, raw: Any) -> type[BaseModel] | None:
    models = [c for c in _candidates(annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(models) > 1 and isinstance(raw, dict):  # a discriminated union: pick by its 'type'
        for model in models:
            tag = model.model_fields.get("type")
            if tag is not None and raw.get("type") in typing.get_args(tag.annotation):
                return model
        return None
    return models[0] if models else None


def _section_at(root: type[BaseModel], path: tuple, data: Any) -> type[BaseModel] | None:
    """The config model that holds the keys found at ``path`` (a cleaned pydantic location)."""
    model: type[BaseModel] | None = root
    node = data
    annotation: Any = None
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            model = _model_for(annotation, node)
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
        model = _model_for(annotation, node)
    return model


def allowed_keys(root: type[BaseModel], path: tuple, data: Any) -> list[str]:
    """Field names of the section at ``path``, or [] if the path leads nowhere known."""
    model = _section_at(root, path, data)
    return list(model.model_fields) if model is not None else []


def default_at(root: type[BaseModel], path: tuple, data: Any) -> Any:
    """The default of the field at ``path`` as plain data (so an override can reach into a
    default list or section the file never wrote), or None when there is none."""
    model = _section_at(root, path[:-1], data)
    if model is None or not isinstance(path[-1], str) or path[-1] not in model.model_fields:
        return None
    default = model.model_fields[path[-1]].get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined:
        return None
    return TypeAdapter(Any).dump_python(default, mode="json")
