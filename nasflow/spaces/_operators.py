"""Collecting the distinct LUT operators of a space (the first one of each key and shape is kept)."""

from __future__ import annotations

from ..arch.operators import LutKey, Operator


class OperatorSet:
    """Operators in first-seen order, one per (key, input shape)."""

    def __init__(self) -> None:
        self._ops: dict[LutKey, Operator] = {}

    def add(self, op: Operator | None) -> None:
        if op is not None:
            self._ops.setdefault(op.lut_key, op)

    def operators(self) -> list[Operator]:
        return list(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)
