"""android device: adb commands, benchmark_model parsing, fingerprint and failure paths.

No phone here: a fake `adb` (a Python script put first on PATH) logs every command line and
answers `devices`, `push` and `shell ...` with output in benchmark_model's real format. The
converter is replaced by a stub that writes a placeholder file (the hardware boundary's
neighbour), so these tests run whether or not litert-torch is installed.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from nasflow.errors import DeviceError
from nasflow.plugins.devices import android, litert
from nasflow.plugins.devices.android import (
    AndroidDevice,
    AndroidOptions,
    BenchmarkParseError,
    latency_stats,
    parse_benchmark_output,
)
from nasflow.space import build_model, parse_arch

SERIAL = "R58M123ABC"
BINARY = "/data/local/tmp/benchmark_model"
SHA = "3f1d0c5b9a7e2468" + "0" * 48

# benchmark_model (2023+ build: p5/median/p95) on a phone, 2 threads pinned to the big cores.
BENCH_NEW = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [30]
INFO: Min warmup runs: [5]
INFO: Num threads: [2]
INFO: Graph: [/data/local/tmp/nasflow/model.tflite]
INFO: Signature to run: []
INFO: #threads used for CPU inference: [2]
INFO: Use xnnpack: [1]
INFO: Loaded model /data/local/tmp/nasflow/model.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: XNNPACK delegate created.
INFO: Replacing 31 out of 31 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for subgraph 0.
INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.
INFO: The input model file size (MB): 0.058480
INFO: Initialized session in 3.162ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1284 first=1187 curr=366 min=355 max=1187 avg=388.9 std=41 p5=362 median=382 p95=437

INFO: Running benchmark for at least 30 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=2611 first=401 curr=379 min=352 max=811 avg=382.6 std=27 p5=358 median=377 p95=421

INFO: [./tensorflow/lite/profiling/memory_info.cc:8] Inference timings in us: Init: 3162, First inference: 1187, Warmup (avg): 388.9, Inference (avg): 382.6
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.85938 overall=3.48047
"""

# An older build (no percentiles, no INFO prefix), as on a Raspberry Pi 4.
BENCH_OLD = """\
STARTING!
Min num runs: [50]
Num threads: [1]
Graph: [quicknet.tflite]
Loaded model quicknet.tflite
The input model file size (MB): 3.34914
Initialized session in 3.501ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=12 first=156677 curr=33205 min=32578 max=156677 avg=43268.1 std=34197

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=33228 curr=33130 min=32687 max=33239 avg=33071.8 std=129

Inference timings in us: Init: 3501, First inference: 156677, Warmup (avg): 43268.1, Inference (avg): 33071.8
"""

BENCH_FAIL = """\
INFO: STARTING!
INFO: Loaded model /data/local/tmp/nasflow/model.tflite
INFO: Initialized TensorFlow Lite runtime.
ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'. An older version of this builtin might be supported. Are you using an old TFLite binary with a newer model?
ERROR: Registration failed.
Failed to initialize the interpreter
Benchmarking failed.
"""

GETPROP = """\
[ro.board.platform]: [gs201]
[ro.build.fingerprint]: [google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys]
[ro.build.version.release]: [14]
[ro.build.version.sdk]: [34]
[ro.hardware]: [panther]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.manufacturer]: [Google]
[ro.product.model]: [Pixel 7]
[ro.soc.manufacturer]: [Google]
[ro.soc.model]: [GS201]
"""

