"""Device backend that times models on a real Coral Edge TPU: int8 .tflite, edgetpu_compiler, delegate.

Where no Edge TPU is attached, use ``edgetpu-model`` (an analytical estimate that says
``estimated`` in every row); this backend only reports ``measured`` numbers from the chip.

Pipeline per model
------------------
1. **Full-integer conversion** with litert-torch's PT2E static quantization
   (:mod:`nasflow.export.tflite_int8`), cached by architecture like the float
   ``litert`` files.
2. **Compilation** with Coral's ``edgetpu_compiler`` (``--out_dir``, ``--show_operations``); its
   log is parsed for the compiler version and how many operations run on the Edge TPU and how
   many fall back to the CPU (the Edge TPU runs ops only up to the first unsupported one). A
   model with no operation on the Edge TPU is refused: timing it would measure the host CPU.
3. **Timing** on the LiteRT interpreter with the Edge TPU delegate
   (``load_delegate(delegate_library)``, ``libedgetpu.so.1`` on Linux), with the same stop rule
   as the CPU backends (:mod:`nasflow.timing`).

Setup on a machine with a Coral USB Accelerator or Dev Board (Debian/Ubuntu)::

    echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | \\
        sudo tee /etc/apt/sources.list.d/coral-edgetpu.list
    curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -
    sudo apt-get update && sudo apt-get install libedgetpu1-std edgetpu-compiler
    scripts/setup-litert          # ai-edge-litert and litert-torch in .venv

``edgetpu_compiler`` is published for x86-64 Linux only; on an ARM host (the Dev Board) compile
elsewhere and point ``compiler`` at a wrapper, or time precompiled ``*_edgetpu.tflite`` files with
``measure_artifact``. Tested here only up to the hardware boundary: the suite runs the real int8
conversion and this module's compile/parse/measure path against a stand-in ``edgetpu_compiler``
and a stand-in delegate loader (no Edge TPU exists on the development machines).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from nasflow.edgetpu import block_support
from nasflow.errors import DeviceError
from nasflow.export import sha256_file
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement, OpSupport
from nasflow.plugins.devices.litert import (
    LiteRTDevice,
    _dist_version,
    _first_line,
    _runtime,
    cache_path,
    time_interpreter,
)
from nasflow.timing import TimingOptions

if TYPE_CHECKING:
    import torch

    from nasflow.arch import Block

COMPILER_HINT = (
    "install Coral's edgetpu-compiler (x86-64 Linux: apt-get install edgetpu-compiler from "
    "https://packages.cloud.google.com/apt coral-edgetpu-stable), or set the device's `compiler` option"
)
RUNTIME_HINT = (
    "install the Edge TPU runtime (apt-get install libedgetpu1-std from Coral's repository), or set "
    "`delegate_library`; without an Edge TPU use the `edgetpu-model` device (estimated latency)"
)
_VERSION = re.compile(r"Edge TPU Compiler version\s+(\S+)")
_ON_TPU = re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)")
_ON_CPU = re.compile(r"Number of operations that will run on CPU:\s*(\d+)")


class EdgeTPUOptions(TimingOptions):
    """Timing stop rule, the two Coral tools, and where compiled models are cached."""

    compiler: str = Field("edgetpu_compiler", description="edgetpu_compiler executable (name on PATH or path)")
    delegate_library: str = Field("libedgetpu.so.1", description="Edge TPU delegate shared library")
    device: str | None = Field(None, description="which Edge TPU, e.g. 'usb:0' or 'pci:0' (None: the first)")
    cache_dir: Path = Field(Path(".nasflow/edgetpu"), description="int8 and compiled .tflite files")
    compiler_timeout_s: float = Field(300.0, gt=0)


@dataclass(frozen=True)
class CompileResult:
    """What edgetpu_compiler produced and said."""

    path: Path
    compiler_version: str | None
    ops_on_tpu: int | None
    ops_on_cpu: int | None
    log: str


def parse_compiler_log(text: str) -> tuple[str | None, int | None, int | None]:
    """(compiler version, operations on the Edge TPU, operations on the CPU) from the compiler's output."""

    def number(pattern: re.Pattern) -> int | None:
        found = pattern.search(text)
        return int(found.group(1)) if found else None

    version = _VERSION.search(text)
    return (version.group(1) if version else None), number(_ON_TPU), number(_ON_CPU)


