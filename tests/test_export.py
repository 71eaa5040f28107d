"""ONNX export, round-trip verification against PyTorch, and artifact hashing."""

from __future__ import annotations

import hashlib
import warnings

import onnx
import pytest
import torch
from torch import nn

from nasflow.errors import ExportError
from nasflow.export import export_onnx, export_onnx_bytes, sha256_file, verify_onnx

from nets import TinyNet

SHAPE = (1, 3, 16, 16)


def trained_net() -> TinyNet:
    """A TinyNet whose BatchNorm running stats are not the defaults, so eval mode matters."""
    torch.manual_seed(0)
    net = TinyNet().train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, *SHAPE[1:]) * 2 + 1)
    return net


class ReturnsDict(nn.Module):
    def forward(self, x):
        return {"label": "cat", "score": 3}


class UsesEig(nn.Module):
    def forward(self, x):
        return torch.linalg.eig(x)[0].real


def test_round_trip_matches_pytorch(tmp_path):
    net = trained_net()
    path = export_onnx(net, SHAPE, tmp_path / "sub" / "net.onnx")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert net.training  # export must not leave the model in eval mode
    result = verify_onnx(net, path, SHAPE, atol=1e-4)
    assert result.passed and result.max_abs_err < 1e-4 and result.atol == 1e-4
    # batch axis is dynamic: a batch of 5 runs and agrees too
    assert verify_onnx(net, path, (5, *SHAPE[1:]), atol=1e-4).passed


def test_exported_graph_names_and_dynamic_batch():
    model = onnx.load_from_string(export_onnx_bytes(trained_net(), SHAPE))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed 1
    assert any(o.version == 17 for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_verify_accepts_bytes_and_fails_after_weights_change():
    net = trained_net()
    data = export_onnx_bytes(net, SHAPE)
    assert verify_onnx(net, data, SHAPE, atol=1e-4).passed
    with torch.no_grad():
        net.fc.weight.add_(0.5)
    result = verify_onnx(net, data, SHAPE, atol=1e-4)
    assert not result.passed and result.max_abs_err > 1e-4


def test_export_is_quiet():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx_bytes(TinyNet(), SHAPE)
    assert not caught


@pytest.mark.parametrize("model", [ReturnsDict(), UsesEig()], ids=["dict-output", "unsupported-op"])
def test_unexportable_model_raises_export_error(model, tmp_path, capfd):
    with pytest.raises(ExportError, match="ONNX export of") as info:
        export_onnx(model, (1, 4, 4), tmp_path / "bad.onnx")
    assert "Torch IR graph" not in str(info.value)  # message stays short
    assert "Torch IR graph" not in capfd.readouterr().err  # and no graph dump on stderr
    assert not (tmp_path / "bad.onnx").exists()


def test_verify_rejects_unloadable_model():
    with pytest.raises(ExportError, match="cannot load"):
        verify_onnx(TinyNet(), b"not an onnx model", SHAPE, atol=1e-4)


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"nasflow" * 100_000)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_differences_measure_the_worst_input_by_absolute_and_cosine_distance():
    import numpy as np

    from nasflow.export.verify import differences

    a = np.array([[1.0, 2.0], [3.0, -1.0]])
    assert differences(a, a.copy()) == (0.0, pytest.approx(0.0, abs=1e-12))
    max_abs, cosine = differences(a, np.array([[1.0, 2.0], [-3.0, 1.0]]))  # second row reversed
    assert max_abs == 6.0 and cosine == pytest.approx(2.0)
    assert differences(np.zeros((1, 2)), np.zeros((1, 2))) == (0.0, 0.0)
    assert differences(np.zeros((1, 2)), np.ones((1, 2)))[1] == 1.0  # zero against non-zero: orthogonal
    assert differences(a, a[:1]) == (float("inf"), float("inf"))
    assert differences(a, np.array([[np.nan, 2.0], [3.0, -1.0]])) == (float("inf"), float("inf"))


def test_a_float32_artifact_outside_atol_fails_with_its_numbers(tmp_path):
    import numpy as np

    from nasflow.export.formats import OnnxExporter
    from nasflow.plugin_api import CheckInputs

    net = trained_net()
    exporter = OnnxExporter()
    path = exporter.export(net, np.zeros(SHAPE, np.float32), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((40, *SHAPE[1:])).astype(np.float32), rng.integers(0, 10, 40)
    loose = exporter.verify(net, path, CheckInputs(images[:8], images, labels, atol=1e-4, max_accuracy_drop=0.01))
    assert loose.passed and loose.failure is None and 0 < loose.max_abs_err <= 1e-4
    assert loose.top1_agreement == 1.0 and loose.accuracy == loose.reference_accuracy
    strict = exporter.verify(net, path, CheckInputs(images[:8], images, labels, atol=1e-12, max_accuracy_drop=0.01))
    assert not strict.passed and strict.max_abs_err == loose.max_abs_err
    assert strict.failure.startswith(f"output differs from PyTorch by {strict.max_abs_err:.3g}")
