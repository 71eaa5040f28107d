"""Device backend that times eager PyTorch inference on an NVIDIA GPU with CUDA events.

Methodology (the CPU backends' stop rule, with the GPU's own clock):

* The model is **copied** to the GPU (``copy.deepcopy`` then ``.to(device, dtype)``), so the
  caller's module keeps its device, dtype, mode and weights; the copy runs in eval mode under
  ``torch.inference_mode``. ``half=True`` casts the copy and the input to float16.
* ``warmup`` untimed calls (default 10: cuDNN algorithm selection, allocator growth, lazy
  module initialisation), then a device synchronisation.
* Each timed call is bracketed by two ``torch.cuda.Event(enable_timing=True)`` recorded on the
  current stream, and the end event is synchronised before the next call, so a sample is the
  GPU time of one whole inference (kernel launches included, host work after the last kernel
  not). Samples go through :func:`nasflow.timing.run_rounds`, the CPU backends' rounds,
  contention windows, outlier rule and stop rule: stop once ``min_seconds`` have passed and the
  95 % CI of the median is within ``rel_ci``, or at ``max_runs`` / ``max_seconds`` of wall time.
* ``energy=True`` reads NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules, Volta and newer) before and after a separate loop of back-to-back calls lasting
  at least ``energy_seconds``, and reports millijoules per call and per image and the mean
  power in ``Measurement.extra``. It needs ``nvidia-ml-py`` (``import pynvml``).

Nothing here imports torch or NVML at module import time, so the plugin loads (and reports
itself unavailable) on CPU-only machines.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from nasflow.errors import DeviceError
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import ENERGY_EXTRA_KEY, DeviceBackend, LatencyStats, Measurement
from nasflow.timing import TimingOptions, run_rounds

if TYPE_CHECKING:
    import torch

INPUT_SEED = 0
NVML_MISSING = (
    "energy=True needs NVIDIA's NVML Python bindings, which are not installed: pip install nvidia-ml-py "
    "(imported as pynvml); or set energy: false"
)


class CudaOptions(TimingOptions):
    """GPU, batch, precision and energy on top of the timing stop rule."""

    device_index: int = Field(0, ge=0, description="CUDA device ordinal as PyTorch numbers them")
    batch_size: int = Field(1, ge=1, description="batch dimension of the timed input")
    warmup: int = Field(10, ge=0, description="untimed calls before timing starts")
    half: bool = Field(False, description="time a float16 copy of the model on float16 input")
    energy: bool = Field(False, description="also measure energy per inference with NVML (needs nvidia-ml-py)")
    energy_seconds: float = Field(1.0, gt=0, description="minimum length of the energy loop, seconds")


def _torch():
    import torch

    return torch


def cuda_unavailable_reason(device_index: int = 0) -> str | None:
    """None when PyTorch sees CUDA device `device_index`; otherwise what is missing and how to fix it."""
    try:
        torch = _torch()
    except ImportError:  # pragma: no cover - torch is a hard dependency of nasflow
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return (
                f"no CUDA GPU visible to PyTorch (torch {torch.__version__} is a CPU-only build; "
                "install a CUDA build of torch on a machine with an NVIDIA GPU)"
            )
        return (
            f"no CUDA GPU visible to PyTorch (torch {torch.__version__} built for CUDA {torch.version.cuda}): "
            "no NVIDIA GPU or driver found, or CUDA_VISIBLE_DEVICES hides every GPU"
        )
    count = torch.cuda.device_count()
    if device_index >= count:
        return f"CUDA device_index {device_index} does not exist: PyTorch sees {count} CUDA device(s) (0..{count - 1})"
    return None


def _nvml():
    """Import and initialise NVML, or raise DeviceError saying how to install it."""
    try:
        import pynvml
    except ImportError as exc:
        raise DeviceError(NVML_MISSING) from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise DeviceError(f"NVML could not be initialised (is the NVIDIA driver loaded?): {exc}") from exc
    return pynvml


def _nvml_handle(pynvml, torch, index: int):
    """NVML handle of the GPU PyTorch calls `index` (by UUID, then PCI bus id, then by ordinal)."""
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for candidate in (text if text.startswith("GPU-") else f"GPU-{text}", text):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except Exception:
                continue
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain = getattr(props, "pci_domain_id", 0)
        device = getattr(props, "pci_device_id", 0)
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{device:02x}.0")
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measure_events(fn, options: TimingOptions, torch, device) -> LatencyStats:
    """Warm up, then time `fn()` call by call with CUDA events until the median is stable.

    The rounds, contention windows, outlier rule and stop rule are those of
    ``nasflow.timing.run_rounds``; only the per-call clock differs (CUDA events, milliseconds
    converted to nanoseconds), and the time budget is wall time.
    """
    for _ in range(options.warmup):
        fn()
    torch.cuda.synchronize(device)
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)

    def timed_round(n: int, deadline_ns: float) -> list[float]:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            out = []
            for _ in range(n):
                start_event.record()
                fn()
                end_event.record()
                end_event.synchronize()
                out.append(start_event.elapsed_time(end_event) * 1e6)  # ms -> ns
                if time.perf_counter_ns() >= deadline_ns:
                    break
            return out
        finally:
            if was_enabled:
                gc.enable()

    return run_rounds(timed_round, options)


def measure_energy(fn, pynvml, handle, torch, device, seconds: float, median_ms: float) -> dict[str, float]:
    """Millijoules per call from NVML's energy counter around a loop of at least `seconds`."""
    calls = max(10, min(1_000_000, math.ceil(seconds * 1e3 / max(median_ms, 1e-3))))
    torch.cuda.synchronize(device)
    try:
        before = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        raise DeviceError(f"cuda: NVML cannot read this GPU's energy counter (Volta or newer needed): {exc}") from exc
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    after = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    joules_mj = float(after - before)
    return {
        "energy_calls": calls,
        "energy_seconds": wall,
        "energy_mj_per_call": joules_mj / calls,
        "mean_power_w": joules_mj / 1e3 / wall if wall > 0 else float("nan"),
    }


