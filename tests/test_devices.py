"""Timing methodology, fingerprints and the built-in CPU device backends."""

from __future__ import annotations

import gc
import math
import time

import pytest
import torch
from pydantic import ValidationError

from nasflow import __version__
from nasflow.errors import DeviceError
from nasflow.export import export_onnx
from nasflow.fingerprint import base_fingerprint, cpu_model, fingerprint_hash
from nasflow.plugins.devices import onnxruntime_cpu, torch_cpu
from nasflow.plugins.devices.onnxruntime_cpu import OnnxRuntimeCPU
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.timing import median_ci_ranks, measure_callable, relative_ci, summarise

from nets import TinyNet

SHAPE = (1, 3, 16, 16)
# Loose settings: these tests check behaviour, not speed, on a shared 2-core machine.
FAST = dict(warmup=1, min_runs=5, max_runs=20, rel_ci=0.5, min_seconds=0.0, max_seconds=2.0)


class FakeClock:
    """perf_counter_ns stand-in: every reading advances by a fixed step (constant-time calls)."""

    def __init__(self, step_ns: int = 500_000):
        self.now = 0
        self.step = step_ns

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def assert_sane(stats, min_runs, max_runs):
    assert stats.p90_ms >= stats.median_ms >= stats.min_ms > 0
    assert stats.mean_ms > 0 and stats.std_ms >= 0
    assert min_runs <= stats.runs <= max_runs
    assert 0 <= stats.outliers < stats.runs


# ---------------------------------------------------------------- timing


def test_median_ci_ranks_match_binomial_tables():
    assert median_ci_ranks(5) is None  # 2 * 1/32 > 5 %: no 95 % interval from 5 samples
    assert median_ci_ranks(6) == (1, 6)
    assert median_ci_ranks(10) == (2, 9)
    assert median_ci_ranks(100) == (40, 61)


def test_relative_ci_is_zero_for_identical_and_inf_for_too_few():
    assert relative_ci([1000.0] * 10) == 0.0
    assert math.isinf(relative_ci([1000.0] * 5))


def test_summarise_drops_outliers_above_five_mads():
    samples = [1_000_000 + 10_000 * (i % 5) for i in range(20)] + [50_000_000, 80_000_000]
    stats = summarise(samples, warmup=3)
    assert stats.outliers == 2
    assert stats.runs == 22  # every timed call counts, outliers included
    assert stats.warmup == 3
    assert stats.median_ms == pytest.approx(1.02)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.p90_ms <= 1.04 + 1e-9  # the two slow calls are gone from every statistic
    assert stats.mean_ms < 1.05


def test_summarise_keeps_identical_samples_and_rejects_empty():
    stats = summarise([2_000_000] * 8)
    assert stats.outliers == 0
    assert stats.median_ms == stats.p90_ms == stats.min_ms == 2.0
    assert stats.std_ms == 0.0 and stats.rel_ci == 0.0
    with pytest.raises(ValueError):
        summarise([])


def test_constant_time_fn_stops_at_min_runs():
    calls = []
    stats = measure_callable(
        lambda: calls.append(1), warmup=3, min_runs=12, max_runs=200, clock=FakeClock()
    )
    assert stats.runs == 12
    assert len(calls) == 15  # warm-up calls happen but are not timed
    assert stats.rel_ci == 0.0 and type(stats.rel_ci) is float
    assert stats.median_ms == pytest.approx(0.5)


def test_noisy_fn_runs_until_max_runs():
    # Alternating 1 ms / 2 ms calls: the median CI stays wide, so only max_runs stops it.
    state = {"t": 0, "i": 0}

    def clock():
        return state["t"]

    def fn():
        state["i"] += 1
        state["t"] += 1_000_000 * (1 + state["i"] % 2)

    stats = measure_callable(fn, warmup=0, min_runs=10, max_runs=40, rel_ci=0.01, clock=clock)
    assert stats.runs == 40
    assert stats.rel_ci > 0.01


def test_time_budget_stops_before_min_runs():
    state = {"t": 0}

    def clock():
        return state["t"]

    def slow():
        state["t"] += 400_000_000  # 0.4 s per call on the fake clock

    stats = measure_callable(slow, warmup=0, min_runs=10, max_runs=50, max_seconds=1.0, clock=clock)
    assert 1 <= stats.runs < 10


