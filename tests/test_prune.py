"""The `prune` compressor (torch-pruning): ratio reached on the exact count, the child rebuilt from its
architecture string computes what the pruned network did, low-norm channels go first, clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nasflow.arch import build_model, count_arch_params, count_macs, count_params, format_arch, parse_arch
from nasflow.config import TrainConfig
from nasflow.errors import PluginError, SpecError
from nasflow.plugin_api import CompressContext
from nasflow.plugins import get_plugins
from nasflow.plugins.compress.channel_groups import channel_groups
from nasflow.plugins.compress.prune import PruneCompressor, PruneOptions, prune_network
from nasflow.spec import parse_spec
from nasflow.train import train_model
from test_morphnet import digits, single_thread  # noqa: F401  (shared fixtures: the digits data, one torch thread)

# Block 0: residual ir with SE; 1: strided ir; 2: residual fir; 3: ir without expand conv (not prunable); head conv.
ARCH = "stem_c8_s1-ir_k3_e3_c8_s1_se0.25-ir_k3_e4_c16_s2-fir_k3_e2_c16_s1-ir_k3_e1_c16_s1-head_c32"
# Kinds whose widths stay: a grouped ir (channel shuffle), ds, conv, and a head fc after the head conv.
MIXED = "stem_c8_s1-ir_k3_e2_c8_s1_g2-ds_k3_c16_s2-conv_k3_c16_s1-ir_k3_e3_c16_s1_ahswish-head_c32_f24"
CONFIG = TrainConfig(batch_size=64, lr=0.05)


def _trained(digits, text: str, epochs: int = 2):
    torch.manual_seed(0)
    model = build_model(parse_arch(text), digits.in_channels, digits.num_classes)
    train_model(model, digits, CONFIG, epochs=epochs)
    return model.eval()


@pytest.fixture(scope="module")
def parent(digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _trained(digits, ARCH)
    finally:
        torch.set_num_threads(threads)


def _ctx(model, digits) -> CompressContext:
    return CompressContext(model, model.arch, digits, CONFIG, digits.input_shape)


def _macs(arch, digits) -> int:
    return count_macs(arch, digits.in_channels, digits.num_classes, digits.image_size)


# ---------------------------------------------------------------- options, registration, spec


def test_options_defaults_and_registration():
    opts = PruneOptions()
    assert (opts.ratio, opts.resource, opts.importance, opts.p) == (0.5, "macs", "magnitude", 2)
    assert (opts.steps, opts.finetune_epochs, opts.taylor_batches) == (1, 2, 4)
    assert get_plugins().get("compressor", "prune").cls is PruneCompressor
    for bad in ({"ratio": 1.5}, {"ratio": 0}, {"resource": "latency"}, {"importance": "random"}, {"steps": 0}, {"p": 3}):
        with pytest.raises(PluginError, match="invalid options for compressor 'prune'"):
            get_plugins().options("compressor", "prune", bad)


def _spec(tmp_path, options: str) -> str:
    return f"""
