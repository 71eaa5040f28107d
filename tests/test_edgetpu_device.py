"""edgetpu device: the real int8 conversion, compile, parse and timing path, up to the hardware boundary.

No Edge TPU exists here, so two things are stand-ins: `edgetpu_compiler` (a script on PATH that
records its arguments, copies the int8 model to `<stem>_edgetpu.tflite` and prints a log in the
compiler's format) and the delegate loader (replaced to return no delegate, so the copied int8
model runs on LiteRT's CPU kernels). Everything else is real. Tests that convert need
ai-edge-litert and litert-torch (`scripts/setup-litert`) and skip with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import numpy as np
import pytest
import torch

from nasflow.errors import DeviceError
from nasflow.plugins.devices import edgetpu_device
from nasflow.plugins.devices.edgetpu_device import (
    EdgeTPUDevice,
    EdgeTPUOptions,
    compile_for_edgetpu,
    parse_compiler_log,
)
from nasflow.plugins.devices.litert import LiteRTDevice
from nasflow.space import build_model, parse_arch

LITERT_REASON = LiteRTDevice.unavailable_reason()
needs_litert = pytest.mark.skipif(LITERT_REASON is not None, reason=f"litert packages missing: {LITERT_REASON}")

ARCH = "stem_c8_s1-ir_k3_e3_c8_s1-ir_k3_e3_c16_s2-skip_c16-head_c32"
SHAPE = (1, 3, 16, 16)
FAST = dict(warmup=2, min_runs=5, max_runs=50, rel_ci=0.5, min_seconds=0.0, max_seconds=0.3)

COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: {model}
Input size: 40.12KiB
Output model: {output}
Output size: 98.50KiB
On-chip memory used for caching model parameters: 52.25KiB
On-chip memory remaining for caching model parameters: 7.86MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: {total}
Operation log: {stem}_edgetpu.log

Number of operations that will run on Edge TPU: {on_tpu}
Number of operations that will run on CPU: {on_cpu}
"""