def compile_for_edgetpu(model_path: Path, out_dir: Path, compiler: str, timeout_s: float) -> CompileResult:
    """Run edgetpu_compiler on an int8 .tflite; the compiled file is `<stem>_edgetpu.tflite` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [compiler, "--out_dir", str(out_dir), "--show_operations", str(model_path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise DeviceError(f"edgetpu: {compiler!r} not found: {COMPILER_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"edgetpu: edgetpu_compiler did not finish within {timeout_s:.0f} s on {model_path}") from exc
    log = (proc.stdout or "") + (proc.stderr or "")
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        tail = " | ".join(line.strip() for line in log.strip().splitlines()[-4:])
        raise DeviceError(f"edgetpu: edgetpu_compiler failed on {model_path.name} (exit {proc.returncode}): {tail}")
    version, on_tpu, on_cpu = parse_compiler_log(log)
    return CompileResult(compiled, version, on_tpu, on_cpu, log)


def delegate_problem(library: str) -> str | None:
    """Why the Edge TPU delegate library cannot be loaded here (None: it loads)."""
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return f"the Edge TPU runtime {library!r} cannot be loaded ({_first_line(exc)}): {RUNTIME_HINT}"
    return None


def _load_delegate(library: str, device: str | None) -> Any:
    """The Edge TPU delegate: the hardware boundary (tests replace this function)."""
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:  # pragma: no cover - tflite-runtime installs
        from tflite_runtime.interpreter import load_delegate
    options = {"device": device} if device else {}
    try:
        return load_delegate(library, options)
    except Exception as exc:
        raise DeviceError(f"edgetpu: no Edge TPU delegate ({_first_line(exc)}); is a Coral device attached?") from exc


class EdgeTPUDevice(DeviceBackend):
    """Coral Edge TPU: full-int8 .tflite compiled by edgetpu_compiler, timed through the delegate."""

    name = "edgetpu"
    description = "Coral Edge TPU (int8 .tflite, edgetpu_compiler, libedgetpu delegate)"
    Options = EdgeTPUOptions
    artifact_formats = ("edgetpu",)

    @classmethod
    def unavailable_reason(cls, options: EdgeTPUOptions | None = None) -> str | None:
        opts = options if options is not None else cls.Options()
        problem = LiteRTDevice.unavailable_reason()  # the interpreter and the converter come first
        if problem is not None:
            return problem
        if shutil.which(opts.compiler) is None:
            return f"edgetpu_compiler not found as {opts.compiler!r}: {COMPILER_HINT}"
        return delegate_problem(opts.delegate_library)

    def fingerprint(self) -> dict[str, Any]:
        rt = _runtime()
        return base_fingerprint(
            "edgetpu",
            rt.version,
            1,
            interpreter_package=rt.package,
            delegate_library=self.options.delegate_library,
            edgetpu_device=self.options.device,
            litert_torch_version=_dist_version("litert-torch"),
        )

    def op_support(self, block: "Block", in_channels: int) -> OpSupport:
        """The estimator's operator mapping (`nasflow.edgetpu.block_support`): what is known of the
        compiler's rules before compiling; each measurement records what the compiler really mapped
        (`ops_on_edgetpu`, `ops_on_cpu`)."""
        return block_support(block, in_channels)

    def _int8_path(self, model: "torch.nn.Module", shape: tuple[int, ...]) -> Path:
        float_name = cache_path(model, shape, self.options.cache_dir)
        return float_name.with_name(float_name.stem + "-int8-nhwc.tflite")

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        from nasflow.export.tflite_int8 import convert_to_tflite_int8

        shape = tuple(int(n) for n in input_shape)
        int8 = self._int8_path(model, shape)
        if not (int8.is_file() and int8.stat().st_size > 0):
            # channel-last input: an NCHW file starts with a TRANSPOSE the compiler cannot map,
            # and it maps nothing after the first operator it cannot
            convert_to_tflite_int8(model, shape, int8, channel_last=True)
        compiled = compile_for_edgetpu(int8, int8.parent / "compiled", self.options.compiler, self.options.compiler_timeout_s)
        if compiled.ops_on_tpu == 0:
            raise DeviceError(
                f"edgetpu: edgetpu_compiler mapped no operation of {type(model).__name__} to the Edge TPU "
                f"({compiled.ops_on_cpu} on the CPU); check the space with nasflow.edgetpu.op_compatibility"
            )
        stats, details = self._time(compiled.path, shape)
        extra = {
            "input_shape": list(shape),
            "int8_tflite": str(int8),
            "edgetpu_tflite": str(compiled.path),
            "compiler_version": compiled.compiler_version,
            "ops_on_edgetpu": compiled.ops_on_tpu,
            "ops_on_cpu": compiled.ops_on_cpu,
            **details,
        }
        return self._measurement(stats, shape[0], extra)

    def measure_artifact(self, path: str, fmt: str, input_shape: tuple[int, ...]) -> Measurement:
        if fmt not in self.artifact_formats:
            return super().measure_artifact(path, fmt, input_shape)
        if not Path(path).is_file():
            raise DeviceError(f"edgetpu: no compiled model at {path}")
        shape = tuple(int(n) for n in input_shape)
        stats, details = self._time(Path(path), shape)
        return self._measurement(stats, shape[0], {"artifact": str(path), "sha256": sha256_file(path), **details})

    def _time(self, path: Path, shape: tuple[int, ...]) -> tuple[LatencyStats, dict[str, Any]]:
        rt = _runtime()
        delegate = _load_delegate(self.options.delegate_library, self.options.device)
        try:
            interp = rt.interpreter(model_path=str(path), experimental_delegates=[delegate] if delegate else None)
            interp.allocate_tensors()
        except Exception as exc:
            raise DeviceError(f"edgetpu: cannot load {path} with the Edge TPU delegate: {_first_line(exc)}") from exc
        stats, details = time_interpreter(interp, path, shape, self.options, self.name)
        return stats, {**details, "delegate": delegate is not None}

    def _measurement(self, stats: LatencyStats, batch: int, extra: dict[str, Any]) -> Measurement:
        rt = _runtime()
        return self.make_measurement(
            stats,
            runtime=f"{rt.package} {rt.version} + Edge TPU delegate ({self.options.delegate_library})",
            artifact_format="edgetpu",
            threads=1,
            batch_size=batch,
            extra=extra,
        )


@hookimpl
def nasflow_devices():
    return [EdgeTPUDevice]
