"""`fbnet` and `proxyless`: what they derive on a task only one candidate can fit, FBNet's
latency term and temperature schedule, the Proxyless binary-gate step and the paths it runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasflow.errors import SpecError
from nasflow.plugin_api import Geometry, LatencyTable
from nasflow.plugins import get_plugins
from nasflow.plugins.search.fbnet import FbnetOptions, fbnet_loss, gumbel_mix, temperature
from nasflow.plugins.search.oneshot_common import expected_latency
from nasflow.plugins.search.proxyless import gate_to_alpha_grad, rescale_pair
from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace, StageOptions
from nasflow.spec import parse_spec

from test_search_darts import ChainSpace, context, darts_spec, dataset, one_thread, sign_pairs  # noqa: F401 (one_thread: autouse fixture)


def strategy(name, space, **options):
    return get_plugins().create("search", name, options, space, 0)


def kernel_space(kernels):
    options = LayerwiseOptions(stem_channels=8, stages=[StageOptions(channels=8, layers=1)], kernels=kernels,
                               expansions=[2.0], head_channels=16)
    return LayerwiseSpace(options, Geometry(1, 2, (16, 16)))


# ------------------------------------------------------------------ what they derive


@pytest.mark.parametrize("kernels", [[3, 7], [7, 3]])
def test_fbnet_picks_the_only_candidate_that_can_fit_the_labels(tmp_path, kernels):
    """Only the 7x7 block sees both dots (see sign_pairs); fbnet's theta moves to it either way round."""
    x, y = sign_pairs(800, 16, gap=6)
    data = dataset(x, y, n_val=200)
    space = kernel_space(kernels)
    logged = {}
    derived = strategy("fbnet", space, epochs=6, warmup_epochs=2, arch_lr=0.05, w_lr=0.05, samples=3, beta=0).run(
        context(space, data, tmp_path, lambda step, metrics: logged.update({step: metrics}))
    )
    best = kernels.index(7)
    assert derived[0].genome == (best,) and derived[0].extra["derived"] == "most likely"
    assert logged[6][f"weight.layer0.{space.decisions[0].choices[best]}"] > 0.6
    assert "arch_loss" not in logged[2] and "arch_loss" in logged[3]  # the warm-up trains weights only
    # Held through the warm-up and the first epoch after it, then annealed.
    assert [logged[e]["temperature"] for e in (1, 2, 3)] == [5.0] * 3
    assert logged[3]["temperature"] > logged[4]["temperature"] > logged[5]["temperature"]
    genomes = [d.genome for d in derived]
    assert len(set(genomes)) == len(genomes) <= 4  # the top one plus distinct samples
    assert all(d.model.arch == space.to_arch(d.genome) for d in derived)


@pytest.mark.parametrize("kernels", [[3, 7], [7, 3]])
def test_proxyless_picks_the_only_candidate_that_can_fit_the_labels(tmp_path, kernels):
    x, y = sign_pairs(800, 16, gap=6)
    data = dataset(x, y, n_val=200)
    space = kernel_space(kernels)
    logged = {}
    derived = strategy("proxyless", space, epochs=6, arch_lr=0.05, w_lr=0.05).run(
        context(space, data, tmp_path, lambda step, metrics: logged.update({step: metrics}))
    )
    best = kernels.index(7)
    assert [d.genome for d in derived] == [(best,)]
    assert logged[6][f"weight.layer0.{space.decisions[0].choices[best]}"] > 0.6
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ fbnet's loss and schedule


def test_fbnet_expected_latency_is_the_lut_sum_of_a_one_hot_architecture():
    table = LatencyTable("dev", "lut", 1.5, ((0.4, 0.9, 0.0), (2.0, 0.7)))
    tensors = [torch.tensor(row) for row in table.layers]
    for choice in ([0, 0], [1, 1], [2, 0], [2, 1]):
        probs = [torch.nn.functional.one_hot(torch.tensor(c), len(row)).float() for c, row in zip(choice, table.layers)]
        assert float(expected_latency(table.base_ms, tensors, probs)) == pytest.approx(table.total(choice))
    # Under a spread distribution it is the probability-weighted sum, and its gradient is each layer's table.
    probs = [torch.tensor([0.2, 0.3, 0.5], requires_grad=True), torch.tensor([0.6, 0.4], requires_grad=True)]
    lat = expected_latency(table.base_ms, tensors, probs)
    assert float(lat.detach()) == pytest.approx(1.5 + 0.08 + 0.27 + 1.2 + 0.28)
    lat.backward()
    assert probs[0].grad.tolist() == pytest.approx([0.4, 0.9, 0.0])


