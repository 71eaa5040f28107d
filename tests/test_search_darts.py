"""The supernet strategy protocol and `darts`: what it derives, its skip-collapse guard, resuming
from the last finished epoch, and how the search flow records what it derives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasflow.arch import Arch, parse_arch
from nasflow.config import TrainConfig
from nasflow.data import Dataset
from nasflow.errors import SpecError
from nasflow.plugin_api import Decision, Geometry, SearchSpace, Supernet, SupernetContext, SupernetLayer
from nasflow.plugins import get_plugins
from nasflow.plugins.search.darts import derive, skip_collapse
from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace, StageOptions
from nasflow.spec import parse_spec


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ChainSpace(SearchSpace):
    """A test space: a stem, one searchable layer per entry of `layers` (its candidate block
    tokens, all of one shape), a head; its supernet is those layers."""

    name = "chain"

    def __init__(self, layers: list[list[str]], size: int, classes: int = 2, channels: int = 8):
        super().__init__(None, Geometry(1, classes, (size, size)))
        self.channels = channels
        self.blocks = [[parse_arch(f"stem_c{channels}_s1-{t}-head_c16").blocks[0] for t in tokens] for tokens in layers]
        self.decisions = tuple(Decision(f"layer{i}", tuple(tokens)) for i, tokens in enumerate(layers))

    def to_arch(self, genome):
        genome = self.validate_genome(genome)
        return Arch(stem=self.channels, stem_stride=1, blocks=tuple(b[g] for b, g in zip(self.blocks, genome)), head=16)

    def from_arch(self, arch):
        return tuple(b.index(block) for b, block in zip(self.blocks, arch.blocks))

    def lut_ops(self, geometry=None):
        raise NotImplementedError("the test space has no LUT")

    def supernet(self):
        layers = tuple(SupernetLayer(i, i, tuple(b)) for i, b in enumerate(self.blocks))
        return Supernet(self.to_arch((0,) * len(self.blocks)), layers)


def dataset(x: np.ndarray, y: np.ndarray, n_val: int) -> Dataset:
    n = len(y) - n_val
    rows = {"train": np.arange(n), "val": np.arange(n, len(y)), "test": np.arange(n, len(y))}
    return Dataset("synthetic", int(y.max()) + 1, [str(c) for c in range(int(y.max()) + 1)], (0.0,), (1.0,),
                   {s: x for s in rows}, rows, {s: y[r] for s, r in rows.items()})


def sign_pairs(n: int, size: int, gap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two dots `gap` pixels apart in one row, of equal sign (class 0) or opposite signs (class 1).

    A network whose every feature sees at most one dot cannot tell the classes apart: the pooled
    features add one term per dot, and same/opposite sign is an XOR of the two. With a 3x3 stem,
    a 3x3 block sees 5 pixels across (never both dots at gap 6), a 7x7 block 9 (both).
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        r, c = rng.integers(4, size - 4), rng.integers(4, size - 4 - gap)
        a = rng.choice([-1.0, 1.0])
        x[i, 0, r, c], x[i, 0, r, c + gap] = a, (a if y[i] == 0 else -a)
    return x, y.astype(np.int64)


def context(space, data, tmp_path, log=None, batch_size=32) -> SupernetContext:
    n = data.size("train")
    return SupernetContext(
        supernet=space.supernet(), dataset=data, weight_split=np.arange(0, n, 2), arch_split=np.arange(1, n, 2),
        train_config=TrainConfig(batch_size=batch_size), device="cpu", amp=False, checkpoint_dir=tmp_path,
        log=log or (lambda step, metrics: None),
    )


def darts(space, **options):
    return get_plugins().create("search", "darts", options, space, 0)


# ------------------------------------------------------------------ what darts derives


@pytest.mark.parametrize("kernels", [[3, 7], [7, 3]])
def test_darts_picks_the_only_candidate_that_can_fit_the_labels(tmp_path, kernels):
    """Only the 7x7 block sees both dots; it wins in either candidate order (no index bias)."""
    x, y = sign_pairs(800, 16, gap=6)
    data = dataset(x, y, n_val=200)
    options = LayerwiseOptions(stem_channels=8, stages=[StageOptions(channels=8, layers=1)], kernels=kernels,
                               expansions=[2.0], head_channels=16)
    space = LayerwiseSpace(options, Geometry(1, 2, (16, 16)))
    logged = {}
    derived = darts(space, epochs=6, arch_lr=0.02, w_lr=0.05).run(
        context(space, data, tmp_path, lambda step, metrics: logged.update({step: metrics}))
    )
    assert len(derived) == 1
    best = kernels.index(7)
    assert derived[0].genome == (best,)
    choice = space.decisions[0].choices[best]
    assert logged[6][f"weight.layer0.{choice}"] > 0.6  # clearly, not by a hair
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    # The derived network is the genome's own, with the supernet's weights, and runs.
    model = derived[0].model
    assert model.arch == space.to_arch(derived[0].genome)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 2)


# ------------------------------------------------------------------ the skip-collapse guard


def test_derive_caps_skips_keeping_the_strongest():
    weights = [[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.3, 0.7]]
    skip = [1, 1, 1, None]  # the last layer has no skip
    assert derive(weights, skip, max_skips=None) == ([1, 1, 0, 1], 0)
    assert derive(weights, skip, max_skips=1) == ([1, 0, 0, 1], 1)  # layer 1's skip (0.6) is the weaker one
    assert derive(weights, skip, max_skips=0) == ([0, 0, 0, 1], 2)
    assert derive(weights, skip, max_skips=2) == ([1, 1, 0, 1], 0)


def test_skip_collapse_needs_growth_in_a_row_above_the_limit():
    assert skip_collapse([0.3, 0.4, 0.5, 0.6], patience=3, limit=0.5)
    assert not skip_collapse([0.3, 0.4, 0.5, 0.6], patience=3, limit=0.6)  # not above the limit
    assert not skip_collapse([0.3, 0.45, 0.4, 0.6], patience=3, limit=0.5)  # growth broken once
    assert not skip_collapse([0.5, 0.6, 0.7], patience=3, limit=0.5)  # too few epochs to tell
    assert not skip_collapse([None, None, None, None], patience=1, limit=0.5)  # no layer offers a skip


def test_guard_fires_on_a_run_built_to_collapse(tmp_path):
    """Weights that barely train leave every conv a random map that scrambles the input, so the
    identity wins every layer: the skip weight grows each epoch. The early stop ends the search
    and the cap keeps the derived architecture from being all skips."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0).astype(np.int64)
    data = dataset(x, y, n_val=100)
    space = ChainSpace([["conv_k3_c8_s1", "skip_c8"]] * 3, size=8)
    logged = {}
    strategy = darts(space, epochs=12, arch_lr=0.1, w_lr=1e-4, max_skips=1, skip_patience=2, skip_stop_weight=0.5)
    derived = strategy.run(context(space, data, tmp_path, lambda step, metrics: logged.update({step: metrics})))
    steps = sorted(logged)
    assert steps[-1] < 12, "the early stop did not fire"
    skips = [logged[s]["skip_weight"] for s in steps]
    assert skips[-1] > 0.5 and skips[-1] > skips[-2] > skips[-3]
    assert logged[steps[-1]]["early_stop"] == 1.0
    extra = derived[0].extra
    assert extra["early_stopped_at"] == steps[-1]
    assert extra["derived_at_epoch"] == steps[-1] - 2  # the epoch before the growth that stopped it
    genome = derived[0].genome
    assert sum(1 for g in genome if g == 1) == 1  # capped at one skip
    # Without the cap, what the weights of that epoch pick has more skips than the cap allows.
    assert extra["skips_capped"] >= 1


