"""Latency predictors built on a per-operator LUT, their evaluation, and a drift monitor.

* `LutSumPredictor` is FBNet's model: an architecture's latency is the sum of the LUT entries of
  its operators. It misses what only the whole model shows: the fixed per-call overhead of the
  runtime (paid once per model, but once per *operator* in the LUT), operator fusion across
  blocks and cache effects.
* `CalibratedLutPredictor` corrects the sum with a small linear model fitted on a few (10-20)
  whole models measured on the device, as nn-Meter does with measured kernels. Its prediction is

      latency = overhead
              + a_fixed * LUT(stem + head) + a_dw * LUT(depthwise-family blocks)
              + a_expand * LUT(dense-family blocks)
              + per_layer * operators executed
              + per_mmac * MACs / 1e6 + per_kact * activation elements / 1e3

  A block's family is its kind's call (`Block.lut_family`): "dense" when an expansion or regular
  conv dominates it (``ir`` with an expansion conv, ``fir``, ``conv``), "depthwise" otherwise
  (``ir`` without one, ``ds``). Every coefficient has a unit and a meaning (ms per model, scale of the LUT entries of a family,
  ms per operator, ms per million MACs, ms per thousand activation elements read or written), and
  `explain(arch)` splits a prediction into those terms. The fit is ridge regression on relative
  errors *towards a physical prior*: the LUT sum with the runtime's per-call cost (the LUT's
  `null` entry, an identity model) taken out of every operator and counted once per model
  (LUT scales 1, per_layer = -null, MACs and activation terms 0; the overhead is not penalised).
  The ridge strength is chosen by leave-one-out cross-validation, so with few or noisy
  measurements the model stays at "overhead-corrected LUT sum + fitted overhead", and with
  informative ones it learns the corrections.
* `DriftMonitor` compares predictions with occasional measurements during a search and says when
  the predictor stopped matching the device (thermal throttling, another tenant, a changed runtime).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DeviceError, NasflowError
from .lut import LutKey, LutOp, arch_op_details, device_batch_size, fastest_of_passes, null_op
from .arch import Arch, format_arch, parse_arch
from .arch.builder import build_model

if TYPE_CHECKING:
    from .plugin_api import DeviceBackend, SearchSpace


class LutMissError(DeviceError):
    """The LUT has no entry for an operator the architecture executes."""


class PredictorError(NasflowError):
    """A predictor cannot be fitted or restored."""


def _as_arch(arch: Arch | str) -> Arch:
    return parse_arch(arch) if isinstance(arch, str) else arch


def _table_from_json(rows: Iterable[Sequence[Any]]) -> dict[LutKey, float]:
    return {(str(key), str(shape)): float(ms) for key, shape, ms in rows}


def _table_to_json(table: Mapping[LutKey, float]) -> list[list[Any]]:
    return [[key, shape, float(ms)] for (key, shape), ms in sorted(table.items())]


class _LutBased:
    """Shared plumbing: the LUT and the input geometry every prediction needs."""

    def __init__(
        self,
        table: Mapping[LutKey, float],
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int | Sequence[int] = 32,
        batch_size: int = 1,
    ):
        self.table = dict(table)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.image_size = image_size if isinstance(image_size, int) else tuple(int(n) for n in image_size)
        self.batch_size = int(batch_size)

    def ops(self, arch: Arch | str) -> list[LutOp]:
        return arch_op_details(_as_arch(arch), self.in_channels, self.num_classes, self.image_size, self.batch_size)

    def lookup(self, op: LutOp) -> float:
        try:
            return self.table[op.lut_key]
        except KeyError:
            raise LutMissError(
                f"the latency LUT has no entry for operator {op.key!r} at input {op.shape}; "
                f"(re)build the LUT for this space and device"
            ) from None

    def _geometry(self) -> dict[str, Any]:
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": size,
            "batch_size": self.batch_size,
        }


class LutSumPredictor(_LutBased):
    """FBNet: latency = sum of the LUT entries of the operators an architecture executes."""

    kind = "lut-sum"

    def predict(self, arch: Arch | str) -> float:
        return float(sum(self.lookup(op) for op in self.ops(arch)))

    def predict_many(self, archs: Iterable[Arch | str]) -> list[float]:
        return [self.predict(a) for a in archs]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._geometry(), "table": _table_to_json(self.table)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], table: Mapping[LutKey, float] | None = None) -> "LutSumPredictor":
        return cls(
            table if table is not None else _table_from_json(data["table"]),
            data["in_channels"],
            data["num_classes"],
            data["image_size"],
            data.get("batch_size", 1),
        )


# ---------------------------------------------------------------- calibrated predictor

FEATURES: tuple[tuple[str, str, float], ...] = (
    # name, unit of its coefficient, prior coefficient (overhead and operators: +-null, set per LUT)
    ("overhead", "ms per model", 0.0),
    ("lut_fixed_ms", "x LUT(stem + head)", 1.0),
    ("lut_dw_ms", "x LUT(depthwise-family blocks: no expansion conv)", 1.0),
    ("lut_expand_ms", "x LUT(dense-family blocks: expansion or regular conv)", 1.0),
    ("operators", "ms per operator", 0.0),
    ("mmacs", "ms per million MACs", 0.0),
    ("kact", "ms per thousand activation elements", 0.0),
)
FEATURE_NAMES = tuple(name for name, _, _ in FEATURES)
_BASE_PRIOR = np.array([prior for _, _, prior in FEATURES])
_UNPENALISED = np.array([name == "overhead" for name in FEATURE_NAMES])
LAMBDAS = tuple(float(x) for x in np.logspace(-4, 3, 22))
_FAMILY_FEATURE = {"stem": "lut_fixed_ms", "head": "lut_fixed_ms", "depthwise": "lut_dw_ms", "dense": "lut_expand_ms"}
MIN_PREDICTION_MS = 1e-4


class CalibratedLutPredictor(_LutBased):
    """LUT sum corrected by a linear model fitted on measured whole models (see the module docs)."""

    kind = "calibrated-lut"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        null = null_op(self.in_channels, self.image_size, self.batch_size)
        self.null_ms = float(self.table.get(null.lut_key, 0.0))
        self.prior = _BASE_PRIOR.copy()
        self.prior[FEATURE_NAMES.index("overhead")] = self.null_ms
        self.prior[FEATURE_NAMES.index("operators")] = -self.null_ms
        self.coef = self.prior.copy()
        self.ridge = math.inf  # strength of the pull towards the prior (inf: not fitted)
        self.fit_info: dict[str, Any] = {}

    # --- features

    def features(self, arch: Arch | str) -> np.ndarray:
        """Feature vector of one architecture, in FEATURE_NAMES order."""
        values = dict.fromkeys(FEATURE_NAMES, 0.0)
        values["overhead"] = 1.0
        for op in self.ops(arch):
            values[_FAMILY_FEATURE[op.family]] += self.lookup(op)
            values["operators"] += 1
            values["mmacs"] += op.macs * self.batch_size / 1e6
            values["kact"] += op.activations * self.batch_size / 1e3
        return np.array([values[name] for name in FEATURE_NAMES])

    def _matrix(self, archs: Sequence[Arch | str]) -> np.ndarray:
        return np.vstack([self.features(a) for a in archs])

    # --- fitting

    def fit(self, archs: Sequence[Arch | str], measured_ms: Sequence[float]) -> "CalibratedLutPredictor":
        """Fit on whole models measured on the device (at least 3; 10-20 recommended)."""
        y = np.asarray(measured_ms, dtype=float)
        if len(archs) != y.size:
            raise PredictorError(f"got {len(archs)} architectures but {y.size} measurements")
        if y.size < 3:
            raise PredictorError(f"calibrating needs at least 3 measured models, got {y.size}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise PredictorError("measured latencies must be positive and finite")
        X = self._matrix(archs)
        # Relative errors: each row divided by its latency, so fast and slow models count alike.
        A, target = X / y[:, None], (y - X @ self.prior) / y
        scale = np.sqrt(np.mean(A**2, axis=0))
        scale[scale == 0] = 1.0
        penalty = np.where(_UNPENALISED, 1e-9, 1.0) * scale**2
        # One-standard-error rule: the strongest pull towards the prior whose leave-one-out error
        # is within one standard error of the best, so noise does not buy extra coefficients.
        fits = [(lam, *_ridge_loo(A, target, lam * penalty)) for lam in LAMBDAS]
        best = min(fits, key=lambda f: np.mean(f[2]))
        limit = np.mean(best[2]) + np.std(best[2], ddof=1) / np.sqrt(y.size)
        lam, delta, sq = max((f for f in fits if np.mean(f[2]) <= limit), key=lambda f: f[0])
        loo = np.sqrt(np.mean(sq))
        self.coef, self.ridge = self.prior + delta, lam
        lut_sum = X[:, [FEATURE_NAMES.index(n) for n in FEATURE_NAMES if n.startswith("lut_")]].sum(axis=1)
        self.fit_info = {
            "n": int(y.size),
            "null_ms": self.null_ms,
            "loo_rel_rmse": float(loo),
            "lut_sum_rel_rmse": float(np.sqrt(np.mean(((y - lut_sum) / y) ** 2))),
            "prior_rel_rmse": float(np.sqrt(np.mean(target**2))),
            "prior_plus_overhead_rel_rmse": float(_fit_intercept_only(A, target)),
            "train_rel_rmse": float(np.sqrt(np.mean((target - A @ delta) ** 2))),
        }
        return self

    # --- predicting

    def predict(self, arch: Arch | str) -> float:
        return float(max(self.features(arch) @ self.coef, MIN_PREDICTION_MS))

    def predict_many(self, archs: Iterable[Arch | str]) -> list[float]:
        return [self.predict(a) for a in archs]

    @property
    def coefficients(self) -> dict[str, float]:
        return {name: float(c) for name, c in zip(FEATURE_NAMES, self.coef)}

    @property
    def overhead_ms(self) -> float:
        """Fitted fixed per-model cost, ms."""
        return self.coefficients["overhead"]

    def explain(self, arch: Arch | str) -> dict[str, float]:
        """Contribution of every term to the prediction, ms (they add up to `predict` unless floored)."""
        return {name: float(v * c) for name, v, c in zip(FEATURE_NAMES, self.features(arch), self.coef)}

    def describe(self) -> str:
        """One line per coefficient, with its unit."""
        return "\n".join(f"{name:14s} {c: .6g}  ({unit})" for (name, unit, _), c in zip(FEATURES, self.coef))

    # --- storage

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": 1,
            **self._geometry(),
            "features": list(FEATURE_NAMES),
            "coefficients": self.coefficients,
            "ridge": None if math.isinf(self.ridge) else float(self.ridge),
            "fit": dict(self.fit_info),
            "table": _table_to_json(self.table),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], table: Mapping[LutKey, float] | None = None
    ) -> "CalibratedLutPredictor":
        if data.get("kind") != cls.kind:
            raise PredictorError(f"not a {cls.kind} predictor: kind {data.get('kind')!r}")
        coefficients = data["coefficients"]
        unknown = set(coefficients) - set(FEATURE_NAMES)
        if unknown:
            raise PredictorError(f"unknown predictor feature(s): {', '.join(sorted(unknown))}")
        pred = cls(
            table if table is not None else _table_from_json(data["table"]),
            data["in_channels"],
            data["num_classes"],
            data["image_size"],
            data.get("batch_size", 1),
        )
        pred.coef = np.array([float(coefficients.get(name, p)) for name, p in zip(FEATURE_NAMES, pred.prior)])
        pred.ridge = math.inf if data.get("ridge") is None else float(data["ridge"])
        pred.fit_info = dict(data.get("fit", {}))
        return pred


def _ridge_loo(A: np.ndarray, b: np.ndarray, penalty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution of min |b - A d|^2 + sum(penalty * d^2) and its squared leave-one-out residuals."""
    gram = A.T @ A + np.diag(penalty)
    inverse = np.linalg.pinv(gram)
    delta = inverse @ A.T @ b
    hat = np.einsum("ij,jk,ik->i", A, inverse, A)
    residual = (b - A @ delta) / np.clip(1.0 - hat, 1e-6, None)
    return delta, residual**2


