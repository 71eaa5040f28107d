"""Device backend that times ``.tflite`` models on an Android phone's CPU with TFLite's ``benchmark_model``.

Each candidate is converted to ``.tflite`` with the ``litert`` device's converter and cache
(``litert-torch``; see :mod:`nasflow.plugins.devices.litert` for installing it), pushed to the
phone with ``adb``, and timed there by the native ``benchmark_model`` tool, optionally pinned to
chosen cores with ``taskset``. Deployed ``.tflite`` files are timed the same way through
``measure_artifact``, which needs no converter at all.

Pointing it at a real phone
---------------------------
1. Install Android SDK Platform-Tools so that ``adb`` is on ``PATH`` (or set ``options.adb`` to
   its path).
2. On the phone: Settings > About phone > tap "Build number" seven times, then Developer options >
   enable "USB debugging". Connect it and accept the "Allow USB debugging?" prompt.
3. ``adb devices`` must list the phone as ``device`` (``unauthorized``: accept the prompt;
   ``offline``: reconnect). With several phones attached, set ``options.serial`` to one serial.
4. Get ``benchmark_model`` for the phone's ABI (usually arm64-v8a): TensorFlow publishes prebuilt
   ``android_aarch64_benchmark_model`` binaries with its TFLite performance-measurement docs, or
   build it: ``bazel build -c opt --config=android_arm64
   tensorflow/lite/tools/benchmark:benchmark_model``. Then::

       adb -s SERIAL push android_aarch64_benchmark_model /data/local/tmp/benchmark_model
       adb -s SERIAL shell chmod +x /data/local/tmp/benchmark_model

5. Pin the big cores for stable numbers: ``cpu_mask`` is a ``taskset`` hex mask (``f0`` = CPUs 4-7,
   the big cluster on many 4+4 phones; ``80`` = CPU 7, often the prime core). Find the clusters
   with ``adb shell cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq``. Keep the phone
   cool, charged and idle; numbers drift with temperature.

A spec entry::

    devices:
      - {name: android, options: {serial: R58M123ABC, cpu_mask: f0, threads: 1}}

What is measured, and what is not
---------------------------------
The device runs ``taskset MASK BINARY --graph=... --num_threads=N --num_runs=R --warmup_runs=W
--use_xnnpack=true|false`` and parses its log. ``benchmark_model`` prints no per-run timings, only
a summary line per phase (microseconds)::

    count=50 first=401 curr=379 min=352 max=811 avg=382.6 std=27 p5=358 median=377 p95=421

The ``p5/median/p95`` fields exist in builds from 2023 on; older builds stop after ``std``. So:

* ``median_ms`` is the printed median; where the build prints none it is the **mean** (``avg``),
  and ``extra['median_source']`` says so.
* ``p90_ms`` is the printed **p95** (an upper bound of p90), or ``max`` where no percentiles are
  printed; ``extra['p90_source']`` says which.
* ``mean_ms``, ``std_ms`` (population std), ``min_ms``, ``runs`` (the timed count, at least
  ``num_runs``: the tool also runs for at least one second) come from the same line, ``warmup``
  from the warm-up phase's count.
* ``rel_ci`` is the half-width of the 95 % CI of the **mean** (``1.96 * std / sqrt(count) /
  avg``), the closest honest figure without the samples; ``outliers`` is 0 (none are dropped).
* ``extra`` keeps the rest: init time, first inference, warm-up average, model size, whether the
  XNNPACK delegate was applied and to how many nodes, peak memory when printed, the exact command.

The fingerprint describes the phone (model, Android release, SoC), the benchmark binary (sha256
of the file on the phone), the thread count, the core mask and the XNNPACK switch; the serial
number is kept in ``extra`` only, so identical phones share latency tables.

A failing ``adb`` call (unplugged phone, full storage, a crashing binary) raises ``DeviceError``
with adb's own message; the pipeline then marks just that candidate failed.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from nasflow import __version__
from nasflow.errors import DeviceError
from nasflow.export import sha256_file
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement, PluginOptions
from nasflow.plugins.devices import litert

if TYPE_CHECKING:
    import torch

PROBE_TIMEOUT_S = 30.0  # adb devices / getprop / file checks
Z_95 = 1.959963984540054
PLATFORM_TOOLS_HINT = "install Android SDK Platform-Tools and put adb on PATH, or set options.adb to its path"


class AndroidOptions(PluginOptions):
    """Which phone, which benchmark binary, and how benchmark_model runs there."""

    serial: str | None = Field(None, description="adb serial of the phone; needed when several are attached")
    adb: str = Field("adb", description="adb executable (name on PATH or a path)")
    benchmark_binary: str = Field("/data/local/tmp/benchmark_model", description="benchmark_model on the phone")
    threads: int = Field(1, ge=1, description="--num_threads")
    cpu_mask: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]+$", description="taskset hex mask to pin cores, e.g. f0 for CPUs 4-7"
    )
    num_runs: int = Field(50, ge=1, description="--num_runs: minimum timed runs")
    warmup_runs: int = Field(10, ge=0, description="--warmup_runs: minimum untimed runs")
    use_xnnpack: bool = Field(True, description="--use_xnnpack (false: TFLite's built-in kernels)")
    remote_dir: str = Field("/data/local/tmp/nasflow", description="where models are pushed on the phone")
    cache_dir: Path = Field(Path(".nasflow/tflite"), description="converted .tflite files (shared with litert)")
    timeout_s: float = Field(600.0, gt=0, description="limit for one adb command, seconds")


# ---------------------------------------------------------------- benchmark_model output


class BenchmarkParseError(ValueError):
    """benchmark_model's output holds no timing statistics."""


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_KEY_VALUE = re.compile(rf"([A-Za-z]\w*)=({_NUMBER})")
_RUNNING = "Running benchmark for at least"
_SUMMARY = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})"
)
_MODEL_SIZE = re.compile(rf"input model file size \(MB\): ({_NUMBER})")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\)")
_PEAK_MEMORY = re.compile(rf"peak memory footprint \(MB\)[^:]*: ({_NUMBER})")
_VERSION = re.compile(r"(?:LiteRT|TensorFlow Lite|TFLite)\b[^\n]*?\bversion\b[\s:=\[]*v?(\d[\w.\-]*)", re.I)
_FAILED = ("Benchmarking failed", "Failed to", "ERROR:", "Aborted", "Segmentation fault", "CANNOT LINK")


