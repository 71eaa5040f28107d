"""The Edge TPU operator-mapping report: the compiler's three rules on operator lists, and a real
full-integer .tflite read with LiteRT (its leading NCHW -> NHWC transpose is what stops the mapping;
channel-last export removes it)."""

from __future__ import annotations

import pytest

from nasflow.export.edgetpu_ops import TFLITE_OPS, edgetpu_mapping, map_operators
from nasflow.plugins import get_plugins

LITERT = get_plugins().get("exporter", "tflite-int8").cls.unavailable_reason()


def test_a_fully_quantized_supported_graph_maps_entirely():
    ops = [("CONV_2D", ["int8", "int8", "int32", "int8"]), ("DEPTHWISE_CONV_2D", ["int8"] * 3), ("ADD", ["int8"] * 3),
           ("MEAN", ["int8", "int32", "int8"]), ("FULLY_CONNECTED", ["int8", "int8", "int32", "int8"])]
    mapping = map_operators(ops)
    assert (mapping.on_tpu, mapping.on_cpu, mapping.first_cpu) == (5, 0, None)
    report = mapping.to_dict()
    assert report["compiled"] is False and report["first_cpu_operator"] is None


def test_the_first_unmapped_operator_sends_the_rest_to_the_cpu():
    ops = [("CONV_2D", ["int8"]), ("HARD_SWISH", ["int8"]), ("CONV_2D", ["int8"]), ("MEAN", ["int8"])]
    mapping = map_operators(ops)
    assert [op.on_tpu for op in mapping.ops] == [True, False, False, False]
    assert mapping.first_cpu.op == "HARD_SWISH" and "HARD_SWISH is not mapped" in mapping.first_cpu.reason
    assert "after operator 1 (HARD_SWISH)" in mapping.ops[2].reason
    assert mapping.to_dict()["first_cpu_operator"]["index"] == 1


def test_float_tensors_and_unknown_operators_fall_back():
    float_conv = map_operators([("CONV_2D", ["float32", "float32", "float32"])])
    assert not float_conv.ops[0].on_tpu and "float32 tensors" in float_conv.ops[0].reason
    unknown = map_operators([("GELU", ["int8", "int8"])])
    assert not unknown.ops[0].on_tpu and "unknown type" in unknown.ops[0].reason
    assert not TFLITE_OPS["TRANSPOSE"].on_tpu and TFLITE_OPS["PAD"].on_tpu


@pytest.mark.skipif(LITERT is not None, reason=f"litert not usable here: {LITERT}")
def test_a_real_int8_model_is_read_in_execution_order(tmp_path):
    import torch

    from nasflow.arch import parse_arch
    from nasflow.arch.builder import build_model
    from nasflow.export.tflite_int8 import convert_to_tflite_int8

    torch.manual_seed(0)
    model = build_model(parse_arch("stem_c8_s1-ir_k3_e2_c8_s1-ir_k3_e2_c16_s2-head_c16"), 3, 10).eval()
    path = convert_to_tflite_int8(model, (1, 3, 8, 8), tmp_path / "m.int8.tflite")
    mapping = edgetpu_mapping(path)
    names = [op.op for op in mapping.ops]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(names)
    assert "DELEGATE" not in names  # read before any delegate replaces operators
    # PyTorch's NCHW input reaches LiteRT's NHWC kernels through a leading TRANSPOSE, which the
    # Edge TPU compiler cannot map: as exported today, nothing after it would run on the Edge TPU.
    assert names[0] == "TRANSPOSE" and mapping.first_cpu.index == 0 and mapping.on_tpu == 0
    # exported channel-last (what the edgetpu exporter and device do), every operator maps
    nhwc = edgetpu_mapping(convert_to_tflite_int8(model, (1, 3, 8, 8), tmp_path / "m.nhwc.int8.tflite", channel_last=True))
    assert nhwc.first_cpu is None and nhwc.on_tpu == len(mapping.ops) - 1
