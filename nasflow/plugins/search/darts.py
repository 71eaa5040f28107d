"""`darts` search strategy: DARTS (Liu et al. 2019, arXiv:1806.09055), first or second order, over a space's supernet.

Every searchable layer mixes its candidates with softmax(alpha); the weights train with SGD on the
weight split, the architecture parameters (alpha) with Adam on the architecture split, one step of
each per batch. The derived architecture takes each layer's strongest candidate, under a guard
against DARTS' collapse into skip connections (see `derive` and `skip_collapse`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import DerivedArch, Genome, SupernetContext
from .oneshot_base import OneShotOptions, OneShotStrategy, Search
from .oneshot_common import argmax_choice, genome_of, shuffled, term_device

if TYPE_CHECKING:
    import torch

CHECKPOINT = "darts.pt"


class DartsOptions(OneShotOptions):
    order: Literal[1, 2] = Field(1, description="1: first-order DARTS; 2: the unrolled second-order architecture step")
    max_skips: int | None = Field(2, ge=0, description="skips allowed in the derived architecture (null: no cap)")
    skip_patience: int = Field(3, ge=1, description="epochs in a row the skip weight must grow before the search stops")
    skip_stop_weight: float = Field(0.5, gt=0, le=1, description="mean skip weight above which growth stops the search")
    early_stop: bool = Field(True, description="stop on the growth of skip weights (skip_patience, skip_stop_weight)")
    latency_weight: float = Field(
        0.0, ge=0, description="architecture loss += this x expected latency (ms) on latency_device, from its LUT; 0: no latency term"
    )


def skip_weight(weights: list[list[float]], skip_index: list[int | None]) -> float | None:
    """Mean softmax weight of the skip candidate over the layers that offer one (None: none do)."""
    values = [w[i] for w, i in zip(weights, skip_index) if i is not None]
    return sum(values) / len(values) if values else None


def skip_collapse(history: list[float | None], patience: int, limit: float) -> bool:
    """DARTS-ES-style early stop: the mean skip weight grew in each of the last `patience` epochs
    and now exceeds `limit`. Skip weights that keep growing are the sign of the collapse (a
    parameter-free path wins the bilevel game while the weights are still poor), not of a better
    architecture."""
    if len(history) <= patience or history[-1] is None or history[-1] <= limit:
        return False
    recent = history[-patience - 1 :]
    return all(b > a for a, b in zip(recent, recent[1:]))


def derive(weights: list[list[float]], skip_index: list[int | None], max_skips: int | None) -> tuple[list[int], int]:
    """Each layer's strongest candidate, with at most `max_skips` skips: beyond the cap, the layers
    whose skip is weakest take their strongest other candidate instead (as P-DARTS caps skips).
    Returns (choice per searchable layer, skips replaced)."""
    choice = argmax_choice(weights)
    skipped = [i for i, (c, s) in enumerate(zip(choice, skip_index)) if s is not None and c == s]
    if max_skips is None or len(skipped) <= max_skips:
        return choice, 0
    skipped.sort(key=lambda i: weights[i][skip_index[i]], reverse=True)
    for i in skipped[max_skips:]:
        others = [j for j in range(len(weights[i])) if j != skip_index[i]]
        choice[i] = max(others, key=weights[i].__getitem__)
    return choice, len(skipped) - max_skips


def second_order_arch_grads(model, alphas, train_batch, val_batch, xi: float, radius: float = 0.01):
    """DARTS' second-order architecture gradient (eq. 7-8 of the paper): the gradient in alpha of
    L_val(w', alpha) with w' = w - xi * grad_w L_train(w, alpha), one virtual SGD step, i.e.
    grad_alpha L_val(w', alpha) - xi * H v, with H v (v = grad_w' L_val(w', alpha)) the mixed
    second derivative of L_train times v by central differences at w +- eps * v, eps = radius / |v|
    (the paper's 0.01 by default). Returns
    (L_val(w', alpha), gradient per alpha). The weights and BatchNorm buffers are left as found."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.weight_parameters() if p.requires_grad]
    weights = lambda detach: [F.softmax(a.detach() if detach else a, 0) for a in alphas]  # noqa: E731
    saved = [p.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]  # the extra passes must not move BN statistics

    def loss_on(batch, detach):
        x, y = batch
        return F.cross_entropy(model(x, weights(detach)), y)

    def shift(scale: float, direction) -> None:
        with torch.no_grad():
            for p, w0, d in zip(params, saved, direction):
                p.copy_(w0 + scale * d if d is not None else w0)

    try:
        grad_w = torch.autograd.grad(loss_on(train_batch, True), params, allow_unused=True)
        shift(-xi, grad_w)
        val_loss = loss_on(val_batch, False)
        grads = torch.autograd.grad(val_loss, list(alphas) + params, allow_unused=True)
        d_alpha, v = grads[: len(alphas)], grads[len(alphas) :]
        norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in v if g is not None))
        eps = radius / float(norm) if float(norm) > 0 else 0.0
        if eps == 0.0:  # the validation loss does not depend on the weights: no second-order term
            hvp = [torch.zeros_like(a) for a in alphas]
        else:
            shift(eps, v)
            plus = torch.autograd.grad(loss_on(train_batch, False), alphas)
            shift(-eps, v)
            minus = torch.autograd.grad(loss_on(train_batch, False), alphas)
            hvp = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
        result = [
            (d if d is not None else torch.zeros_like(a)) - xi * h for a, d, h in zip(alphas, d_alpha, hvp)
        ]
    finally:
        shift(0.0, [None] * len(params))
        with torch.no_grad():
            for b, b0 in zip(model.buffers(), buffers):
                b.copy_(b0)
    return val_loss.detach(), [g.detach() for g in result]


class Darts(OneShotStrategy):
    """DARTS: softmax relaxation per layer, bilevel SGD (weights) / Adam (architecture), first or second order."""

    name = "darts"
    description = "DARTS (first or second order): softmax-mixed supernet, weights by SGD, architecture by Adam, skip-collapse guard"
    Options = DartsOptions
    checkpoint_name = CHECKPOINT

    @classmethod
    def latency_device(cls, options: DartsOptions, objective_device: str) -> str | None:
        return term_device(options, objective_device, options.latency_weight > 0)

    def initial_state(self) -> dict:
        return {"skip_history": []}

    @staticmethod
    def _skip_index(s: Search) -> list[int | None]:
        """Per searchable layer, the index of its skip candidate (None: it has none)."""
        return [next((j for j, b in enumerate(layer.candidates) if b.kind == "skip"), None)
                for layer in s.model.supernet.layers]

    def end_epoch(self, s: Search, weights: list[list[float]]) -> None:
        s.state["skip_history"].append(skip_weight(weights, self._skip_index(s)))
        opts = self.options
        if opts.early_stop and skip_collapse(s.state["skip_history"], opts.skip_patience, opts.skip_stop_weight):
            s.state["stopped"] = s.state["epoch"]

    def _latency_loss(self, s: Search, alphas) -> "torch.Tensor | None":
        """latency_weight x the expected latency (ms) under softmax(alpha), or None without a term."""
        import torch.nn.functional as F

        latency = self.latency_loss(s, [F.softmax(a, 0) for a in alphas])
        return None if latency is None else self.options.latency_weight * latency

    def train_epoch(self, s: Search, ctx: SupernetContext, epoch: int) -> dict[str, float]:
        """One pass: per batch an architecture step on the arch split, then a weight step on the weight split."""
        import torch
        import torch.nn.functional as F

        from ...train import to_device

        model, alphas, w_opt, a_opt, device, batch = s.model, s.alphas, s.w_opt, s.a_opt, s.device, s.batch
        data, labels = ctx.dataset, ctx.dataset.train_y
        w_order, a_order = shuffled(ctx.weight_split, s.gen), shuffled(ctx.arch_split, s.gen)
        model.train()
        w_losses, a_losses = [], []
        for step in range(s.steps):
            part = slice(step * batch, (step + 1) * batch)
            xa, ya = to_device(data.batch("train", a_order[part]), device), to_device(labels[a_order[part]], device)
            xw, yw = to_device(data.batch("train", w_order[part]), device), to_device(labels[w_order[part]], device)
            a_opt.zero_grad(set_to_none=True)
            latency = self._latency_loss(s, alphas)
            if self.options.order == 2:
                xi = w_opt.param_groups[0]["lr"]  # the virtual step takes the weights' own step size
                loss, grads = second_order_arch_grads(model, alphas, (xw, yw), (xa, ya), xi)
                if latency is not None:  # the latency term does not depend on the weights: its gradient adds
                    grads = [g + d for g, d in zip(grads, torch.autograd.grad(latency, alphas))]
                    loss = loss + latency.detach()
                for a, g in zip(alphas, grads):
                    a.grad = g
            else:
                with model.frozen_weights():
                    loss = F.cross_entropy(model(xa, [F.softmax(a, 0) for a in alphas]), ya)
                    if latency is not None:
                        loss = loss + latency
                    loss.backward()
            a_opt.step()
            a_losses.append(loss.detach())
            w_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xw, [F.softmax(a.detach(), 0) for a in alphas]), yw)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), self.options.grad_clip)
            w_opt.step()
            w_losses.append(loss.detach())
        return {"train_loss": float(torch.stack(w_losses).mean()), "arch_loss": float(torch.stack(a_losses).mean())}

    def epoch_metrics(self, s: Search) -> dict[str, float]:
        skip = s.state["skip_history"][-1]
        return {} if skip is None else {"skip_weight": skip}

    def derive(self, s: Search, ctx: SupernetContext) -> list[DerivedArch]:
        """The architecture of the last epoch, or, after an early stop, of the epoch before the
        skip weights began to grow; under the skip cap."""
        state = s.state
        history = state["history"]
        at = len(history) - 1
        if state["stopped"] is not None:
            at = max(0, len(history) - 1 - self.options.skip_patience)
        choice, capped = derive(history[at], self._skip_index(s), self.options.max_skips)
        genome: Genome = genome_of(self.space, s.model.supernet, choice)
        extra = {"supernet_epochs": state["epoch"], "derived_at_epoch": at + 1, "skips_capped": capped,
                 "early_stopped_at": state["stopped"]}
        return [DerivedArch(genome, s.model.derive(genome, self.space.to_arch), extra)]


@hookimpl
def nasflow_search_strategies():
    return [Darts]
