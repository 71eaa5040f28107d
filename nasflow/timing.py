"""Repeat-until-stable latency measurement of a zero-argument callable.

Methodology (the README summarises this):

1. **Warm-up.** ``fn`` is called ``warmup`` times untimed, so lazy initialisation, allocator
   growth, caches and JIT paths do not pollute the timings.
2. **Timed rounds.** Each call is timed on its own with ``time.perf_counter_ns`` (monotonic,
   nanosecond resolution). Calls run in rounds; the Python garbage collector is disabled during
   a round (and restored afterwards) so a collection cannot land inside a timed call. The first
   round has ``min_runs`` calls; later rounds add about half as many again as already taken,
   shrunk to fit the remaining time budget.
3. **Outliers.** After each round, timings above ``median + 5 * MAD`` (median absolute
   deviation) are set aside: on a shared machine these are preemptions by other processes, not
   properties of the model. The MAD is floored at 1 % of the median so that a run of identical
   timings (MAD = 0) does not turn every slightly slower call into an "outlier".
4. **Stop rule.** The 95 % confidence interval of the median is taken from order statistics:
   the number of samples below the true median is Binomial(n, 1/2), so the sorted samples at
   ranks ``j`` and ``n + 1 - j``, with ``j`` the largest rank whose lower binomial tail is at
   most 2.5 %, bracket the median with at least 95 % probability, whatever the distribution.
   Measuring stops once at least ``min_runs`` calls are timed and the half-width of that interval
   is at most ``rel_ci * median``; or when ``max_runs`` calls are timed; or when ``max_seconds``
   of timed rounds have elapsed. The time budget wins over ``min_runs`` (a very slow model gets
   fewer runs, at least one); fewer than six kept samples cannot give a 95 % interval, and the
   achieved ``rel_ci`` is then reported as infinity.
5. **Report.** Median, 90th percentile (linear interpolation), mean, standard deviation and
   minimum of the kept samples, in milliseconds; ``runs`` counts every timed call (kept plus
   outliers), ``outliers`` how many were set aside, and ``rel_ci`` the achieved relative
   half-width. Compare numbers measured side by side, not absolute times across runs.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .plugin_api import LatencyStats

OUTLIER_MADS = 5.0
MAD_FLOOR = 0.01  # fraction of the median; keeps identical timings from all becoming outliers
CI_TAIL = 0.025  # each side of a two-sided 95 % interval
NS_PER_MS = 1e6


def median_ci_ranks(n: int) -> tuple[int, int] | None:
    """1-based ranks (j, k) of the order-statistic 95 % CI of the median of `n` samples."""
    # Exact binomial tail in integers: P(X < j) = sum_{i<j} C(n, i) / 2^n <= 2.5 %.
    total = 1 << n
    tail = 0
    j = 0
    while j < n and (tail + math.comb(n, j)) * 40 <= total:
        tail += math.comb(n, j)
        j += 1
    if j == 0:
        return None  # n < 6: even the extreme samples do not reach 95 % coverage
    return j, n + 1 - j


def relative_ci(sorted_ns: Sequence[float]) -> float:
    """Half-width of the 95 % CI of the median, relative to the median (inf if undefined)."""
    ranks = median_ci_ranks(len(sorted_ns))
    if ranks is None:
        return math.inf
    median = float(np.median(sorted_ns))
    if median <= 0:
        return math.inf
    j, k = ranks
    return float(sorted_ns[k - 1] - sorted_ns[j - 1]) / 2.0 / median


def split_outliers(samples_ns: Sequence[float]) -> tuple[np.ndarray, int]:
    """Sorted samples at or below median + 5*MAD, and how many were dropped above it."""
    arr = np.sort(np.asarray(samples_ns, dtype=np.float64))
    if arr.size == 0:
        return arr, 0
    median = float(np.median(arr))
    mad = float(np.median(np.abs(arr - median)))
    limit = median + OUTLIER_MADS * max(mad, MAD_FLOOR * median)
    kept = arr[arr <= limit]
    return kept, int(arr.size - kept.size)


def summarise(samples_ns: Sequence[float], warmup: int = 0) -> LatencyStats:
    """Pure summary of raw per-call timings in nanoseconds (outliers dropped and counted)."""
    if len(samples_ns) == 0:
        raise ValueError("summarise() needs at least one timing")
    kept, outliers = split_outliers(samples_ns)
    ms = kept / NS_PER_MS
    return LatencyStats(
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms[0]),
        runs=len(samples_ns),
        warmup=warmup,
        rel_ci=relative_ci(kept),
        outliers=outliers,
    )


def _timed_round(
    fn: Callable[[], object], n: int, clock: Callable[[], int], deadline_ns: float
) -> list[int]:
    """Time up to `n` calls of `fn` one by one, GC held off, stopping early at the deadline."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = []
        for _ in range(n):
            start = clock()
            fn()
            end = clock()
            out.append(end - start)
            if end >= deadline_ns:
                break
        return out
    finally:
        if was_enabled:
            gc.enable()


def _next_round_size(taken: int, max_runs: int, per_call_ns: float, left_ns: float) -> int:
    """Grow by half the samples so far, capped by max_runs and by what fits in the time left."""
    want = max(1, taken // 2)
    fits = int(left_ns // per_call_ns) if per_call_ns > 0 else want
    return max(1, min(want, max_runs - taken, fits))


def measure_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    min_runs: int = 10,
    max_runs: int = 200,
    rel_ci: float = 0.02,
    max_seconds: float = 5.0,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> LatencyStats:
    """Time `fn()` until the median is known to within `rel_ci` (see the module docstring).

    `clock` returns nanoseconds; it is replaceable so the stop rule can be tested
    deterministically.
    """
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs} and {max_runs}")
    for _ in range(warmup):
        fn()
    budget_ns = max_seconds * 1e9
    started = clock()
    deadline = started + budget_ns
    samples: list[int] = []
    round_size = min_runs
    while True:
        samples += _timed_round(fn, round_size, clock, deadline)
        stats = summarise(samples, warmup)
        elapsed = clock() - started
        if len(samples) >= max_runs or elapsed >= budget_ns:
            return stats
        if len(samples) >= min_runs and stats.rel_ci <= rel_ci:
            return stats
        per_call = elapsed / len(samples)
        round_size = _next_round_size(len(samples), max_runs, per_call, budget_ns - elapsed)


class TimingOptions(BaseModel):
    """Stop-rule options shared by device backends that time calls with `measure_callable`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup: int = Field(5, ge=0, description="untimed calls before timing starts")
    min_runs: int = Field(10, ge=1, description="timed calls before the stop rule may fire")
    max_runs: int = Field(200, ge=1, description="hard cap on timed calls")
    rel_ci: float = Field(0.02, gt=0, description="target CI half-width relative to the median")
    max_seconds: float = Field(3.0, gt=0, description="time budget for the timed calls")

    @model_validator(mode="after")
    def _runs_ordered(self) -> "TimingOptions":
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        return self


def measure_with(fn: Callable[[], object], options: TimingOptions) -> LatencyStats:
    """`measure_callable` with the stop rule taken from a device's options."""
    return measure_callable(
        fn,
        warmup=options.warmup,
        min_runs=options.min_runs,
        max_runs=options.max_runs,
        rel_ci=options.rel_ci,
        max_seconds=options.max_seconds,
    )
