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
  That ridge model is one of four forms (`FORMS`): the plain LUT sum, the sum times one fitted
  factor, the overhead-corrected sum plus a fitted constant, and the ridge model. Each is scored
  by its leave-one-out relative error on the calibration models (the ridge strength chosen again
  inside every fold, so the score is held out); the best wins, a simpler one on ties. At real
  sizes, where a few calibration models cannot pin seven coefficients, the fit therefore falls
  back to a simpler form instead of doing worse than the sum it corrects (`fit_info["form"]`).
  `calibrate` also checks that the calibration models were measured on an undisturbed machine
  (passes that agree; no model far slower than the LUT's timings of its operators predict) and
  measures again where not.
* `DriftMonitor` compares predictions with occasional measurements during a search and says when
  the predictor stopped matching the device (thermal throttling, another tenant, a changed runtime).
"""

from __future__ import annotations

import math
import random
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DeviceError, NasflowError
from .lut import AGREEMENT, LutKey, LutOp, PassResults, arch_op_details, device_batch_size, fastest_of_passes, measure_passes, null_op
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

    def op_ms(self, op: LutOp) -> float:
        """One operator's share of a prediction (a prediction is the sum over its operators)."""
        return float(self.lookup(op))

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
        total = np.zeros(len(FEATURE_NAMES))
        total[FEATURE_NAMES.index("overhead")] = 1.0
        for op in self.ops(arch):
            total += self.op_features(op)
        return total

    def op_features(self, op: LutOp) -> np.ndarray:
        """One operator's part of an architecture's feature vector (the overhead is no operator's)."""
        values = dict.fromkeys(FEATURE_NAMES, 0.0)
        values[_FAMILY_FEATURE[op.family]] = self.lookup(op)
        values["operators"] = 1.0
        values["mmacs"] = op.macs * self.batch_size / 1e6
        values["kact"] = op.activations * self.batch_size / 1e3
        return np.array([values[name] for name in FEATURE_NAMES])

    def op_ms(self, op: LutOp) -> float:
        """One operator's share of a prediction: a prediction is the fitted overhead plus the sum
        of its operators' shares (before the floor at MIN_PREDICTION_MS)."""
        return float(self.op_features(op) @ self.coef)

    def _matrix(self, archs: Sequence[Arch | str]) -> np.ndarray:
        return np.vstack([self.features(a) for a in archs])

    # --- fitting

    def fit(self, archs: Sequence[Arch | str], measured_ms: Sequence[float]) -> "CalibratedLutPredictor":
        """Fit on whole models measured on the device (at least 3; 10-20 recommended).

        Four forms compete on leave-one-out relative error (see FORMS); the ridge form's strength
        is chosen inside each held-out fold, so its error is a true held-out one. The best form
        wins and a simpler one wins ties: the fit is never worse than the plain LUT sum on the
        calibration models held out one at a time. `fit_info["form"]` says which was chosen.
        """
        y = np.asarray(measured_ms, dtype=float)
        if len(archs) != y.size:
            raise PredictorError(f"got {len(archs)} architectures but {y.size} measurements")
        if y.size < 3:
            raise PredictorError(f"calibrating needs at least 3 measured models, got {y.size}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise PredictorError("measured latencies must be positive and finite")
        X = self._matrix(archs)
        lut = np.array([name.startswith("lut_") for name in FEATURE_NAMES], dtype=float)
        overhead = np.array([name == "overhead" for name in FEATURE_NAMES], dtype=float)
        plain = lut.copy()  # the FBNet sum: every LUT entry at face value, nothing else
        # Each fixed form: (base coefficients, directions along which one scalar each is fitted).
        fixed = {
            "lut-sum": (plain, np.zeros((len(FEATURE_NAMES), 0))),
            "lut-sum-scaled": (np.zeros(len(FEATURE_NAMES)), lut[:, None]),
            "overhead-corrected": (self.prior, overhead[:, None]),
        }
        forms: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}  # name -> coef, held-out sq. errors, ridge
        for name, (base, directions) in fixed.items():
            forms[name] = (*_fit_directions(X, y, base, directions), math.inf)
        A, target = X / y[:, None], (y - X @ self.prior) / y
        scale = np.sqrt(np.mean(A**2, axis=0))
        scale[scale == 0] = 1.0
        penalty = np.where(_UNPENALISED, 1e-9, 1.0) * scale**2
        lam, delta, _ = _select_ridge(A, target, penalty)
        forms["ridge"] = (self.prior + delta, _nested_ridge_loo(A, target, penalty), lam)
        loo = {name: float(np.sqrt(np.mean(sq))) for name, (_, sq, _) in forms.items()}
        best = min(loo.values())
        chosen = next(name for name in FORMS if loo[name] <= best * (1 + 1e-9) + 1e-12)  # ties (to rounding): simpler
        self.coef, _, self.ridge = forms[chosen]
        self.coef = np.array(self.coef, dtype=float)
        train = (y - X @ self.coef) / y
        self.fit_info = {
            "n": int(y.size),
            "null_ms": self.null_ms,
            "form": chosen,
            "forms_loo_rel_rmse": loo,
            "loo_rel_rmse": loo[chosen],
            "lut_sum_rel_rmse": loo["lut-sum"],
            "prior_rel_rmse": float(np.sqrt(np.mean(target**2))),
            "prior_plus_overhead_rel_rmse": loo["overhead-corrected"],
            "train_rel_rmse": float(np.sqrt(np.mean(train**2))),
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


def _select_ridge(A: np.ndarray, b: np.ndarray, penalty: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Ridge strength by leave-one-out, one-standard-error rule: the strongest pull towards the
    prior whose error is within one standard error of the best, so noise buys no coefficients."""
    fits = [(lam, *_ridge_loo(A, b, lam * penalty)) for lam in LAMBDAS]
    best = min(fits, key=lambda f: np.mean(f[2]))
    limit = np.mean(best[2]) + np.std(best[2], ddof=1) / np.sqrt(b.size)
    return max((f for f in fits if np.mean(f[2]) <= limit), key=lambda f: f[0])


def _nested_ridge_loo(A: np.ndarray, b: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Squared held-out errors of the ridge form with its strength chosen without the held-out model."""
    out = np.empty(b.size)
    for i in range(b.size):
        keep = np.arange(b.size) != i
        _, delta, _ = _select_ridge(A[keep], b[keep], penalty)
        out[i] = (b[i] - A[i] @ delta) ** 2
    return out


def _fit_directions(
    X: np.ndarray, y: np.ndarray, base: np.ndarray, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients `base + directions @ d`, d fitted by least squares on relative errors, and the
    squared leave-one-out relative errors (a form with no direction has nothing fitted)."""
    target = (y - X @ base) / y
    if directions.shape[1] == 0:
        return base.copy(), target**2
    A = (X @ directions) / y[:, None]
    delta, sq = _ridge_loo(A, target, np.full(directions.shape[1], 1e-12))
    return base + directions @ delta, sq


FORMS = ("lut-sum", "lut-sum-scaled", "overhead-corrected", "ridge")
"""The calibrated predictor's candidate forms, simplest first (a tie goes to the simpler):
the plain LUT sum; the sum times one fitted factor; the sum with the runtime's per-call cost
counted once per model plus a fitted constant; and the full ridge model of the module docs."""


# ---------------------------------------------------------------- calibration data


def _arch_jobs(device: "DeviceBackend", archs: Sequence[Arch | str], in_channels: int, num_classes: int, image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shape = (device_batch_size(device), in_channels, *size)
    return [(build_model(_as_arch(arch), in_channels, num_classes), shape) for arch in archs]


def measure_archs(
    device: "DeviceBackend",
    archs: Sequence[Arch | str],
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    passes: int = 1,
    retries: int = 0,
) -> list[float]:
    """Median latency (ms) of each whole architecture on the device, the fastest of `passes`
    (and of up to `retries` more for models whose passes disagree, see `nasflow.lut.measure_passes`)."""
    jobs = _arch_jobs(device, archs, in_channels, num_classes, image_size)
    return [float(m.stats.median_ms) for m in fastest_of_passes(device, jobs, passes, progress, retries=retries)]


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


class CalibrationDisturbedError(PredictorError):
    """The calibration models could not be measured consistently: the machine was disturbed."""


class CalibrationDisturbedWarning(UserWarning):
    """A calibration was fitted although every attempt to measure it was disturbed."""


SUSPECT_RESIDUAL = 0.10
"""A calibration model the fit misses by more than this (relative, held out) is measured again."""


def _suspects(predictor: CalibratedLutPredictor, archs: Sequence[Arch], measured: Sequence[float]) -> list[int]:
    """Calibration models whose held-out relative error under the chosen form exceeds
    SUSPECT_RESIDUAL and three robust standard deviations of all of them: a model measured in a
    slow phase stands out against the LUT's own timings of its operators."""
    if len(archs) < 4:
        return []  # a held-out fit needs three models
    rel = []
    for i in range(len(archs)):
        rest = [j for j in range(len(archs)) if j != i]
        held = CalibratedLutPredictor(predictor.table, predictor.in_channels, predictor.num_classes,
                                      predictor.image_size, predictor.batch_size)
        held.fit([archs[j] for j in rest], [measured[j] for j in rest])
        rel.append((measured[i] - held.predict(archs[i])) / measured[i])
    r = np.asarray(rel)
    spread = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    limit = max(SUSPECT_RESIDUAL, 3.0 * spread)
    # Only measured-too-slow models: a disturbed phase slows a model down, never speeds it up.
    return [i for i in range(r.size) if r[i] > limit]


REFERENCE_TOLERANCE = 0.10
"""The reference operator, timed before and after the calibration models, must be within 10 % of
its LUT entry: otherwise the machine ran at another speed than when the LUT was measured."""


def _reference_op(predictor: LutSumPredictor, archs: Sequence[Arch]) -> LutOp:
    """The costliest LUT operator the calibration models execute: the clearest speed signal."""
    ops = {op.lut_key: op for arch in archs for op in predictor.ops(arch)}
    return max(ops.values(), key=lambda op: (predictor.lookup(op), op.key))


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
    attempts: int = 2,
    strict: bool = False,
) -> tuple[CalibratedLutPredictor, list[Arch], list[float]]:
    """Measure `n` whole models spread over the space (fastest of `passes`) and fit a CalibratedLutPredictor.

    A calibration taken while the machine was disturbed is detected and measured again, not
    fitted (what was done is in `predictor.fit_info["checks"]`):

    1. With two or more passes, the costliest LUT operator of the calibration models is timed
       just before and just after them; either time more than REFERENCE_TOLERANCE off its LUT
       entry means the machine ran at another speed than when the LUT was measured.
    2. With two or more passes, a model whose two fastest passes disagree by more than
       `nasflow.lut.AGREEMENT` gets up to `passes` more until two agree.
    If (1) fails or (2) leaves a model unsettled, the whole calibration is measured again, up to
    `attempts` times in all; if the last attempt fails too, `strict` raises
    CalibrationDisturbedError, otherwise the fit goes ahead with a CalibrationDisturbedWarning
    and the reason in `fit_info["checks"]["disturbed"]`.
    3. After the fit, a model the fit on the others misses by far, too slow for what the LUT's
       timings of its own operators say (`_suspects`), is measured again and replaced when the
       new measurement is faster by more than AGREEMENT.
    """
    geometry = (in_channels, num_classes, image_size, device_batch_size(device))
    lut_sum = LutSumPredictor(table, *geometry)
    archs = calibration_archs(space, lut_sum, n=n, seed=seed)
    jobs = _arch_jobs(device, archs, in_channels, num_classes, image_size)
    ref = _reference_op(lut_sum, archs)
    ref_job = [(ref.module(), ref.input_shape)]

    def reference_ratio() -> float:
        if passes < 2:
            return 1.0  # one pass claims no stability: nothing to hold the calibration to
        return float(measure_passes(device, ref_job, passes).best[0].stats.median_ms) / lut_sum.lookup(ref)

    problems: list[str] = []
    for _ in range(max(1, attempts)):
        before = reference_ratio()
        result = measure_passes(device, jobs, passes, progress, retries=passes)
        after = reference_ratio()
        problem = _disturbance(device.name, ref, before, after, result, len(archs), passes)
        if problem is None:
            break
        problems.append(problem)
    disturbed = None
    if problem is not None:
        disturbed = (
            f"{problem}, in all {len(problems)} attempts: the machine is busy or changed since the LUT was "
            f"measured; calibrate when it is quieter, or rebuild the LUT (--refresh) if the machine changed"
        )
        if strict:
            raise CalibrationDisturbedError(disturbed)
        warnings.warn(disturbed, CalibrationDisturbedWarning, stacklevel=2)
    measured = [float(m.stats.median_ms) for m in result.best]
    predictor = CalibratedLutPredictor(table, *geometry).fit(archs, measured)
    checks: dict[str, Any] = {
        "reference_op": ref.key if passes >= 2 else None, "reference_ratios": [before, after],
        "repeated": problems[: len(problems) - (disturbed is not None)], "disturbed": disturbed,
        "extra_passes": result.extra_passes, "remeasured": [], "replaced": [],
    }
    for _ in range(attempts):
        suspects = [i for i in _suspects(predictor, archs, measured) if i not in checks["remeasured"]]
        if not suspects:
            break
        again = measure_passes(device, [jobs[i] for i in suspects], passes, retries=passes)
        checks["remeasured"] += suspects
        faster = [i for i, m in zip(suspects, again.best) if m.stats.median_ms < measured[i] * (1.0 - AGREEMENT)]
        for i, m in zip(suspects, again.best):
            if i in faster:
                measured[i] = float(m.stats.median_ms)
        checks["replaced"] += faster
        if not faster:
            break  # the re-measurements confirm the outliers: the device, not the machine, made them
        predictor = CalibratedLutPredictor(table, *geometry).fit(archs, measured)
    predictor.fit_info["checks"] = checks
    return predictor, archs, measured


def _disturbance(
    device: str, ref: LutOp, before: float, after: float, result: PassResults, n: int, passes: int
) -> str | None:
    """Why a calibration's measurements cannot be trusted (None when they can)."""
    off = max(before, after, key=lambda r: abs(r - 1.0))
    if abs(off - 1.0) > REFERENCE_TOLERANCE:
        return (f"{device}: the reference operator {ref.key} ran at {off:.2f}x its LUT time around the calibration "
                f"(before {before:.2f}x, after {after:.2f}x)")
    if result.unconfirmed:
        worst = max(sorted(result.passes_ms[i])[1] / min(result.passes_ms[i]) for i in result.unconfirmed)
        return (f"{device}: {len(result.unconfirmed)} of {n} calibration models never measured the same twice "
                f"(within {AGREEMENT:.0%}) in {passes + result.extra_passes} passes, worst {worst:.2f}x")
    return None


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