# ------------------------------------------------------------------ checkpoints and resume


def test_interrupted_search_resumes_from_the_last_finished_epoch(tmp_path):
    x, y = sign_pairs(300, 16, gap=6, seed=1)
    data = dataset(x, y, n_val=60)
    space = ChainSpace([["ir_k3_e2_c8_s1", "ir_k5_e2_c8_s1"], ["ir_k3_e1_c8_s1", "skip_c8"]], size=16)
    whole: dict[int, dict] = {}
    reference = darts(space, epochs=3, arch_lr=0.05).run(
        context(space, data, tmp_path / "whole", lambda s, m: whole.update({s: m}))
    )[0]

    class Interrupt(Exception):
        pass

    def stop_at_2(step, metrics):
        if step == 2:
            raise Interrupt  # as Ctrl-C would, after epoch 1's checkpoint and before epoch 2's
    with pytest.raises(Interrupt):
        darts(space, epochs=3, arch_lr=0.05).run(context(space, data, tmp_path / "cut", stop_at_2))
    assert torch.load(tmp_path / "cut" / "darts.pt", weights_only=False)["state"]["epoch"] == 1
    resumed: dict[int, dict] = {}
    result = darts(space, epochs=3, arch_lr=0.05).run(context(space, data, tmp_path / "cut", lambda s, m: resumed.update({s: m})))[0]
    assert sorted(resumed) == [2, 3]  # epoch 1 is not trained again
    assert resumed[3] == whole[3]  # same numbers as the run that was never interrupted
    assert result.genome == reference.genome
    ref_state, state = reference.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    # A finished search resumes to its result without training.
    again: dict[int, dict] = {}
    assert darts(space, epochs=3, arch_lr=0.05).run(context(space, data, tmp_path / "cut", lambda s, m: again.update({s: m})))[0].genome == reference.genome
    assert again == {}