def test_fbnet_loss_is_ce_times_alpha_log_lat_to_the_beta():
    options = FbnetOptions(alpha=0.2, beta=0.6)
    ce, lat = torch.tensor(1.3), torch.tensor(25.0)
    assert float(fbnet_loss(ce, lat, options)) == pytest.approx(1.3 * 0.2 * math.log(25.0) ** 0.6)
    micro = FbnetOptions(latency_unit="us")
    assert float(fbnet_loss(ce, torch.tensor(0.5), micro)) == pytest.approx(1.3 * 0.2 * math.log(500.0) ** 0.6)
    assert float(fbnet_loss(ce, None, options)) == pytest.approx(0.2 * 1.3)


def test_gumbel_mix_sharpens_as_the_temperature_falls():
    theta = [torch.tensor([1.0, 0.0, -1.0])]
    gen = torch.Generator().manual_seed(0)
    hot = np.mean([float(gumbel_mix(theta, 5.0, gen)[0].max()) for _ in range(200)])
    cold = np.mean([float(gumbel_mix(theta, 0.1, gen)[0].max()) for _ in range(200)])
    assert hot < 0.6 and cold > 0.95
    # At low temperature the samples follow softmax(theta): the first candidate most often.
    picks = [int(gumbel_mix(theta, 0.1, gen)[0].argmax()) for _ in range(600)]
    assert np.bincount(picks, minlength=3).tolist() == sorted(np.bincount(picks, minlength=3).tolist(), reverse=True)


def test_temperature_schedule_holds_through_warmup_then_decays():
    options = FbnetOptions(temperature=5.0, temperature_decay=0.5, warmup_epochs=2)
    assert [temperature(options, e) for e in range(5)] == [5.0, 5.0, 5.0, 2.5, 1.25]


@pytest.mark.parametrize("decay", [1.0, 1.2, 0.0])
def test_a_temperature_that_does_not_decrease_is_one_message(tmp_path, decay):
    text = darts_spec(tmp_path, options=f"{{temperature_decay: {decay}, beta: 0}}").replace("strategy: darts", "strategy: fbnet")
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert "does not make the temperature decrease" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_fbnet_refuses_a_table_whose_log_latency_is_not_positive(tmp_path):
    from nasflow.plugins.search.fbnet import Fbnet

    fbnet = strategy("fbnet", kernel_space([3, 5]))
    assert isinstance(fbnet, Fbnet)
    with pytest.raises(SpecError, match="needs LAT above 1 ms; the fastest architecture .* takes 0.6 ms .*latency_unit: us"):
        fbnet.check_table(LatencyTable("torch-cpu", "lut", 0.5, ((0.1, 0.3),)))
    fbnet.check_table(LatencyTable("torch-cpu", "lut", 1.5, ((0.1, 0.3),)))


def test_fbnet_latency_term_needs_a_lut_at_validation(tmp_path):
    text = darts_spec(tmp_path, options="{epochs: 1}").replace("strategy: darts", "strategy: fbnet")
    with pytest.raises(SpecError, match="'fbnet' has a latency term on torch-cpu, which needs that device's latency LUT"):
        parse_spec(text)
    parse_spec(text.replace("{epochs: 1}", "{epochs: 1, beta: 0}"))  # without the term, no LUT is needed


# ------------------------------------------------------------------ proxyless' step


def test_binary_gate_gradient_is_the_softmax_chain_rule_over_the_pair():
    alpha = torch.tensor([0.3, -0.2, 1.1, 0.5])
    pair = [2, 0]
    g = [torch.tensor(0.7), torch.tensor(-0.4)]
    grad = gate_to_alpha_grad(alpha, pair, g)
    # By autograd: the pair's softmax p, the surrogate sum_j g_j p_j, its gradient in alpha.
    a = alpha.clone().requires_grad_(True)
    p = torch.softmax(a[pair], 0)
    (p * torch.stack(g)).sum().backward()
    assert grad.tolist() == pytest.approx(a.grad.tolist())
    assert grad[1] == 0 and grad[3] == 0  # candidates not sampled get no gate gradient


def test_rescaling_keeps_the_unsampled_candidates_probabilities():
    alpha = torch.tensor([0.3, -0.2, 1.1, 0.5])
    before_probs = torch.softmax(alpha, 0)
    pair = [0, 2]
    old = alpha[pair].clone()
    alpha[0] += 0.8
    alpha[2] -= 0.3  # an optimiser step on the pair
    rescale_pair(alpha, pair, old)
    after = torch.softmax(alpha, 0)
    assert after[1] == pytest.approx(float(before_probs[1])) and after[3] == pytest.approx(float(before_probs[3]))
    assert after[0] / after[2] == pytest.approx(math.exp(0.3 + 0.8 - 1.1 + 0.3))  # the pair's own ratio moved


