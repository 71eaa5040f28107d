"""CUDA device backend: availability, options, the event-timed stop rule, NVML energy.

Without a GPU (CI) the backend must load, say clearly why it cannot run, and refuse to measure;
the event-timing loop and the energy arithmetic are checked with stand-ins for torch.cuda and
NVML. Tests marked `needs_gpu` take real measurements when PyTorch sees a CUDA device.
"""

from __future__ import annotations

import sys
import types

import pluggy
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nasflow import hookspecs
from nasflow.errors import DeviceError
from nasflow.plugins.devices import cuda
from nasflow.plugins.devices.cuda import CudaDevice, CudaOptions, measure_energy, measure_events

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU visible to PyTorch")
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour on machines without a CUDA GPU")
FAST = dict(warmup=2, min_runs=5, max_runs=30, rel_ci=0.5, min_seconds=0.0, max_seconds=2.0)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# ---------------------------------------------------------------- without a GPU


@cpu_only
def test_unavailable_reason_says_what_is_missing_and_how_to_fix_it():
    reason = CudaDevice.unavailable_reason()
    assert isinstance(reason, str) and "no CUDA GPU visible to PyTorch" in reason
    assert torch.__version__ in reason
    if torch.version.cuda is None:
        assert "CPU-only build" in reason and "install a CUDA build of torch" in reason


@cpu_only
def test_measure_model_raises_device_error_without_gpu():
    device = CudaDevice(CudaOptions(**FAST))
    model = TinyNet()
    with pytest.raises(DeviceError, match="cuda: no CUDA GPU"):
        device.measure_model(model, (1, 3, 8, 8))
    with pytest.raises(DeviceError):
        device.fingerprint()
    assert next(model.parameters()).device.type == "cpu" and model.training


def test_unavailable_reason_checks_the_device_index():
    reason = CudaDevice.unavailable_reason(CudaDevice.Options(device_index=10_000))
    assert isinstance(reason, str)
    if HAS_CUDA:
        assert "device_index 10000 does not exist" in reason


# ---------------------------------------------------------------- options


def test_options_defaults_and_validation():
    opts = CudaOptions()
    assert (opts.device_index, opts.batch_size, opts.warmup, opts.half, opts.energy) == (0, 1, 10, False, False)
    assert (opts.min_runs, opts.max_runs, opts.rel_ci, opts.max_seconds) == (10, 200, 0.02, 3.0)
    for bad in ({"batch_size": 0}, {"device_index": -1}, {"warmup": -1}, {"min_runs": 20, "max_runs": 10},
                {"rel_ci": 0}, {"threads": 2}, {"energy_seconds": 0}):
        with pytest.raises(ValidationError):
            CudaOptions(**bad)
    with pytest.raises(ValidationError):
        opts.half = True  # frozen


def test_plugin_is_provided_through_the_device_hook():
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(cuda, name="nasflow.plugins.devices.cuda")
    classes = [cls for result in manager.hook.nasflow_devices() for cls in result]
    assert CudaDevice in classes and CudaDevice.name == "cuda" and CudaDevice.kind == "device"


def test_missing_nvml_is_a_device_error_that_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(DeviceError, match="pip install nvidia-ml-py"):
        cuda._nvml()


# ---------------------------------------------------------------- timing loop with stand-ins


class FakeEvent:
    """torch.cuda.Event stand-in: the elapsed time between two records is a fixed step."""

    clock = 0.0
    step_ms = 2.0

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        FakeEvent.clock += FakeEvent.step_ms / 2
        self.at = FakeEvent.clock

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return other.at - self.at


def fake_torch():
    return types.SimpleNamespace(cuda=types.SimpleNamespace(Event=FakeEvent, synchronize=lambda device=None: None))


def test_event_timed_loop_uses_the_events_and_the_stop_rule():
    calls = []
    opts = CudaOptions(warmup=3, min_runs=6, max_runs=40, rel_ci=0.02, min_seconds=0.0, max_seconds=5.0)
    stats = measure_events(lambda: calls.append(1), opts, fake_torch(), device=None)
    # Identical 1 ms samples (two half steps): the interval is zero, so the first round suffices.
    assert stats.median_ms == pytest.approx(FakeEvent.step_ms / 2) and stats.std_ms == 0
    assert stats.runs == 6 and stats.warmup == 3 and stats.rel_ci == 0
    assert len(calls) == 3 + 6


def test_event_timed_loop_stops_at_max_runs_when_never_stable():
    opts = CudaOptions(warmup=0, min_runs=5, max_runs=25, rel_ci=1e-9, min_seconds=0.0, max_seconds=5.0, contention=None)
    state = {"i": 0}

    def noisy():  # calls of 1..5 ms in turn: the median's interval never shrinks below 1e-9
        state["i"] += 1
        FakeEvent.step_ms = 2.0 * (1 + state["i"] % 5)

    try:
        stats = measure_events(noisy, opts, fake_torch(), device=None)
    finally:
        FakeEvent.step_ms = 2.0
    assert stats.runs == 25 and stats.outliers == 0 and stats.rel_ci > 1e-9


def test_energy_is_the_counter_difference_per_call():
    readings = iter([1_000.0, 1_500.0])  # millijoules
    nvml = types.SimpleNamespace(nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(readings))
    calls = []
    out = measure_energy(lambda: calls.append(1), nvml, "h", fake_torch(), None, seconds=0.001, median_ms=1.0)
    assert out["energy_calls"] == len(calls) == 10  # at least ten calls
    assert out["energy_mj_per_call"] == pytest.approx(50.0)
    assert out["mean_power_w"] > 0


# ---------------------------------------------------------------- on a GPU


@needs_gpu
def test_real_measurement_leaves_the_model_alone():
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    device = CudaDevice(CudaOptions(**FAST, batch_size=2))
    m = device.measure_model(model, (1, 3, 16, 16))
    assert m.source == "measured" and m.device == "cuda" and m.batch_size == 2
    assert m.stats.median_ms > 0 and m.stats.p90_ms >= m.stats.median_ms and m.stats.runs >= 5
    assert m.runtime.startswith("torch ") and "CUDA" in m.runtime
    assert m.fingerprint["gpu_name"] and m.fingerprint["compute_capability"]
    assert m.extra["input_shape"] == [2, 3, 16, 16] and m.extra["timer"] == "cuda_events"
    assert model.training  # mode restored (the copy was timed)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@needs_gpu
def test_real_half_precision_measurement():
    m = CudaDevice(CudaOptions(**FAST, half=True)).measure_model(TinyNet(), (1, 3, 16, 16))
    assert m.stats.median_ms > 0 and m.extra["dtype"] == "float16" and m.fingerprint["dtype"] == "float16"


@needs_gpu
def test_real_energy_measurement():
    pytest.importorskip("pynvml")
    m = CudaDevice(CudaOptions(**FAST, energy=True, energy_seconds=0.2)).measure_model(TinyNet(), (1, 3, 32, 32))
    assert m.extra["energy_mj_per_call"] >= 0 and m.extra["energy_calls"] >= 10
    assert m.extra["energy_mj_per_image"] == pytest.approx(m.extra["energy_mj_per_call"])
