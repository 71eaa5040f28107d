"""`darts` search strategy: DARTS (Liu et al. 2019, arXiv:1806.09055), first or second order, over a space's supernet.

Every searchable layer mixes its candidates with softmax(alpha); the weights train with SGD on the
weight split, the architecture parameters (alpha) with Adam on the architecture split, one step of
each per batch. The derived architecture takes each layer's strongest candidate, under a guard
against DARTS' collapse into skip connections (see `derive` and `skip_collapse`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import DerivedArch, Genome, SupernetContext, SupernetOptions, SupernetStrategy

if TYPE_CHECKING:
    import torch

CHECKPOINT = "darts.pt"


class DartsOptions(SupernetOptions):
    epochs: int = Field(10, ge=1, description="supernet training epochs")
    order: Literal[1, 2] = Field(1, description="1: first-order DARTS; 2: the unrolled second-order architecture step")
    w_lr: float | None = Field(None, gt=0, description="SGD learning rate of the weights (cosine-annealed); default train.config.lr")
    w_momentum: float = Field(0.9, ge=0, lt=1)
    w_weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0, description="gradient-norm clip of the weight step")
    arch_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the architecture parameters")
    arch_weight_decay: float = Field(1e-3, ge=0)
    max_skips: int | None = Field(2, ge=0, description="skips allowed in the derived architecture (null: no cap)")
    skip_patience: int = Field(3, ge=1, description="epochs in a row the skip weight must grow before the search stops")
    skip_stop_weight: float = Field(0.5, gt=0, le=1, description="mean skip weight above which growth stops the search")
    early_stop: bool = Field(True, description="stop on the growth of skip weights (skip_patience, skip_stop_weight)")


def softmax_weights(alphas: list["torch.Tensor"]) -> list[list[float]]:
    import torch.nn.functional as F

    return [F.softmax(a.detach().float().cpu(), 0).tolist() for a in alphas]


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
    choice = [max(range(len(w)), key=w.__getitem__) for w in weights]
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


class Darts(SupernetStrategy):
    """DARTS: softmax relaxation per layer, bilevel SGD (weights) / Adam (architecture), first or second order."""

    name = "darts"
    description = "DARTS (first or second order): softmax-mixed supernet, weights by SGD, architecture by Adam, skip-collapse guard"
    Options = DartsOptions

    def run(self, ctx: SupernetContext) -> list[DerivedArch]:
        # torch is imported here, not above: every command loads every plugin (see README).
        import torch

        from ...supernet import SupernetModel
        from ...train_device import resolve_device

        opts, supernet, data = self.options, ctx.supernet, ctx.dataset
        device = resolve_device(ctx.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = SupernetModel(supernet, data.in_channels, data.num_classes).to(device)
        alphas = [torch.zeros(len(layer.candidates), device=device, requires_grad=True) for layer in supernet.layers]
        skip_index = [
            next((j for j, b in enumerate(layer.candidates) if b.kind == "skip"), None) for layer in supernet.layers
        ]
        w_lr = opts.w_lr if opts.w_lr is not None else ctx.train_config.lr
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=w_lr, momentum=opts.w_momentum, weight_decay=opts.w_weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=opts.arch_lr, betas=(0.5, 0.999), weight_decay=opts.arch_weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        state = {"epoch": 0, "history": [], "skip_history": [], "stopped": None}
        path = Path(ctx.checkpoint_dir) / CHECKPOINT
        if path.exists():
            saved = torch.load(path, map_location=device, weights_only=False)
            model.load_state_dict(saved["model"])
            with torch.no_grad():
                for a, s in zip(alphas, saved["alphas"]):
                    a.copy_(s)
            w_opt.load_state_dict(saved["w_opt"])
            a_opt.load_state_dict(saved["a_opt"])
            gen.set_state(saved["generator"])
            state = saved["state"]
        batch = max(2, min(ctx.train_config.batch_size, len(ctx.weight_split), len(ctx.arch_split)))
        steps = max(1, min(len(ctx.weight_split), len(ctx.arch_split)) // batch)
        while state["stopped"] is None and state["epoch"] < opts.epochs:
            epoch = state["epoch"]
            for group in w_opt.param_groups:  # cosine by epoch: a resumed run needs no schedule state
                group["lr"] = 0.5 * w_lr * (1 + math.cos(math.pi * epoch / opts.epochs))
            w_loss, a_loss = self._epoch(model, alphas, w_opt, a_opt, ctx, gen, device, batch, steps)
            weights = softmax_weights(alphas)
            state["history"].append(weights)
            state["skip_history"].append(skip_weight(weights, skip_index))
            state["epoch"] = epoch + 1
            if opts.early_stop and skip_collapse(state["skip_history"], opts.skip_patience, opts.skip_stop_weight):
                state["stopped"] = epoch + 1
            ctx.log(epoch + 1, self._metrics(model, alphas, weights, skip_index, ctx, device, w_loss, a_loss, state))
            self._save(path, model, alphas, w_opt, a_opt, gen, state)
            if ctx.progress is not None:
                ctx.progress(epoch + 1, opts.epochs, f"loss {w_loss:.3g}, val acc (supernet) {self._last_acc:.3f}")
        return [self._derived(model, state, skip_index)]

    def _epoch(self, model, alphas, w_opt, a_opt, ctx, gen, device, batch, steps) -> tuple[float, float]:
        """One pass: per batch an architecture step on the arch split, then a weight step on the weight split."""
        import torch
        import torch.nn.functional as F

        from ...train import to_device

        data, labels = ctx.dataset, ctx.dataset.train_y
        w_order = ctx.weight_split[torch.randperm(len(ctx.weight_split), generator=gen).numpy()]
        a_order = ctx.arch_split[torch.randperm(len(ctx.arch_split), generator=gen).numpy()]
        model.train()
        w_losses, a_losses = [], []
        for step in range(steps):
            part = slice(step * batch, (step + 1) * batch)
            xa, ya = to_device(data.batch("train", a_order[part]), device), to_device(labels[a_order[part]], device)
            xw, yw = to_device(data.batch("train", w_order[part]), device), to_device(labels[w_order[part]], device)
            a_opt.zero_grad(set_to_none=True)
            if self.options.order == 2:
                xi = w_opt.param_groups[0]["lr"]  # the virtual step takes the weights' own step size
                loss, grads = second_order_arch_grads(model, alphas, (xw, yw), (xa, ya), xi)
                for a, g in zip(alphas, grads):
                    a.grad = g
            else:
                loss = F.cross_entropy(model(xa, [F.softmax(a, 0) for a in alphas]), ya)
                loss.backward()
            a_opt.step()
            a_losses.append(loss.detach())
            w_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xw, [F.softmax(a.detach(), 0) for a in alphas]), yw)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), self.options.grad_clip)
            w_opt.step()
            w_losses.append(loss.detach())
        return float(torch.stack(w_losses).mean()), float(torch.stack(a_losses).mean())

    def _metrics(self, model, alphas, weights, skip_index, ctx, device, w_loss, a_loss, state) -> dict[str, float]:
        """What an epoch logs: losses, the supernet's validation accuracy under the current mix, the
        mean entropy of the layers' distributions, the skip weight, and per layer each candidate's
        weight and the current choice."""
        import torch
        import torch.nn.functional as F

        from ...train import evaluate

        mix = [F.softmax(a.detach(), 0) for a in alphas]

        class Mixed(torch.nn.Module):  # evaluate() calls model(x): bind the current mix
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, x):
                return model(x, mix)

        accuracy, val_loss = evaluate(Mixed(), ctx.dataset)
        self._last_acc = accuracy
        entropy = sum(-sum(p * math.log(p) for p in w if p > 0) for w in weights) / max(len(weights), 1)
        metrics = {"train_loss": w_loss, "arch_loss": a_loss, "supernet_val_accuracy": accuracy,
                   "supernet_val_loss": val_loss, "entropy": entropy}
        skip = state["skip_history"][-1]
        if skip is not None:
            metrics["skip_weight"] = skip
        if state["stopped"] is not None:
            metrics["early_stop"] = 1.0
        decisions = self.space.decisions
        for layer, w in zip(ctx.supernet.layers, weights):
            decision = decisions[layer.decision]
            for label, p in zip(decision.choices, w):
                metrics[f"weight.{decision.name}.{label}"] = p
            metrics[f"choice.{decision.name}"] = float(max(range(len(w)), key=w.__getitem__))
        return metrics

    def _derived(self, model, state, skip_index) -> DerivedArch:
        """The architecture of the last epoch, or, after an early stop, of the epoch before the
        skip weights began to grow; under the skip cap."""
        history = state["history"]
        at = len(history) - 1
        if state["stopped"] is not None:
            at = max(0, len(history) - 1 - self.options.skip_patience)
        choice, capped = derive(history[at], skip_index, self.options.max_skips)
        genome: list[int] = [0] * len(self.space.decisions)
        for layer, c in zip(model.supernet.layers, choice):
            genome[layer.decision] = c
        genome_t: Genome = tuple(genome)
        extra = {"supernet_epochs": state["epoch"], "derived_at_epoch": at + 1, "skips_capped": capped,
                 "early_stopped_at": state["stopped"]}
        return DerivedArch(genome_t, model.derive(genome_t, self.space.to_arch), extra)

    @staticmethod
    def _save(path: Path, model, alphas, w_opt, a_opt, gen, state) -> None:
        """The whole search state after a finished epoch, written atomically (an interrupt mid-write
        leaves the previous epoch's file)."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "alphas": [a.detach() for a in alphas], "w_opt": w_opt.state_dict(),
                    "a_opt": a_opt.state_dict(), "generator": gen.get_state(), "state": state}, tmp)
        os.replace(tmp, path)


@hookimpl
def nasflow_search_strategies():
    return [Darts]
