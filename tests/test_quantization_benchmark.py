"""The quantization benchmark's bookkeeping: its spec validates, int8 files pair with their float32
counterpart on the same runtime, and drops and speedups are computed from the registry's rows.
Nothing is trained here (the run takes half an hour); the functions it reports with are."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import quantization as bench  # noqa: E402


def _row(candidate, arch, fmt, accuracy, latency_ms, size, macs=1_000_000):
    return {"candidate_id": candidate, "arch": arch, "macs": macs, "params": 1000, "format": fmt, "verified": True,
            "accuracy": accuracy, "reference_accuracy": 0.5, "top1_agreement": 0.97, "size_bytes": size,
            "device": "litert" if "tflite" in fmt else "onnxruntime-cpu", "runtime": "r", "latency_ms": latency_ms,
            "latency_rel_ci": 0.01, "latency_source": "measured"}


def test_the_setting_is_a_valid_spec_deploying_every_model_in_four_formats(tmp_path):
    from nasflow.spec import load_spec

    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"")  # validation checks the path exists; nothing is read
    args = bench_args(tmp_path, archive)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(bench.spec_of(args), sort_keys=False))
    spec = load_spec(path).spec
    assert spec.deploy.formats == ["onnx", "onnx-int8", "tflite", "tflite-int8"]
    assert spec.deploy.top_k == 3 and spec.deploy.max_accuracy_drop == 1.0  # every file is kept and timed
    assert spec.train.archs == ["zoo:mobilenet_v2_cifar@0.35", "zoo:mobilenet_v2_cifar@0.5"]
    args.search_arch = "zoo:mobilenet_v2_cifar@0.25"
    path.write_text(yaml.safe_dump(bench.spec_of(args), sort_keys=False))
    spec = load_spec(path).spec
    assert not spec.search.enabled and spec.deploy.top_k == 3 and len(spec.train.archs) == 3


def bench_args(tmp_path, archive):
    import argparse

    return argparse.Namespace(work=tmp_path / "work", search_arch=None, widths=[0.35, 0.5], archive=archive,
                              images=500, target_ms=0.5, search_budget=4, epochs=1, calibration_images=64)


def test_int8_files_pair_with_the_float32_file_of_their_runtime():
    from nasflow.arch import format_arch, resolve_arch

    zoo = format_arch(resolve_arch("zoo:mobilenet_v2_cifar@0.35"))
    rows = [
        _row("a", zoo, "onnx", 0.500, 1.0, 3000), _row("a", zoo, "onnx-int8", 0.490, 1.25, 1000),
        _row("a", zoo, "tflite", 0.502, 0.8, 3100), _row("a", zoo, "tflite-int8", 0.497, 0.4, 1000),
        _row("b", "searched", "tflite-int8", 0.4, 0.5, 900, macs=2_000_000),  # no float32 file: no pair
    ]
    pairs = bench.pairs_of(rows, [0.35])
    assert [(p["model"], p["int8_format"], p["device"]) for p in pairs] == [
        ("MobileNetV2-CIFAR 0.35", "onnx-int8", "onnxruntime-cpu"), ("MobileNetV2-CIFAR 0.35", "tflite-int8", "litert")]
    onnx, tflite = pairs
    assert onnx["accuracy_drop_points"] == pytest.approx(1.0) and onnx["int8_speedup"] == pytest.approx(0.8)
    assert tflite["accuracy_drop_points"] == pytest.approx(0.5) and tflite["int8_speedup"] == pytest.approx(2.0)
    assert tflite["size_ratio"] == pytest.approx(3.1)
    summary = bench.summary_of(pairs)
    assert summary["max_accuracy_drop_points"] == pytest.approx(1.0) and summary["drop_target_met"]
    assert summary["litert_int8_speedup"] == {"min": pytest.approx(2.0), "max": pytest.approx(2.0)}
    worse = bench.summary_of([{**onnx, "accuracy_drop_points": 1.5}])
    assert not worse["drop_target_met"] and worse["litert_int8_speedup"] is None


def test_an_untimed_or_unscored_file_gives_no_number_instead_of_a_wrong_one():
    rows = [_row("a", "x", "tflite", 0.5, None, 3000), _row("a", "x", "tflite-int8", None, 0.4, 1000)]
    [pair] = bench.pairs_of(rows, [])
    assert pair["int8_speedup"] is None and pair["accuracy_drop_points"] is None
    assert bench.summary_of([pair])["max_accuracy_drop_points"] is None