def test_contended_windows_are_set_aside():
    # 20 ms windows of 1 ms calls; the machine is 50 % slower for 3 of 5 windows.
    fast, slow = [1_000_000 + 1_000 * (i % 3) for i in range(20)], [1_500_000 + 1_000 * (i % 3) for i in range(20)]
    samples = slow + fast + slow + fast + slow
    plain = summarise(samples)
    assert plain.median_ms == pytest.approx(1.5, abs=0.01)  # the slow phase wins a plain median
    stats = summarise(samples, window_ms=20, contention=0.25)
    assert stats.median_ms == pytest.approx(1.001, abs=0.002)
    assert stats.outliers == 60 and stats.runs == 100
    # Windows within the tolerance of the fastest are all kept.
    assert summarise(samples, window_ms=20, contention=0.6).outliers == 0


def test_contention_needs_two_windows_and_at_least_three_calls_per_window():
    samples = [1_000_000] * 5 + [2_000_000] * 5
    # 20 ms windows hold all ten 1-2 ms calls: one window, nothing to compare, nothing set aside.
    assert summarise(samples, window_ms=20, contention=0.25).outliers == 0
    # Tiny windows still take three calls each: windows [1,1,1] [1,1,2] [2,2,2,2]; the last is
    # contended, and the 2 ms call of the middle one is then a single outlier (median + 5 MAD).
    stats = summarise(samples, window_ms=0.001, contention=0.25)
    assert stats.outliers == 5 and stats.median_ms == pytest.approx(1.0)


def test_min_seconds_keeps_timing_past_max_runs():
    clock = FakeClock(step_ns=500_000)  # each clock reading advances 0.5 ms: about 1 ms per call
    stats = measure_callable(lambda: None, warmup=0, min_runs=5, max_runs=10, min_seconds=0.1, clock=clock)
    assert clock.now >= 100_000_000  # timing went on for min_seconds ...
    assert stats.runs > 40  # ... far past the 10 calls max_runs alone allows
    # The time budget still wins over min_seconds.
    short = measure_callable(lambda: None, warmup=0, min_runs=5, max_runs=10, min_seconds=1.0,
                             max_seconds=0.02, clock=FakeClock(step_ns=500_000))
    assert short.runs <= 21


def test_sleep_median_is_plausible():
    # A sanity bound on the timer itself, not a performance assertion.
    stats = measure_callable(lambda: time.sleep(0.001), warmup=2, min_runs=10, max_runs=60)
    assert 0.9 <= stats.median_ms <= 3.0
    assert_sane(stats, 10, 60)


def test_gc_is_restored_after_timing():
    assert gc.isenabled()
    seen = []
    measure_callable(lambda: seen.append(gc.isenabled()), warmup=0, min_runs=6, max_runs=6)
    assert gc.isenabled()
    assert seen and not any(seen)  # collector held off during timed calls


def test_measure_callable_rejects_bad_run_bounds():
    with pytest.raises(ValueError):
        measure_callable(lambda: None, min_runs=10, max_runs=5)


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_contents_and_hash():
    fp = base_fingerprint("torch", "2.13.0", 2, graph_optimization="all")
    assert fp["cpu_model"] == cpu_model() and fp["cpu_model"]
    assert fp["logical_cores"] >= 1
    assert fp["runtime"] == "torch" and fp["runtime_version"] == "2.13.0"
    assert fp["threads"] == 2 and fp["graph_optimization"] == "all"
    assert fp["nasflow_version"] == __version__
    assert {"machine", "os", "python"} <= fp.keys()
    h = fingerprint_hash(fp)
    assert len(h) == 16 and int(h, 16) >= 0
    assert fingerprint_hash(dict(reversed(list(fp.items())))) == h  # key order irrelevant
    assert fingerprint_hash({**fp, "threads": 1}) != h


# ---------------------------------------------------------------- torch-cpu


