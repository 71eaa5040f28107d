"""The torch form of a space's supernet, shared by the one-shot strategies: every searchable layer
holds all its candidate modules, mixed by weights the strategy passes in; one genome's network can
be taken out of it with the trained weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

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
        self.recompute = False

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # One read of each weight (a device sync on a GPU): (weight, candidate, weight is exactly 0).
        read = [(w, op, float(w.detach()) == 0.0) for w, op in zip(weights, self.candidates)]
        active = [(w, op, zero) for w, op, zero in read if w.requires_grad or not zero]
        # With several paths in the graph, their inner activations (the expanded tensors) are what
        # fills memory: recomputing them in the backward pass keeps one candidate's at a time.
        recompute = self.recompute and len(active) > 1 and torch.is_grad_enabled()
        out = None
        for weight, op, zero in active:
            if zero:
                # A gate at exactly 0 (Proxyless' inactive path) passes no gradient into its
                # candidate or back to x; only its own gradient, <dL/dy, op(x)>, needs the output.
                with torch.no_grad():
                    y = op(x)
            else:
                y = _recomputed(op, x) if recompute else op(x)
            term = weight * y
            out = term if out is None else out + term
        return out if out is not None else torch.zeros_like(x)


def _recomputed(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """op(x) under gradient checkpointing: only the input is kept, the candidate runs again in the
    backward pass with its BatchNorm running statistics frozen (so they move once per step)."""
    from torch.utils.checkpoint import checkpoint

    # No candidate draws random numbers (no dropout), so the RNG state need not be saved and restored.
    return checkpoint(op, x, use_reentrant=False, preserve_rng_state=False,
                      context_fn=lambda: (nullcontext(), _frozen_norms(op)))


@contextmanager
def _frozen_norms(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


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

    def set_recompute(self, share: float, image_size) -> list[int]:
        """Recompute candidates in the backward pass (see MixedOp) in the mixed layers that hold
        the most activation memory, largest first, until they cover `share` of the supernet's
        candidate activations (0: none, 1: every mixed layer). Memory sits mostly in the
        high-resolution layers, so a part of the layers saves most of it for a part of the extra
        forward work. Returns the positions that recompute."""
        from .arch.counting import block_shapes

        shapes = block_shapes(self.supernet.skeleton, self.in_channels, image_size)
        held = {layer.position: sum(block.activations(shapes[layer.position]) for block in layer.candidates
                                    if block.kind != "skip") for layer in self.supernet.layers}
        total = sum(held.values())
        chosen, covered = [], 0.0
        for position in sorted(held, key=held.__getitem__, reverse=True):
            if total == 0 or covered >= share * total - 1e-9 or share == 0:
                break
            chosen.append(position)
            covered += held[position]
        for position, block in enumerate(self.net.blocks):
            if isinstance(block, MixedOp):
                block.recompute = position in chosen
        return sorted(chosen)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    @contextmanager
    def frozen_weights(self) -> Iterator[None]:
        """The weights take no gradient inside: an architecture step's backward pass then computes
        only what the architecture parameters need (no weight gradients, about a third less work)."""
        params = self.weight_parameters()
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

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
