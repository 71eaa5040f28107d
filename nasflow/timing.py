"""Repeat-until-stable latency measurement of a zero-argument callable.

Methodology (the README summarises this):

1. **Warm-up.** ``fn`` is called ``warmup`` times untimed, so lazy initialisation, allocator
   growth, caches and JIT paths do not pollute the timings.
2. **Timed rounds.** Each call is timed on its own with ``time.perf_counter_ns`` (monotonic,
   nanosecond resolution). Calls run back to back in rounds; the Python garbage collector is
   disabled during a round (and restored afterwards) so a collection cannot land inside a timed
   call. The first round has ``min_runs`` calls; later rounds add about half as many again as
   already taken, shrunk to fit the remaining time budget.
3. **Contended windows.** On a shared machine (a cloud VM, a laptop with a browser open) the
   CPU's speed changes for tens to hundreds of milliseconds at a time: another tenant on the
   host's core, a frequency step. On this project's 2-core VM one model alternated between
   0.059 and 0.089 ms every ~100 ms, so two measurements of the same model differed by 50 %.
   The calls are therefore cut, in order, into windows of about ``window_ms`` (at least three
   calls each); windows whose median is more than ``contention`` (a fraction) above the fastest
   window's median were run on a slowed machine and are set aside. What is left is the latency
   of the model on an uncontended core, which is what ranks candidates reproducibly.
   ``min_seconds`` keeps timing at least that long, so the measurement spans the machine's
   slow and fast phases rather than landing inside one; ``contention: null`` turns this off.
4. **Outliers.** Of the remaining calls, those above ``median + 5 * MAD`` (median absolute
   deviation) are set aside too: single preemptions by other processes, not properties of the
   model. The MAD is floored at 1 % of the median so that a run of identical timings (MAD = 0)
   does not turn every slightly slower call into an "outlier".
5. **Stop rule.** The 95 % confidence interval of the median is taken from order statistics:
   the number of samples below the true median is Binomial(n, 1/2), so the sorted samples at
   ranks ``j`` and ``n + 1 - j``, with ``j`` the largest rank whose lower binomial tail is at
   most 2.5 %, bracket the median with at least 95 % probability, whatever the distribution.
   Measuring stops once at least ``min_runs`` calls are timed, ``min_seconds`` have passed and
   the half-width of that interval (over the kept calls) is at most ``rel_ci * median``; or when
   ``max_runs`` calls are timed and ``min_seconds`` have passed; or when ``max_seconds`` of timed
   rounds have elapsed. The time budget wins over everything (a very slow model gets fewer runs,
   at least one); fewer than six kept samples cannot give a 95 % interval, and the achieved
   ``rel_ci`` is then reported as infinity.
6. **Passes.** A slow phase can outlast a whole measurement (on the 2-core VM a model's median
   moved by up to 1.75x between measurements seconds apart while other processes ran, while
   each measurement's own interval said +-0.1 to 3 %): the calls of one measurement share the phase,
   so no rule inside it can see that. ``passes`` says how many separate measurements a candidate
   gets; ``nasflow.flows.evaluate`` interleaves them with the other devices' and keeps the
   fastest median, as the LUT does with ``profile.passes``. This module times one pass.
7. **Clock.** Each call is timed on the calling thread's CPU clock (``time.thread_time_ns``)
   when the backend runs on one thread (``threads: 1``) and ``clock`` is ``auto`` (the default),
   on the wall clock otherwise. On a machine with more runnable threads than cores the scheduler
   hands our core to another process for slices of milliseconds; a 2-15 ms call then often
   contains one or several such slices, and a wall-clock measurement taken while another job
   keeps the cores busy can come out twice as slow as one taken a minute later, with no slow
   window inside it to set aside. The thread's CPU time counts only the time the call ran.
   It does not remove what sharing a core's caches or memory bandwidth costs, which the
   contention windows and the passes still handle; and it would miss work a runtime hands to
   other threads, so ``auto`` uses it only at one thread. The time budget (``min_seconds``,
   ``max_seconds``) is always wall time.
8. **Report.** Median, 90th percentile (linear interpolation), mean, standard deviation and
   minimum of the kept samples, in milliseconds; ``runs`` counts every timed call (kept plus
   set aside), ``outliers`` how many were set aside (contended windows and single outliers), and
   ``rel_ci`` the achieved relative half-width. Compare numbers measured side by side, not
   absolute times across runs.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from typing import Literal

from pydantic import Field, model_validator

from .plugin_api import LatencyStats, PluginOptions

OUTLIER_MADS = 5.0
MAD_FLOOR = 0.01  # fraction of the median; keeps identical timings from all becoming outliers
CI_TAIL = 0.025  # each side of a two-sided 95 % interval
NS_PER_MS = 1e6
MIN_WINDOW_CALLS = 3  # a window's median needs a few calls to mean anything

CLOCKS = ("auto", "wall", "thread")

TimedRound = Callable[[int, float], list[float]]
"""Time up to n calls (stopping early once the clock passes the deadline); durations in ns."""


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


def uncontended(samples_ns: Sequence[float], window_ms: float, contention: float) -> np.ndarray:
    """The calls (in order) outside windows whose median exceeds the fastest window's by `contention`.

    Windows are consecutive calls adding up to about `window_ms` at the typical call time, at
    least MIN_WINDOW_CALLS each; a short remainder joins the last window.
    """
    arr = np.asarray(samples_ns, dtype=np.float64)
    typical = float(np.median(arr)) if arr.size else 0.0
    per_window = max(MIN_WINDOW_CALLS, math.ceil(window_ms * NS_PER_MS / typical) if typical > 0 else 1)
    count = arr.size // per_window
    if count < 2:
        return arr
    bounds = [i * per_window for i in range(count)] + [arr.size]
    windows = [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    medians = np.array([np.median(w) for w in windows])
    limit = medians.min() * (1.0 + contention)
    return np.concatenate([w for w, m in zip(windows, medians) if m <= limit])


def summarise(
    samples_ns: Sequence[float], warmup: int = 0, window_ms: float = 20.0, contention: float | None = None
) -> LatencyStats:
    """Summary of raw per-call timings in nanoseconds, in call order.

    With `contention` (a fraction), calls in contended windows are set aside first (see the
    module docs); then single outliers. Both count in `outliers`.
    """
    if len(samples_ns) == 0:
        raise ValueError("summarise() needs at least one timing")
    calm = uncontended(samples_ns, window_ms, contention) if contention is not None else samples_ns
    kept, _ = split_outliers(calm)
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
        outliers=len(samples_ns) - int(kept.size),
    )


def _timed_round(
    fn: Callable[[], object],
    n: int,
    clock: Callable[[], int],
    deadline_ns: float,
    budget_clock: Callable[[], int] | None = None,
) -> list[float]:
    """Time up to `n` calls of `fn` one by one on `clock`, GC held off, stopping early once
    `budget_clock` (default: `clock`) passes the deadline."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        out: list[float] = []
        for _ in range(n):
            start = clock()
            fn()
            end = clock()
            out.append(end - start)
            if (end if budget_clock is None else budget_clock()) >= deadline_ns:
                break
        return out
    finally:
        if was_enabled:
            gc.enable()


