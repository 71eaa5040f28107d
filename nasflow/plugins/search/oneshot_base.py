"""The training loop the one-shot strategies (darts, fbnet, proxyless) share.

Each keeps one vector of architecture parameters per searchable layer, trains the supernet's
weights with SGD on the weight split and those parameters with Adam on the architecture split,
logs an epoch's metrics, checkpoints after every finished epoch and resumes from the last one.
A strategy supplies what differs: one epoch's steps (`train_epoch`), what ends the search early
(`end_epoch`) and the architectures it derives (`derive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ...plugin_api import DerivedArch, SupernetContext, SupernetStrategy
from .oneshot_common import (
    LatencyTermOptions, batching, cosine_lr, distribution_metrics, load_checkpoint, mixed_accuracy, save_checkpoint,
    softmax_weights, table_for, table_tensors,
)

if TYPE_CHECKING:
    import torch


class OneShotOptions(LatencyTermOptions):
    """Options of the shared loop: epochs, the weights' SGD and the architecture's Adam."""

    epochs: int = Field(10, ge=1, description="supernet training epochs")
    w_lr: float | None = Field(None, gt=0, description="SGD learning rate of the weights (cosine-annealed); default train.config.lr")
    w_momentum: float = Field(0.9, ge=0, lt=1)
    w_weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0, description="gradient-norm clip of the weight step")
    arch_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the architecture parameters")
    arch_weight_decay: float = Field(1e-3, ge=0)
    recompute: float = Field(
        0.5, ge=0, le=1, description="share of the supernet's candidate activations recomputed in the backward pass "
        "instead of kept (gradient checkpointing of the mixed layers holding the most, largest first): the same "
        "gradients in less memory, for one more forward pass of those layers; 0: keep everything"
    )


@dataclass
class Search:
    """One search in progress: the supernet, its parameters and optimisers, and the state a
    checkpoint keeps (`state`: a dict of plain values, the strategy's own keys included)."""

    model: Any
    alphas: list
    w_opt: Any
    a_opt: Any
    gen: Any
    device: Any
    batch: int
    steps: int
    latency: tuple[float, list] | None  # (base ms, per-layer candidate tensors) of the latency term
    state: dict[str, Any] = field(default_factory=dict)
    last_accuracy: float = float("nan")


class OneShotStrategy(SupernetStrategy):
    """The loop; subclasses set `checkpoint_name` and implement `train_epoch` and `derive`."""

    Options = OneShotOptions
    checkpoint_name = "oneshot.pt"

    # --- what a strategy supplies

    def initial_state(self) -> dict[str, Any]:
        """The strategy's own checkpointed keys, at the start of a search."""
        return {}

    def train_epoch(self, s: Search, ctx: SupernetContext, epoch: int) -> dict[str, float]:
        """One pass over the splits; returns the epoch's losses (logged as metrics)."""
        raise NotImplementedError

    def end_epoch(self, s: Search, weights: list[list[float]]) -> None:
        """After an epoch's distribution is known: set `s.state['stopped']` to stop early."""

    def derive(self, s: Search, ctx: SupernetContext) -> list[DerivedArch]:
        raise NotImplementedError

    def distribution(self, s: Search) -> list[list[float]]:
        """Per layer, the probability of each candidate (logged; what `derive` reads)."""
        return softmax_weights(s.alphas)

    def eval_mix(self, weights: list[list[float]]) -> list[list[float]]:
        """The per-layer weights the supernet's validation accuracy is measured under: the
        distribution itself (a softmax relaxation); sampling strategies take its argmax path."""
        return weights

    def epoch_metrics(self, s: Search) -> dict[str, float]:
        """Metrics of the strategy's own beyond the shared ones (e.g. the temperature)."""
        return {}

    # --- the loop

    def run(self, ctx: SupernetContext) -> list[DerivedArch]:
        s = self.setup(ctx)
        opts = self.options
        w_lr = self._w_lr(ctx)
        while s.state["stopped"] is None and s.state["epoch"] < opts.epochs:
            epoch = s.state["epoch"]
            for group in s.w_opt.param_groups:
                group["lr"] = cosine_lr(w_lr, epoch, opts.epochs)
            losses = self.train_epoch(s, ctx, epoch)
            weights = self.distribution(s)
            s.state["history"].append(weights)
            s.state["epoch"] = epoch + 1
            self.end_epoch(s, weights)
            ctx.log(epoch + 1, self._metrics(s, ctx, weights, losses))
            self.save(s, ctx)
            if ctx.progress is not None:
                loss = losses.get("train_loss", float("nan"))
                ctx.progress(epoch + 1, opts.epochs, f"loss {loss:.3g}, val acc (supernet) {s.last_accuracy:.3f}")
        return self.derive(s, ctx)

    def setup(self, ctx: SupernetContext) -> Search:
        """The supernet, parameters and optimisers, from the checkpoint when one is there. Fails
        (SpecError) before any training when the latency term has no table."""
        # torch is imported here, not above: every command loads every plugin (see README).
        import torch

        from ...supernet import SupernetModel
        from ...train_device import resolve_device

        opts, supernet, data = self.options, ctx.supernet, ctx.dataset
        table = table_for(ctx, self.latency_device(opts, ctx.objective_device or ""))
        self.check_table(table)
        device = resolve_device(ctx.device)
        latency = None if table is None else (table.base_ms, table_tensors(table, device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = SupernetModel(supernet, data.in_channels, data.num_classes).to(device)
        model.set_recompute(opts.recompute, tuple(data.input_shape[2:]))
        alphas = [torch.zeros(len(layer.candidates), device=device, requires_grad=True) for layer in supernet.layers]
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=self._w_lr(ctx), momentum=opts.w_momentum,
                                weight_decay=opts.w_weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=opts.arch_lr, betas=(0.5, 0.999), weight_decay=opts.arch_weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        batch, steps = batching(ctx)
        s = Search(model, alphas, w_opt, a_opt, gen, device, batch, steps, latency,
                   {"epoch": 0, "history": [], "stopped": None, **self.initial_state()})
        saved = load_checkpoint(Path(ctx.checkpoint_dir) / self.checkpoint_name, device)
        if saved is not None:
            model.load_state_dict(saved["model"])
            with torch.no_grad():
                for a, value in zip(alphas, saved["alphas"]):
                    a.copy_(value)
            w_opt.load_state_dict(saved["w_opt"])
            a_opt.load_state_dict(saved["a_opt"])
            gen.set_state(saved["generator"])
            s.state = saved["state"]
        return s

    def check_table(self, table) -> None:
        """Refuse, before training, a latency table the strategy's loss cannot use."""

    def save(self, s: Search, ctx: SupernetContext) -> None:
        save_checkpoint(Path(ctx.checkpoint_dir) / self.checkpoint_name, {
            "model": s.model.state_dict(), "alphas": [a.detach() for a in s.alphas], "w_opt": s.w_opt.state_dict(),
            "a_opt": s.a_opt.state_dict(), "generator": s.gen.get_state(), "state": s.state,
        })

    def _w_lr(self, ctx: SupernetContext) -> float:
        return self.options.w_lr if self.options.w_lr is not None else ctx.train_config.lr

    def _metrics(self, s: Search, ctx: SupernetContext, weights, losses: dict[str, float]) -> dict[str, float]:
        """What an epoch logs: its losses, the supernet's validation accuracy under the current
        distribution, the strategy's own metrics, and the distribution's (per-layer weights and
        choice, entropy, expected latency per device)."""
        import torch

        mix = [torch.tensor(w, dtype=torch.float32, device=s.device) for w in self.eval_mix(weights)]
        accuracy, val_loss = mixed_accuracy(s.model, mix, ctx.dataset)
        s.last_accuracy = accuracy
        metrics = {**losses, "supernet_val_accuracy": accuracy, "supernet_val_loss": val_loss}
        if s.state["stopped"] is not None:
            metrics["early_stop"] = 1.0
        metrics.update(self.epoch_metrics(s))
        metrics.update(distribution_metrics(self.space, ctx.supernet, weights, ctx.latency))
        return metrics

    def latency_loss(self, s: Search, probs: list["torch.Tensor"]) -> "torch.Tensor | None":
        """The expected latency (ms) under `probs`, or None without a latency term."""
        from .oneshot_common import expected_latency

        if s.latency is None:
            return None
        base, tables = s.latency
        return expected_latency(base, tables, probs)
