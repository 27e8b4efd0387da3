"""Find which keys a config section accepts at a given key path (for 'did you mean' hints)."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel


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


def allowed_keys(root: type[BaseModel], path: tuple, data: Any) -> list[str]:
    """Field names of the section at ``path`` (a cleaned pydantic location) or [] if unknown."""
    model: type[BaseModel] | None = root
    node = data
    annotation: Any = None
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            model = _model_for(annotation, node)
            continue
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
        model = _model_for(annotation, node)
    return list(model.model_fields) if model is not None else []
