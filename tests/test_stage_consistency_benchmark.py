"""Candidates are measured in interleaved passes, and the stage-consistency benchmark runs end to end.

The benchmark test checks the report's shape and internal consistency at CI size, never the
agreement target: that needs the full-size run on a quiet machine (see the README).
"""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nasflow.errors import DeviceError
from nasflow.flows.evaluate import measure_artifact_everywhere, measure_everywhere
from nasflow.plugins.devices.onnxruntime_cpu import OnnxRuntimeCPU, model_content_key
from nasflow.plugins.devices.torch_cpu import TorchCPU

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "stage_consistency.py"
FAST = dict(warmup=1, min_runs=5, max_runs=20, rel_ci=0.5, min_seconds=0.0, max_seconds=0.2)
SHAPE = (1, 1, 8, 8)


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))


def scripted(base, name: str, medians: list[float], log: list[str], fail_at: int | None = None):
    """A real device whose measurements report the given medians, one per call, in order."""

    class Scripted(base):
        def measure_model(self, model, input_shape):
            log.append(name)
            calls = log.count(name)
            if calls == fail_at:
                raise DeviceError("boom")
            real = super().measure_model(model, input_shape)
            return replace(real, device=name, stats=replace(real.stats, median_ms=medians[calls - 1]))

    return Scripted(base.Options(**FAST, passes=len(medians)))


def test_passes_alternate_between_devices_and_keep_each_fastest():
    log: list[str] = []
    devices = {
        "a": scripted(TorchCPU, "a", [3.0, 1.0, 2.0], log),
        "b": scripted(OnnxRuntimeCPU, "b", [1.5, 0.5], log),
    }
    measured, failures = measure_everywhere(devices, small_model(), SHAPE)
    assert failures == {}
    assert log == ["a", "b", "a", "b", "a"]  # interleaved, each device its own number of passes
    by_device = {m.device: m for m in measured}
    assert by_device["a"].stats.median_ms == 1.0 and by_device["a"].extra["passes_ms"] == [3.0, 1.0, 2.0]
    assert by_device["b"].stats.median_ms == 0.5 and by_device["b"].extra["passes_ms"] == [1.5, 0.5]


def test_a_failing_device_is_named_and_dropped_while_the_others_go_on():
    log: list[str] = []
    devices = {"a": scripted(TorchCPU, "a", [1.0, 1.0], log), "b": scripted(TorchCPU, "b", [1.0, 1.0], log, fail_at=2)}
    measured, failures = measure_everywhere(devices, small_model(), SHAPE)
    assert failures == {"b": "boom"} and log == ["a", "b", "a", "b"]
    # the failing device has no number (a pass failed part-way); the other keeps its fastest
    assert [m.device for m in measured] == ["a"]


def test_passes_option_is_validated_and_defaults_to_three():
    assert TorchCPU.Options().passes == 3 and OnnxRuntimeCPU.Options().passes == 3
    with pytest.raises(ValueError):
        TorchCPU.Options(passes=0)


def test_artifacts_are_timed_on_the_devices_that_run_their_format(tmp_path):
    from nasflow.export import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(small_model().eval(), SHAPE, path)
    devices = {"torch-cpu": TorchCPU(TorchCPU.Options(**FAST)), "onnxruntime-cpu": OnnxRuntimeCPU(OnnxRuntimeCPU.Options(**FAST, passes=2))}
    measured, failures = measure_artifact_everywhere(devices, str(path), "onnx", SHAPE)
    assert failures == {} and [m.device for m in measured] == ["onnxruntime-cpu"]
    assert len(measured[0].extra["passes_ms"]) == 2 and measured[0].stats.median_ms == min(measured[0].extra["passes_ms"])
    measured, failures = measure_artifact_everywhere(devices, str(tmp_path / "missing.onnx"), "onnx", SHAPE)
    assert measured == [] and list(failures) == ["onnxruntime-cpu"]


def test_onnx_export_is_reused_only_while_the_model_is_unchanged(monkeypatch):
    import nasflow.plugins.devices.onnxruntime_cpu as ort_cpu

    exports = []
    real_export = ort_cpu.export_onnx_bytes
    monkeypatch.setattr(ort_cpu, "export_onnx_bytes", lambda m, s: exports.append(s) or real_export(m, s))
    device = OnnxRuntimeCPU(OnnxRuntimeCPU.Options(**FAST))
    model = small_model()
    key = model_content_key(model, SHAPE)
    device.measure_model(model, SHAPE)
    device.measure_model(model, SHAPE)
    assert len(exports) == 1
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # new weights: a new model as far as the export goes
    assert model_content_key(model, SHAPE) != key and model_content_key(model, (2, 1, 8, 8)) != model_content_key(model, SHAPE)
    device.measure_model(model, SHAPE)
    assert len(exports) == 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("consistency") / "stage_consistency.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    markdown = subprocess.run(
        [sys.executable, str(SCRIPT), "--markdown", "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert markdown.returncode == 0, markdown.stderr[-3000:]
    return json.loads(out.read_text()), markdown.stdout


def test_report_says_how_loaded_the_machine_was(bench):
    report, _ = bench
    assert report["settings"]["quick"] is True and report["settings"]["repeats"] == 2
    assert report["settings"]["devices"] == ["torch-cpu", "onnxruntime-cpu"]
    for phase in ("run", "remeasure"):
        load = report["load"][phase]
        assert len(load["load_average_before"]) == len(load["load_average_after"]) == 3
        assert load["seconds"] > 0 and load["cpu_seconds_this_benchmark"] > 0
        assert load["cpu_seconds_other_processes"] >= 0 and load["steal_seconds"] >= 0


def test_every_checkpoint_and_artifact_is_remeasured_on_every_device_that_runs_it(bench):
    report, _ = bench
    assert report["models"] == {"checkpointed": 2, "artifacts": 1}  # tiny spec: top-1 trained, its child, one ONNX file
    numbers = report["stage_numbers"]
    ends = [n for n in numbers if n["label"] == "end"]
    assert len(ends) == 2 * 2 and all(len(n["repeats_ms"]) == 2 for n in ends)
    assert [n["device"] for n in numbers if n["label"] == "end-artifact"] == ["onnxruntime-cpu"]
    for n in numbers:
        if n["label"] in ("search", "train", "morph", "artifact"):
            # the stages measured each model in the default 3 passes and kept the fastest
            assert len(n["passes_ms"]) == 3 and n["median_ms"] == min(n["passes_ms"])
    labels = {n["label"] for n in numbers}
    assert {"search", "train", "morph", "artifact", "end", "end-artifact"} <= labels


def test_pairs_follow_the_stated_rule_and_the_table_shows_each_kind(bench):
    report, markdown = bench
    pairs = report["pairs"]
    assert pairs
    for p in pairs:
        assert p["ratio"] == pytest.approx(p["second_ms"] / p["first_ms"])
        assert p["tolerance"] == pytest.approx(max(0.10, p["first_rel_ci"] + p["second_rel_ci"]))
        assert p["within"] == (abs(p["ratio"] - 1) <= p["tolerance"])
    assert report["meets_target"] == all(p["within"] for p in pairs)
    kinds = {(p["device"], p["pair"]) for p in pairs}
    assert ("torch-cpu", "search / train") in kinds and ("onnxruntime-cpu", "artifact / end-artifact") in kinds
    for device, summary in report["summary"].items():
        for kind, s in summary.items():
            members = [p for p in pairs if p["device"] == device and p["pair"] == kind]
            assert s["pairs"] == len(members) and s["within"] == sum(p["within"] for p in members)
            assert f"| `{device}` | {kind} | {s['pairs']} |" in markdown