# ------------------------------------------------------------------ the search flow and the spec


def darts_spec(tmp_path: Path, options: str = "{epochs: 2, arch_lr: 0.003}", space: str | None = None) -> str:
    space = space or """\
space:
  name: layerwise
  options:
    stem_channels: 8
    stages:
      - {channels: 8, layers: 1, stride: 1}
      - {channels: 16, layers: 2, stride: 2}
    kernels: [3, 5]
    expansions: [1, 3]
    head_channels: 16
"""
    return f"""\
name: darts-flow
dataset: {{name: digits, val_split: 0.25, subset: 600, cache_dir: {tmp_path / 'cache'}}}
{space}devices:
  - {{name: torch-cpu, options: {{threads: 1, min_seconds: 0, max_seconds: 0.2, max_runs: 30}}}}
  - {{name: onnxruntime-cpu, options: {{threads: 1, min_seconds: 0, max_seconds: 0.2, max_runs: 30}}}}
profile: {{enabled: false}}
search: {{strategy: darts, options: {options}}}
train: {{top_k: 1, config: {{epochs: 1, batch_size: 32}}}}
morph: {{enabled: false}}
deploy: {{enabled: false}}
registry: {{path: {tmp_path / 'registry.duckdb'}}}
execution: {{runner: thread, workers: 2, work_dir: {tmp_path / 'runs'}}}
"""


def search_log(registry, run_id: str) -> list[tuple]:
    return registry.query("SELECT step, metric, value FROM search_log WHERE run_id = ? ORDER BY step, metric", [run_id])[1]


def test_flow_records_derived_candidates_and_search_log(tmp_path):
    from nasflow.flows.pipeline import run_spec
    from nasflow.registry import Registry
    from nasflow.spec import LoadedSpec

    text = darts_spec(tmp_path)
    loaded = LoadedSpec(parse_spec(text), tmp_path / "spec.yaml", text)
    summary = run_spec(loaded)
    registry = Registry(loaded.spec.registry.path)
    run_id = summary.run_id
    search = registry.get_candidates(run_id, stage="search")
    assert len(search) == 1
    row = search[0]
    assert row["status"] == "ok" and row["accuracy_source"] == "supernet"
    assert 0 <= row["accuracy"] <= 1 and row["score"] == row["accuracy"]  # reward: accuracy
    assert row["extra"]["strategy"] == "darts" and row["extra"]["supernet_epochs"] == 2
    measured = registry.get_measurements([row["candidate_id"]])
    assert {(m["device"], m["source"]) for m in measured if m["metric"] == "latency"} == {
        ("torch-cpu", "measured"), ("onnxruntime-cpu", "measured")}
    log = search_log(registry, run_id)
    assert {step for step, _, _ in log} == {1, 2}
    metrics = {metric for step, metric, _ in log if step == 2}
    assert {"supernet_val_accuracy", "entropy", "skip_weight", "train_loss", "choice.layer0"} <= metrics
    # The train stage picks the derived architecture up, as any search candidate.
    trained = registry.get_candidates(run_id, stage="train")
    assert [t["arch"] for t in trained] == [row["arch"]]
    # A re-run resumes: the finished supernet is not trained again, the candidate is reused.
    again = run_spec(loaded)
    assert again.stages["search"]["reused"] == 1 and again.stages["search"]["evaluated"] == 0
    assert search_log(registry, run_id) == log


def test_spec_refuses_darts_on_a_space_without_supernet(tmp_path):
    mnasnet = "space: {name: mnasnet, options: {stages: [{channels: 8, layers: 1, stride: 1}], head_channels: 16}}\n"
    with pytest.raises(SpecError, match="'darts' trains a supernet, and space 'mnasnet' has no supernet form"):
        parse_spec(darts_spec(tmp_path, space=mnasnet))


def test_spec_refuses_a_warm_start_for_a_supernet_strategy(tmp_path):
    text = darts_spec(tmp_path).replace("search: {strategy: darts,", "search: {warm_start: {enabled: true}, strategy: darts,")
    with pytest.raises(SpecError, match="search.warm_start.enabled: 'darts' trains a supernet and takes no earlier candidates"):
        parse_spec(text)


@pytest.mark.parametrize("share, side", [(1.0, "weights"), (0.0, "architecture parameters")])
def test_arch_split_leaving_a_side_empty_is_one_message(tmp_path, share, side):
    with pytest.raises(SpecError) as info:
        parse_spec(darts_spec(tmp_path, options=f"{{arch_split: {share}}}"))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"leaves no training images for the {side}" in message