def _fit_intercept_only(A: np.ndarray, b: np.ndarray) -> float:
    """Relative RMSE of 'LUT sum + fitted constant overhead' (the simplest correction)."""
    col = A[:, 0]
    c = float(col @ b / (col @ col))
    return float(np.sqrt(np.mean((b - c * col) ** 2)))


# ---------------------------------------------------------------- calibration data


def measure_archs(
    device: "DeviceBackend",
    archs: Sequence[Arch | str],
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    passes: int = 1,
) -> list[float]:
    """Median latency (ms) of each whole architecture on the device, the fastest of `passes`."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shape = (device_batch_size(device), in_channels, *size)
    jobs = [(build_model(_as_arch(arch), in_channels, num_classes), shape) for arch in archs]
    return [float(m.stats.median_ms) for m in fastest_of_passes(device, jobs, passes, progress)]


def calibration_archs(
    space: "SearchSpace", lut_sum: LutSumPredictor, n: int = 12, seed: int = 0, pool: int = 400
) -> list[Arch]:
    """`n` distinct architectures spread evenly over the space's LUT-latency range.

    Draws up to `pool` random genomes, orders the distinct ones by LUT sum and takes evenly
    spaced ranks (fastest and slowest included), so the fit sees the whole range it must cover.
    """
    rng = random.Random(seed)
    seen: dict[str, Arch] = {}
    for _ in range(pool):
        arch = space.to_arch(space.sample(rng))
        seen.setdefault(format_arch(arch), arch)
    ranked = sorted(seen.values(), key=lambda a: (lut_sum.predict(a), format_arch(a)))
    if len(ranked) <= n:
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [ranked[i] for i in picks]


def calibrate(
    device: "DeviceBackend",
    space: "SearchSpace",
    table: Mapping[LutKey, float],
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    n: int = 12,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    passes: int = 1,
) -> tuple[CalibratedLutPredictor, list[Arch], list[float]]:
    """Measure `n` whole models spread over the space (fastest of `passes`) and fit a CalibratedLutPredictor."""
    geometry = (in_channels, num_classes, image_size, device_batch_size(device))
    archs = calibration_archs(space, LutSumPredictor(table, *geometry), n=n, seed=seed)
    measured = measure_archs(device, archs, in_channels, num_classes, image_size, progress, passes)
    return CalibratedLutPredictor(table, *geometry).fit(archs, measured), archs, measured


# ---------------------------------------------------------------- evaluation and drift


def evaluate(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Accuracy of predicted latencies against measured ones.

    within_10pct: share of predictions within 10 % of the measurement; rmse_ms; kendall_tau:
    rank agreement (what a search needs most); mape: mean absolute relative error (a fraction).
    """
    from scipy.stats import kendalltau

    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1:
        raise PredictorError(f"need two equally long lists, got {p.shape} and {m.shape}")
    if p.size == 0:
        raise PredictorError("nothing to evaluate")
    rel = np.abs(p - m) / m
    tau = float(kendalltau(p, m).statistic) if p.size > 1 else math.nan
    return {
        "n": int(p.size),
        "within_10pct": float(np.mean(rel <= 0.10)),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "kendall_tau": tau,
        "mape": float(np.mean(rel)),
    }


