"""Per-layer, per-candidate latency tables of a supernet, from a device's LUT or calibrated predictor.

Both predictors add up per operator (a prediction is a constant plus one share per operator it
executes, `op_ms`), and every candidate of a supernet layer sees one fixed input shape, so a
device's latency of any architecture of the supernet is a constant plus one table entry per
layer. The one-shot strategies differentiate through that sum (expected latency under their
architecture distribution). Torch-free.
"""

from __future__ import annotations

from .arch.counting import block_shapes
from .arch.operators import block_operator
from .plugin_api import LatencyTable, Supernet


def latency_table(device: str, source: str, predictor, supernet: Supernet, in_channels: int, image_size,
                  batch_size: int = 1) -> LatencyTable:
    """The table of one device; `predictor` is a `LutSumPredictor` or `CalibratedLutPredictor`
    (`source` 'lut' or 'predicted'). A LUT missing an operator raises its LutMissError."""
    skeleton = supernet.skeleton
    shapes = block_shapes(skeleton, in_channels, image_size)

    def share(block, position: int) -> float:
        op = block_operator(block, shapes[position], batch_size)
        return 0.0 if op is None else predictor.op_ms(op)  # a skip executes nothing

    layers = tuple(tuple(share(block, layer.position) for block in layer.candidates) for layer in supernet.layers)
    # The constant: the skeleton's prediction less its own searchable blocks' shares.
    searchable = sum(share(skeleton.blocks[layer.position], layer.position) for layer in supernet.layers)
    base = float(predictor.predict(skeleton)) - searchable
    return LatencyTable(device, source, base, layers)
