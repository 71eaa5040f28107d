"""The deployment folder: manifest.json and MODEL_CARD.md from a real run, and a model loaded from the
folder alone (ONNX Runtime, LiteRT) reproducing the accuracy the registry recorded."""

import hashlib
import json
import os

import numpy as np
import pytest

from nasflow.data import load_dataset
from nasflow.flows.pipeline import run_spec
from nasflow.spec import load_spec

from conftest import tiny_spec_text


def _from_folder(folder, artifact, manifest, raw, labels):
    """Accuracy of one file using only the folder: the manifest's preprocessing and the runtime."""
    pre = manifest["preprocessing"]
    mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
    pixels = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0)
    x = (pixels - mean) / std
    path = str(folder / artifact["file"])
    if artifact["format"].startswith("onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = artifact["inputs"][0]["name"]
        logits = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    else:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=path, num_threads=1)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        rows = []
        for i in range(len(x)):
            interp.set_tensor(inp["index"], x[i:i + 1])
            interp.invoke()
            rows.append(interp.get_tensor(out["index"]).copy())
        logits = np.concatenate(rows)
    return float((logits.argmax(1) == labels).mean())


def test_deployment_folder_alone_reproduces_recorded_accuracy(tmp_path):
    pytest.importorskip("ai_edge_litert")
    text = tiny_spec_text(tmp_path, morph=False).replace(
        f"deploy: {{enabled: true, out_dir: {tmp_path / 'deploy'}}}",
        f"deploy: {{enabled: true, formats: [onnx, tflite], out_dir: {tmp_path / 'deploy'}}}",
    )
    assert "formats: [onnx, tflite]" in text
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    loaded = load_spec(path)
    old = os.umask(0o022)
    try:
        summary = run_spec(loaded)
    finally:
        os.umask(old)
    folder = tmp_path / "deploy" / summary.run_id
    manifest = json.loads((folder / "manifest.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    assert manifest["run_id"] == summary.run_id and manifest["schema_version"] == 1
    assert {a["format"] for a in manifest["artifacts"]} == {"onnx", "tflite"}
    assert manifest["dataset"]["class_names"] == [str(d) for d in range(10)]

    data = load_dataset(loaded.spec.dataset)
    raw, labels = data.pixels["test"][data.rows["test"]], data.labels_of("test")
    for artifact in manifest["artifacts"]:
        file = folder / artifact["file"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == artifact["sha256"]
        assert file.stat().st_size == artifact["size_bytes"]
        assert oct(file.stat().st_mode & 0o777) == oct(0o644)  # the user's umask, not 0600
        assert artifact["inputs"][0]["dtype"] == "float32"
        assert artifact["inputs"][0]["shape"][1:] == list(data.input_shape[1:])
        assert artifact["verification"]["verified"] is True
        recorded = artifact["accuracy"]["value"]
        assert artifact["accuracy"]["source"] == "artifact" and artifact["accuracy"]["split"] == "test"
        assert _from_folder(folder, artifact, manifest, raw, labels) == pytest.approx(recorded, abs=1e-9)
        for device, entry in artifact["latency"].items():
            assert entry["source"] in {"measured", "lut", "predicted", "estimated"} and entry["fingerprint_hash"]
        assert f"`{artifact['file']}`" in card
    model = manifest["models"][0]
    assert model["arch"] in card and model["test_accuracy"]["split"] == "test"
    assert "## Limitations" in card


def _spec(tmp_path, deploy: str):
    text = tiny_spec_text(tmp_path).replace(f"deploy: {{enabled: true, out_dir: {tmp_path / 'deploy'}}}", deploy)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return load_spec(path).spec


def test_unwritable_out_dir_is_refused_before_any_work(tmp_path):
    from nasflow.errors import ExportError
    from nasflow.flows.deploy import check_deploy_settings

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the deploy folder should go")
    spec = _spec(tmp_path, f"deploy: {{enabled: true, out_dir: {blocker}}}")
    with pytest.raises(ExportError, match="deploy.out_dir: cannot write to"):
        check_deploy_settings(spec, load_dataset(spec.dataset), "run-x")
    assert blocker.read_text() == "a file where the deploy folder should go"  # nothing lost


def test_calibration_larger_than_training_split_is_refused(tmp_path):
    from nasflow.errors import ExportError
    from nasflow.flows.deploy import check_deploy_settings

    spec = _spec(tmp_path, f"deploy: {{enabled: true, formats: [onnx-int8], out_dir: {tmp_path / 'd'}, "
                           "options: {onnx-int8: {calibration_images: 100000}}}")
    data = load_dataset(spec.dataset)
    with pytest.raises(ExportError, match=f"calibration_images is 100000 but the training split has only {data.size('train')}"):
        check_deploy_settings(spec, data, "run-x")