@dataclass(frozen=True)
class PhaseStats:
    """One `count=... first=... ... avg=... std=...[ p5=... median=... p95=...]` line, microseconds."""

    count: int
    first: float
    curr: float
    min: float
    max: float
    avg: float
    std: float
    p5: float | None = None
    median: float | None = None
    p95: float | None = None

    @classmethod
    def from_line(cls, line: str) -> "PhaseStats":
        values = {k: float(v) for k, v in _KEY_VALUE.findall(line[line.index("count=") :])}
        count = int(values["count"])
        if "avg" not in values:  # "count=50 curr=812(all same)" or "count=1 curr=812"
            curr = values.get("curr", 0.0)
            return cls(count, curr, curr, curr, curr, curr, 0.0, curr, curr, curr)
        return cls(
            count,
            values.get("first", values["avg"]),
            values.get("curr", values["avg"]),
            values.get("min", values["avg"]),
            values.get("max", values["avg"]),
            values["avg"],
            values.get("std", 0.0),
            values.get("p5"),
            values.get("median"),
            values.get("p95"),
        )


@dataclass(frozen=True)
class BenchmarkReport:
    """What one benchmark_model run printed."""

    timed: PhaseStats
    warmup: PhaseStats | None = None
    timed_source: str = "timed runs"
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    model_size_mb: float | None = None
    xnnpack_applied: bool = False
    delegated_nodes: tuple[int, int] | None = None  # (replaced, total) of the first partitioned subgraph
    peak_memory_mb: float | None = None
    version: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)