class CudaDevice(DeviceBackend):
    """Eager PyTorch on one NVIDIA GPU, timed with CUDA events, optional NVML energy."""

    name = "cuda"
    description = "PyTorch eager inference on an NVIDIA GPU, timed with CUDA events"
    Options = CudaOptions
    artifact_formats = ()

    @classmethod
    def unavailable_reason(cls, options: "CudaOptions | None" = None) -> str | None:
        return cuda_unavailable_reason(options.device_index if options is not None else 0)

    def _device(self):
        reason = cuda_unavailable_reason(self.options.device_index)
        if reason is not None:
            raise DeviceError(f"cuda: {reason}")
        torch = _torch()
        return torch, torch.device("cuda", self.options.device_index)

    def fingerprint(self) -> dict[str, Any]:
        torch, device = self._device()
        opts = self.options
        props = torch.cuda.get_device_properties(device)
        driver = None
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = _as_str(pynvml.nvmlSystemGetDriverVersion())
        except Exception:  # NVML is optional for the fingerprint
            driver = None
        return base_fingerprint(
            "torch-cuda",
            torch.__version__,
            1,
            gpu_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_mib=int(props.total_memory // 2**20),
            multiprocessors=int(props.multi_processor_count),
            driver_version=driver,
            cuda_runtime=torch.version.cuda,
            cudnn_version=torch.backends.cudnn.version(),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            device_index=opts.device_index,
            batch_size=opts.batch_size,
            dtype="float16" if opts.half else "float32",
        )

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        torch, device = self._device()
        opts = self.options
        if len(tuple(input_shape)) < 1:
            raise DeviceError(f"cuda: input shape {tuple(input_shape)} has no batch dimension")
        shape = (opts.batch_size, *tuple(input_shape)[1:])
        dtype = torch.float16 if opts.half else torch.float32
        pynvml = _nvml() if opts.energy else None  # fail before any GPU work if NVML is missing
        gpu_model = None
        try:
            gpu_model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(INPUT_SEED)).to(device=device, dtype=dtype)
            with torch.cuda.device(device), torch.inference_mode():

                def call():
                    return gpu_model(x)

                stats = measure_events(call, opts, torch, device)
                energy = None
                if pynvml is not None:
                    handle = _nvml_handle(pynvml, torch, opts.device_index)
                    energy = measure_energy(call, pynvml, handle, torch, device, opts.energy_seconds, stats.median_ms)
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(f"cuda: {type(model).__name__} failed on input {shape}: {exc}") from exc
        finally:
            gpu_model = None  # drop the GPU copy before emptying the cache
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        extra: dict[str, Any] = {
            "input_shape": list(shape),
            "timer": "cuda_events",
            "dtype": "float16" if opts.half else "float32",
        }
        if energy is not None:
            extra.update(energy)
            extra[ENERGY_EXTRA_KEY] = energy["energy_mj_per_call"] / opts.batch_size
        return self.make_measurement(
            stats,
            runtime=f"torch {torch.__version__} CUDA {torch.version.cuda}",
            artifact_format="pytorch",
            threads=1,
            batch_size=opts.batch_size,
            extra=extra,
        )


@hookimpl
def nasflow_devices():
    return [CudaDevice]
