"""Exporters on a real run: each format exports, verifies and is timed; int8 files are scored on the test split;
a too-strict accuracy limit fails an artifact and records it; a third-party exporter plugs in.

One tiny search + training run (digits) is shared by the module; deploy settings change between tests,
which reuses the earlier stages. Real ONNX Runtime and LiteRT throughout (LiteRT tests skip without it).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import onnx
import pytest

from nasflow.errors import ExportError

from nasflow.data import load_dataset
from nasflow.export import onnx_accuracy
from nasflow.flows.context import RunContext
from nasflow.flows.deploy import _deploy
from nasflow.flows.evaluate import make_devices
from nasflow.flows.pipeline import run_spec
from nasflow.plugins import get_plugins, reset_plugins
from nasflow.registry import Registry
from nasflow.spec import load_spec

from specs import tiny_spec_text
from test_edgetpu_device import fake_compiler  # noqa: F401 (fixture)
from test_plugins import install_dist

LITERT = get_plugins().get("exporter", "tflite").cls.unavailable_reason()
needs_litert = pytest.mark.skipif(LITERT is not None, reason=f"litert not usable here: {LITERT}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(folder, spec path, first summary) of a run whose deploy wrote the default onnx artifact."""
    tmp = tmp_path_factory.mktemp("exporters")
    spec = tmp / "s.yaml"
    text = tiny_spec_text(tmp, name="exporters", profile=False, morph=False)
    spec.write_text(text.replace("config: {epochs: 2}", "config: {epochs: 6}"))  # a model worth quantizing
    return tmp, spec, run_spec(load_spec(spec))


def redeploy(tmp, spec, settings: str):
    """Run the spec again with `settings` added to its deploy section; earlier stages are reused."""
    text = spec.read_text()
    line = next(l for l in text.splitlines() if l.startswith("deploy:"))
    spec.write_text(text.replace(line, f"deploy: {{enabled: true, out_dir: {tmp / 'deploy'}, {settings}}}"))
    return run_spec(load_spec(spec))


def artifact_rows(tmp, run_id):
    return Registry(tmp / "registry.duckdb").get_artifacts(run_id)


def timings(tmp, artifact_id):
    return Registry(tmp / "registry.duckdb").query(
        "SELECT device, artifact_format, median_ms FROM measurements WHERE artifact_id = ? AND metric = 'latency'",
        [artifact_id],
    )[1]


