"""Full-integer (int8) ``.tflite`` conversion of PyTorch models, as the Edge TPU compiler requires.

PT2E static quantization (torchao's ``prepare_pt2e`` / ``convert_pt2e`` with litert-torch's
``PT2EQuantizer``): the model is exported with ``torch.export``, observers are inserted, the
calibration inputs are run through it to fix activation ranges, and the quantize/dequantize pairs
are folded by the converter into int8 kernels (``qdq_conversion_mode = STATIC``). Weights are
symmetric int8, per output channel by default; activations int8 with ranges from calibration.
The converted model is integer end to end: its input and output tensors are int8 too, with the
scale and zero point in their `quantization` details (quantize inputs with them, dequantize
outputs), which is what the Edge TPU compiler wants. `float_io=True` puts a QUANTIZE op in front
and a DEQUANTIZE op behind instead (nasflow.export.tflite_io), so callers pass and get float32.

`channel_last=True` gives the file an NHWC input (PyTorch still sees NCHW, through a permute
the converter folds away). The default NCHW input reaches LiteRT's NHWC kernels through a leading
TRANSPOSE, which the Edge TPU compiler cannot map, and it maps only the segment before the first
operator it cannot: an NCHW file would run entirely on the CPU (see nasflow.export.edgetpu_ops).

Calibration inputs decide the activation ranges, so use real images for a deployed model; for
latency only, the default (standard-normal inputs) is enough: int8 kernel speed does not depend
on the ranges.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasflow.errors import DeviceError
from nasflow.export.tflite_fp32 import INPUT_SEED, _import_converter, converting

if TYPE_CHECKING:
    import torch

CALIBRATION_BATCHES = 8


def random_calibration(input_shape: tuple[int, ...], batches: int = CALIBRATION_BATCHES) -> list["torch.Tensor"]:
    """Standard-normal inputs of `input_shape` (seeded): enough to time an int8 model, not to deploy it."""
    import torch

    gen = torch.Generator().manual_seed(INPUT_SEED + 1)
    return [torch.randn(*input_shape, generator=gen) for _ in range(batches)]


def convert_to_tflite_int8(
    model: "torch.nn.Module",
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    calibration: Sequence["torch.Tensor"] | None = None,
    per_channel: bool = True,
    channel_last: bool = False,
    float_io: bool = False,
) -> Path:
    """Quantize `model` to int8 (PT2E static, calibrated on `calibration`) and write a .tflite at `path`.

    `input_shape` and `calibration` are NCHW, as the model takes them; `channel_last` makes the
    file's input NHWC; `float_io` makes its input and output float32. The caller's module is left as it was (mode and weights); the file appears
    atomically.
    Raises DeviceError when litert-torch is missing or quantization/conversion fails.
    """
    import torch

    litert_torch = _import_converter()
    shape = tuple(int(n) for n in input_shape)
    batches = list(calibration) if calibration is not None else random_calibration(shape)
    if not batches:
        raise DeviceError("litert: int8 conversion needs at least one calibration input")
    # the wrapper takes NHWC and hands the model NCHW; the converter cancels the two permutes
    traced = litert_torch.to_channel_last_io(model, args=[0]) if channel_last else model
    if channel_last:
        batches = [batch.permute(0, 2, 3, 1).contiguous() for batch in batches]
    sample = batches[0]
    # the caller's model, not the wrapper: its mode is what `converting` gives back
    with converting(model, shape, Path(path), "an int8 .tflite") as tmp, torch.no_grad():
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
        )
        graph = torch.export.export(traced.eval(), (sample,)).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for batch in batches:
            prepared(batch)
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        # exported from the eval-mode model, so its graph has inference BatchNorm already; only the
        # GraphModule's default `training` flag says otherwise, and litert-torch warns on that flag
        quantized.training = False
        edge = litert_torch.convert(quantized, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(tmp))
        if float_io:
            from nasflow.export.tflite_io import with_float_io

            with_float_io(tmp, tmp)
    return Path(path)


def tensor_types(interpreter: Any) -> dict[str, int]:
    """How many of a loaded model's tensors have each dtype (e.g. {'int8': 40, 'float32': 2, 'int32': 12})."""
    counts: dict[str, int] = {}
    for detail in interpreter.get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts
