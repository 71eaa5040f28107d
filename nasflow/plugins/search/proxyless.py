"""`proxyless` search strategy: ProxylessNAS (Cai et al. 2019, arXiv:1812.00332) over a space's supernet.

Path binarization: every step keeps one path per layer active. The weight step samples one
candidate per layer from softmax(alpha) and trains that network alone, so memory stays at the
level of training one network. The architecture step samples two candidates per layer, makes one
of them active by their renormalised probabilities and takes the binary gates' gradient
dL/dg_j = <dL/dy, o_j> (the two paths' outputs), turned into alpha's gradient through the pair's
softmax; after Adam's step the pair's alphas are shifted so that the other candidates keep their
probabilities (the paper's rescaling). An optional expected-latency regulariser (the LUT or
predictor table under softmax(alpha), in ms) adds its gradient to every alpha. The derived
architecture takes each layer's most likely candidate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import DerivedArch, SupernetContext
from .oneshot_base import OneShotOptions, OneShotStrategy, Search
from .oneshot_common import argmax_choice, genome_of, one_hot, shuffled, term_device

if TYPE_CHECKING:
    import torch

CHECKPOINT = "proxyless.pt"


class ProxylessOptions(OneShotOptions):
    arch_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the architecture parameters")
    arch_weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: int = Field(0, ge=0, description="first epochs that train the weights only (single sampled paths)")
    recompute: float = Field(0.0, ge=0, le=1, description="share of the activations of an architecture step's two paths recomputed in the backward pass (binarized paths keep memory low without it)")
    latency_weight: float = Field(
        0.0, ge=0, description="architecture loss += this x expected latency (ms) on latency_device, from its LUT; 0: no latency term"
    )


def sample_paths(alphas: list["torch.Tensor"], gen, k: int) -> list[list[int]]:
    """Per layer, `k` distinct candidates drawn from softmax(alpha) (fewer where the layer has fewer)."""
    import torch

    paths = []
    for a in alphas:
        probs = torch.softmax(a.detach().float().cpu(), 0)
        paths.append(torch.multinomial(probs, min(k, len(probs)), replacement=False, generator=gen).tolist())
    return paths


def binary_gates(alphas: list["torch.Tensor"], pairs: list[list[int]], gen) -> tuple[list[list["torch.Tensor"]], list[list["torch.Tensor"]]]:
    """Per layer, gate scalars for every candidate: 1 on the active one (drawn between the pair by
    their renormalised probabilities), 0 on the other of the pair, both leaves that take a
    gradient; constant zeros elsewhere, so those candidates do not run. Returns (gates, pair leaves)."""
    import torch

    gates, leaves = [], []
    for a, pair in zip(alphas, pairs):
        probs = torch.softmax(a.detach().float().cpu()[pair], 0)
        active = pair[int(torch.multinomial(probs, 1, generator=gen))]
        zero = torch.zeros((), device=a.device)
        layer = [zero] * len(a)
        pair_leaves = []
        for j in pair:
            leaf = torch.tensor(1.0 if j == active else 0.0, device=a.device, requires_grad=True)
            layer[j] = leaf
            pair_leaves.append(leaf)
        gates.append(layer)
        leaves.append(pair_leaves)
    return gates, leaves


def gate_to_alpha_grad(alpha: "torch.Tensor", pair: list[int], gate_grads: list["torch.Tensor"]) -> "torch.Tensor":
    """alpha's gradient from the binary gates' (the paper's eq. 4 over the sampled pair):
    dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i), p the softmax of the pair's alphas."""
    import torch

    p = torch.softmax(alpha.detach()[pair], 0)
    g = torch.stack([gg.detach() for gg in gate_grads])
    pair_grad = p * g - p * (p * g).sum()
    grad = torch.zeros_like(alpha)
    grad[pair] = pair_grad
    return grad


def rescale_pair(alpha: "torch.Tensor", pair: list[int], before: "torch.Tensor") -> None:
    """Shift the pair's alphas so their log-sum-exp is what it was before the step: the candidates
    that were not sampled keep their probabilities."""
    import torch

    with torch.no_grad():
        offset = torch.logsumexp(alpha[pair], 0) - torch.logsumexp(before, 0)
        alpha[pair] -= offset


class Proxyless(OneShotStrategy):
    """ProxylessNAS: path binarization (one path per weight step, two per architecture step), binary-gate gradient, latency regulariser."""

    name = "proxyless"
    description = "ProxylessNAS: binarized paths (one network's memory), binary-gate gradient, expected-latency regulariser from the LUT"
    Options = ProxylessOptions
    checkpoint_name = CHECKPOINT

    @classmethod
    def latency_device(cls, options: ProxylessOptions, objective_device: str) -> str | None:
        return term_device(options, objective_device, options.latency_weight > 0)

    def train_epoch(self, s: Search, ctx: SupernetContext, epoch: int) -> dict[str, float]:
        """Per batch a weight step on one sampled path, then (after the warm-up) an architecture step on two."""
        import torch
        import torch.nn.functional as F

        from ...train import to_device

        data, labels, device, batch = ctx.dataset, ctx.dataset.train_y, s.device, s.batch
        w_order, a_order = shuffled(ctx.weight_split, s.gen), shuffled(ctx.arch_split, s.gen)
        arch = epoch >= self.options.warmup_epochs
        s.model.train()
        w_losses, a_losses = [], []
        for step in range(s.steps):
            part = w_order[step * batch : (step + 1) * batch]
            x, y = to_device(data.batch("train", part), device), to_device(labels[part], device)
            paths = sample_paths(s.alphas, s.gen, 1)
            mix = [torch.tensor(row, device=device) for row in one_hot([a.tolist() for a in s.alphas], [p[0] for p in paths])]
            s.w_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(s.model(x, mix), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s.model.weight_parameters(), self.options.grad_clip)
            s.w_opt.step()
            w_losses.append(loss.detach())
            if arch:
                part = a_order[step * batch : (step + 1) * batch]
                x, y = to_device(data.batch("train", part), device), to_device(labels[part], device)
                a_losses.append(self._arch_step(s, x, y))
        losses = {"train_loss": float(torch.stack(w_losses).mean())}
        if a_losses:
            losses["arch_loss"] = float(torch.stack(a_losses).mean())
        return losses

    def _arch_step(self, s: Search, x, y) -> "torch.Tensor":
        """One architecture step on two sampled paths per layer; returns its loss."""
        import torch
        import torch.nn.functional as F

        pairs = sample_paths(s.alphas, s.gen, 2)
        gates, leaves = binary_gates(s.alphas, pairs, s.gen)
        with s.model.frozen_weights():  # the gates' gradient needs the paths' outputs, not the weights' gradients
            loss = F.cross_entropy(s.model(x, gates), y)
            flat = [leaf for layer in leaves for leaf in layer]
            grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
        s.a_opt.zero_grad(set_to_none=True)
        before = [a.detach()[pair].clone() for a, pair in zip(s.alphas, pairs)]
        for a, pair, layer in zip(s.alphas, pairs, leaves):
            gate_grads = [g if g is not None else torch.zeros((), device=a.device) for g in (next(grads) for _ in layer)]
            a.grad = gate_to_alpha_grad(a, pair, gate_grads)
        latency = self.latency_loss(s, [torch.softmax(a, 0) for a in s.alphas])
        if latency is not None:
            term = self.options.latency_weight * latency
            for a, g in zip(s.alphas, torch.autograd.grad(term, s.alphas)):
                a.grad = a.grad + g
            loss = loss + term.detach()
        s.a_opt.step()
        for a, pair, old in zip(s.alphas, pairs, before):
            rescale_pair(a, pair, old)
        return loss.detach()

    def eval_mix(self, weights: list[list[float]]) -> list[list[float]]:
        return one_hot(weights, argmax_choice(weights))

    def derive(self, s: Search, ctx: SupernetContext) -> list[DerivedArch]:
        weights = s.state["history"][-1] if s.state["history"] else self.distribution(s)
        genome = genome_of(self.space, s.model.supernet, argmax_choice(weights))
        extra = {"supernet_epochs": s.state["epoch"]}
        return [DerivedArch(genome, s.model.derive(genome, self.space.to_arch), extra)]


@hookimpl
def nasflow_search_strategies():
    return [Proxyless]