def test_proxyless_runs_one_path_per_weight_step_and_two_per_arch_step(tmp_path):
    """Count, per step, how many candidates of each searchable layer ran forward."""
    x, y = sign_pairs(96, 16, gap=6)
    data = dataset(x, y, n_val=32)
    tokens = ["ir_k3_e2_c8_s1", "ir_k5_e2_c8_s1", "ir_k7_e2_c8_s1", "ir_k3_e1_c8_s1"]
    space = ChainSpace([tokens, tokens, tokens], size=16)
    proxyless = strategy("proxyless", space, epochs=1, arch_lr=0.05)
    ctx = context(space, data, tmp_path, batch_size=16)
    s = proxyless.setup(ctx)
    ran: list[list[int]] = []
    for position in s.model.positions:
        for j, op in enumerate(s.model.net.blocks[position].candidates):
            op.register_forward_hook(lambda module, inputs, output, p=position: ran[-1].append(p))

    counts = []
    original_arch_step = proxyless._arch_step

    def arch_step(s_, x_, y_):
        counts.append(("weights", ran[-1]))
        ran.append([])
        loss = original_arch_step(s_, x_, y_)
        counts.append(("arch", ran[-1]))
        ran.append([])
        return loss

    proxyless._arch_step = arch_step
    ran.append([])
    proxyless.train_epoch(s, ctx, epoch=0)
    assert len(counts) == 2 * s.steps
    for kind, positions in counts:
        per_layer = np.bincount(positions, minlength=3).tolist()
        assert per_layer == ([1, 1, 1] if kind == "weights" else [2, 2, 2]), (kind, per_layer)


def test_fbnet_and_proxyless_resume_from_the_last_finished_epoch(tmp_path):
    x, y = sign_pairs(300, 16, gap=6, seed=1)
    data = dataset(x, y, n_val=60)
    space = ChainSpace([["ir_k3_e2_c8_s1", "ir_k5_e2_c8_s1"], ["ir_k3_e1_c8_s1", "skip_c8"]], size=16)

    class Interrupt(Exception):
        pass

    def stop_at_2(step, metrics):
        if step == 2:
            raise Interrupt

    for name, options in (("fbnet", {"epochs": 3, "warmup_epochs": 1, "beta": 0, "samples": 2}), ("proxyless", {"epochs": 3})):
        whole: dict[int, dict] = {}
        reference = strategy(name, space, **options).run(context(space, data, tmp_path / name / "whole", lambda s, m: whole.update({s: m})))
        with pytest.raises(Interrupt):
            strategy(name, space, **options).run(context(space, data, tmp_path / name / "cut", stop_at_2))
        resumed: dict[int, dict] = {}
        result = strategy(name, space, **options).run(context(space, data, tmp_path / name / "cut", lambda s, m: resumed.update({s: m})))
        assert sorted(resumed) == [2, 3], name
        assert resumed[3] == whole[3], name
        assert [d.genome for d in result] == [d.genome for d in reference], name


# ------------------------------------------------------------------ the flow


@pytest.mark.parametrize("name, options", [("fbnet", "{epochs: 2, warmup_epochs: 1, beta: 0, samples: 2}"),
                                            ("proxyless", "{epochs: 2}")])
def test_flow_records_what_fbnet_and_proxyless_derive(tmp_path, name, options):
    from nasflow.flows.pipeline import run_spec
    from nasflow.registry import Registry
    from nasflow.spec import LoadedSpec

    text = darts_spec(tmp_path, options=options).replace("strategy: darts", f"strategy: {name}")
    loaded = LoadedSpec(parse_spec(text), tmp_path / "spec.yaml", text)
    summary = run_spec(loaded)
    registry = Registry(loaded.spec.registry.path)
    search = registry.get_candidates(summary.run_id, stage="search")
    assert 1 <= len(search) <= (3 if name == "fbnet" else 1)
    assert all(r["status"] == "ok" and r["accuracy_source"] == "supernet" for r in search)
    assert all(r["extra"]["strategy"] == name and r["extra"]["supernet_epochs"] == 2 for r in search)
    steps = registry.query("SELECT DISTINCT step FROM search_log WHERE run_id = ? ORDER BY step", [summary.run_id])[1]
    assert steps == [(1,), (2,)]


# ------------------------------------------------------------------ recomputed mixed layers