def test_onnx_int8_is_calibrated_scored_on_the_test_split_and_timed(run):
    tmp, spec, first = run
    summary = redeploy(tmp, spec, "formats: [onnx, onnx-int8], options: {onnx-int8: {calibration_images: 64}}")
    assert summary.stages["deploy"]["failures"] == [] and summary.stages["deploy"]["reused"] == 1  # the onnx file
    by_format = {a["format"]: a for a in summary.artifacts}
    fp32, int8 = by_format["onnx"], by_format["onnx-int8"]
    assert fp32["artifact_id"] == first.artifacts[0]["artifact_id"]
    assert fp32["max_abs_err"] <= fp32["tolerance"] and fp32["cosine_diff"] <= fp32["tolerance"]
    assert fp32["max_accuracy_drop"] is None and fp32["failure"] is None
    # the int8 file is a QDQ graph, judged by its own accuracy next to the float32 model's
    ops = {node.op_type for node in onnx.load(int8["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8["verified"] and int8["failure"] is None and int8["max_accuracy_drop"] == 0.01
    assert int8["options"] == {"opset": 17, "calibration_images": 64, "per_channel": True}
    assert int8["reference_accuracy"] - int8["accuracy"] <= 0.01
    assert 0 < int8["top1_agreement"] <= 1 and int8["reference_accuracy"] == pytest.approx(fp32["reference_accuracy"])
    images, labels = load_dataset(load_spec(spec).spec.dataset).split("test")
    assert int8["accuracy"] == pytest.approx(onnx_accuracy(int8["path"], images, labels))  # the file itself, test split
    assert int8["max_abs_err"] > fp32["max_abs_err"]  # quantized: not the same numbers, by design
    [(device, fmt, median)] = timings(tmp, int8["artifact_id"])
    assert (device, fmt) == ("onnxruntime-cpu", "onnx-int8") and median > 0


LOSSY_EXPORTER = textwrap.dedent('''
    """A third party's quantized format that really loses accuracy: weights rounded to 2 bits."""
    import copy
    from pathlib import Path

    import numpy as np
    import torch

    from nasflow.hookspecs import hookimpl
    from nasflow.plugin_api import Exporter


    class TwoBitExporter(Exporter):
        name = "torchscript-2bit"
        description = "TorchScript with every weight tensor rounded to 4 levels"
        suffix = "2bit.ts.pt"
        quantized = True

        def export(self, model, example, path, calibration=None):
            lossy = copy.deepcopy(model).eval()
            with torch.no_grad():
                for p in lossy.parameters():
                    if p.dim() > 1:
                        step = p.abs().max() / 1.5
                        p.copy_(torch.clamp(torch.round(p / step - 0.5) + 0.5, -1.5, 1.5) * step)
            torch.jit.trace(lossy, torch.from_numpy(np.asarray(example, np.float32))).save(str(path))
            return Path(path)

        def runner(self, path):
            loaded = torch.jit.load(str(path))

            def run(x):
                with torch.no_grad():
                    return loaded(torch.from_numpy(x)).numpy()

            return run


    @hookimpl
    def nasflow_exporters():
        return [TwoBitExporter]
''')


def test_a_too_strict_accuracy_limit_fails_the_quantized_artifact_and_keeps_the_others(run, tmp_path, monkeypatch):
    # On digits the built-in int8 files often lose nothing at all (one CI run: +0.28 points with
    # one calibration image), so a limit of 0 would not fail them reliably; a third party's 2-bit
    # format loses for sure and goes through the same verification.
    tmp, spec, first = run
    site = tmp_path / "site"
    install_dist(site, "nasflow-2bit-export", "0.1.0", "twobit_export", LOSSY_EXPORTER, "twobit_export")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", "0")
    reset_plugins()
    try:
        before = {a["artifact_id"]: a for a in artifact_rows(tmp, first.run_id)}
        summary = redeploy(tmp, spec, "formats: [onnx, torchscript-2bit], max_accuracy_drop: 0.01")
    finally:
        monkeypatch.undo()
        reset_plugins()
    rows = {a["artifact_id"]: a for a in artifact_rows(tmp, first.run_id)}
    [new] = [a for i, a in rows.items() if i not in before]
    assert new["format"] == "torchscript-2bit" and not new["verified"]
    drop = new["reference_accuracy"] - new["accuracy"]
    assert drop > 0.01 and new["max_accuracy_drop"] == 0.01
    assert "deploy.max_accuracy_drop 0.01" in new["failure"] and f"{drop * 100:.2f} points" in new["failure"]
    [failure] = summary.stages["deploy"]["failures"]
    assert "torchscript-2bit" in failure and new["failure"] in failure
    assert timings(tmp, new["artifact_id"]) == []
    for artifact_id, old in before.items():  # earlier artifacts and their files are untouched
        assert rows[artifact_id] == old
    assert [a["format"] for a in summary.artifacts] == ["onnx"]


@needs_litert
def test_tflite_formats_export_verify_and_are_timed_on_litert(run):
    tmp, spec, first = run
    loaded = redeploy(tmp, spec, "formats: [onnx]")  # back to settings that pass
    ctx = RunContext(first.run_id, load_spec(spec).spec)
    candidate = next(
        c for c in Registry(tmp / "registry.duckdb").get_candidates(first.run_id)
        if c["candidate_id"] == loaded.artifacts[0]["candidate_id"]
    )
    devices = make_devices(load_spec(spec).spec.devices)
    devices.update(make_devices([type(ctx.spec.devices[0])(name="litert", options={"threads": 1, "min_seconds": 0,
                                                                                    "max_seconds": 0.3, "max_runs": 50})]))
    fp32, fp32_rows = _deploy(ctx, candidate, "tflite", devices)
    assert fp32["verified"] and fp32["max_abs_err"] <= 1e-4 and fp32["path"].endswith(".tflite")
    assert fp32["accuracy"] == pytest.approx(fp32["reference_accuracy"], abs=2 / 360)
    assert [(m["device"], m["artifact_format"]) for m in fp32_rows] == [("litert", "tflite")]
    ctx = RunContext(first.run_id, ctx.spec.model_copy(update={"deploy": ctx.spec.deploy.model_copy(
        update={"options": {"tflite-int8": {"calibration_images": 64}}, "max_accuracy_drop": 0.05})}))
    int8, int8_rows = _deploy(ctx, candidate, "tflite-int8", devices)
    assert int8["path"].endswith(".int8.tflite") and int8["options"]["calibration_images"] == 64
    assert int8["verified"], int8["failure"]
    assert int8["reference_accuracy"] - int8["accuracy"] <= 0.05 and int8["top1_agreement"] > 0.5
    [row] = int8_rows
    assert (row["device"], row["artifact_format"]) == ("litert", "tflite-int8") and row["median_ms"] > 0
    assert row["extra"]["input_dtype"] == "int8"  # full-integer: the input tensor too
    ctx = RunContext(first.run_id, ctx.spec.model_copy(update={"deploy": ctx.spec.deploy.model_copy(
        update={"options": {"tflite-int8": {"calibration_images": 64, "float_io": True}}})}))
    floating, floating_rows = _deploy(ctx, candidate, "tflite-int8", devices)
    assert floating["verified"], floating["failure"]
    assert floating["path"] != int8["path"] and floating["options"]["float_io"] is True
    # the same integer kernels behind a float32 interface: the same predictions
    assert floating["accuracy"] == pytest.approx(int8["accuracy"], abs=2 / 360)
    assert floating_rows[0]["extra"]["input_dtype"] == "float32"


@needs_litert
def test_edgetpu_is_a_channel_last_int8_model_compiled_or_plainly_marked_not_compiled(run, fake_compiler):
    from nasflow.export.edgetpu import cpu_model_path

    tmp, spec, first = run
    base = load_spec(spec).spec
    candidate = next(c for c in Registry(tmp / "registry.duckdb").get_candidates(first.run_id)
                     if c["candidate_id"] == first.artifacts[0]["candidate_id"])

    def deploy_with(options):
        ctx = RunContext(first.run_id, base.model_copy(update={"deploy": base.deploy.model_copy(
            update={"options": {"edgetpu": {"calibration_images": 64, **options}}, "max_accuracy_drop": 0.05})}))
        exporter = get_plugins().create("exporter", "edgetpu", ctx.spec.deploy.options["edgetpu"])
        artifact, rows = _deploy(ctx, candidate, "edgetpu", {})
        assert artifact["verified"], artifact["failure"]
        assert artifact["reference_accuracy"] - artifact["accuracy"] <= 0.05 and rows == []
        return exporter, artifact, exporter.describe(Path(artifact["path"]))

    # no compiler: the int8 model, named as such, with the mapping report; every operator maps
    # because the input is NHWC (an NCHW file would start with an unmappable TRANSPOSE)
    exporter, plain, described = deploy_with({"compiler": "nasflow-no-such-compiler"})
    assert plain["path"].endswith(".edgetpu-uncompiled.int8.tflite") and plain["options"]["compiled"] is False
    assert "not compiled" in exporter.note() and "edgetpu-compiler" in exporter.note() and fake_compiler() == []
    assert described["edgetpu"]["compiled"] is False and described["layout"] == "NHWC"
    assert described["edgetpu"]["operators_on_cpu"] == 0 and described["edgetpu"]["operators_on_edgetpu"] > 0
    [image] = described["inputs"]
    assert image["shape"][-1] == load_dataset(base.dataset).input_shape[1] and image["dtype"] == "int8"

    # compiler on PATH (a stand-in): the compiled file is the artifact, its int8 source beside it
    exporter, compiled, described = deploy_with({})
    path = Path(compiled["path"])
    assert path.name.endswith(".edgetpu.tflite") and compiled["options"]["compiled"] is True
    assert exporter.note() is None and described["edgetpu"]["compiled"] is True
    [argv] = fake_compiler()
    assert argv[-1] == str(cpu_model_path(path)) and cpu_model_path(path).is_file()
    assert compiled["artifact_id"] != plain["artifact_id"]


TORCHSCRIPT_EXPORTER = textwrap.dedent('''
    """A third party's exporter: TorchScript files, run by torch.jit."""
    from pathlib import Path

    import numpy as np
    import torch

    from nasflow.hookspecs import hookimpl
    from nasflow.plugin_api import Exporter


    class TorchScriptExporter(Exporter):
        name = "torchscript"
        description = "TorchScript (torch.jit.trace)"
        suffix = "ts.pt"

        def export(self, model, example, path, calibration=None):
            traced = torch.jit.trace(model.eval(), torch.from_numpy(np.asarray(example, np.float32)))
            traced.save(str(path))
            return Path(path)

        def runner(self, path):
            loaded = torch.jit.load(str(path))

            def run(x):
                with torch.no_grad():
                    return loaded(torch.from_numpy(x)).numpy()

            return run


    @hookimpl
    def nasflow_exporters():
        return [TorchScriptExporter]
''')


def test_a_third_party_exporter_is_a_deploy_format(run, tmp_path, monkeypatch):
    tmp, spec, first = run
    site = tmp_path / "site"
    site.mkdir()
    install_dist(site, "nasflow-torchscript-export", "0.2.0", "ts_export", TORCHSCRIPT_EXPORTER, "ts_export")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", "0")
    reset_plugins()
    try:
        info = get_plugins().get("exporter", "torchscript")
        assert (info.package, info.version) == ("nasflow-torchscript-export", "0.2.0")
        summary = redeploy(tmp, spec, "formats: [torchscript]")
        [artifact] = summary.artifacts
        assert artifact["format"] == "torchscript" and artifact["path"].endswith(".ts.pt")
        assert artifact["verified"] and artifact["max_abs_err"] <= 1e-4
        assert artifact["accuracy"] == pytest.approx(artifact["reference_accuracy"])
        assert timings(tmp, artifact["artifact_id"]) == []  # no device in the spec runs this format
    finally:
        monkeypatch.undo()
        reset_plugins()
    assert "torchscript" not in get_plugins().names("exporter")


def test_calibrating_on_more_images_than_the_training_split_says_so(run):
    tmp, spec, first = run
    before = artifact_rows(tmp, first.run_id)
    # Refused before the run's first stage, with one message: nothing written, nothing lost.
    with pytest.raises(ExportError, match="deploy.options.onnx-int8.calibration_images is 100000 but the training split has only"):
        redeploy(tmp, spec, "formats: [onnx-int8], options: {onnx-int8: {calibration_images: 100000}}")
    assert artifact_rows(tmp, first.run_id) == before