def test_split_too_small_for_the_data_is_refused_before_training():
    from nasflow.flows.supernet_search import split_training

    labels = np.array([0, 0, 1, 1, 0, 1])
    weight, arch = split_training(labels, 0.5, seed=0)
    assert len(weight) + len(arch) == 6 and not set(weight) & set(arch)
    with pytest.raises(SpecError, match="leaves 0 of the 6 training images for the architecture"):
        split_training(labels, 0.05, seed=0)


def test_plugins_command_shows_each_strategys_protocol():
    out = subprocess.run([sys.executable, "-m", "nasflow.cli", "plugins"], capture_output=True, text=True, check=True).stdout
    protocol = {line.split()[1]: line.split()[-1] for line in out.splitlines() if line.startswith("search ")}
    assert protocol["darts"] == "supernet"
    assert protocol["evolution"] == "ask/tell" and protocol["random"] == "ask/tell"


# ------------------------------------------------------------------ the second-order step


def test_second_order_step_is_the_hypergradient_and_differs_from_first_order():
    """On a toy supernet in float64, the unrolled gradient matches central differences of
    f(alpha) = L_val(w - xi * grad_w L_train(w, alpha), alpha), and is not the first-order one."""
    import torch.nn.functional as F

    from nasflow.plugins.search.darts import second_order_arch_grads
    from nasflow.supernet import SupernetModel

    space = ChainSpace([["conv_k3_c4_s1", "ir_k3_e2_c4_s1", "skip_c4"], ["conv_k3_c4_s1", "skip_c4"]], size=4, channels=4)
    torch.manual_seed(0)
    model = SupernetModel(space.supernet(), 1, 2).double().train()
    alphas = [torch.randn(3, dtype=torch.float64, requires_grad=True), torch.randn(2, dtype=torch.float64, requires_grad=True)]
    gen = torch.Generator().manual_seed(1)
    train = (torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (8,), generator=gen))
    val = (torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (8,), generator=gen))
    xi = 0.5
    params = model.weight_parameters()
    w0 = [p.detach().clone() for p in params]

    def unrolled_val_loss(alpha_values) -> float:
        mix = [F.softmax(a, 0) for a in alpha_values]
        grads = torch.autograd.grad(F.cross_entropy(model(train[0], mix), train[1]), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.sub_(xi * g)
            value = float(F.cross_entropy(model(val[0], mix), val[1]))
            for p, w in zip(params, w0):
                p.copy_(w)
        return value

    # A small radius for the finite-difference Hessian-vector product: the paper's 0.01 / |v| is
    # coarse on a net this small (batch-8 BatchNorm on 4x4 maps bends the loss sharply).
    loss, second = second_order_arch_grads(model, alphas, train, val, xi, radius=1e-4)
    assert all(torch.equal(p, w) for p, w in zip(params, w0))  # weights left as found
    assert loss.item() == pytest.approx(unrolled_val_loss(alphas), rel=1e-12)
    h = 1e-6
    for k, g in enumerate(second):
        for i in range(len(g)):
            plus, minus = [x.detach().clone() for x in alphas], [x.detach().clone() for x in alphas]
            plus[k][i] += h
            minus[k][i] -= h
            numeric = (unrolled_val_loss(plus) - unrolled_val_loss(minus)) / (2 * h)
            assert g[i].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)
    first = torch.autograd.grad(F.cross_entropy(model(val[0], [F.softmax(a, 0) for a in alphas]), val[1]), alphas)
    assert max(float((f - s).abs().max()) for f, s in zip(first, second)) > 1e-3
    # The strategy's step (the paper's radius) is the same kind of number, not the first-order one.
    _, paper = second_order_arch_grads(model, alphas, train, val, xi)
    assert max(float((f - s).abs().max()) for f, s in zip(first, paper)) > 1e-3


def test_second_order_search_runs_and_learns_other_weights_than_first_order(tmp_path):
    x, y = sign_pairs(200, 16, gap=6, seed=2)
    data = dataset(x, y, n_val=40)
    space = ChainSpace([["ir_k3_e2_c8_s1", "ir_k5_e2_c8_s1"], ["ir_k3_e1_c8_s1", "skip_c8"]], size=16)
    logged = {}
    darts(space, epochs=2, arch_lr=0.05).run(context(space, data, tmp_path / "one", lambda s, m: logged.update({1: m})))
    second = darts(space, epochs=2, arch_lr=0.05, order=2).run(
        context(space, data, tmp_path / "two", lambda s, m: logged.update({2: m})))[0]
    assert second.extra["supernet_epochs"] == 2
    assert logged[1]["weight.layer0.ir_k3_e2_c8_s1"] != logged[2]["weight.layer0.ir_k3_e2_c8_s1"]