def test_recomputed_mixed_layers_give_the_same_gradients_and_statistics():
    """Gradient checkpointing of the candidates changes memory, not numbers: the weights' and
    the mix's gradients and the BatchNorm running statistics match a plain backward pass."""
    from nasflow.supernet import SupernetModel

    tokens = ["ir_k3_e2_c8_s1", "ir_k5_e2_c8_s1", "skip_c8"]
    space = ChainSpace([tokens, tokens], size=8)
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    results, calls = [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = SupernetModel(space.supernet(), 1, 2).train()
        assert model.set_recompute(1.0 if recompute else 0.0, (8, 8)) == ([0, 1] if recompute else [])
        calls.append(0)
        candidate = model.net.blocks[0].candidates[0]
        inner = candidate.forward

        def counted(*args, inner=inner):
            calls[-1] += 1
            return inner(*args)

        candidate.forward = counted
        alphas = [torch.tensor([0.2, -0.1, 0.4], requires_grad=True) for _ in range(2)]
        loss = torch.nn.functional.cross_entropy(model(x, [torch.softmax(a, 0) for a in alphas]), y)
        loss.backward()
        results.append(([p.grad.clone() for p in model.weight_parameters() if p.grad is not None],
                        [a.grad.clone() for a in alphas],
                        {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}))
    (wg0, ag0, bn0), (wg1, ag1, bn1) = results
    assert calls == [1, 2]  # recomputed: the candidate ran again in the backward pass
    assert len(wg0) == len(wg1) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(wg0, wg1))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ag0, ag1))
    assert bn0.keys() == bn1.keys() and all(torch.equal(bn0[k], bn1[k]) for k in bn0)


# ------------------------------------------------------------------ every space with a supernet form


def _supernet_spaces():
    from nasflow.spaces.edgetpu import EdgeTPUSpace, EdgeTPUSpaceOptions
    from nasflow.spaces.fbnet import FBNetOptions, FBNetSpace

    geometry = Geometry(1, 2, (16, 16))
    small = dict(stem_channels=8, stages=[StageOptions(channels=8, layers=2, stride=1), StageOptions(channels=16, layers=2, stride=2)],
                 head_channels=16)
    return {
        "layerwise": LayerwiseSpace(LayerwiseOptions(**small, kernels=[3, 5], expansions=[1.0, 3.0]), geometry),
        "edgetpu": EdgeTPUSpace(EdgeTPUSpaceOptions(**small, kernels=[3], expansions=[3.0]), geometry),
        "fbnet": FBNetSpace(FBNetOptions(preset="cifar", stem_channels=8, channels=[8, 16], layers=[2, 2], strides=[1, 2],
                                         head_channels=16, candidates=["k3_e1", "k3_e1_g2", "k5_e6", "skip"]), geometry),
    }


@pytest.mark.parametrize("name", ["darts", "fbnet", "proxyless"])
def test_every_strategy_runs_on_every_space_with_a_supernet_form(tmp_path, name):
    x, y = sign_pairs(96, 16, gap=6, seed=2)
    data = dataset(x, y, n_val=32)
    options = {"darts": {"epochs": 1, "order": 2}, "fbnet": {"epochs": 2, "beta": 0, "samples": 1}, "proxyless": {"epochs": 1}}[name]
    for space_name, space in _supernet_spaces().items():
        assert space.supernet() is not None, space_name
        derived = strategy(name, space, **options).run(context(space, data, tmp_path / space_name, batch_size=16))
        assert derived, space_name
        for d in derived:
            assert space.to_arch(space.validate_genome(d.genome)) == d.model.arch, space_name
            assert d.model(torch.zeros(2, 1, 16, 16)).shape == (2, 2), space_name


def test_partial_recompute_takes_the_layers_holding_the_most_activations_first():
    from nasflow.arch.counting import block_shapes
    from nasflow.supernet import SupernetModel

    options = LayerwiseOptions(stem_channels=16, stages=[StageOptions(channels=24, layers=2, stride=1),
                                                         StageOptions(channels=40, layers=2, stride=2),
                                                         StageOptions(channels=80, layers=2, stride=2)],
                               kernels=[3, 5, 7], expansions=[3.0, 6.0], head_channels=128)
    space = LayerwiseSpace(options, Geometry(3, 10, (32, 32)))
    model = SupernetModel(space.supernet(), 3, 10)
    shapes = block_shapes(space.supernet().skeleton, 3, (32, 32))
    held = {layer.position: sum(b.activations(shapes[layer.position]) for b in layer.candidates if b.kind != "skip")
            for layer in space.supernet().layers}
    total = sum(held.values())
    assert model.set_recompute(0.0, (32, 32)) == []
    assert model.set_recompute(1.0, (32, 32)) == sorted(held)
    for share in (0.3, 0.5, 0.75):
        chosen = model.set_recompute(share, (32, 32))
        rest = [p for p in held if p not in chosen]
        assert min(held[p] for p in chosen) >= max((held[p] for p in rest), default=0)  # largest first
        covered = sum(held[p] for p in chosen)
        assert covered >= share * total > covered - min(held[p] for p in chosen)  # and no more than needed
        assert [p for p, b in enumerate(model.net.blocks) if getattr(b, "recompute", False)] == chosen
    assert set(model.set_recompute(0.3, (32, 32))) <= {0, 1}  # the full-resolution layers hold the most