FAKE_COMPILER = textwrap.dedent(
    '''\
    #!{python}
    """Stand-in for Coral's edgetpu_compiler: records argv, copies the model, prints a compiler log."""
    import json, os, pathlib, shutil, sys
    argv = sys.argv[1:]
    with open(os.environ["FAKE_EDGETPU_CALLS"], "a") as fh:
        fh.write(json.dumps(argv) + "\\n")
    if os.environ.get("FAKE_EDGETPU_FAIL"):
        print("Edge TPU Compiler version 16.0.384591198")
        print("ERROR: Didn't find op for builtin opcode 'HARD_SWISH'", file=sys.stderr)
        sys.exit(1)
    out_dir = pathlib.Path(argv[argv.index("--out_dir") + 1])
    model = pathlib.Path(argv[-1])
    output = out_dir / (model.stem + "_edgetpu.tflite")
    shutil.copyfile(model, output)
    on_tpu, on_cpu = int(os.environ.get("FAKE_EDGETPU_ON_TPU", "12")), int(os.environ.get("FAKE_EDGETPU_ON_CPU", "2"))
    print({log!r}.format(model=model.name, output=output.name, stem=model.stem,
                         total=on_tpu + on_cpu, on_tpu=on_tpu, on_cpu=on_cpu))
    '''
)


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """An edgetpu_compiler on PATH; returns the list of argv lists it was called with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.format(python=sys.executable, log=COMPILER_LOG))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_EDGETPU_CALLS", str(calls))

    def recorded():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return recorded


def test_compiler_log_is_parsed():
    text = COMPILER_LOG.format(model="m.tflite", output="m_edgetpu.tflite", stem="m", total=33, on_tpu=31, on_cpu=2)
    assert parse_compiler_log(text) == ("16.0.384591198", 31, 2)
    assert parse_compiler_log("garbage") == (None, None, None)


def test_compile_runs_the_compiler_and_reads_its_log(tmp_path, fake_compiler):
    model = tmp_path / "net-int8.tflite"
    model.write_bytes(b"TFL3 stand-in")
    result = compile_for_edgetpu(model, tmp_path / "out", "edgetpu_compiler", timeout_s=60)
    assert result.path == tmp_path / "out" / "net-int8_edgetpu.tflite" and result.path.is_file()
    assert (result.compiler_version, result.ops_on_tpu, result.ops_on_cpu) == ("16.0.384591198", 12, 2)
    assert fake_compiler() == [["--out_dir", str(tmp_path / "out"), "--show_operations", str(model)]]


def test_compiler_failure_and_absence_are_device_errors(tmp_path, fake_compiler, monkeypatch):
    model = tmp_path / "net-int8.tflite"
    model.write_bytes(b"TFL3 stand-in")
    monkeypatch.setenv("FAKE_EDGETPU_FAIL", "1")
    with pytest.raises(DeviceError, match=r"edgetpu_compiler failed on net-int8.tflite \(exit 1\).*HARD_SWISH"):
        compile_for_edgetpu(model, tmp_path / "out", "edgetpu_compiler", timeout_s=60)
    with pytest.raises(DeviceError, match="apt-get install edgetpu-compiler"):
        compile_for_edgetpu(model, tmp_path / "out", str(tmp_path / "no-such-compiler"), timeout_s=60)


def test_unavailable_reason_names_what_is_missing(fake_compiler):
    reason = EdgeTPUDevice.unavailable_reason(EdgeTPUOptions(compiler="no-such-edgetpu-compiler"))
    assert reason is not None
    if LITERT_REASON is not None:
        assert reason == LITERT_REASON  # the LiteRT packages come first
        return
    assert "edgetpu_compiler not found" in reason and "apt-get install edgetpu-compiler" in reason
    # The compiler is there (the stand-in); the runtime library is not.
    reason = EdgeTPUDevice.unavailable_reason(EdgeTPUOptions(delegate_library="libedgetpu-absent.so.1"))
    assert "libedgetpu-absent.so.1" in reason and "libedgetpu1-std" in reason and "edgetpu-model" in reason


@needs_litert
def test_int8_conversion_quantizes_the_model_and_stays_close_to_float(tmp_path):
    from nasflow.export.tflite_int8 import convert_to_tflite_int8, tensor_types

    torch.manual_seed(0)
    model = build_model(parse_arch(ARCH), 3, 10).eval()
    path = convert_to_tflite_int8(model, SHAPE, tmp_path / "m-int8.tflite")
    device = LiteRTDevice(LiteRTDevice.Options(cache_dir=tmp_path, **FAST))
    interp = device.interpreter(path)
    types = tensor_types(interp)
    assert types.get("int8", 0) > types.get("float32", 0)  # weights and activations are int8
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8  # integer end to end, as the Edge TPU needs
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    scale, zero = inp["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    interp.invoke()
    scale, zero = out["quantization"]
    quantized = (interp.get_tensor(out["index"]).astype(np.float32).ravel() - zero) * scale
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy().ravel()
    assert np.corrcoef(quantized, reference)[0, 1] > 0.9  # int8 error, not a different function
    assert model.training is False


@needs_litert
def test_measure_model_converts_compiles_and_times_through_the_delegate_boundary(tmp_path, fake_compiler, monkeypatch):
    loads = []
    monkeypatch.setattr(edgetpu_device, "_load_delegate", lambda lib, dev: loads.append((lib, dev)))  # returns None
    options = EdgeTPUOptions(cache_dir=tmp_path / "cache", device="usb:0", **FAST)
    device = EdgeTPUDevice(options)
    model = build_model(parse_arch(ARCH), 3, 10)
    m = device.measure_model(model, SHAPE)
    assert m.source == "measured" and m.device == "edgetpu" and m.artifact_format == "edgetpu"
    assert "Edge TPU delegate (libedgetpu.so.1)" in m.runtime
    assert m.stats.median_ms > 0 and m.stats.runs >= 5
    assert (m.extra["ops_on_edgetpu"], m.extra["ops_on_cpu"], m.extra["compiler_version"]) == (12, 2, "16.0.384591198")
    assert m.extra["edgetpu_tflite"].endswith("_edgetpu.tflite")
    assert loads == [("libedgetpu.so.1", "usb:0")]
    (argv,) = fake_compiler()
    assert argv[-1] == m.extra["int8_tflite"] and argv[:3] == ["--out_dir", argv[1], "--show_operations"]
    # A second measurement reuses the int8 file (no second conversion), but compiles again.
    before = os.path.getmtime(m.extra["int8_tflite"])
    device.measure_model(model, SHAPE)
    assert os.path.getmtime(m.extra["int8_tflite"]) == before and len(fake_compiler()) == 2
    # Nothing mapped to the Edge TPU: refused, rather than timing the host CPU.
    monkeypatch.setenv("FAKE_EDGETPU_ON_TPU", "0")
    with pytest.raises(DeviceError, match="mapped no operation"):
        device.measure_model(model, SHAPE)
