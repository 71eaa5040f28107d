"""Device backend that converts PyTorch models to ``.tflite`` and times them with LiteRT on the CPU.

LiteRT (formerly TensorFlow Lite) is the runtime most Android and embedded apps ship; its CPU path
(XNNPACK) is what a phone's CPU runs, so timing the converted model here ranks candidates the way
the phone will, far better than eager PyTorch does. For the phone itself see the ``android``
device, which reuses this module's converter and cache.

Install
-------
Two packages, installed differently (a pip resolver conflict, not a runtime one):

* the interpreter, ``ai-edge-litert`` (imported as ``ai_edge_litert``): ``pip install
  'nasflow[litert]'``. It installs cleanly next to nasflow. ``tflite-runtime`` is accepted instead
  where that is what is installed, but its last release (2.14) does not import under NumPy 2.
  With the interpreter alone, ``.tflite`` artifacts can be timed (``measure_artifact``).
* the converter, ``litert-torch`` 0.10 (needed to time PyTorch models, i.e. for search): it pins
  ``typing-extensions<4.13`` through ``litert-converter`` -> ``xdsl==0.28.0``, while prefect 3.8.8
  needs ``>=4.15`` (through ``pydocket`` -> ``py-key-value-aio``), so pip cannot resolve both in
  one command. Install it in a second step, then lift typing-extensions again::

      pip install 'litert-torch==0.10.*'
      pip install -U 'typing-extensions>=4.15'

  The first step downgrades typing-extensions to 4.12.2 (and pydantic to 2.11, anyio to 4.14);
  the second restores what prefect's dependencies declare, after which pip reports ``xdsl 0.28.0
  requires typing-extensions<4.13``. Neither pin matters at run time: conversion works with
  typing-extensions 4.16 (outputs equal PyTorch's to 6e-8) and nasflow's pipeline tests pass with
  either version. ``litert-torch`` adds about 1.2 GB (jax, transformers, torchao) and takes 5-10 s
  to import; it is imported only when the first model is converted.

Methodology
-----------
* **Conversion.** ``litert_torch.convert(model.eval(), (sample,))`` on one fixed random input of
  the timed shape (batch first, NCHW kept: the converter inserts the layout transposes), then
  ``export``. The model's train/eval mode is restored afterwards. Conversions run one at a time.
* **Batches.** Before a batch of models is timed (a LUT, calibration models), ``prepare``
  converts the uncached ones in ``convert_workers`` spawned processes (default: one per core),
  so conversion runs in parallel and never overlaps the timing. Converting many operators as
  signatures of one ``.tflite`` was tried and saves nothing: the cost is per graph (export and
  lowering), not per converter call.
* **Cache.** Conversion takes seconds, so converted files are kept in ``cache_dir`` under a name
  made of the architecture hash (``arch_hash`` plus the class count for nasflow's ``ArchNet``;
  otherwise a hash of the module's structure and parameter shapes), the input shape, and a hash of
  the torch and litert-torch versions. A second measurement of the same architecture reuses the
  file. The key ignores weight *values*: float latency does not depend on them, but do not use
  the cache to deploy trained weights (``convert_to_tflite`` always converts).
* **Timing.** A LiteRT ``Interpreter`` with ``num_threads=threads``; ``xnnpack=True`` keeps the
  default XNNPACK delegate (op resolver ``AUTO``), ``False`` uses the built-in kernels only
  (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``). The input tensor is set once; ``interpreter.invoke()``
  is timed with :func:`nasflow.timing.measure_with` (warm-up, contended windows set aside, repeat
  until ``min_seconds`` have passed and the median's 95 % CI is within ``rel_ci``), so the
  numbers compare directly with ``torch-cpu`` and ``onnxruntime-cpu``.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from nasflow.errors import DeviceError
from nasflow.export import sha256_file
# The runtime and the converter live in the export package; the names stay importable from here
# because the android and edgetpu devices and their tests reach them through this module.
from nasflow.export.tflite_fp32 import (  # noqa: F401
    CONVERTER_HINT,
    CONVERTER_MISSING,
    INPUT_SEED,
    INTERPRETER_HINT,
    _dist_version,
    _find_runtime,
    _first_line,
    _import_converter,
    _runtime,
    convert_to_tflite,
    converter_available,
    converting,
    verify_tflite,
)
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement
from nasflow.reaper import exit_with_parent
from nasflow.timing import TimingOptions, measure_with

if TYPE_CHECKING:
    import torch

def model_key(model: "torch.nn.Module") -> str:
    """Identity of a model's structure: `arch-<arch_hash>-c<classes>` for ArchNet, else a structure hash."""
    from nasflow.space import ArchNet, arch_hash

    if isinstance(model, ArchNet):
        return f"arch-{arch_hash(model.arch)}-c{model.num_classes}"
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        h.update(f"\n{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return f"module-{h.hexdigest()[:16]}"


def cache_path(model: "torch.nn.Module", input_shape: tuple[int, ...], cache_dir: str | os.PathLike) -> Path:
    """Where the converted file of `model` on `input_shape` lives in `cache_dir`."""
    import torch

    versions = f"torch={torch.__version__};litert-torch={_dist_version('litert-torch')}"
    tag = hashlib.sha256(versions.encode()).hexdigest()[:8]
    shape = "x".join(str(int(n)) for n in input_shape)
    return Path(cache_dir) / f"{model_key(model)}-{shape}-{tag}.tflite"


def cached_tflite(
    model: "torch.nn.Module", input_shape: tuple[int, ...], cache_dir: str | os.PathLike
) -> tuple[Path, float | None]:
    """The .tflite of `model` on `input_shape` from the cache, converting on a miss.

    Returns the path and the conversion time in seconds (None on a cache hit).
    """
    path = cache_path(model, input_shape, cache_dir)
    if path.is_file() and path.stat().st_size > 0:
        return path, None
    start = time.perf_counter()
    convert_to_tflite(model, input_shape, path)
    return path, time.perf_counter() - start


def _convert_job(model: "torch.nn.Module", input_shape: tuple[int, ...], path: str) -> str | None:
    """Worker-process body of `convert_all`: convert one model; the error's first line, or None."""
    try:
        convert_to_tflite(model, input_shape, path)
        return None
    except DeviceError as exc:
        return str(exc)


def convert_all(
    jobs: list[tuple["torch.nn.Module", tuple[int, ...], Path]],
    workers: int,
    progress: "Callable[[int, int], None] | None" = None,
) -> dict[Path, str]:
    """Convert (model, input shape, path) jobs with `workers` processes; {path: error} of failures.

    Conversion is CPU-bound and holds process-global state, so parallelism means processes
    (spawned: the converter and fork do not mix) from a pool kept for the life of this process.
    Each worker pays the converter's import once (5-10 s), so one worker, or one job, converts
    in this process instead.
    """
    failures: dict[Path, str] = {}
    done = 0

    def record(path: Path, error: str | None) -> None:
        nonlocal done
        if error is not None:
            failures[path] = error
        done += 1
        if progress is not None:
            progress(done, len(jobs))

    if progress is not None:
        progress(0, len(jobs))
    if workers <= 1 or len(jobs) <= 1:
        for model, shape, path in jobs:
            record(path, _convert_job(model, shape, str(path)))
        return failures
    futures = {_conversion_pool(workers).submit(_convert_job, m, shape, str(path)): path for m, shape, path in jobs}
    broken = False
    for future in as_completed(futures):
        try:
            error = future.result()
        except Exception as exc:  # a worker that died, a model that does not pickle
            error = f"litert: conversion worker failed: {_first_line(exc)}"
            broken = broken or isinstance(exc, BrokenProcessPool)
        record(futures[future], error)
    if broken:
        _close_pool(workers)  # the next batch starts fresh workers
    return failures


_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _conversion_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of `workers` spawned converters, kept for the life of this process.

    Reused across batches (each search batch calls `prepare`), so every worker imports
    litert-torch once rather than once per batch.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,  # an idle worker would outlive a process killed without clean-up
            )
            _POOLS[workers] = pool
        return pool