def _is_phase_line(line: str) -> bool:
    """A bare statistics line (after an optional log prefix), not the op profiler's summary lines."""
    if "count=" not in line:
        return False
    prefix = line[: line.index("count=")]
    return not re.search(r"Timings|Memory|bytes|microseconds", prefix)


def parse_benchmark_output(text: str) -> BenchmarkReport:
    """Parse benchmark_model's log (any build from 2019 on; logcat prefixes are fine)."""
    lines = text.splitlines()
    markers = [i for i, line in enumerate(lines) if _RUNNING in line]

    def first_phase_after(start: int, stop: int) -> PhaseStats | None:
        for line in lines[start:stop]:
            if _is_phase_line(line):
                return PhaseStats.from_line(line)
        return None

    timed = warmup = None
    source = "timed runs"
    if markers:
        timed = first_phase_after(markers[-1] + 1, len(lines))
        if len(markers) >= 2:
            warmup = first_phase_after(markers[-2] + 1, markers[-1])
    else:
        phases = [PhaseStats.from_line(line) for line in lines if _is_phase_line(line)]
        if phases:
            timed = phases[-1]
            warmup = phases[-2] if len(phases) >= 2 else None
    if timed is None:
        summaries = [line for line in lines if "Timings (microseconds):" in line and "count=" in line]
        if summaries:
            timed, source = PhaseStats.from_line(summaries[-1]), "op profiler's run summary"
    if timed is None:
        raise BenchmarkParseError("benchmark_model printed no timing statistics")

    def number(pattern: re.Pattern, group: int = 1) -> float | None:
        m = pattern.search(text)
        return float(m.group(group)) if m else None

    summary = _SUMMARY.search(text)
    replacing = _REPLACING.search(text)
    version = _VERSION.search(text)
    return BenchmarkReport(
        timed=timed,
        warmup=warmup,
        timed_source=source,
        init_us=float(summary.group(1)) if summary else None,
        first_inference_us=float(summary.group(2)) if summary else None,
        warmup_avg_us=float(summary.group(3)) if summary else None,
        inference_avg_us=float(summary.group(4)) if summary else None,
        model_size_mb=number(_MODEL_SIZE),
        xnnpack_applied="XNNPACK delegate" in text or bool(replacing and "XNNPack" in replacing.group(3)),
        delegated_nodes=(int(replacing.group(1)), int(replacing.group(2))) if replacing else None,
        peak_memory_mb=number(_PEAK_MEMORY),
        version=version.group(1) if version else None,
        errors=tuple(line.strip() for line in lines if any(marker in line for marker in _FAILED)),
    )


def latency_stats(report: BenchmarkReport, warmup_runs: int) -> tuple[LatencyStats, dict[str, str]]:
    """LatencyStats from a report, and notes on which printed figure stands in for which field."""
    t = report.timed
    ms = 1e-3
    if t.median is not None:
        median, median_source = t.median, "benchmark_model median"
    else:
        median, median_source = t.avg, "mean: this benchmark_model build prints no median, median_ms holds avg"
    if t.p95 is not None:
        p90, p90_source = t.p95, "benchmark_model p95 (an upper bound of p90; p90 is not printed)"
    else:
        p90, p90_source = t.max, "max (no percentiles printed; an upper bound of p90)"
    rel_ci = Z_95 * t.std / math.sqrt(t.count) / t.avg if t.count >= 2 and t.avg > 0 else math.inf
    stats = LatencyStats(
        median_ms=median * ms,
        p90_ms=p90 * ms,
        mean_ms=t.avg * ms,
        std_ms=t.std * ms,
        min_ms=t.min * ms,
        runs=t.count,
        warmup=report.warmup.count if report.warmup is not None else warmup_runs,
        rel_ci=rel_ci,
        outliers=0,
    )
    notes = {
        "median_source": median_source,
        "p90_source": p90_source,
        "rel_ci_source": "95 % CI of the mean from avg, std and count (benchmark_model prints no per-run timings)",
        "timings_source": report.timed_source,
    }
    return stats, notes


# ---------------------------------------------------------------- adb


