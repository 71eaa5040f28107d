"""float32 input and output for a full-integer .tflite (nasflow.export.tflite_io), on the real LiteRT interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasflow.errors import ExportError
from nasflow.plugins import get_plugins

from nets import TinyNet

LITERT = get_plugins().get("exporter", "tflite-int8").cls.unavailable_reason()
pytestmark = pytest.mark.skipif(LITERT is not None, reason=f"litert not usable here: {LITERT}")
SHAPE = (1, 3, 8, 8)


def _io(path):
    from nasflow.export.tflite_fp32 import _runtime

    interp = _runtime().interpreter(model_path=str(path))
    ops = [op["op_name"] for op in interp._get_ops_details()]
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    return np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name, ops, interp.get_signature_list()


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory):
    """(int8-I/O file, float-I/O file) of one calibrated TinyNet."""
    from nasflow.export.tflite_int8 import convert_to_tflite_int8

    tmp = tmp_path_factory.mktemp("tflite_io")
    torch.manual_seed(0)
    model = TinyNet().eval()
    gen = torch.Generator().manual_seed(1)
    calibration = [torch.rand(*SHAPE, generator=gen) for _ in range(8)]
    plain = convert_to_tflite_int8(model, SHAPE, tmp / "m.int8.tflite", calibration)
    floating = convert_to_tflite_int8(model, SHAPE, tmp / "m.float-io.int8.tflite", calibration, float_io=True)
    return plain, floating


def test_float_io_wraps_the_integer_graph_in_quantize_and_dequantize(int8_files):
    plain, floating = int8_files
    plain_in, plain_out, plain_ops, plain_sig = _io(plain)
    float_in, float_out, float_ops, float_sig = _io(floating)
    assert (plain_in, plain_out) == ("int8", "int8")
    assert (float_in, float_out) == ("float32", "float32")
    assert float_ops == ["QUANTIZE", *plain_ops, "DEQUANTIZE"]  # the integer graph itself untouched
    assert float_sig == plain_sig  # the signature names the new tensors under the same keys


def test_float_io_gives_the_integer_model_s_outputs(int8_files):
    from nasflow.export.tflite_fp32 import tflite_runner

    plain, floating = int8_files
    x = np.random.default_rng(2).random((16, *SHAPE[1:]), dtype=np.float32)
    ours = tflite_runner(floating)(x)
    # the runner quantizes and dequantizes the int8-I/O file's tensors with their own parameters
    reference = tflite_runner(plain)(x)
    from nasflow.export.tflite_fp32 import _runtime

    (out,) = _runtime().interpreter(model_path=str(plain)).get_output_details()
    step = out["quantization"][0]
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= step + 1e-7  # at most one output quantization step apart


def test_float_files_are_left_alone_and_a_foreign_file_is_refused(int8_files, tmp_path):
    from nasflow.export.tflite_io import with_float_io

    _, floating = int8_files
    again = with_float_io(floating, tmp_path / "again.tflite")
    assert _io(again)[:3] == _io(floating)[:3]  # no second QUANTIZE/DEQUANTIZE pair
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ExportError, match="not a readable .tflite"):
        with_float_io(bogus, tmp_path / "out.tflite")
