"""Which operators of a full-integer ``.tflite`` the Edge TPU compiler would map, and why the others fall back.

The report an `edgetpu` artifact carries when `edgetpu_compiler` is not installed (and a check of
what it would do when it is). Three rules, each from Coral's documentation:

- the operator must be in the compiler's supported-operations table (`TFLITE_OPS`, most entries
  shared with `nasflow.edgetpu.OP_SUPPORT`, which the Edge TPU latency model uses);
- its tensors must be 8-bit quantized (int32 biases and shapes aside): a float operator runs on
  the CPU;
- the compiler maps one leading segment: from the first operator it cannot map, that operator and
  every later one run on the CPU (`nasflow.edgetpu.FIRST_SUBGRAPH_ONLY`).

The operators are read from the file with LiteRT's interpreter, before any delegate rewrites them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasflow.edgetpu import FIRST_SUBGRAPH_ONLY, OP_SUPPORT, OpMapping

_TABLE = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

TFLITE_OPS: dict[str, OpMapping] = {
    "CONV_2D": OP_SUPPORT["conv"],
    "DEPTHWISE_CONV_2D": OP_SUPPORT["depthwise"],
    "FULLY_CONNECTED": OP_SUPPORT["fc"],
    "AVERAGE_POOL_2D": OP_SUPPORT["pool"],
    "MAX_POOL_2D": OP_SUPPORT["pool"],
    "MEAN": OP_SUPPORT["global_pool"],
    "ADD": OP_SUPPORT["add"],
    "MUL": OP_SUPPORT["mul"],
    "CONCATENATION": OP_SUPPORT["concat"],
    "RELU": OP_SUPPORT["relu"],
    "RELU6": OP_SUPPORT["relu6"],
    "LOGISTIC": OP_SUPPORT["sigmoid"],
    "TANH": OP_SUPPORT["tanh"],
    "SOFTMAX": OP_SUPPORT["softmax"],
    "RESHAPE": OP_SUPPORT["reshape"],
    "HARD_SWISH": OP_SUPPORT["hswish"],
    "LEAKY_RELU": OP_SUPPORT["leaky_relu"],
    "PAD": OpMapping(True, "Pad (no padding in the batch dimension)", _TABLE),
    "QUANTIZE": OpMapping(True, "Quantize", _TABLE),
    "SUB": OpMapping(True, "Sub", _TABLE),
    "SQUEEZE": OpMapping(True, "Squeeze", _TABLE),
    "TRANSPOSE": OpMapping(
        False,
        "TRANSPOSE is not in the Edge TPU compiler's operator table; a model converted from PyTorch's NCHW layout "
        "starts with one, unless it is exported with channel-last inputs",
        "https://github.com/google-coral/edgetpu/issues/193",
    ),
    "DEQUANTIZE": OpMapping(False, "DEQUANTIZE is not in the Edge TPU compiler's operator table",
                            "https://github.com/google-coral/edgetpu/issues/659"),
}
"""TFLite builtin operators the report knows; any other is taken as not mapped (`OP_SUPPORT['other']`)."""

QUANTIZED = {"int8", "uint8"}
BOOKKEEPING = {"int32", "int64"}  # biases and shape operands of quantized operators


@dataclass(frozen=True)
class MappedOp:
    index: int
    op: str
    on_tpu: bool
    reason: str
    source: str


@dataclass(frozen=True)
class EdgeTPUMapping:
    """Per operator, in execution order: where the compiler would run it and why."""

    ops: tuple[MappedOp, ...]

    @property
    def on_tpu(self) -> int:
        return sum(op.on_tpu for op in self.ops)

    @property
    def on_cpu(self) -> int:
        return len(self.ops) - self.on_tpu

    @property
    def first_cpu(self) -> MappedOp | None:
        return next((op for op in self.ops if not op.on_tpu), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_cpu
        return {
            "compiled": False,
            "operators_on_edgetpu": self.on_tpu,
            "operators_on_cpu": self.on_cpu,
            "first_cpu_operator": None if first is None else {"index": first.index, "op": first.op, "reason": first.reason},
            "operators": [asdict(op) for op in self.ops],
        }


def map_operators(ops: Sequence[tuple[str, Sequence[str]]]) -> EdgeTPUMapping:
    """The mapping of operators given as (TFLite builtin name, dtypes of its tensors), in execution order."""
    mapped: list[MappedOp] = []
    cut: MappedOp | None = None
    for index, (name, dtypes) in enumerate(ops):
        if cut is not None:
            mapped.append(MappedOp(index, name, False, f"after operator {cut.index} ({cut.op}), which the Edge TPU cannot "
                                   "run: the compiler maps only the leading segment", FIRST_SUBGRAPH_ONLY))
            continue
        support = TFLITE_OPS.get(name, OP_SUPPORT["other"])
        floats = sorted(set(dtypes) - QUANTIZED - BOOKKEEPING)
        if support.on_tpu and floats:
            entry = MappedOp(index, name, False, f"{name} has {', '.join(floats)} tensors; the Edge TPU runs only "
                             "8-bit quantized operators", _TABLE)
        else:
            entry = MappedOp(index, name, support.on_tpu, support.note, support.source)
        mapped.append(entry)
        if not entry.on_tpu:
            cut = entry
    return EdgeTPUMapping(tuple(mapped))


def tflite_operators(path: str | Path) -> list[tuple[str, list[str]]]:
    """(builtin name, tensor dtypes) of every operator of a .tflite, in execution order, as the file has them."""
    import numpy as np

    from nasflow.export.tflite_fp32 import _runtime

    interpreter = _runtime().interpreter(model_path=str(path))  # no allocate_tensors: delegates would replace the ops
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():  # LiteRT's only listing of a model's operators
        tensors = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        ops.append((op["op_name"], [dtypes[i] for i in tensors if i in dtypes]))
    return ops


def edgetpu_mapping(path: str | Path) -> EdgeTPUMapping:
    """Where the Edge TPU compiler would run each operator of the full-integer model at `path`."""
    return map_operators(tflite_operators(path))