def _next_round_size(taken: int, cap: int, per_call_ns: float, left_ns: float) -> int:
    """Grow by half the samples so far, capped by `cap` more calls and by what fits in the time left."""
    want = max(1, taken // 2)
    fits = int(left_ns // per_call_ns) if per_call_ns > 0 else want
    return max(1, min(want, cap, fits))


class TimingOptions(PluginOptions):
    """Stop rule and contention handling shared by device backends that time calls one by one."""

    warmup: int = Field(5, ge=0, description="untimed calls before timing starts")
    min_runs: int = Field(10, ge=1, description="timed calls before the stop rule may fire")
    max_runs: int = Field(200, ge=1, description="cap on timed calls (once min_seconds have passed)")
    rel_ci: float = Field(0.02, gt=0, description="target CI half-width relative to the median")
    min_seconds: float = Field(
        0.2, ge=0, description="time at least this long, so slow phases of a shared machine can be seen and set aside"
    )
    max_seconds: float = Field(3.0, gt=0, description="time budget for the timed calls")
    contention: float | None = Field(
        0.25, gt=0, description="set aside windows whose median is this fraction above the fastest window's; null: keep all"
    )
    window_ms: float = Field(20.0, gt=0, description="length of a contention window, ms")
    passes: int = Field(
        3, ge=1, description="separate measurements per candidate, interleaved with the other devices; the fastest median is kept"
    )
    clock: Literal["auto", "wall", "thread"] = Field(
        "auto",
        description="per-call clock: thread (the calling thread's CPU time, immune to time-slicing by other processes), "
        "wall, or auto (thread when the backend runs on one thread, else wall)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "TimingOptions":
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        return self


def run_rounds(
    timed_round: TimedRound, options: TimingOptions, clock: Callable[[], int] = time.perf_counter_ns
) -> LatencyStats:
    """Call `timed_round` in growing rounds until the stop rule fires (see the module docs).

    `timed_round(n, deadline_ns)` times up to n calls and returns their durations in ns; the
    caller has done the warm-up. `clock` measures the time budget (nanoseconds).
    """
    opts = options
    budget_ns = opts.max_seconds * 1e9
    floor_ns = min(opts.min_seconds, opts.max_seconds) * 1e9  # the budget wins
    started = clock()
    deadline = started + budget_ns
    samples: list[float] = []
    round_size = opts.min_runs
    while True:
        samples += timed_round(round_size, deadline)
        stats = summarise(samples, opts.warmup, opts.window_ms, opts.contention)
        elapsed = clock() - started
        if elapsed >= budget_ns:
            return stats
        if elapsed >= floor_ns and (
            len(samples) >= opts.max_runs or (len(samples) >= opts.min_runs and stats.rel_ci <= opts.rel_ci)
        ):
            return stats
        per_call = elapsed / len(samples)
        # Before min_seconds, rounds may exceed max_runs: the floor is about time, not calls.
        cap = opts.max_runs - len(samples) if elapsed >= floor_ns else int((floor_ns - elapsed) // max(per_call, 1)) + 1
        round_size = _next_round_size(len(samples), max(cap, 1), per_call, budget_ns - elapsed)


def measure_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    min_runs: int = 10,
    max_runs: int = 200,
    rel_ci: float = 0.02,
    min_seconds: float = 0.0,
    max_seconds: float = 5.0,
    contention: float | None = None,
    window_ms: float = 20.0,
    clock: Callable[[], int] | str = "wall",
) -> LatencyStats:
    """Time `fn()` until the median is known to within `rel_ci` (see the module docstring).

    `clock` is "wall" or "thread" (see rule 7), or a function returning nanoseconds that then
    also measures the time budget, so the stop rule can be tested deterministically.
    """
    options = TimingOptions(  # validates the settings (a ValueError when they make no sense)
        warmup=warmup,
        min_runs=min_runs,
        max_runs=max_runs,
        rel_ci=rel_ci,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        contention=contention,
        window_ms=window_ms,
        clock=clock if isinstance(clock, str) else "wall",
    )
    return measure_with(fn, options, None if isinstance(clock, str) else clock)


def call_clock(options: TimingOptions) -> Callable[[], int]:
    """The per-call clock `options.clock` names (rule 7): thread CPU time or wall time, in ns."""
    if options.clock == "thread" or (options.clock == "auto" and getattr(options, "threads", None) == 1):
        return time.thread_time_ns
    return time.perf_counter_ns


def measure_with(
    fn: Callable[[], object], options: TimingOptions, clock: Callable[[], int] | None = None
) -> LatencyStats:
    """Warm up, then time `fn()` with the stop rule, clock and contention handling of a device's options.

    `clock`, when given, replaces both the per-call clock and the budget's (deterministic tests).
    """
    for _ in range(options.warmup):
        fn()
    if clock is not None:
        return run_rounds(lambda n, deadline: _timed_round(fn, n, clock, deadline), options, clock)
    per_call, wall = call_clock(options), time.perf_counter_ns
    return run_rounds(lambda n, deadline: _timed_round(fn, n, per_call, deadline, wall), options, wall)
