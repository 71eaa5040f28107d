"""The field vocabulary of architecture tokens: keys, value syntax, checks and canonical number text."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ..errors import ArchError

ACTIVATIONS = ("relu", "relu6", "hswish", "swish")
"""Activations a stem, block or head may use; ``relu`` is the default and is never written."""

_INT = re.compile(r"^\d+$")
_NUM = re.compile(r"^\d+(\.\d+)?$")


def positive_int(name: str, value: object) -> int:
    """`value` as an int >= 1 (bools and non-integral numbers are refused)."""
    if isinstance(value, bool):
        raise ArchError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ArchError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ArchError(f"{name} must be a positive integer, got {value!r}")
    return number


def optional_positive_int(name: str, value: object) -> int | None:
    return None if value is None else positive_int(name, value)


def odd_kernel(value: object) -> int:
    kernel = positive_int("kernel", value)
    if kernel % 2 == 0:
        raise ArchError(f"kernel must be odd, got {kernel}")
    return kernel


def finite_float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ArchError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ArchError(f"{name} must be finite, got {value!r}")
    return number


def positive_float(name: str, value: object) -> float:
    number = finite_float(name, value)
    if number <= 0:
        raise ArchError(f"{name} must be positive, got {number}")
    return number


def unit_ratio(name: str, value: object) -> float:
    number = finite_float(name, value)
    if not 0.0 <= number <= 1.0:
        raise ArchError(f"{name} must be in [0, 1], got {number}")
    return number


def flag(name: str, value: object) -> bool:
    """`value` as a bool: True/False or the integers 1/0 (the token writes ``r1`` / ``r0``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ArchError(f"{name} must be 0 or 1, got {value!r}")


def activation(value: object) -> str:
    if value not in ACTIVATIONS:
        raise ArchError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
    return value  # type: ignore[return-value]


def format_number(value: float) -> str:
    """Shortest decimal text of a number, no exponent and no trailing zeros (``6``, ``2.5``)."""
    # Decimal of the shortest repr never uses an exponent, whose '-' would split the layer list.
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True)
class FieldSyntax:
    """How one field key reads and writes its value; the same key means the same thing in every layer."""

    key: str
    name: str  # for error messages ("kernel", "se ratio")
    syntax: str  # "int", "num", "flag" or "act": what the raw text must look like
    check: Callable[[object], object]

    def parse(self, raw: str) -> object:
        if self.syntax == "act":
            return self.check(raw)
        if self.syntax == "flag":
            if raw not in ("0", "1"):
                raise ArchError(f"field {self.key!r} needs 0 or 1, got {raw!r}")
            return self.check(raw == "1")
        if self.syntax == "num":
            if not _NUM.match(raw):
                raise ArchError(f"field {self.key!r} needs a decimal number, got {raw!r}")
            return self.check(float(raw))
        if not _INT.match(raw):
            raise ArchError(f"field {self.key!r} needs a positive integer, got {raw!r}")
        return self.check(int(raw))

    def format(self, value: object) -> str:
        if self.syntax == "num":
            return f"{self.key}{format_number(value)}"  # type: ignore[arg-type]
        if self.syntax == "flag":
            return f"{self.key}{int(bool(value))}"
        return f"{self.key}{value}"


def _int(name: str) -> Callable[[object], object]:
    return lambda value: positive_int(name, value)


FIELDS: dict[str, FieldSyntax] = {
    field.key: field
    for field in (
        FieldSyntax("k", "kernel", "int", odd_kernel),
        FieldSyntax("e", "expansion", "num", lambda v: positive_float("expansion", v)),
        FieldSyntax("m", "mid channels", "int", _int("mid channels")),
        FieldSyntax("c", "channels", "int", _int("channels")),
        FieldSyntax("s", "stride", "int", _int("stride")),
        FieldSyntax("g", "groups", "int", _int("groups")),
        FieldSyntax("se", "se ratio", "num", lambda v: unit_ratio("se ratio", v)),
        FieldSyntax("sq", "squeeze channels", "int", _int("squeeze channels")),
        FieldSyntax("f", "fc channels", "int", _int("fc channels")),
        FieldSyntax("a", "activation", "act", activation),
        FieldSyntax("r", "residual", "flag", lambda v: flag("residual", v)),
    )
}
"""Every field key of the grammar. Layers say which keys they allow (see the kinds)."""

# Longest keys first, so that 'se0.25' is the SE ratio and not a stride 'e0.25'.
_KEY = re.compile("^(" + "|".join(sorted(FIELDS, key=len, reverse=True)) + ")(.+)$")


def split_field(part: str) -> tuple[str, str]:
    """``'se0.25'`` -> ``('se', '0.25')``; ArchError for text that starts with no known key."""
    match = _KEY.match(part)
    if not match:
        raise ArchError(f"unknown field {part!r}")
    return match.group(1), match.group(2)


def parse_fields(
    layer: str,
    parts: list[str],
    allowed: tuple[str, ...],
    required: tuple[str, ...] = (),
    one_of: tuple[tuple[tuple[str, ...], bool], ...] = (),
) -> dict[str, object]:
    """Fields of one layer token, each value checked as it is read.

    ``one_of`` lists key groups of which at most one may be given, and exactly one when the
    group's flag says it is required (``(("e", "m"), True)``: an expansion ratio or a mid width).
    """
    fields: dict[str, object] = {}
    for part in parts:
        key, raw = split_field(part)
        if key not in allowed:
            raise ArchError(f"field {key!r} is not allowed in a {layer!r} layer")
        if key in fields:
            raise ArchError(f"field {key!r} given twice")
        fields[key] = FIELDS[key].parse(raw)
    missing = [key for key in required if key not in fields]
    if missing:
        raise ArchError(f"missing field(s) {', '.join(missing)}")
    for keys, needed in one_of:
        given = [key for key in keys if key in fields]
        if len(given) > 1 or (needed and not given):
            described = " or ".join(f"{key}<{FIELDS[key].name}>" for key in keys)
            raise ArchError(f"give {'exactly' if needed else 'at most'} one of {described}")
    return fields


def format_token(layer: str, fields: list[tuple[str, object]]) -> str:
    """Canonical token: the layer name, then each given field in the order listed."""
    return "_".join([layer, *(FIELDS[key].format(value) for key, value in fields)])
