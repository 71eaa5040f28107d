"""A device's latency at any channel count, fitted to its per-operator LUT: what MorphNet's latency
target prices channels with.

A LUT times the operators of a space at the widths the space offers; shrinking produces widths it
never timed (29 expanded channels where the space has 24 and 48). This model prices an operator
by what it computes and moves, with the device's own rates:

    op_ms = intercept[family] + per_mmac[family] * MACs / 1e6 + per_kact[family] * activation elements / 1e3

fitted by non-negative least squares to the LUT's entries (each less the runtime's per-call cost,
the LUT's `null` entry), per operator family (`Block.lut_family`: dense, depthwise; stem and head)
where a family has enough entries for its three coefficients, else with the rates of all
families pooled and the family's own intercept. A model's latency is the per-call cost plus its
operators'. Rates are non-negative, so a channel never costs less than nothing, and a width the
LUT did not time gets the rate its neighbours show. `fit_error` says how well it reproduces the
LUT it was fitted to; the source of its numbers is `estimated`. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .arch import Arch
from .arch.operators import Operator
from .errors import NasflowError
from .lut import LutKey, arch_op_details

MIN_FAMILY_ENTRIES = 6  # below this, a family borrows the pooled rates (three coefficients need spare points)
SOURCE = "estimated"


@dataclass(frozen=True)
class Rates:
    intercept_ms: float
    per_mmac_ms: float
    per_kact_ms: float

    def ms(self, op: Operator, batch_size: int) -> float:
        return self.intercept_ms + self.per_mmac_ms * op.macs * batch_size / 1e6 + self.per_kact_ms * op.activations * batch_size / 1e3


@dataclass(frozen=True)
class WidthLatencyModel:
    device: str
    null_ms: float
    rates: dict[str, Rates]
    pooled: Rates
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    batch_size: int = 1
    fit_error: float = float("nan")
    """Median relative error of the model on the LUT entries it was fitted to (per-call cost included)."""
    entries: int = 0
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def fit(cls, device: str, table: Mapping[LutKey, float], ops: Sequence[Operator], in_channels: int, num_classes: int,
            image_size, batch_size: int = 1) -> "WidthLatencyModel":
        """The model of `device` from its LUT `table` over the operators `ops` (the space's `lut_entries`)."""
        from scipy.optimize import nnls

        size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(n) for n in image_size)
        null = [table[op.lut_key] for op in ops if op.family == "null" and op.lut_key in table]
        null_ms = float(null[0]) if null else 0.0
        timed = [(op, float(table[op.lut_key])) for op in ops if op.family != "null" and op.lut_key in table]
        if len(timed) < 3:
            raise NasflowError(
                f"the latency LUT of {device} has {len(timed)} operator entries; a width-aware latency model needs at "
                "least 3 (build the LUT: profile.lut: true)"
            )
        families = sorted({op.family for op, _ in timed})
        y = np.array([max(ms - null_ms, 0.0) for _, ms in timed])
        work = np.array([[op.macs * batch_size / 1e6, op.activations * batch_size / 1e3] for op, _ in timed])
        onehot = np.array([[1.0 if op.family == f else 0.0 for f in families] for op, _ in timed])
        coef, _ = nnls(np.hstack([work, onehot]), y)
        per_mmac, per_kact = float(coef[0]), float(coef[1])
        rates, notes = {}, []
        for j, family in enumerate(families):
            rows = onehot[:, j] == 1.0
            if rows.sum() >= MIN_FAMILY_ENTRIES:
                own, _ = nnls(np.hstack([np.ones((int(rows.sum()), 1)), work[rows]]), y[rows])
                rates[family] = Rates(float(own[0]), float(own[1]), float(own[2]))
            else:
                rates[family] = Rates(float(coef[2 + j]), per_mmac, per_kact)
                notes.append(f"{family}: {int(rows.sum())} LUT entries, the pooled rates")
        model = cls(device, null_ms, rates, Rates(0.0, per_mmac, per_kact), in_channels, num_classes, size, batch_size,
                    entries=len(timed), notes=tuple(notes))
        predicted = np.array([null_ms + model.op_ms(op) for op, _ in timed])
        actual = np.array([ms for _, ms in timed])
        error = float(np.median(np.abs(predicted - actual) / np.maximum(actual, 1e-9)))
        return cls(device, null_ms, rates, model.pooled, in_channels, num_classes, size, batch_size, error, len(timed), tuple(notes))

    def op_ms(self, op: Operator) -> float:
        """One operator's latency less the per-call cost; a family the LUT never held takes the pooled rates."""
        return max(self.rates.get(op.family, self.pooled).ms(op, self.batch_size), 0.0)

    def predict(self, arch: Arch) -> float:
        """The latency (ms) of `arch`: the per-call cost plus each operator's."""
        ops = arch_op_details(arch, self.in_channels, self.num_classes, self.image_size, self.batch_size)
        return self.null_ms + sum(self.op_ms(op) for op in ops)

    def describe(self) -> str:
        return (f"{self.device}: fitted to {self.entries} LUT entries (median error {100 * self.fit_error:.1f} %), "
                f"per-call {self.null_ms:.4g} ms" + (f"; {'; '.join(self.notes)}" if self.notes else ""))