def _adb_command(adb: str, serial: str | None, args: list[str]) -> list[str]:
    return [adb, *(["-s", serial] if serial else []), *args]


def _run_adb(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run one adb command; DeviceError when adb is missing or the command hangs."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise DeviceError(f"android: adb not found ({argv[0]!r}): {PLATFORM_TOOLS_HINT}") from None
    except PermissionError as exc:
        raise DeviceError(f"android: cannot run adb ({argv[0]!r}): {exc}") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"android: `{shlex.join(argv)}` timed out after {timeout:g} s") from None


def _output_tail(proc: subprocess.CompletedProcess, lines: int = 6) -> str:
    text = "\n".join(part.strip() for part in (proc.stderr, proc.stdout) if part and part.strip())
    return " | ".join(text.splitlines()[-lines:]) or "no output"


def _adb_missing(adb: str) -> bool:
    if os.sep in adb or (os.altsep and os.altsep in adb):
        return not (os.path.isfile(adb) and os.access(adb, os.X_OK))
    return shutil.which(adb) is None


def attached_devices(adb: str = "adb", timeout: float = PROBE_TIMEOUT_S) -> list[tuple[str, str]]:
    """(serial, state) of every device `adb devices` lists; state 'device' means ready."""
    proc = _run_adb([adb, "devices"], timeout)
    if proc.returncode != 0:
        raise DeviceError(f"android: `{adb} devices` failed (exit {proc.returncode}): {_output_tail(proc)}")
    devices = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split(None, 1)
        devices.append((parts[0], parts[1].strip() if len(parts) > 1 else "unknown"))
    return devices


STATE_ADVICE = {
    "unauthorized": "accept the 'Allow USB debugging?' prompt on the phone",
    "offline": "reconnect the cable or run `adb kill-server`",
    "no permissions": "fix the USB permissions (udev rules / plugdev group) on this machine",
}