name: prune
dataset: {{name: digits}}
space: {{name: layerwise, options: {{stages: [{{channels: 16, layers: 1, stride: 1}}]}}}}
devices: [{{name: torch-cpu}}]
search: {{enabled: false}}
train: {{archs: ["{ARCH}"], config: {{epochs: 1}}}}
morph: {{compressor: prune, options: {options}}}
deploy: {{enabled: false}}
registry: {{path: {tmp_path / 'r.duckdb'}}}
"""


def test_spec_with_the_prune_compressor_validates(tmp_path):
    spec = parse_spec(_spec(tmp_path, "{ratio: 0.5}"), "s.yaml")
    assert spec.morph.compressor == "prune" and spec.morph.options == {"ratio": 0.5}
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(tmp_path, "{ratio: 1.5}"), "s.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert "morph.options" in lines[0] and "ratio" in lines[0] and "less than 1" in lines[0]


# ---------------------------------------------------------------- pruning


def test_half_the_macs_gives_a_child_that_round_trips_and_is_fine_tuned(parent, digits):
    before = copy.deepcopy(parent.state_dict())
    compressor = get_plugins().create("compressor", "prune", {"ratio": 0.5, "finetune_epochs": 1})
    result = compressor.compress(_ctx(parent, digits))
    arch, stats = result.arch, result.stats
    assert _macs(arch, digits) <= 0.5 * _macs(parent.arch, digits)
    assert stats["macs_after"] == _macs(arch, digits) and stats["macs_before"] == _macs(parent.arch, digits)
    assert stats["kept"] <= 0.5 and stats["iterations"] > 0 and stats["importance"] == "magnitude"
    text = format_arch(arch)
    assert parse_arch(text) == arch and stats["child_arch"] == text
    assert build_model(parse_arch(text), 1, 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert format_arch(result.model.arch) == text and stats["params_after"] == count_params(result.model)
    # Only the prunable groups changed; the stem, block outputs and the e1 block are the parent's.
    parent_arch = parse_arch(ARCH)
    assert arch.stem == parent_arch.stem and [b.out for b in arch.blocks] == [b.out for b in parent_arch.blocks]
    assert arch.blocks[3] == parent_arch.blocks[3]
    assert arch.blocks[0].squeeze is None and arch.blocks[0].se == 0.25  # SE width follows the block input: unchanged
    shrunk = [g for g in channel_groups(parent_arch, residual_widths=False) if stats["channels_after"][g.name] < g.width]
    assert shrunk, stats["channels_after"]
    # Fine-tuned for real: better than the pruned weights as they were.
    assert result.val_accuracy > stats["pruned_val_accuracy"] + 0.05, stats
    for name, tensor in parent.state_dict().items():  # the parent is left as trained
        assert torch.equal(tensor, before[name]), name


def test_rebuilt_child_computes_what_the_pruned_network_did(parent, digits):
    outcome = prune_network(PruneOptions(ratio=0.6, finetune_epochs=0), _ctx(parent, digits))
    assert outcome.max_abs_diff <= 1e-5
    x = torch.from_numpy(digits.batch("test", slice(0, 128)))
    with torch.no_grad():
        pruned, child = outcome.pruned.eval()(x), outcome.child.eval()(x)
    assert torch.allclose(pruned, child, atol=1e-6, rtol=0)
    # The pruned network really is narrower, and its widths are the child string's.
    assert sum(g["after"] for g in outcome.groups) < sum(g["before"] for g in outcome.groups)
    assert outcome.pruned.head_conv.out_channels == outcome.arch.head
    for i in (0, 1, 2):
        assert outcome.pruned.blocks[i].expand.out_channels == outcome.arch.blocks[i].mid
    assert set(outcome.child.state_dict()) == set(build_model(parent.arch, 1, 10).state_dict())


def test_magnitude_pruning_removes_the_zeroed_channels_first(parent, digits):
    model = copy.deepcopy(parent)
    block = model.blocks[1]  # strided ir: mid 32, no SE
    zeroed = [3, 7, 11, 20, 29]
    with torch.no_grad():
        for module in (block.expand, block.expand_bn, block.dw, block.dw_bn):
            module.weight[zeroed] = 0.0
        block.project.weight[:, zeroed] = 0.0
    original = block.dw.weight.detach().flatten(1).clone()
    outcome = prune_network(PruneOptions(ratio=0.9, finetune_epochs=0), _ctx(model, digits))
    kept = outcome.pruned.blocks[1].dw.weight.detach().flatten(1)
    survivors = []
    for row in kept:  # which parent channel each surviving one is (pruning copies weights unchanged)
        match = [i for i in range(len(original)) if torch.equal(original[i], row)]
        assert match, "a surviving channel is not one of the parent's"
        survivors.append(match[0])
    assert not set(zeroed) & set(survivors), survivors
    assert len(survivors) == outcome.arch.blocks[1].mid < 32
    # 0.9 of the MACs needs more than the zeroed channels gone: the rest were ranked, not all in one group.
    assert sum(g["before"] - g["after"] for g in outcome.groups) > len(zeroed)


def test_params_resource_and_taylor_in_two_rounds(parent, digits):
    opts = PruneOptions(ratio=0.6, resource="params", importance="taylor", taylor_batches=2, steps=2, finetune_epochs=1)
    result = PruneCompressor(opts).compress(_ctx(parent, digits))
    kept = count_arch_params(result.arch, 1, 10) / count_arch_params(parent.arch, 1, 10)
    assert kept <= 0.6 and result.stats["steps"] == 2 and result.stats["taylor_batches"] == 2
    assert parse_arch(format_arch(result.arch)) == result.arch and result.val_accuracy > 0.25


def test_fixed_width_kinds_keep_their_widths(digits):
    model = _trained(digits, MIXED, epochs=1)
    outcome = prune_network(PruneOptions(ratio=0.7, finetune_epochs=0), _ctx(model, digits))
    arch, parent_arch = outcome.arch, parse_arch(MIXED)
    assert _macs(arch, digits) <= 0.7 * _macs(parent_arch, digits)
    assert arch.blocks[:3] == parent_arch.blocks[:3] and arch.head_fc == 24
    assert arch.blocks[3].mid < 48 or arch.head < 32
    assert outcome.max_abs_diff <= 1e-5 and parse_arch(format_arch(arch)) == arch


def test_mid_width_never_lands_on_the_block_input(digits):
    # mid 9 on an 8-channel input: one channel fewer would leave no expand conv; the width jumps to 7.
    torch.manual_seed(0)
    model = build_model(parse_arch("stem_c8_s1-ir_k3_m9_c8_s1-head"), 1, 10).eval()
    outcome = prune_network(PruneOptions(ratio=0.97, finetune_epochs=0), _ctx(model, digits))
    assert outcome.arch.blocks[0].mid == 7 and outcome.iterations == 1
    assert outcome.child.blocks[0].expand is not None


def test_a_ratio_that_cannot_be_reached_is_one_clear_error(parent, digits):
    with pytest.raises(PluginError) as info:
        prune_network(PruneOptions(ratio=0.01, finetune_epochs=0), _ctx(parent, digits))
    message = str(info.value)
    assert "\n" not in message and "ratio 0.01" in message and "cannot be reached" in message
    assert "raise morph.options.ratio" in message


def test_models_not_built_from_an_arch_are_refused(parent, digits):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(PluginError, match="build_model"):
        prune_network(PruneOptions(), CompressContext(plain, parse_arch(ARCH), digits, CONFIG, digits.input_shape))
    with pytest.raises(PluginError, match="context says"):
        prune_network(PruneOptions(), CompressContext(parent, parse_arch(MIXED), digits, CONFIG, digits.input_shape))
