"""float32 input and output for a full-integer .tflite: a QUANTIZE op in front, a DEQUANTIZE op behind.

litert-torch's int8 path writes models whose graph inputs and outputs are int8 tensors, which is
what the Edge TPU compiler wants; an application that hands the model camera floats would have to
quantize them itself with the input tensor's scale and zero point. TensorFlow's converter offers
the other interface (float in, float out, integer inside) and this module gives litert-torch's
files the same: it edits the flatbuffer with the schema's object API. Every int8 (or uint8) graph
input gets a new float32 tensor and a QUANTIZE op from it, every such output a DEQUANTIZE op to a
new float32 tensor, with the signature updated to name the new tensors. Nothing inside the graph
changes, so the integer kernels, weights and activation ranges are exactly those of the original.
"""

from __future__ import annotations

import os
from pathlib import Path

from nasflow.errors import ExportError

_SCHEMA_MISSING = "ai-edge-litert's flatbuffer schema is needed to give an int8 .tflite float input/output"
_FILE_IDENTIFIER = b"TFL3"
# op versions the LiteRT kernels register for an int8 side (float32 -> int8 quantize, int8 -> float32 dequantize)
_QUANTIZE_VERSION = 2
_DEQUANTIZE_VERSION = 2


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise ExportError(_SCHEMA_MISSING) from exc
    return schema_py_generated


def _opcode_index(model, schema, builtin: int, version: int) -> int:
    """Index of `builtin`'s operator code in `model`, added when the model has none."""
    for index, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the int8 field older readers look at
    code.version = version
    model.operatorCodes = [*(model.operatorCodes or []), code]
    return len(model.operatorCodes) - 1


def _float_twin(model, schema, tensor, suffix: str) -> int:
    """A float32 tensor shaped like `tensor`, with an empty buffer of its own; its index."""
    twin = schema.TensorT()
    twin.shape = tensor.shape
    twin.shapeSignature = tensor.shapeSignature
    twin.hasRank = tensor.hasRank
    twin.type = schema.TensorType.FLOAT32
    twin.name = (tensor.name or b"tensor") + suffix.encode()
    model.buffers.append(schema.BufferT())
    twin.buffer = len(model.buffers) - 1
    subgraph = model.subgraphs[0]
    subgraph.tensors.append(twin)
    return len(subgraph.tensors) - 1


def _op(schema, opcode: int, inputs: list[int], outputs: list[int]):
    op = schema.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = inputs
    op.outputs = outputs
    return op


def with_float_io(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write `source` (an integer-I/O .tflite) to `target` with float32 graph inputs and outputs.

    Inputs and outputs that are already float are left alone. Raises ExportError when the file
    cannot be read as a .tflite or has an integer input without quantization parameters.
    """
    import flatbuffers

    schema = _schema()
    data = Path(source).read_bytes()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # a corrupt or foreign file fails deep inside flatbuffers
        raise ExportError(f"{source} is not a readable .tflite file: {exc}") from exc
    if len(model.subgraphs or []) != 1:
        raise ExportError(f"{source}: float input/output is made for one-subgraph models, it has {len(model.subgraphs or [])}")
    subgraph = model.subgraphs[0]
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8}
    renamed: dict[int, int] = {}
    front, back = [], []
    for position, index in enumerate(subgraph.inputs):
        tensor = subgraph.tensors[index]
        if tensor.type not in integer:
            continue
        if tensor.quantization is None or not tensor.quantization.scale:
            raise ExportError(f"{source}: integer input {tensor.name!r} has no scale to quantize float inputs with")
        twin = _float_twin(model, schema, tensor, "_float")
        front.append(_op(schema, _opcode_index(model, schema, schema.BuiltinOperator.QUANTIZE, _QUANTIZE_VERSION),
                         [twin], [index]))
        subgraph.inputs[position] = renamed[index] = twin
    for position, index in enumerate(subgraph.outputs):
        tensor = subgraph.tensors[index]
        if tensor.type not in integer:
            continue
        twin = _float_twin(model, schema, tensor, "_float")
        back.append(_op(schema, _opcode_index(model, schema, schema.BuiltinOperator.DEQUANTIZE, _DEQUANTIZE_VERSION),
                        [index], [twin]))
        subgraph.outputs[position] = renamed[index] = twin
    subgraph.operators = [*front, *(subgraph.operators or []), *back]
    for signature in model.signatureDefs or []:
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    out = Path(target)
    out.write_bytes(bytes(builder.Output()))
    return out