def _pick_serial(options: AndroidOptions, devices: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(serial, None) for the phone to use, or (None, why there is none)."""
    listed = ", ".join(f"{s} ({st})" for s, st in devices) or "none"
    if options.serial:
        state = dict(devices).get(options.serial)
        if state is None:
            return None, f"device {options.serial!r} is not attached (`adb devices` lists: {listed})"
        if state != "device":
            advice = next((a for k, a in STATE_ADVICE.items() if state.startswith(k)), "check the connection")
            return None, f"device {options.serial!r} is {state}: {advice}"
        return options.serial, None
    ready = [s for s, st in devices if st == "device"]
    if not ready:
        if devices:
            serial, state = devices[0]
            advice = next((a for k, a in STATE_ADVICE.items() if state.startswith(k)), "check the connection")
            return None, f"no usable Android device: {serial} is {state}: {advice}"
        return None, (
            "no Android device attached (`adb devices` lists none): enable USB debugging on the phone, "
            "connect it and accept the prompt"
        )
    if len(ready) > 1:
        return None, f"several Android devices attached ({', '.join(ready)}): set options.serial to one of them"
    return ready[0], None


def _binary_check_command(binary: str) -> str:
    return f"[ -x {shlex.quote(binary)} ] && echo nasflow-binary-ok || echo nasflow-binary-missing"


def _binary_problem(options: AndroidOptions, serial: str) -> str | None:
    argv = _adb_command(options.adb, serial, ["shell", _binary_check_command(options.benchmark_binary)])
    proc = _run_adb(argv, PROBE_TIMEOUT_S)
    if "nasflow-binary-ok" in proc.stdout:
        return None
    if proc.returncode != 0 and "nasflow-binary-missing" not in proc.stdout:
        return f"`{shlex.join(argv)}` failed (exit {proc.returncode}): {_output_tail(proc)}"
    b = options.benchmark_binary
    return (
        f"benchmark_model is missing or not executable on {serial} at {b}: get TFLite's prebuilt "
        f"android_aarch64_benchmark_model (or build //tensorflow/lite/tools/benchmark:benchmark_model with "
        f"--config=android_arm64), then `adb -s {serial} push android_aarch64_benchmark_model {b}` and "
        f"`adb -s {serial} shell chmod +x {b}`"
    )


def device_problem(options: AndroidOptions) -> tuple[str | None, str | None]:
    """(serial, None) when adb, the phone and benchmark_model are all there; else (None, what is missing)."""
    if _adb_missing(options.adb):
        return None, f"adb not found ({options.adb!r}): {PLATFORM_TOOLS_HINT}"
    try:
        serial, problem = _pick_serial(options, attached_devices(options.adb))
        if serial is None:
            return None, problem
        problem = _binary_problem(options, serial)
    except DeviceError as exc:
        return None, str(exc).removeprefix("android: ")
    return (serial, None) if problem is None else (None, problem)


def parse_getprop(text: str) -> dict[str, str]:
    """`adb shell getprop` dump (`[key]: [value]` lines) as a dict."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, flags=re.M))


# ---------------------------------------------------------------- device


class AndroidDevice(DeviceBackend):
    """An Android phone over adb, timed with TFLite's native benchmark_model."""

    name = "android"
    description = "TFLite benchmark_model on an Android phone over adb (taskset-pinned CPU, XNNPACK)"
    Options = AndroidOptions
    artifact_formats = ("tflite",)

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self._serial: str | None = None
        self._fingerprint: dict[str, Any] | None = None
        self._remote_dir_ready = False

    @classmethod
    def unavailable_reason(cls, options: AndroidOptions | None = None) -> str | None:
        _, problem = device_problem(options if options is not None else cls.Options())
        return problem

    # -- adb plumbing

    def serial(self) -> str:
        """The phone's serial, after checking adb, the phone and the binary once per device object."""
        if self._serial is None:
            serial, problem = device_problem(self.options)
            if serial is None:
                raise DeviceError(f"android: {problem}")
            self._serial = serial
        return self._serial

    def adb(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """`adb -s SERIAL ARGS...`; DeviceError with adb's message when it fails and `check` is set."""
        argv = _adb_command(self.options.adb, self.serial(), list(args))
        proc = _run_adb(argv, timeout or self.options.timeout_s)
        if check and proc.returncode != 0:
            raise DeviceError(f"android: `{shlex.join(argv)}` failed (exit {proc.returncode}): {_output_tail(proc)}")
        return proc

    def shell(self, *words: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on the phone; every word is shell-quoted."""
        return self.adb("shell", shlex.join(words), check=check)

    def benchmark_command(self, remote_model: str) -> list[str]:
        """The words of the benchmark_model command line run on the phone."""
        o = self.options
        words = ["taskset", o.cpu_mask] if o.cpu_mask else []
        return words + [
            o.benchmark_binary,
            f"--graph={remote_model}",
            f"--num_threads={o.threads}",
            f"--num_runs={o.num_runs}",
            f"--warmup_runs={o.warmup_runs}",
            f"--use_xnnpack={'true' if o.use_xnnpack else 'false'}",
        ]

    # -- DeviceBackend

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            o = self.options
            props = parse_getprop(self.shell("getprop").stdout)
            soc = " ".join(p for p in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if p)
            self._fingerprint = {
                "device_model": " ".join(
                    p for p in (props.get("ro.product.manufacturer"), props.get("ro.product.model")) if p
                ) or "unknown",
                "android_release": props.get("ro.build.version.release"),
                "sdk": props.get("ro.build.version.sdk"),
                "soc": soc or props.get("ro.board.platform") or props.get("ro.hardware") or "unknown",
                "board_platform": props.get("ro.board.platform"),
                "abi": props.get("ro.product.cpu.abi"),
                "build": props.get("ro.build.fingerprint"),
                "runtime": "tflite-benchmark_model",
                "runtime_version": self._binary_version(),
                "threads": o.threads,
                "cpu_mask": o.cpu_mask,
                "use_xnnpack": o.use_xnnpack,
                "nasflow_version": __version__,
            }
        return dict(self._fingerprint)

    def _binary_version(self) -> str:
        """sha256 (first 16 hex digits) of the benchmark binary on the phone; 'unknown' without sha256sum."""
        proc = self.shell("sha256sum", self.options.benchmark_binary, check=False)
        m = re.match(r"\s*([0-9a-f]{64})\b", proc.stdout)
        return f"sha256:{m.group(1)[:16]}" if proc.returncode == 0 and m else "unknown"

    def prepare(self, jobs, progress=None) -> None:
        """Convert the batch's uncached models on the host, in parallel, before any is pushed and timed."""
        litert.convert_uncached(jobs, self.options.cache_dir, 0, progress)

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        shape = tuple(int(n) for n in input_shape)
        self.serial()  # no conversion for a phone that is not there
        try:
            path, seconds = litert.cached_tflite(model, shape, self.options.cache_dir)
        except DeviceError as exc:
            raise DeviceError(
                f"android: {str(exc).removeprefix('litert: ')} (deployed .tflite files can still be timed: "
                f"measure_artifact)"
            ) from exc
        return self._benchmark(path, shape, {"cache_hit": seconds is None, "conversion_seconds": seconds})

    def measure_artifact(self, path: str, fmt: str, input_shape: tuple[int, ...]) -> Measurement:
        if fmt not in self.artifact_formats:
            return super().measure_artifact(path, fmt, input_shape)
        if not Path(path).is_file():
            raise DeviceError(f"android: no .tflite file at {path}")
        shape = tuple(int(n) for n in input_shape)
        return self._benchmark(Path(path), shape, {"artifact": str(path), "sha256": sha256_file(path)})

    def _benchmark(self, local: Path, shape: tuple[int, ...], extra: dict[str, Any]) -> Measurement:
        o = self.options
        serial = self.serial()
        fp = self.fingerprint()
        remote = f"{o.remote_dir.rstrip('/')}/{local.name}"
        if not self._remote_dir_ready:
            self.shell("mkdir", "-p", o.remote_dir)
            self._remote_dir_ready = True
        self.adb("push", str(local), remote)
        words = self.benchmark_command(remote)
        try:
            proc = self.shell(*words, check=False)
        finally:
            self.shell("rm", "-f", remote, check=False)
        output = "\n".join(part for part in (proc.stdout, proc.stderr) if part)
        command = f"adb -s {serial} shell {shlex.join(words)}"
        try:
            report = parse_benchmark_output(output)
        except BenchmarkParseError:
            report = None
        if proc.returncode != 0 or report is None or any("Benchmarking failed" in e for e in report.errors):
            reason = "; ".join(report.errors[-3:]) if report and report.errors else _output_tail(proc)
            raise DeviceError(f"android: benchmark_model failed on {local.name} (exit {proc.returncode}): {reason}")
        stats, notes = latency_stats(report, o.warmup_runs)
        us = 1e-3
        extra = {
            "serial": serial,
            "input_shape": list(shape),
            "tflite": str(local),
            "tflite_bytes": local.stat().st_size,
            "command": command,
            **extra,
            **notes,
            "init_ms": report.init_us * us if report.init_us is not None else None,
            "first_inference_ms": report.first_inference_us * us if report.first_inference_us is not None else None,
            "warmup_avg_ms": report.warmup_avg_us * us if report.warmup_avg_us is not None else None,
            "p5_ms": report.timed.p5 * us if report.timed.p5 is not None else None,
            "p95_ms": report.timed.p95 * us if report.timed.p95 is not None else None,
            "max_ms": report.timed.max * us,
            "model_size_mb": report.model_size_mb,
            "xnnpack_applied": report.xnnpack_applied,
            "delegated_nodes": list(report.delegated_nodes) if report.delegated_nodes else None,
            "peak_memory_mb": report.peak_memory_mb,
            "benchmark_version": report.version,
        }
        return self.make_measurement(
            stats,
            runtime=f"tflite benchmark_model ({report.version or fp['runtime_version']})",
            artifact_format="tflite",
            threads=o.threads,
            batch_size=shape[0],
            extra=extra,
            fingerprint=fp,
        )


@hookimpl
def nasflow_devices():
    return [AndroidDevice]
