"""Tests for the MorphNet compressor: costs, regulariser, exact shrinking/expanding, and a real run on digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nasflow.config import DatasetConfig, TrainConfig
from nasflow.data import load_dataset
from nasflow.errors import PluginError
from nasflow.plugin_api import CompressContext, CompressResult
from nasflow.plugins import get_plugins
from nasflow.plugins.compress.morphnet import (
    MorphNetCompressor,
    channel_costs,
    channel_groups,
    make_regulariser,
    shrink,
)
from nasflow.space import ArchNet, InvertedResidual, build_model, count_macs, format_arch, parse_arch
from nasflow.train import evaluate, train_model

# Block 0: residual with SE; 1: strided; 2: residual hswish; 3: no expand conv (e1); 4: residual, no SE.
ARCH = "stem_c8_s1-ir_k3_e3_c8_s1_se0.25-ir_k5_e2_c12_s2-ir_k3_e3_c12_s1_ahswish-ir_k3_e1_c12_s1-ir_k3_e4_c12_s1-head_c16"


def _trained_like(text: str = ARCH, seed: int = 0) -> ArchNet:
    """A model in eval mode whose BN layers carry non-trivial statistics, as after training."""
    torch.manual_seed(seed)
    model = build_model(parse_arch(text), 1, 10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _silence(bn: nn.BatchNorm2d, channels, beta: float = 0.0) -> None:
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = beta


def _outputs(model: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig())


@pytest.fixture(autouse=True)
def single_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads
    # slow the training tests down more than tenfold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- options and registration


def test_options_defaults_and_validation():
    opts = MorphNetCompressor.Options()
    assert (opts.target, opts.threshold, opts.reg_epochs, opts.finetune_epochs) == ("flops", 1e-2, 3, 2)
    assert (opts.width_multiplier, opts.min_channels) == (1.0, None) and opts.strength > 0
    with pytest.raises(ValidationError):
        MorphNetCompressor.Options(unknown=1)
    with pytest.raises(ValidationError):
        MorphNetCompressor.Options(target="energy")
    assert MorphNetCompressor.Options(target="latency").cycles == 1
    with pytest.raises(ValidationError):
        opts.strength = 1.0  # frozen


def test_registered_as_builtin_compressor():
    info = get_plugins().get("compressor", "morphnet")
    assert info.cls is MorphNetCompressor and info.description


# ---------------------------------------------------------------- groups, costs, regulariser


def test_channel_groups():
    groups = channel_groups(parse_arch(ARCH))
    # Inner groups first, then the shared widths: the stem's (block 0 adds to it) and block 1's
    # (blocks 2-4 add to it; the e1 block's depthwise channels are its own).
    assert [g.name for g in groups] == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "head", "stem", "blocks.1.out"]
    assert [g.width for g in groups] == [24, 16, 36, 48, 16, 8, 12]
    assert [g.can_vanish for g in groups] == [True, False, True, True, False, False, False]
    stem, out = groups[-2:]
    assert stem.gates == ("stem_bn", "blocks.0.project_bn") and stem.members == (0,)
    # Block 3 (e1) runs its depthwise conv on the shared channels: its dw BN gates them too.
    assert out.gates == (*(f"blocks.{i}.project_bn" for i in (1, 2, 3, 4)), "blocks.3.dw_bn")
    assert out.members == (1, 2, 3, 4)
    # 24 and 16 are the mids of the blocks reading the stem: a stem that wide would drop their expand convs.
    assert stem.avoid == (16, 24)
    assert out.avoid == (36, 48)  # the mids of blocks 2 and 4 (block 1 is strided: it never turns residual)
    assert channel_groups(parse_arch(ARCH), residual_widths=False) == groups[:5]


def test_channel_costs_are_exact_per_channel_resources():
    arch = parse_arch("stem_c4_s1-ir_k5_e3_c6_s2-head_c8")
    flops = channel_costs(arch, 1, 10, 8, "flops")
    # expand at 8x8 from 4 inputs, depthwise 5x5 and project to 6 at 4x4.
    assert flops["blocks.0"] == 4 * 64 + 25 * 16 + 6 * 16
    assert flops["head"] == 6 * 16 + 10
    size = channel_costs(arch, 1, 10, 8, "size")
    assert size["blocks.0"] == 4 + 25 + 6 + 4  # weights plus two BN scale/shift pairs
    assert size["head"] == 6 + 10 + 2
    # Dropping one mid channel lowers the MACs by exactly the cost.
    fewer = parse_arch("stem_c4_s1-ir_k5_m11_c6_s2-head_c8")
    assert count_macs(arch, 1, 10, 8) - count_macs(fewer, 1, 10, 8) == flops["blocks.0"]


def test_regulariser_weights_gammas_by_relative_cost():
    arch = parse_arch(ARCH)
    model = build_model(arch, 1, 10)  # fresh BN: every gamma is 1
    costs = channel_costs(arch, 1, 10, 8, "flops")
    regulariser = make_regulariser(arch, costs, strength=0.5)
    groups = channel_groups(arch)
    # The average channel weighs 1, so all-ones gammas give strength x the number of prunable channels.
    assert regulariser(model).item() == pytest.approx(0.5 * sum(g.width for g in groups))
    # A stem channel feeds the stem-width layers and block 1 at full resolution: the costliest.
    assert max(costs, key=costs.get) == "stem"
    regulariser(model).backward()
    grad_block0 = model.blocks[0].dw_bn.weight.grad
    grad_head = model.head_bn.weight.grad
    assert torch.all(grad_block0 > 0) and torch.all(grad_head > 0)
    ratio = (grad_block0[0] / grad_head[0]).item()
    assert ratio == pytest.approx(costs["blocks.0"] / costs["head"])
    # No expand conv: block 3's depthwise channels are the shared width's, regularised with it.
    assert model.blocks[3].dw_bn.weight.grad is not None and model.blocks[2].project_bn.weight.grad is not None


# ---------------------------------------------------------------- shrink and expand


def test_shrink_keeps_outputs_when_pruned_channels_are_silent():
    model = _trained_like()
    _silence(model.blocks[0].dw_bn, [1, 5, 7, 20])
    _silence(model.blocks[1].dw_bn, list(range(10)))
    _silence(model.blocks[2].dw_bn, [0, 35])
    _silence(model.head_bn, [3, 4])
    result = shrink(model, threshold=1e-2)
    assert [p.width for p in result.plans] == [20, 6, 34, 48, 14, 8, 12]
    assert result.blocks_removed == 0
    assert format_arch(result.arch) == (
        "stem_c8_s1-ir_k3_m20_c8_s1_se0.25-ir_k5_m6_c12_s2-ir_k3_m34_c12_s1_ahswish"
        "-ir_k3_e1_c12_s1-ir_k3_m48_c12_s1-head_c14"
    )
    assert parse_arch(format_arch(result.arch)) == result.arch
    assert result.model.arch == result.arch
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)


def _silence_shared(model: ArchNet, gates, channels) -> None:
    """Make shared channels exactly zero: gamma = beta = 0 and a zero running mean at every gate."""
    for path in gates:
        bn = model.get_submodule(path)
        _silence(bn, channels)
        with torch.no_grad():
            bn.running_mean[channels] = 0.0


def test_shared_widths_shrink_together_across_residual_adds():
    model = _trained_like()
    stem, out = channel_groups(model.arch)[-2:]
    _silence_shared(model, stem.gates, [2, 5])
    _silence_shared(model, out.gates, [0, 7, 11])
    _silence(model.blocks[2].project_bn, [3])  # one silent gate of four: block 1 still writes channel 3
    result = shrink(model, threshold=1e-2)
    assert [p.width for p in result.plans][-2:] == [6, 9]
    assert format_arch(result.arch) == (
        "stem_c6_s1-ir_k3_m24_c6_s1_sq2-ir_k5_m16_c9_s2-ir_k3_m36_c9_s1_ahswish"
        "-ir_k3_e1_c9_s1-ir_k3_m48_c9_s1-head_c16"
    )
    assert parse_arch(format_arch(result.arch)) == result.arch
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)


def test_shared_widths_of_plain_layers_and_a_head_without_conv():
    text = "stem_c8_s1-conv_k3_c12_s1-ds_k3_c16_s2_se0.25-ds_k3_c16_s1_r1-head"
    model = _trained_like(text)
    groups = {g.name: g for g in channel_groups(model.arch)}
    assert set(groups) == {"stem", "blocks.0.out", "blocks.1.out"}
    _silence_shared(model, groups["blocks.0.out"].gates, [1, 4, 6])
    _silence_shared(model, groups["blocks.1.out"].gates, [0, 15])  # read by the classifier
    result = shrink(model, threshold=1e-2)
    assert format_arch(result.arch) == "stem_c8_s1-conv_k3_c9_s1-ds_k3_c14_s2_sq3-ds_k3_c14_s1_r1-head"
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)


def test_block_with_all_zero_gammas_vanishes():
    model = _trained_like()
    block = model.blocks[2]
    _silence(block.dw_bn, slice(None))
    with torch.no_grad():  # the branch then adds only project_bn's constant; make that zero too
        block.project_bn.bias.zero_()
        block.project_bn.running_mean.zero_()
    result = shrink(model, threshold=1e-2)
    assert result.blocks_removed == 1
    assert result.arch.blocks[2].kind == "skip"
    assert "-skip_c12-" in format_arch(result.arch)
    assert isinstance(result.model.blocks[2], nn.Identity)
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)


def test_non_residual_block_keeps_min_channels():
    model = _trained_like()
    with torch.no_grad():
        model.blocks[1].dw_bn.weight.mul_(1e-3)  # strided block: may shrink but never vanish
    result = shrink(model, threshold=1e-2, min_channels=3)
    plan = result.plans[1]
    assert plan.alive == 0 and plan.width == 3 and result.arch.blocks[1].kind == "ir"
    strongest = model.blocks[1].dw_bn.weight.abs().topk(3).indices.sort().values
    assert torch.equal(plan.keep, strongest)


def test_a_layer_without_a_residual_path_losing_every_channel_is_named():
    model = _trained_like()
    with torch.no_grad():
        model.blocks[1].dw_bn.weight.mul_(1e-3)  # the strided block: nothing can stand in for it
    with pytest.raises(PluginError, match=r"removes every channel of blocks\.1, which has no residual path"):
        shrink(model, threshold=1e-2)
    compressor = MorphNetCompressor(MorphNetCompressor.Options(reg_epochs=0, finetune_epochs=0))
    with pytest.raises(PluginError, match="set min_channels"):
        compressor.compress(_context(model, load_dataset(DatasetConfig())))


def test_mid_never_collapses_onto_the_input_width():
    model = _trained_like()
    _silence(model.blocks[0].dw_bn, list(range(16)))  # 8 survivors == 8 block inputs
    result = shrink(model, threshold=1e-2)
    assert result.plans[0].width == 9  # keeps the expand conv the weights were trained with
    assert isinstance(result.model.blocks[0], InvertedResidual) and result.model.blocks[0].expand is not None


def test_dropped_channel_constants_are_folded():
    model = _trained_like()
    # gamma = 0 but beta != 0: each dropped channel emits a constant that the next layer absorbs.
    _silence(model.blocks[4].dw_bn, [0, 9, 30], beta=0.7)
    _silence(model.blocks[2].dw_bn, [2, 3], beta=-0.3)
    _silence(model.head_bn, [0, 15], beta=0.4)
    result = shrink(model, threshold=1e-2)
    assert [p.width for p in result.plans] == [24, 16, 34, 45, 14, 8, 12]
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)


def test_expand_step_scales_widths_and_starts_from_the_shrunk_function():
    model = _trained_like()
    _silence(model.blocks[0].dw_bn, list(range(12)))
    _silence(model.head_bn, list(range(8)))
    result = shrink(model, threshold=1e-2, width_multiplier=1.5)
    assert [p.width for p in result.plans] == [18, 24, 54, 72, 12, 12, 18]
    assert [len(p.keep) for p in result.plans] == [12, 16, 36, 48, 8, 8, 12]
    # Shared widths grew too: the readers' inner widths are written out, the e1 block follows its input.
    assert format_arch(result.arch) == (
        "stem_c12_s1-ir_k3_m18_c12_s1_sq2-ir_k5_m24_c18_s2-ir_k3_m54_c18_s1_ahswish"
        "-ir_k3_e1_c18_s1-ir_k3_m72_c18_s1-head_c12"
    )
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)
    new_rows = result.model.blocks[0].dw.weight[12:]
    assert new_rows.abs().sum() > 0  # new channels are freshly initialised, not copies


def test_width_multiplier_below_one_keeps_the_strongest_channels():
    model = _trained_like()
    result = shrink(model, threshold=1e-2, width_multiplier=0.5)
    # Every width halves, the stem's and block 1's outputs too (so blocks.1's mid 8 no longer meets its input).
    assert [p.width for p in result.plans] == [12, 8, 18, 24, 8, 4, 6]
    gamma = model.head_bn.weight.abs()
    assert torch.equal(result.plans[4].keep, gamma.topk(8).indices.sort().values)


def test_shrink_does_not_touch_the_parent():
    model = _trained_like()
    _silence(model.blocks[0].dw_bn, [0, 1])
    before = copy.deepcopy(model.state_dict())
    shrink(model, threshold=1e-2, width_multiplier=2.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- the plugin


def _context(model, digits, **kwargs) -> CompressContext:
    return CompressContext(model, model.arch, digits, TrainConfig(batch_size=64), digits.input_shape, **kwargs)


def test_compress_without_training_is_an_exact_shrink(digits):
    model = _trained_like()
    _silence(model.blocks[2].dw_bn, slice(None))
    with torch.no_grad():
        model.blocks[2].project_bn.bias.zero_()
        model.blocks[2].project_bn.running_mean.zero_()
    _silence(model.blocks[4].dw_bn, list(range(40)))
    compressor = MorphNetCompressor(MorphNetCompressor.Options(reg_epochs=0, finetune_epochs=0))
    result = compressor.compress(_context(model, digits))
    assert isinstance(result, CompressResult)
    assert result.stats["blocks_removed"] == 1 and result.arch.blocks[2].kind == "skip"
    assert result.stats["channels_after"]["blocks.4"] == 8
    assert result.stats["macs_after"] < result.stats["macs_before"]
    assert (result.val_accuracy, result.val_loss) == pytest.approx(evaluate(model, digits))


def test_compress_prunes_on_digits(digits):
    torch.manual_seed(0)
    arch = parse_arch("stem_c8_s1-ir_k3_e4_c8_s1-ir_k3_e4_c12_s2-ir_k3_e4_c12_s1-head_c32")
    model = build_model(arch, 1, 10)
    train_model(model, digits, TrainConfig(batch_size=64), epochs=3)  # a briefly trained parent
    before = copy.deepcopy(model.state_dict())
    steps = []
    options = MorphNetCompressor.Options(strength=0.34, reg_epochs=2, finetune_epochs=2)  # 0.2 per step x lr 0.05 x 34 steps
    result = MorphNetCompressor(options).compress(
        _context(model, digits, progress=lambda step, done, total: steps.append((step, done, total)))
    )
    stats = result.stats
    assert stats["macs_after"] < 0.7 * stats["macs_before"]
    assert stats["params_after"] < stats["params_before"]
    assert sum(stats["channels_after"].values()) < sum(stats["channels_before"].values())
    assert stats["target"] == "flops" and stats["child_arch"] == format_arch(result.arch)
    assert parse_arch(format_arch(result.arch)) == result.arch
    assert isinstance(result.model, ArchNet) and result.model.arch == result.arch
    # The flows save state_dicts and reload them into a model built from the child's string.
    build_model(parse_arch(stats["child_arch"]), 1, 10).load_state_dict(result.model.state_dict())
    assert result.val_accuracy > 0.4  # far above chance (0.1) after a short fine-tune
    assert any(stats["channels_after"][name] < stats["channels_before"][name] for name in ("stem", "blocks.1.out"))
    assert ("regularise", 2, 2) in steps and ("shrink", 1, 1) in steps and steps[-1] == ("finetune", 2, 2)
    for key, value in model.state_dict().items():  # the trained parent is left as it was
        assert torch.equal(value, before[key]), key


def test_compress_rejects_foreign_models(digits):
    compressor = MorphNetCompressor()
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(PluginError, match="build_model"):
        compressor.compress(CompressContext(plain, parse_arch(ARCH), digits, TrainConfig(), digits.input_shape))
    model = _trained_like()
    other = parse_arch("stem_c8_s1-head_c16")
    with pytest.raises(PluginError, match="context says"):
        compressor.compress(CompressContext(model, other, digits, TrainConfig(), digits.input_shape))


# ---------------------------------------------------------------- groups the block kinds name

KINDS_ARCH = "stem_c8_s1-conv_k3_c8_s1-fir_k3_e3_c8_s1_se0.25-ds_k3_c12_s2-fir_k3_m20_c12_s1_aswish-ir_k3_e2_c12_s1_g2-head_c16_f24"


def test_groups_come_from_the_kinds():
    groups = channel_groups(parse_arch(KINDS_ARCH))
    # conv and ds have no inner width; grouped ir channels are tied to their groups; fir's mid is prunable.
    # Shared: the stem's width, and the conv's (the fir block adds to it); the ds output is read by the
    # grouped ir block, whose convs tie it to their groups.
    assert [(g.name, g.width, g.gate, g.can_vanish) for g in groups] == [
        ("blocks.1", 24, "expand_bn", True), ("blocks.3", 20, "expand_bn", True), ("head", 16, "head_bn", False),
        ("stem", 8, "stem_bn", False), ("blocks.0.out", 8, "bn", False),
    ]
    assert [g.name for g in channel_groups(parse_arch("stem_c8_s1-ds_k3_c8_s1-head"))] == ["stem", "blocks.0.out"]
    fixed = parse_arch("stem_c8_s1-ir_k3_e2_c8_s1_g2-head")
    assert channel_groups(fixed) == []
    with pytest.raises(PluginError, match="no prunable channel group"):
        make_regulariser(fixed, {}, 0.1)


def test_shrinking_fused_blocks_and_a_head_fc_keeps_outputs():
    model = _trained_like(KINDS_ARCH)
    _silence(model.blocks[1].expand_bn, [0, 3, 17])
    _silence(model.blocks[3].expand_bn, [2, 5], beta=0.3)  # constants folded into the projection
    _silence(model.head_bn, [1, 7], beta=-0.2)  # folded into the fc layer, not the classifier
    result = shrink(model, threshold=1e-2)
    assert [p.width for p in result.plans] == [21, 18, 14, 8, 8]
    assert format_arch(result.arch) == (
        "stem_c8_s1-conv_k3_c8_s1-fir_k3_m21_c8_s1_se0.25-ds_k3_c12_s2-fir_k3_m18_c12_s1_aswish"
        "-ir_k3_e2_c12_s1_g2-head_c14_f24"
    )
    torch.testing.assert_close(_outputs(result.model), _outputs(model), atol=1e-5, rtol=0)
    costs = channel_costs(parse_arch(KINDS_ARCH), 1, 10, 8, "flops")
    fewer = parse_arch(KINDS_ARCH.replace("fir_k3_m20", "fir_k3_m19"))
    assert count_macs(parse_arch(KINDS_ARCH), 1, 10, 8) - count_macs(fewer, 1, 10, 8) == costs["blocks.3"]


def test_budget_expand_finds_the_largest_multiplier_within_the_budget():
    from nasflow.plugins.compress.morphnet import _count, _expanded_arch, multiplier_for_budget

    model = _trained_like()
    seed_macs = count_macs(model.arch, 1, 10, (8, 8))
    for share in (0.6, 1.0, 1.5):
        budget = share * seed_macs
        multiplier, macs = multiplier_for_budget(model, 1e-2, 1, budget, (8, 8), "flops")
        assert macs <= budget
        assert _count(_expanded_arch(model, 1e-2, 1, multiplier), 1, 10, (8, 8), "flops") == macs
        # one rounding step further (the next multiplier that changes a width) exceeds the budget
        step = multiplier
        while _count(_expanded_arch(model, 1e-2, 1, step), 1, 10, (8, 8), "flops") == macs:
            step *= 1.001
        assert _count(_expanded_arch(model, 1e-2, 1, step), 1, 10, (8, 8), "flops") > budget
    params_budget = 0.8 * model_params(model)
    _, params = multiplier_for_budget(model, 1e-2, 1, params_budget, (8, 8), "size")
    assert params <= params_budget


def model_params(model):
    from nasflow.space import count_arch_params

    return count_arch_params(model.arch, 1, 10)


def test_budget_below_the_smallest_network_is_refused():
    from nasflow.plugins.compress.morphnet import multiplier_for_budget

    with pytest.raises(PluginError, match="below the smallest network the shrink can give"):
        multiplier_for_budget(_trained_like(), 1e-2, 1, 10.0, (8, 8), "flops")


def test_budget_and_width_multiplier_together_are_refused():
    with pytest.raises(PluginError, match="set either budget .* or width_multiplier, not both"):
        get_plugins().options("compressor", "morphnet", {"budget": 0.5, "width_multiplier": 1.5})


def test_compress_expands_to_a_relative_budget(digits):
    model = _trained_like()
    _silence(model.blocks[4].dw_bn, list(range(40)))  # the shrink frees MACs the expand step spends again
    options = MorphNetCompressor.Options(reg_epochs=0, finetune_epochs=0, budget=0.9, target="flops")
    result = MorphNetCompressor(options).compress(_context(model, digits))
    stats = result.stats
    assert stats["budget"] == pytest.approx(0.9 * stats["macs_before"]) and stats["budget_resource"] == "macs"
    assert stats["macs_after"] <= stats["budget"]
    assert stats["macs_after"] > 0.8 * stats["macs_before"]  # grown back towards the budget, not left shrunk
    assert stats["width_multiplier"] > 1.0


# ---------------------------------------------------------------- shrink -> expand cycles


def test_cycles_start_each_from_the_previous_network(digits):
    model = _trained_like()
    _silence(model.blocks[4].dw_bn, list(range(40)))
    options = MorphNetCompressor.Options(reg_epochs=1, finetune_epochs=1, budget=0.7, target="flops", cycles=3, strength=0.255)
    result = MorphNetCompressor(options).compress(_context(model, digits))
    steps = [*result.intermediates, result]
    assert [s.stats["cycle"] for s in steps] == [1, 2, 3] and all(s.stats["cycles"] == 3 for s in steps)
    seed_macs = count_macs(model.arch, 1, 10, (8, 8))
    for before, after in zip(steps, steps[1:]):
        # Each cycle shrinks what the previous one gave (its stats start from that network).
        assert after.stats["macs_before"] == count_macs(before.arch, 1, 10, (8, 8))
    for s in steps:
        assert s.stats["seed_macs"] == seed_macs
        assert s.stats["macs_after"] <= 0.7 * seed_macs  # every cycle expands to the seed's budget, not beyond
        assert s.model.arch == s.arch and 0 <= s.val_accuracy <= 1
    # The recorded intermediates keep their own weights (later cycles trained copies): their
    # accuracy now is the one measured after their fine-tuning.
    for s in steps[:-1]:
        assert evaluate(s.model, digits)[0] == pytest.approx(s.val_accuracy)


def test_one_cycle_has_no_intermediates(digits):
    options = MorphNetCompressor.Options(reg_epochs=0, finetune_epochs=0)
    result = MorphNetCompressor(options).compress(_context(_trained_like(), digits))
    assert result.intermediates == [] and result.stats["cycle"] == 1


def test_every_cycle_is_a_morph_candidate_in_a_lineage_chain(tmp_path):
    from nasflow.flows.context import RunContext
    from nasflow.flows.morph import current_morph_rows
    from nasflow.flows.pipeline import run_spec
    from nasflow.flows.train import current_train_rows
    from nasflow.registry import Registry
    from nasflow.spec import LoadedSpec, parse_spec

    from specs import tiny_spec_text

    text = tiny_spec_text(tmp_path, name="cycles", profile=False, deploy=False).replace(
        "options: {reg_epochs: 1, finetune_epochs: 1}", "options: {reg_epochs: 1, finetune_epochs: 1, cycles: 2, strength: 0.24}"
    )
    assert "cycles: 2" in text
    loaded = LoadedSpec(parse_spec(text), tmp_path / "spec.yaml", text)
    summary = run_spec(loaded)
    registry = Registry(loaded.spec.registry.path)
    train = registry.get_candidates(summary.run_id, stage="train")[0]
    morphs = {r["candidate_id"]: r for r in registry.get_candidates(summary.run_id, stage="morph")}
    assert len(morphs) == 2
    first = next(r for r in morphs.values() if r["extra"].get("intermediate"))
    final = next(r for r in morphs.values() if not r["extra"].get("intermediate"))
    assert first["parent_id"] == train["candidate_id"] and final["parent_id"] == first["candidate_id"]
    assert first["extra"]["seed_id"] == final["extra"]["seed_id"] == train["candidate_id"]
    assert (first["extra"]["cycle"], final["extra"]["cycle"]) == (1, 2)
    for row in (first, final):
        assert row["status"] == "ok" and row["accuracy_source"] == "full" and 0 <= row["test_accuracy"] <= 1
        assert row["macs"] > 0 and Path(row["extra"]["checkpoint"]).exists()
    assert final["extra"]["macs_before"] == first["macs"]
    # The stage's output is the last cycle's network alone; a re-run reuses it.
    ctx = RunContext(summary.run_id, loaded.spec)
    outputs = current_morph_rows(registry, ctx, current_train_rows(registry, ctx))
    assert [r["candidate_id"] for r in outputs] == [final["candidate_id"]]
    again = run_spec(loaded)
    assert again.stages["morph"]["compressed"] == 0 and len(registry.get_candidates(summary.run_id, stage="morph")) == 2
