"""`fbnet` search strategy: FBNet's differentiable NAS (Wu et al. 2019, arXiv:1812.03443) over a space's supernet.

Every searchable layer mixes its candidates with a Gumbel-softmax sample of its distribution
softmax(theta) at temperature tau, annealed each epoch. Each epoch first trains the weights on
the weight split, then theta on the architecture split with the paper's loss
CE x alpha x log(LAT)^beta, LAT the sampled architecture's latency summed from the device's
per-operator LUT (the mask-weighted sum of each layer's candidate latencies, differentiable in
theta). The first `warmup_epochs` train the weights only. The architectures derived are the most
likely one and `samples` more drawn from the learned distribution; the search stage measures each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from ...errors import SpecError
from ...hookspecs import hookimpl
from ...plugin_api import DerivedArch, LatencyTable, SupernetContext
from .oneshot_base import OneShotOptions, OneShotStrategy, Search
from .oneshot_common import argmax_choice, genome_of, one_hot, shuffled, term_device

if TYPE_CHECKING:
    import torch

CHECKPOINT = "fbnet.pt"
UNIT_SCALE = {"ms": 1.0, "us": 1000.0}


class FbnetOptions(OneShotOptions):
    arch_lr: float = Field(0.01, gt=0, description="Adam learning rate of theta (the paper's 0.01)")
    arch_weight_decay: float = Field(5e-4, ge=0, description="weight decay of theta (the paper's 5e-4)")
    warmup_epochs: int = Field(1, ge=0, description="first epochs that train the weights only")
    temperature: float = Field(5.0, gt=0, description="Gumbel-softmax temperature at the first epoch after the warm-up")
    temperature_decay: float = Field(0.956, description="factor the temperature takes each epoch after the warm-up (the paper's 0.956)")
    alpha: float = Field(0.2, gt=0, description="loss = CE x alpha x log(LAT)^beta: the loss's magnitude")
    beta: float = Field(0.6, ge=0, description="the latency term's exponent; 0: no latency term")
    latency_unit: Literal["ms", "us"] = Field(
        "ms", description="unit of LAT in log(LAT); it must exceed 1 (us for models faster than a millisecond)"
    )
    samples: int = Field(5, ge=0, description="architectures sampled from the final distribution besides the most likely one")

    @field_validator("temperature_decay")
    @classmethod
    def _decreasing(cls, decay: float) -> float:
        if not 0 < decay < 1:
            raise ValueError(
                f"temperature_decay {decay:g} does not make the temperature decrease; "
                "use a factor strictly between 0 and 1 (the paper's 0.956)"
            )
        return decay


def temperature(options: FbnetOptions, epoch: int) -> float:
    """The temperature of `epoch` (0-based): the start value through the warm-up, then decayed each epoch."""
    return options.temperature * options.temperature_decay ** max(0, epoch - options.warmup_epochs)


def gumbel_mix(thetas: list["torch.Tensor"], tau: float, gen) -> list["torch.Tensor"]:
    """Per layer, a Gumbel-softmax sample softmax((theta + g) / tau), g ~ Gumbel(0, 1) drawn from
    `gen` (so a resumed search draws what the whole one did); differentiable in theta."""
    import torch

    mix = []
    for theta in thetas:
        u = torch.rand(theta.shape, generator=gen).clamp_(1e-10, 1 - 1e-10).to(theta.device)
        mix.append(torch.softmax((theta - torch.log(-torch.log(u))) / tau, 0))
    return mix


def fbnet_loss(ce: "torch.Tensor", latency_ms: "torch.Tensor | None", options: FbnetOptions) -> "torch.Tensor":
    """FBNet's loss CE x alpha x log(LAT)^beta (LAT in `latency_unit`); alpha x CE without a latency term."""
    if latency_ms is None:
        return options.alpha * ce
    lat = latency_ms * UNIT_SCALE[options.latency_unit]
    return ce * options.alpha * lat.log() ** options.beta


