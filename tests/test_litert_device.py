"""litert device: real litert-torch conversion, real LiteRT interpreter, cache, artifacts.

Skipped, with the reason, where ai-edge-litert (or tflite-runtime) or litert-torch is missing;
see nasflow/plugins/devices/litert.py for installing them. One module-scoped conversion keeps
the file well under a minute (importing litert-torch takes 5-10 s, a conversion about 6 s).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nasflow.errors import DeviceError
from nasflow.fingerprint import fingerprint_hash
from nasflow.plugins.devices import litert
from nasflow.plugins.devices.litert import LiteRTDevice, LiteRTOptions, convert_to_tflite
from nasflow.space import build_model, parse_arch

REASON = LiteRTDevice.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"litert device not usable here: {REASON}")

FAST = dict(warmup=2, min_runs=5, max_runs=50, rel_ci=0.5, min_seconds=0.0, max_seconds=0.3)
ARCH = "stem_c8_s1-ir_k3_e3_c8_s1-ir_k5_e3_c16_s2-skip_c16-head_c32"
SHAPE = (1, 1, 8, 8)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, left in train mode: conversion must use eval mode."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.train()


def run_tflite(device: LiteRTDevice, path, x: np.ndarray) -> np.ndarray:
    interp = device.interpreter(path)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Three measurements of one architecture (two models), counting real conversions."""
    torch.manual_seed(0)
    model = perturbed(build_model(parse_arch(ARCH), 1, 10))
    device = LiteRTDevice(LiteRTOptions(cache_dir=tmp_path_factory.mktemp("tflite"), **FAST))
    calls = []
    real = litert.convert_to_tflite

    def counting(m, input_shape, path):
        calls.append(tuple(input_shape))
        return real(m, input_shape, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(litert, "convert_to_tflite", counting)
        first = device.measure_model(model, SHAPE)
        second = device.measure_model(model, SHAPE)
        other = device.measure_model(build_model(parse_arch(ARCH), 1, 10), SHAPE)
    return SimpleNamespace(model=model, device=device, first=first, second=second, other=other, calls=calls)


def test_second_measure_of_an_architecture_does_not_convert_again(measured):
    assert measured.calls == [SHAPE]
    first, second, other = measured.first, measured.second, measured.other
    assert first.extra["cache_hit"] is False and first.extra["conversion_seconds"] > 0
    assert second.extra["cache_hit"] is True and second.extra["conversion_seconds"] is None
    assert other.extra["cache_hit"] is True and other.extra["tflite"] == first.extra["tflite"]
    assert measured.model.training  # the caller's mode is given back


def test_measurement_fields_and_fingerprint(measured):
    m = measured.first
    assert m.device == "litert" and m.source == "measured" and m.artifact_format == "tflite"
    assert m.runtime.startswith(("ai-edge-litert ", "tflite-runtime ")) and "XNNPACK" in m.runtime
    assert m.threads == 1 and m.batch_size == 1
    assert 0 < m.stats.min_ms <= m.stats.median_ms <= m.stats.p90_ms and m.stats.runs >= 5
    assert m.extra["input_shape"] == list(SHAPE) and m.extra["model_input_shape"] == list(SHAPE)
    assert m.extra["tflite_bytes"] > 1000
    fp = m.fingerprint
    assert fp["runtime"] == "litert" and fp["xnnpack"] is True and fp["threads"] == 1
    assert fp["cpu_model"] and fp["runtime_version"] and fp["litert_torch_version"]
    assert m.extra["fingerprint_hash"] == fingerprint_hash(fp)


def test_converted_models_match_pytorch(measured, tmp_path):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        expected = measured.model.eval()(torch.from_numpy(x)).numpy()
    measured.model.train()
    got = run_tflite(measured.device, measured.first.extra["tflite"], x)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    # the public converter on a colour input with squeeze-excite and hard-swish
    model = perturbed(build_model(parse_arch("stem_c8_s2-ir_k5_m24_c16_s2_se0.25_ahswish-head_c32"), 3, 7))
    path = convert_to_tflite(model, (1, 3, 32, 32), tmp_path / "rgb.tflite")
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    got = run_tflite(measured.device, path, x)
    assert got.shape == (1, 7)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_measure_artifact_times_a_tflite_file(measured, tmp_path):
    path = measured.first.extra["tflite"]
    m = measured.device.measure_artifact(path, "tflite", SHAPE)
    assert m.extra["artifact"] == path and len(m.extra["sha256"]) == 64 and m.stats.median_ms > 0

    plain = LiteRTDevice(LiteRTOptions(threads=2, xnnpack=False, **FAST)).measure_artifact(path, "tflite", SHAPE)
    assert plain.threads == 2 and "built-in kernels" in plain.runtime
    assert plain.extra["fingerprint_hash"] != m.extra["fingerprint_hash"]

    with pytest.raises(DeviceError, match="cannot run 'onnx'"):
        measured.device.measure_artifact(path, "onnx", SHAPE)
    with pytest.raises(DeviceError, match="no .tflite file"):
        measured.device.measure_artifact(str(tmp_path / "missing.tflite"), "tflite", SHAPE)
    with pytest.raises(DeviceError, match="takes input"):
        measured.device.measure_artifact(path, "tflite", (1, 3, 8, 8))
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(DeviceError, match="cannot load"):
        measured.device.measure_artifact(str(broken), "tflite", SHAPE)


class Unconvertible(torch.nn.Module):
    """Data-dependent control flow: torch.export, and so the converter, rejects it."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


def test_prepare_converts_a_batch_in_worker_processes_and_leaves_failures_to_measure(tmp_path):
    device = LiteRTDevice(LiteRTOptions(cache_dir=tmp_path, convert_workers=2, **FAST))
    good = build_model(parse_arch(ARCH), 1, 10)
    other = build_model(parse_arch(ARCH.replace("ir_k5_e3", "ir_k3_e1")), 1, 10)
    jobs = [(good, SHAPE), (other, SHAPE), (Unconvertible(), SHAPE), (good, SHAPE)]
    device.prepare(jobs)  # must not raise for the bad model
    assert len(list(tmp_path.glob("*.tflite"))) == 2  # the repeated model was converted once
    assert device.measure_model(good, SHAPE).extra["cache_hit"] is True
    assert device.measure_model(other, SHAPE).extra["cache_hit"] is True
    with pytest.raises(DeviceError, match="cannot convert Unconvertible"):
        device.measure_model(Unconvertible(), SHAPE)


def test_verify_tflite_accepts_the_converted_model_and_rejects_another(tmp_path):
    from nasflow.plugins.devices.litert import verify_tflite

    torch.manual_seed(0)
    model = perturbed(build_model(parse_arch(ARCH), 1, 10))
    path = convert_to_tflite(model, SHAPE, tmp_path / "m.tflite")
    same = verify_tflite(model, path, SHAPE, atol=1e-4)
    assert same.passed and same.max_abs_err < 1e-4
    torch.manual_seed(1)
    other = verify_tflite(build_model(parse_arch(ARCH), 1, 10), path, SHAPE, atol=1e-4)
    assert not other.passed and other.max_abs_err > 1e-3


def test_pipeline_deploys_a_verified_tflite_and_times_it_on_litert(tmp_path):
    from conftest import tiny_spec_text

    from nasflow.flows.pipeline import run_spec
    from nasflow.registry import Registry
    from nasflow.spec import load_spec

    text = tiny_spec_text(tmp_path, name="tflite-deploy", search=False, morph=False)
    text = text.replace(
        "  - {name: onnxruntime-cpu,",
        f"  - {{name: litert, options: {{threads: 1, min_seconds: 0, max_seconds: 0.3, cache_dir: {tmp_path / 'tfl'}}}}}\n"
        "  - {name: onnxruntime-cpu,",
    )
    text = text.replace("train: {enabled: true, top_k: 1,", f"train: {{enabled: true, top_k: 1, archs: [{ARCH}],")
    text = text.replace("deploy: {enabled: true, out_dir:", "deploy: {enabled: true, formats: [onnx, tflite], out_dir:")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    summary = run_spec(load_spec(path))
    registry = Registry(tmp_path / "registry.duckdb")
    artifacts = {a["format"]: a for a in registry.get_artifacts(summary.run_id)}
    assert set(artifacts) == {"onnx", "tflite"}
    tflite = artifacts["tflite"]
    assert tflite["verified"] and tflite["max_abs_err"] <= 1e-4 and tflite["path"].endswith(".tflite")
    _, rows = registry.query(
        "SELECT device, source, runtime FROM measurements WHERE artifact_id = ?", [tflite["artifact_id"]]
    )
    assert [(d, s) for d, s, _ in rows] == [("litert", "measured")]  # only litert runs .tflite files
    assert "ai-edge-litert" in rows[0][2] or "tflite-runtime" in rows[0][2]