FAKE_ADB = """\
import json, os, sys

cfg = json.load(open(os.environ["FAKE_ADB_CONFIG"]))
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")

def fail(message, code=1):
    sys.stderr.write(message + "\\n")
    sys.exit(code)

serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
    if serial not in dict(cfg["devices"]):
        fail(f"adb: device '{serial}' not found")
command = args[0]
if command == "devices":
    print("List of devices attached")
    for s, state in cfg["devices"]:
        print(f"{s}\\t{state}")
    print()
elif command == "push":
    if cfg.get("push_error"):
        fail(cfg["push_error"])
    local, remote = args[1], args[2]
    print(f"{local}: 1 file pushed, 0 skipped. 12.3 MB/s ({os.path.getsize(local)} bytes in 0.004s)")
elif command == "shell":
    line = " ".join(args[1:])
    if line == "getprop":
        sys.stdout.write(cfg["getprop"])
    elif "nasflow-binary-ok" in line:
        print("nasflow-binary-ok" if cfg.get("binary", True) else "nasflow-binary-missing")
    elif line.startswith("sha256sum "):
        print(cfg["sha256"] + "  " + line.split()[1])
    elif line.startswith(("mkdir ", "rm ")):
        pass
    elif "--graph=" in line:
        sys.stdout.write(cfg["bench_stdout"])
        sys.stderr.write(cfg.get("bench_stderr", ""))
        sys.exit(cfg.get("bench_exit", 0))
    else:
        fail(f"/system/bin/sh: {line.split()[0]}: inaccessible or not found", 127)
else:
    fail(f"adb: unknown command {command}")
"""