class DriftMonitor:
    """Median relative error of the last `window` (prediction, measurement) pairs.

    `drifting` turns true once at least `min_observations` pairs are in and that median exceeds
    `threshold`; the search should then warn, measure more, or re-calibrate.
    """

    def __init__(self, threshold: float = 0.10, window: int = 20, min_observations: int = 5):
        if threshold <= 0 or window < 1 or min_observations < 1:
            raise PredictorError("DriftMonitor needs threshold > 0, window >= 1 and min_observations >= 1")
        self.threshold = float(threshold)
        self.window = int(window)
        self.min_observations = min(int(min_observations), self.window)
        self._ratios: deque[float] = deque(maxlen=self.window)

    def observe(self, predicted_ms: float, measured_ms: float) -> bool:
        """Record one pair; returns `drifting` after it."""
        if not (measured_ms > 0 and math.isfinite(measured_ms) and math.isfinite(predicted_ms)):
            raise PredictorError(f"bad pair for drift check: predicted {predicted_ms}, measured {measured_ms}")
        self._ratios.append(predicted_ms / measured_ms)
        return self.drifting

    def reset(self) -> None:
        self._ratios.clear()

    @property
    def count(self) -> int:
        return len(self._ratios)

    @property
    def error(self) -> float:
        """Median |predicted - measured| / measured over the window (nan before any pair)."""
        if not self._ratios:
            return math.nan
        return float(np.median(np.abs(np.array(self._ratios) - 1.0)))

    @property
    def bias(self) -> float:
        """Median predicted / measured - 1: positive when the predictor overestimates."""
        if not self._ratios:
            return math.nan
        return float(np.median(np.array(self._ratios)) - 1.0)

    @property
    def drifting(self) -> bool:
        return self.count >= self.min_observations and self.error > self.threshold
