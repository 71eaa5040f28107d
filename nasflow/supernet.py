"""The torch form of a space's supernet, shared by the one-shot strategies: every searchable layer
holds all its candidate modules, mixed by weights the strategy passes in; one genome's network can
be taken out of it with the trained weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .arch.builder import ArchNet, build_model
from .plugin_api import Genome, Supernet
from .train import to_device


class MixedOp(nn.Module):
    """One searchable layer: its candidates' outputs summed with per-candidate weights.

    A weight that is exactly zero skips its candidate (a one-hot mix runs one path), so the same
    module serves a softmax relaxation (DARTS) and sampled or binarised paths.
    """

    def __init__(self, candidates: Sequence[nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for weight, op in zip(weights, self.candidates):
            if not weight.requires_grad and float(weight) == 0.0:
                continue
            term = weight * op(x)
            out = term if out is None else out + term
        return out if out is not None else torch.zeros_like(x)


class SupernetModel(nn.Module):
    """An ArchNet of the supernet's skeleton whose searchable positions are `MixedOp`s.

    `forward(x, mix)` takes one weight vector per searchable layer, in `supernet.layers` order.
    Candidate modules are built by the block kinds themselves, so a derived network's state-dict
    is the supernet's, entry for entry.
    """

    def __init__(self, supernet: Supernet, in_channels: int, num_classes: int):
        super().__init__()
        self.supernet, self.in_channels, self.num_classes = supernet, in_channels, num_classes
        self.net: ArchNet = build_model(supernet.skeleton, in_channels, num_classes)
        fed = [supernet.skeleton.stem] + [b.out for b in supernet.skeleton.blocks[:-1]]
        self.positions = tuple(layer.position for layer in supernet.layers)
        for layer in supernet.layers:
            cin = fed[layer.position]
            self.net.blocks[layer.position] = MixedOp([block.module(cin) for block in layer.candidates])

    def forward(self, x: torch.Tensor, mix: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = dict(zip(self.positions, mix))
        x = self.net.forward_stem(x)
        for position, block in enumerate(self.net.blocks):
            x = block(x, weights[position]) if position in weights else block(x)
        return self.net.forward_head(x)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def derive(self, genome: Genome, to_arch) -> ArchNet:
        """The network of `genome` (`to_arch(genome)`, the space's) with the supernet's weights;
        on the CPU, in eval mode."""
        arch = to_arch(genome)
        choice = {layer.position: genome[layer.decision] for layer in self.supernet.layers}
        state = {}
        for key, value in self.net.state_dict().items():
            parts = key.split(".")
            if parts[0] == "blocks" and int(parts[1]) in choice:
                position = int(parts[1])
                if int(parts[3]) != choice[position]:
                    continue  # another candidate of this layer
                key = ".".join(parts[:2] + parts[4:])  # blocks.P.candidates.J.rest -> blocks.P.rest
            state[key] = value.detach().cpu().clone()
        model = build_model(arch, self.in_channels, self.num_classes)
        model.load_state_dict(state, strict=True)
        return model.eval()


def recalibrate_batchnorm(model: nn.Module, dataset, positions: np.ndarray, device: torch.device,
                          batch_size: int = 64, max_batches: int = 20) -> None:
    """Re-estimate BatchNorm statistics on training batches (`positions` of the training split).

    A derived network's BatchNorm layers kept the supernet's running statistics, which were
    gathered on mixed features (stem and head) or on a candidate fed another mix; without
    re-estimating them its validation accuracy says little about its weights.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(positions) == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was_training = model.training
    model.train()
    with torch.no_grad():
        for b, start in enumerate(range(0, len(positions), batch_size)):
            if b >= max_batches:
                break
            part = positions[start : start + batch_size]
            if len(part) < 2:
                break  # BatchNorm needs more than one value per channel
            model(to_device(dataset.batch("train", part), device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
