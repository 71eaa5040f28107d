"""What the one-shot strategies (darts, fbnet, proxyless) share: the latency term's options and
its differentiable expected latency, the supernet's validation accuracy under a mix, the metrics
an epoch logs, genomes from per-layer choices, batches of the two splits, and atomic checkpoints."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ...errors import SpecError
from ...plugin_api import Genome, LatencyTable, SupernetContext, SupernetOptions

if TYPE_CHECKING:
    import torch


class LatencyTermOptions(SupernetOptions):
    """The device a latency term reads its per-layer table from."""

    latency_device: str | None = Field(
        None, description="device whose LUT (or calibrated predictor) table the latency term uses; default objectives.device"
    )


def term_device(options: LatencyTermOptions, objective_device: str, active: bool) -> str | None:
    return (options.latency_device or objective_device) if active else None


def table_for(ctx: SupernetContext, device: str | None) -> LatencyTable | None:
    """The context's table of `device` (None: no latency term); SpecError before training when missing."""
    if device is None:
        return None
    if device not in ctx.latency:
        have = ", ".join(sorted(ctx.latency)) or "none"
        raise SpecError(f"the latency term uses {device}, which has no latency LUT or predictor table (tables: {have}); "
                        "set profile.enabled and profile.lut: true")
    return ctx.latency[device]


def table_tensors(table: LatencyTable, device) -> list["torch.Tensor"]:
    import torch

    return [torch.tensor(layer, dtype=torch.float32, device=device) for layer in table.layers]


def expected_latency(base_ms: float, tables: list["torch.Tensor"], probs: list["torch.Tensor"]) -> "torch.Tensor":
    """sum over layers of the probability-weighted candidate latencies, plus the constant: the
    expected latency under independent per-layer distributions, differentiable in `probs`."""
    total = sum((p * t).sum() for p, t in zip(probs, tables))
    return total + base_ms


def softmax_weights(alphas: list["torch.Tensor"]) -> list[list[float]]:
    import torch.nn.functional as F

    return [F.softmax(a.detach().float().cpu(), 0).tolist() for a in alphas]


def entropy(weights: list[list[float]]) -> float:
    """Mean entropy (nats) of the layers' distributions."""
    return sum(-sum(p * math.log(p) for p in w if p > 0) for w in weights) / max(len(weights), 1)


def argmax_choice(weights: list[list[float]]) -> list[int]:
    return [max(range(len(w)), key=w.__getitem__) for w in weights]


def one_hot(weights: list[list[float]], choice: list[int]) -> list[list[float]]:
    """Per layer, weight 1 on the chosen candidate and 0 elsewhere (the supernet runs that path only)."""
    return [[1.0 if j == c else 0.0 for j in range(len(w))] for w, c in zip(weights, choice)]


def genome_of(space, supernet, choice: list[int]) -> Genome:
    """The genome that takes `choice[i]` at the i-th searchable layer."""
    genome = [0] * len(space.decisions)
    for layer, c in zip(supernet.layers, choice):
        genome[layer.decision] = int(c)
    return tuple(genome)


def mixed_accuracy(model, mix: list["torch.Tensor"], dataset) -> tuple[float, float]:
    """(validation accuracy, loss) of the supernet under the fixed per-layer weights `mix`."""
    import torch

    from ...train import evaluate

    class Mixed(torch.nn.Module):  # evaluate() calls model(x): bind the mix
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return model(x, mix)

    return evaluate(Mixed(), dataset)


def distribution_metrics(space, supernet, weights: list[list[float]], tables: dict[str, LatencyTable]) -> dict[str, float]:
    """Per layer each candidate's weight and the current choice, the mean entropy, and the expected
    latency per device under the distribution (source named in the metric: lut or predicted)."""
    metrics: dict[str, float] = {"entropy": entropy(weights)}
    decisions = space.decisions
    for layer, w in zip(supernet.layers, weights):
        decision = decisions[layer.decision]
        for label, p in zip(decision.choices, w):
            metrics[f"weight.{decision.name}.{label}"] = p
        metrics[f"choice.{decision.name}"] = float(max(range(len(w)), key=w.__getitem__))
    for name, table in tables.items():
        expected = table.base_ms + sum(sum(p * t for p, t in zip(w, row)) for w, row in zip(weights, table.layers))
        metrics[f"expected_latency_ms.{name}.{table.source}"] = expected
    return metrics


def batching(ctx: SupernetContext) -> tuple[int, int]:
    """(batch size, steps per epoch): one batch of each split per step, as many as the smaller allows."""
    batch = max(2, min(ctx.train_config.batch_size, len(ctx.weight_split), len(ctx.arch_split)))
    return batch, max(1, min(len(ctx.weight_split), len(ctx.arch_split)) // batch)


def shuffled(positions, gen):
    import torch

    return positions[torch.randperm(len(positions), generator=gen).numpy()]


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine-annealed by epoch, so a resumed run needs no scheduler state."""
    return 0.5 * base * (1 + math.cos(math.pi * epoch / epochs))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """The search state after a finished epoch, written atomically (an interrupt mid-write leaves
    the previous epoch's file)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device) -> dict[str, Any] | None:
    import torch

    return torch.load(path, map_location=device, weights_only=False) if path.exists() else None
