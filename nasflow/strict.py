"""One pydantic base for everything a user writes in a spec (sections, plugin options): nothing is coerced."""

from __future__ import annotations

import types
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class StrictModel(BaseModel):
    """Unknown keys are errors, values are immutable, and numbers and booleans are taken as written.

    Strict mode alone would refuse YAML's strings for `Path` fields and would take `true` for a
    `Literal[1, 2]` (True == 1 in Python); the before-validator below fixes both, for every field
    of every subclass, so new fields need no annotation of their own. `float` fields take YAML's
    integers (strict mode allows int -> float); `int` fields refuse `2.5`, `"3"` and `true`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        return value if field is None else _fit(value, field.annotation)


def _is_path_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, PurePath)


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(choice, bool) for choice in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_admits_bool(arm) for arm in get_args(annotation))
    return False


def _fit(value: Any, annotation: Any) -> Any:
    """`value` with strings made paths where the annotation wants a path; a bool for a Literal number refused."""
    origin = get_origin(annotation)
    if _is_path_type(annotation):
        return annotation(value) if isinstance(value, str) else value
    if origin is Literal:
        if isinstance(value, bool) and not _admits_bool(annotation):
            choices = [repr(choice) for choice in get_args(annotation)]
            choices = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
            raise ValueError(f"Input should be {choices}, not {str(value).lower()}")
        return value
    if origin in (Union, types.UnionType):
        arms = [arm for arm in get_args(annotation) if arm is not type(None)]
        if isinstance(value, str) and any(_is_path_type(arm) for arm in arms) and str not in arms:
            return next(arm for arm in arms if _is_path_type(arm))(value)
        if isinstance(value, bool) and not _admits_bool(annotation) and any(get_origin(a) is Literal for a in arms):
            raise ValueError(f"Input should not be a boolean, got {str(value).lower()}")
        return value
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)):
        args = get_args(annotation)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return value  # fixed-shape tuples: left to pydantic
        item = args[0] if args else Any
        return type(value)(_fit(v, item) for v in value)
    return value


def _as_yaml(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_message(error: dict[str, Any]) -> str:
    """One pydantic error as a user reads it: what is wrong and, for a wrong type, what was written."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        message += f", got {_as_yaml(error.get('input'))}"
    return message