def test_torch_cpu_options_validated():
    assert TorchCPU.Options().threads == 1
    with pytest.raises(ValidationError):
        TorchCPU.Options(threads=0)
    with pytest.raises(ValidationError):
        TorchCPU.Options(bogus=1)
    with pytest.raises(ValidationError):
        TorchCPU.Options(min_runs=10, max_runs=5)


def test_torch_cpu_measures_and_restores_threads():
    seen_threads = []

    class Probe(TinyNet):
        def forward(self, x):
            seen_threads.append(torch.get_num_threads())
            assert torch.is_inference_mode_enabled() and not self.training
            return super().forward(x)

    model = Probe().train()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dev = TorchCPU(TorchCPU.Options(threads=1, batch_size=2, **FAST))
        m = dev.measure_model(model, SHAPE)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(seen_threads) == {1}
    assert model.training  # mode given back
    assert m.device == "torch-cpu" and m.source == "measured"
    assert m.runtime == f"torch {torch.__version__}" and m.artifact_format == "pytorch"
    assert m.threads == 1 and m.batch_size == 2
    assert m.extra["input_shape"] == [2, 3, 16, 16]
    assert m.fingerprint["threads"] == 1
    assert m.extra["fingerprint_hash"] == fingerprint_hash(m.fingerprint)
    assert_sane(m.stats, FAST["min_runs"], FAST["max_runs"])


def test_torch_cpu_failure_is_device_error_and_restores_threads():
    before = torch.get_num_threads()
    dev = TorchCPU(TorchCPU.Options(threads=1, **FAST))
    with pytest.raises(DeviceError, match="torch-cpu"):
        dev.measure_model(TinyNet(), (1, 5, 16, 16))  # wrong channel count
    assert torch.get_num_threads() == before
    with pytest.raises(DeviceError):
        dev.measure_artifact("x.onnx", "onnx", SHAPE)  # no artifact formats


# ---------------------------------------------------------------- onnxruntime-cpu


def test_onnxruntime_cpu_measures_model():
    assert OnnxRuntimeCPU.unavailable_reason() is None
    dev = OnnxRuntimeCPU(OnnxRuntimeCPU.Options(threads=1, graph_optimization="basic", **FAST))
    m = dev.measure_model(TinyNet(), SHAPE)
    assert m.device == "onnxruntime-cpu" and m.artifact_format == "onnx"
    assert m.runtime.startswith("onnxruntime ")
    assert m.fingerprint["graph_optimization"] == "basic"
    assert m.fingerprint["runtime"] == "onnxruntime"
    assert_sane(m.stats, FAST["min_runs"], FAST["max_runs"])


def test_onnxruntime_cpu_measures_artifact(tmp_path):
    path = export_onnx(TinyNet(), SHAPE, tmp_path / "tiny.onnx")
    dev = OnnxRuntimeCPU(OnnxRuntimeCPU.Options(batch_size=3, **FAST))
    m = dev.measure_artifact(str(path), "onnx", SHAPE)
    assert m.extra["input_shape"] == [3, 3, 16, 16]  # dynamic batch axis honoured
    assert len(m.extra["sha256"]) == 64
    assert_sane(m.stats, FAST["min_runs"], FAST["max_runs"])
    with pytest.raises(DeviceError, match="tflite"):
        dev.measure_artifact(str(path), "tflite", SHAPE)
    with pytest.raises(DeviceError, match="no ONNX file"):
        dev.measure_artifact(str(tmp_path / "missing.onnx"), "onnx", SHAPE)


def test_onnxruntime_cpu_reports_missing_runtime(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert OnnxRuntimeCPU.unavailable_reason() == (
        "onnxruntime is not installed: pip install onnxruntime"
    )


def test_onnxruntime_cpu_rejects_unknown_optimisation_level():
    with pytest.raises(ValidationError):
        OnnxRuntimeCPU.Options(graph_optimization="max")


# ---------------------------------------------------------------- plugin hooks


def test_device_modules_register_through_pluggy():
    import pluggy

    from nasflow import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(torch_cpu)
    pm.register(onnxruntime_cpu)
    found = {cls.name for group in pm.hook.nasflow_devices() for cls in group}
    assert found == {"torch-cpu", "onnxruntime-cpu"}