class FakeAdb:
    """Controls the fake adb: what it answers, and the command lines it was called with."""

    def __init__(self, root: Path):
        self.root = root
        self.config_path = root / "adb.json"
        self.log_path = root / "adb.log"
        self.config = {
            "devices": [[SERIAL, "device"]],
            "getprop": GETPROP,
            "sha256": SHA,
            "binary": True,
            "bench_stdout": BENCH_NEW,
        }
        self.write()

    def write(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def set(self, **changes) -> None:
        self.config.update(changes)
        self.write()

    def calls(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def clear(self) -> None:
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> FakeAdb:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "adb"
    script.write_text(f"#!{sys.executable}\n{FAKE_ADB}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    fake = FakeAdb(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(fake.config_path))
    monkeypatch.setenv("FAKE_ADB_LOG", str(fake.log_path))
    return fake


@pytest.fixture
def fake_converter(monkeypatch) -> list[tuple[int, ...]]:
    """Replace litert-torch's conversion with a stub that writes a placeholder; returns the calls."""
    calls: list[tuple[int, ...]] = []

    def convert(model, input_shape, path):
        calls.append(tuple(input_shape))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"\x1c\x00\x00\x00TFL3 placeholder")
        return Path(path)

    monkeypatch.setattr(litert, "convert_to_tflite", convert)
    return calls


def shell(line: str) -> list[str]:
    return ["-s", SERIAL, "shell", line]


PROBES = [
    ["devices"],
    shell(f"[ -x {BINARY} ] && echo nasflow-binary-ok || echo nasflow-binary-missing"),
]


# ---------------------------------------------------------------- parsing


def test_parse_new_format_reads_timed_runs_percentiles_and_summary():
    report = parse_benchmark_output(BENCH_NEW)
    t = report.timed
    assert (t.count, t.first, t.min, t.max, t.avg, t.std) == (2611, 401, 352, 811, 382.6, 27)
    assert (t.p5, t.median, t.p95) == (358, 377, 421)
    assert report.warmup.count == 1284 and report.warmup.avg == 388.9  # not confused with the timed runs
    assert (report.init_us, report.first_inference_us, report.warmup_avg_us, report.inference_avg_us) == (
        3162, 1187, 388.9, 382.6
    )
    assert report.model_size_mb == pytest.approx(0.05848)
    assert report.xnnpack_applied and report.delegated_nodes == (31, 31)
    assert report.errors == ()

    stats, notes = latency_stats(report, warmup_runs=5)
    assert stats.median_ms == pytest.approx(0.377)
    assert stats.p90_ms == pytest.approx(0.421) and "p95" in notes["p90_source"]
    assert (stats.mean_ms, stats.std_ms, stats.min_ms) == pytest.approx((0.3826, 0.027, 0.352))
    assert (stats.runs, stats.warmup, stats.outliers) == (2611, 1284, 0)
    assert stats.rel_ci == pytest.approx(1.959964 * 27 / math.sqrt(2611) / 382.6, rel=1e-5)
    assert notes["median_source"] == "benchmark_model median"


def test_parse_old_format_without_percentiles_reports_the_mean_as_median_and_says_so():
    report = parse_benchmark_output(BENCH_OLD)
    assert report.timed.count == 50 and report.timed.median is None
    assert report.warmup.count == 12
    stats, notes = latency_stats(report, warmup_runs=1)
    assert stats.median_ms == pytest.approx(33.0718) == stats.mean_ms
    assert "prints no median" in notes["median_source"] and "avg" in notes["median_source"]
    assert stats.p90_ms == pytest.approx(33.239) and notes["p90_source"].startswith("max")
    assert not report.xnnpack_applied and report.delegated_nodes is None


def test_parse_edge_cases_all_same_logcat_prefix_profiler_summary_and_scientific_notation():
    logcat = (
        "07-14 13:14:52.859 22838 22838 I tflite  : Running benchmark for at least 1 iterations and at least 0.5 seconds\n"
        "07-14 13:14:52.859 22838 22838 I tflite  : count=1 curr=9.99242e+06\n"
        "07-14 13:14:56.520 22838 22838 I tflite  : Running benchmark for at least 3 iterations and at least 1 seconds\n"
        "07-14 13:14:56.520 22838 22838 I tflite  : count=3 curr=812(all same)\n"
    )
    report = parse_benchmark_output(logcat)
    assert report.warmup.curr == pytest.approx(9.99242e6)
    t = report.timed
    assert (t.count, t.min, t.max, t.avg, t.std, t.median) == (3, 812, 812, 812, 0, 812)

    profiler_only = "Timings (microseconds): count=40 first=900 curr=850 min=800 max=1000 avg=870 std=30\nMemory (bytes): count=0\n"
    report = parse_benchmark_output(profiler_only)
    assert report.timed.count == 40 and report.timed_source == "op profiler's run summary"

    with pytest.raises(BenchmarkParseError):
        parse_benchmark_output("Benchmarking failed.\n")


# ---------------------------------------------------------------- options


def test_options_validate_mask_and_counts():
    assert AndroidOptions().benchmark_binary == BINARY and AndroidOptions().remote_dir == "/data/local/tmp/nasflow"
    with pytest.raises(ValidationError):
        AndroidOptions(cpu_mask="f0; rm -rf /")
    with pytest.raises(ValidationError):
        AndroidOptions(num_runs=0)
    with pytest.raises(ValidationError):
        AndroidOptions(unknown=1)


# ---------------------------------------------------------------- commands and numbers


def test_measure_artifact_pushes_pins_runs_and_parses(fake_adb, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3 placeholder")
    device = AndroidDevice(AndroidOptions(cpu_mask="f0", threads=2, num_runs=30, warmup_runs=5))
    m = device.measure_artifact(str(model), "tflite", (1, 3, 32, 32))

    remote = "/data/local/tmp/nasflow/model.tflite"
    bench = f"taskset f0 {BINARY} --graph={remote} --num_threads=2 --num_runs=30 --warmup_runs=5 --use_xnnpack=true"
    assert fake_adb.calls() == PROBES + [
        shell("getprop"),
        shell(f"sha256sum {BINARY}"),
        shell("mkdir -p /data/local/tmp/nasflow"),
        ["-s", SERIAL, "push", str(model), remote],
        shell(bench),
        shell(f"rm -f {remote}"),
    ]
    assert m.device == "android" and m.source == "measured" and m.artifact_format == "tflite"
    assert m.threads == 2 and m.batch_size == 1
    assert m.stats.median_ms == pytest.approx(0.377) and m.stats.runs == 2611
    assert m.extra["command"] == f"adb -s {SERIAL} shell {bench}"
    assert m.extra["serial"] == SERIAL and m.extra["artifact"] == str(model) and len(m.extra["sha256"]) == 64
    assert m.extra["init_ms"] == pytest.approx(3.162) and m.extra["first_inference_ms"] == pytest.approx(1.187)
    assert m.extra["xnnpack_applied"] is True and m.extra["delegated_nodes"] == [31, 31]
    assert m.extra["median_source"] == "benchmark_model median"

    fp = m.fingerprint
    assert fp["device_model"] == "Google Pixel 7" and fp["soc"] == "Google GS201"
    assert (fp["android_release"], fp["sdk"], fp["abi"], fp["board_platform"]) == ("14", "34", "arm64-v8a", "gs201")
    assert fp["runtime_version"] == f"sha256:{SHA[:16]}" and m.runtime == f"tflite benchmark_model (sha256:{SHA[:16]})"
    assert (fp["threads"], fp["cpu_mask"], fp["use_xnnpack"]) == (2, "f0", True)
    assert SERIAL not in json.dumps(fp)  # identical phones share a fingerprint

    # a second artifact on the same device object: no new probes, no second mkdir, no second getprop
    fake_adb.clear()
    device.measure_artifact(str(model), "tflite", (1, 3, 32, 32))
    assert [c[3] if c[2] == "shell" else c[2] for c in fake_adb.calls()] == ["push", bench, f"rm -f {remote}"]


def test_measure_model_converts_once_and_runs_without_taskset_or_xnnpack(fake_adb, fake_converter, tmp_path):
    arch = parse_arch("stem_c8_s1-ir_k3_e3_c8_s1-head_c32")
    opts = AndroidOptions(serial=SERIAL, use_xnnpack=False, cache_dir=tmp_path / "tflite", num_runs=20)
    device = AndroidDevice(opts)
    first = device.measure_model(build_model(arch, 1, 10), (1, 1, 8, 8))
    second = device.measure_model(build_model(arch, 1, 10), (1, 1, 8, 8))  # same architecture, new weights
    assert fake_converter == [(1, 1, 8, 8)]
    assert first.extra["cache_hit"] is False and second.extra["cache_hit"] is True
    assert first.extra["tflite"] == second.extra["tflite"]
    name = Path(first.extra["tflite"]).name
    assert name.startswith("arch-") and "-1x1x8x8-" in name and Path(first.extra["tflite"]).parent == tmp_path / "tflite"

    benches = [c[3] for c in fake_adb.calls() if c[2:3] == ["shell"] and "--graph=" in c[3]]
    expected = f"{BINARY} --graph=/data/local/tmp/nasflow/{name} --num_threads=1 --num_runs=20 --warmup_runs=10 --use_xnnpack=false"
    assert benches == [expected, expected]
    pushes = [c for c in fake_adb.calls() if c[2:3] == ["push"]]
    assert pushes == [["-s", SERIAL, "push", first.extra["tflite"], f"/data/local/tmp/nasflow/{name}"]] * 2
    assert first.fingerprint["cpu_mask"] is None and first.fingerprint["use_xnnpack"] is False


def test_prepare_converts_on_the_host_before_measuring(fake_adb, fake_converter, tmp_path, monkeypatch):
    monkeypatch.setattr(litert, "converter_available", lambda: True)  # the stub converter stands in
    arch = parse_arch("stem_c8_s1-ir_k3_e3_c8_s1-head_c32")
    device = AndroidDevice(AndroidOptions(serial=SERIAL, cache_dir=tmp_path / "tflite", num_runs=20))
    model = build_model(arch, 1, 10)
    device.prepare([(model, (1, 1, 8, 8))])
    assert fake_converter == [(1, 1, 8, 8)]
    assert not [c for c in fake_adb.calls() if c[2:3] == ["push"]]  # nothing reaches the phone yet
    assert device.measure_model(model, (1, 1, 8, 8)).extra["cache_hit"] is True
    assert fake_converter == [(1, 1, 8, 8)]


# ---------------------------------------------------------------- availability


def test_unavailable_reason_without_adb_says_install_platform_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere
    reason = AndroidDevice.unavailable_reason()
    assert "adb not found" in reason and "Platform-Tools" in reason
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(DeviceError, match="adb not found"):
        AndroidDevice().measure_artifact(str(tmp_path / "m.tflite"), "tflite", (1, 1, 8, 8))


def test_unavailable_reasons_name_the_missing_piece(fake_adb):
    assert AndroidDevice.unavailable_reason() is None

    fake_adb.set(devices=[])
    assert "no Android device attached" in AndroidDevice.unavailable_reason()

    fake_adb.set(devices=[[SERIAL, "unauthorized"]])
    assert "Allow USB debugging" in AndroidDevice.unavailable_reason()

    fake_adb.set(devices=[[SERIAL, "device"], ["emulator-5554", "device"]])
    reason = AndroidDevice.unavailable_reason()
    assert "several" in reason and "options.serial" in reason and "emulator-5554" in reason
    assert AndroidDevice.unavailable_reason(AndroidOptions(serial="emulator-5554")) is None
    assert "not attached" in AndroidDevice.unavailable_reason(AndroidOptions(serial="ZZZ"))

    fake_adb.set(devices=[[SERIAL, "device"]], binary=False)
    reason = AndroidDevice.unavailable_reason()
    assert BINARY in reason and f"adb -s {SERIAL} push" in reason and "chmod +x" in reason
    with pytest.raises(DeviceError, match="benchmark_model is missing"):
        AndroidDevice().serial()


# ---------------------------------------------------------------- failures mid-run


def test_adb_failure_mid_run_raises_device_error_with_adbs_message(fake_adb, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3")
    device = AndroidDevice()
    device.serial()
    no_space = "adb: error: failed to copy 'model.tflite' to '/data/local/tmp/nasflow/model.tflite': remote No space left on device"
    fake_adb.set(push_error=no_space)
    with pytest.raises(DeviceError, match="No space left on device") as info:
        device.measure_artifact(str(model), "tflite", (1, 1, 8, 8))
    assert "push" in str(info.value) and "exit 1" in str(info.value)

    fake_adb.set(push_error=None, bench_stdout=BENCH_FAIL, bench_exit=1)
    fake_adb.clear()
    with pytest.raises(DeviceError, match="Didn't find op for builtin opcode 'CONV_2D'") as info:
        device.measure_artifact(str(model), "tflite", (1, 1, 8, 8))
    assert "benchmark_model failed on model.tflite" in str(info.value)
    assert fake_adb.calls()[-1] == shell("rm -f /data/local/tmp/nasflow/model.tflite")  # cleaned up anyway

    fake_adb.set(bench_stdout="Segmentation fault\n", bench_exit=139)
    with pytest.raises(DeviceError, match="exit 139"):
        device.measure_artifact(str(model), "tflite", (1, 1, 8, 8))

    fake_adb.set(devices=[])  # phone unplugged after the checks
    fake_adb.set(bench_stdout=BENCH_NEW, bench_exit=0)
    with pytest.raises(DeviceError, match=f"device '{SERIAL}' not found"):
        device.measure_artifact(str(model), "tflite", (1, 1, 8, 8))


def test_artifact_checks_and_missing_converter(fake_adb, tmp_path):
    device = AndroidDevice()
    with pytest.raises(DeviceError, match="cannot run 'onnx'"):
        device.measure_artifact(str(tmp_path / "m.onnx"), "onnx", (1, 1, 8, 8))
    with pytest.raises(DeviceError, match="no .tflite file"):
        device.measure_artifact(str(tmp_path / "missing.tflite"), "tflite", (1, 1, 8, 8))
    if not litert.converter_available():
        model = build_model(parse_arch("stem_c8_s1-head_c16"), 1, 10)
        with pytest.raises(DeviceError, match="litert-torch is not installed.*measure_artifact"):
            AndroidDevice(AndroidOptions(cache_dir=tmp_path / "c")).measure_model(model, (1, 1, 8, 8))


def test_plugin_hook_exposes_the_device():
    assert android.nasflow_devices() == [AndroidDevice]
    assert AndroidDevice.name == "android" and AndroidDevice.artifact_formats == ("tflite",)
    doc = textwrap.dedent(android.__doc__)
    assert "USB debugging" in doc and "adb devices" in doc and "cpu_mask" in doc