def _close_pool(workers: int) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _close_pools() -> None:
    for workers in list(_POOLS):
        _close_pool(workers)


def time_interpreter(
    interp: Any, path: Path, shape: tuple[int, ...], options: TimingOptions, device: str
) -> tuple[LatencyStats, dict[str, Any]]:
    """Time `interp.invoke()` on one fixed random input (seeded, of the model's input type).

    The model must have one input holding as many values as `shape`. Shared by the devices that
    run .tflite files (litert, edgetpu).
    """
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise DeviceError(f"{device}: expected a model with one input, {path} has {len(inputs)}")
    detail = inputs[0]
    model_shape = tuple(int(n) for n in detail["shape"])
    if math.prod(model_shape) != math.prod(shape):
        raise DeviceError(f"{device}: {path} takes input {model_shape}, not {shape}")
    dtype = np.dtype(detail["dtype"])
    rng = np.random.default_rng(INPUT_SEED)
    if np.issubdtype(dtype, np.floating):
        x = rng.standard_normal(model_shape).astype(dtype)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=model_shape, endpoint=True).astype(dtype)
    else:
        raise DeviceError(f"{device}: unsupported input type {dtype} in {path}")
    try:
        interp.set_tensor(detail["index"], x)
        stats = measure_with(interp.invoke, options)
    except Exception as exc:
        raise DeviceError(f"{device}: inference of {path} on input {model_shape} failed: {_first_line(exc)}") from exc
    return stats, {"model_input_shape": list(model_shape), "input_dtype": str(dtype)}


def convert_uncached(
    jobs, cache_dir: str | os.PathLike, workers: int = 0, progress: "Callable[[int, int], None] | None" = None
) -> dict[Path, str]:
    """Convert every (model, input shape) of `jobs` missing from `cache_dir`, with `workers` processes.

    `workers` 0 means one per CPU core. Returns {path: error} of the conversions that failed;
    nothing when litert-torch is missing (the measurement then says so).
    """
    if not converter_available():
        return {}
    todo: dict[Path, tuple[Any, tuple[int, ...]]] = {}
    for model, shape in jobs:
        shape = tuple(int(n) for n in shape)
        path = cache_path(model, shape, cache_dir)
        if not (path.is_file() and path.stat().st_size > 0):
            todo.setdefault(path, (model, shape))
    if not todo:
        return {}
    count = min(len(todo), workers or os.cpu_count() or 1)
    return convert_all([(m, shape, path) for path, (m, shape) in todo.items()], count, progress)