class Fbnet(OneShotStrategy):
    """FBNet (DNAS): Gumbel-softmax per layer, loss CE x alpha x log(LAT)^beta from the LUT, weights and theta alternating by epoch."""

    name = "fbnet"
    description = "FBNet (DNAS): Gumbel-softmax supernet, loss CE x alpha x log(LAT)^beta with LAT from the device's LUT"
    Options = FbnetOptions
    checkpoint_name = CHECKPOINT

    @classmethod
    def latency_device(cls, options: FbnetOptions, objective_device: str) -> str | None:
        return term_device(options, objective_device, options.beta > 0)

    def check_table(self, table: LatencyTable | None) -> None:
        if table is None:
            return
        fastest = table.base_ms + sum(min(layer) for layer in table.layers)
        unit = self.options.latency_unit
        if fastest * UNIT_SCALE[unit] <= 1.0:
            raise SpecError(
                f"fbnet's loss takes log(LAT)^beta, which needs LAT above 1 {unit}; the fastest architecture of this "
                f"supernet takes {fastest:.3g} ms on {table.device} ({table.source}): set search.options.latency_unit: us"
            )

    def train_epoch(self, s: Search, ctx: SupernetContext, epoch: int) -> dict[str, float]:
        """The weights on the whole weight split, then (after the warm-up) theta on the architecture split."""
        import torch
        import torch.nn.functional as F

        from ...train import to_device

        tau = temperature(self.options, epoch)
        data, labels, device, batch = ctx.dataset, ctx.dataset.train_y, s.device, s.batch
        s.model.train()
        w_losses, a_losses = [], []
        order = shuffled(ctx.weight_split, s.gen)
        for step in range(len(order) // batch):
            part = order[step * batch : (step + 1) * batch]
            x, y = to_device(data.batch("train", part), device), to_device(labels[part], device)
            s.w_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(s.model(x, [m.detach() for m in gumbel_mix(s.alphas, tau, s.gen)]), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s.model.weight_parameters(), self.options.grad_clip)
            s.w_opt.step()
            w_losses.append(loss.detach())
        losses = {"train_loss": float(torch.stack(w_losses).mean())}
        if epoch < self.options.warmup_epochs:
            return losses
        order = shuffled(ctx.arch_split, s.gen)
        with s.model.frozen_weights():  # the architecture step needs no weight gradients
            for step in range(len(order) // batch):
                part = order[step * batch : (step + 1) * batch]
                x, y = to_device(data.batch("train", part), device), to_device(labels[part], device)
                s.a_opt.zero_grad(set_to_none=True)
                mix = gumbel_mix(s.alphas, tau, s.gen)
                ce = F.cross_entropy(s.model(x, mix), y)
                loss = fbnet_loss(ce, self.latency_loss(s, mix), self.options)
                loss.backward()
                s.a_opt.step()
                a_losses.append(loss.detach())
        losses["arch_loss"] = float(torch.stack(a_losses).mean())
        return losses

    def eval_mix(self, weights: list[list[float]]) -> list[list[float]]:
        return one_hot(weights, argmax_choice(weights))

    def epoch_metrics(self, s: Search) -> dict[str, float]:
        return {"temperature": temperature(self.options, s.state["epoch"] - 1)}

    def derive(self, s: Search, ctx: SupernetContext) -> list[DerivedArch]:
        """The most likely architecture, then `samples` draws from the distribution (distinct ones, in draw order)."""
        import torch

        weights = s.state["history"][-1] if s.state["history"] else self.distribution(s)
        choices = [argmax_choice(weights)]
        gen = torch.Generator().manual_seed(self.seed + 1)
        for _ in range(self.options.samples):
            drawn = [int(torch.multinomial(torch.tensor(w), 1, generator=gen)) for w in weights]
            if drawn not in choices:
                choices.append(drawn)
        derived = []
        for rank, choice in enumerate(choices):
            genome = genome_of(self.space, s.model.supernet, choice)
            probability = math.prod(w[c] for w, c in zip(weights, choice))
            extra = {"supernet_epochs": s.state["epoch"], "derived": "most likely" if rank == 0 else "sampled",
                     "probability": probability, "final_temperature": temperature(self.options, s.state["epoch"] - 1)}
            derived.append(DerivedArch(genome, s.model.derive(genome, self.space.to_arch), extra))
        return derived


@hookimpl
def nasflow_search_strategies():
    return [Fbnet]