# ---------------------------------------------------------------- device


class LiteRTOptions(TimingOptions):
    """Timing stop rule plus LiteRT's thread count, XNNPACK switch and the conversion cache."""

    threads: int = Field(1, ge=1, description="interpreter threads (num_threads)")
    xnnpack: bool = Field(True, description="use the default XNNPACK delegate (false: built-in kernels only)")
    cache_dir: Path = Field(Path(".nasflow/tflite"), description="converted .tflite files, reused across runs")
    convert_workers: int = Field(
        0, ge=0, description="processes converting a batch of models (a LUT, calibration models) in parallel; 0: one per CPU core"
    )


class LiteRTDevice(DeviceBackend):
    """PyTorch -> .tflite with litert-torch, timed with LiteRT's CPU interpreter (XNNPACK)."""

    name = "litert"
    description = "LiteRT (TFLite) CPU interpreter with XNNPACK, models converted with litert-torch"
    Options = LiteRTOptions
    artifact_formats = ("tflite", "tflite-int8")  # float32 and full-integer files run on the same interpreter

    @classmethod
    def unavailable_reason(cls, options=None) -> str | None:
        _, problem = _find_runtime()
        if problem is not None:
            return problem
        if not converter_available():
            return CONVERTER_MISSING
        return None

    def fingerprint(self) -> dict[str, Any]:
        rt = _runtime()
        return base_fingerprint(
            "litert",
            rt.version,
            self.options.threads,
            interpreter_package=rt.package,
            xnnpack=self.options.xnnpack,
            litert_torch_version=_dist_version("litert-torch"),
        )

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        shape = tuple(int(n) for n in input_shape)
        _runtime()  # fail before a conversion that could not be timed anyway
        path, seconds = cached_tflite(model, shape, self.options.cache_dir)
        stats, details = self._time(path, shape)
        extra = {
            "input_shape": list(shape),
            "tflite": str(path),
            "tflite_bytes": path.stat().st_size,
            "cache_hit": seconds is None,
            "conversion_seconds": seconds,
            **details,
        }
        return self._measurement(stats, shape[0], extra)

    def prepare(self, jobs, progress=None) -> None:
        """Convert every model of the batch that is not cached yet, in parallel worker processes.

        Failures are left for `measure_model`, which converts again and reports that model's error.
        """
        if _find_runtime()[0] is None:
            return  # measure_model explains what is missing
        convert_uncached(jobs, self.options.cache_dir, self.options.convert_workers, progress)

    def measure_artifact(self, path: str, fmt: str, input_shape: tuple[int, ...]) -> Measurement:
        if fmt not in self.artifact_formats:
            return super().measure_artifact(path, fmt, input_shape)
        if not Path(path).is_file():
            raise DeviceError(f"litert: no .tflite file at {path}")
        shape = tuple(int(n) for n in input_shape)
        stats, details = self._time(Path(path), shape)
        extra = {"input_shape": list(shape), "artifact": str(path), "sha256": sha256_file(path), **details}
        return self._measurement(stats, shape[0], extra, fmt)

    def interpreter(self, path: str | os.PathLike):
        """A LiteRT interpreter on `path` with this device's threads and XNNPACK setting, tensors allocated."""
        rt = _runtime()
        kwargs: dict[str, Any] = {"model_path": os.fspath(path), "num_threads": self.options.threads}
        if rt.op_resolver is not None:
            kind = "AUTO" if self.options.xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
            kwargs["experimental_op_resolver_type"] = getattr(rt.op_resolver, kind)
        elif not self.options.xnnpack:
            raise DeviceError(f"litert: {rt.package} {rt.version} cannot turn XNNPACK off; set xnnpack: true")
        try:
            interp = rt.interpreter(**kwargs)
            interp.allocate_tensors()
        except Exception as exc:
            raise DeviceError(f"litert: cannot load {path}: {_first_line(exc)}") from exc
        return interp

    def _time(self, path: Path, shape: tuple[int, ...]) -> tuple[LatencyStats, dict[str, Any]]:
        """Time `invoke()` on one fixed random input; the model's input must hold as many values as `shape`."""
        return time_interpreter(self.interpreter(path), path, shape, self.options, self.name)

    def _measurement(self, stats: LatencyStats, batch: int, extra: dict[str, Any], fmt: str = "tflite") -> Measurement:
        rt = _runtime()
        delegate = "XNNPACK" if self.options.xnnpack else "built-in kernels"
        return self.make_measurement(
            stats,
            runtime=f"{rt.package} {rt.version} ({delegate})",
            artifact_format=fmt,
            threads=self.options.threads,
            batch_size=batch,
            extra=extra,
        )


@hookimpl
def nasflow_devices():
    return [LiteRTDevice]
