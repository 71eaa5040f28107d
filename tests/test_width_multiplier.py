"""The width multiplier: architecture scaling, the `train.archs` sweep, and the `width-multiplier` compressor."""

from __future__ import annotations

import pytest
import torch

from nasflow.arch import build_model, count_macs, format_arch, parse_arch, resolve_arch
from nasflow.arch.scaling import scale_width
from nasflow.config import DatasetConfig, TrainConfig
from nasflow.data import load_dataset
from nasflow.errors import ArchError, SpecError
from nasflow.plugin_api import CompressContext
from nasflow.plugins import get_plugins
from nasflow.spec import parse_spec

ARCH = "stem_c16_s1-ir_k3_e1_c16_s1-ir_k3_e6_c24_s2_se0.25-ir_k3_m48_c24_s1_sq6-skip_c24-head_c64"


def test_every_width_scales_and_rounds_to_the_divisor():
    arch = scale_width(parse_arch(ARCH), 0.5, divisor=4)
    assert arch.stem == 8 and arch.head == 32
    assert [b.out for b in arch.blocks] == [8, 12, 12, 12]
    assert arch.blocks[2].mid == 24 and arch.blocks[2].squeeze == 3  # explicit widths scale; sq to whole channels
    assert arch.blocks[1].expansion == 6 and arch.blocks[1].se == 0.25  # ratios follow the scaled input
    model = build_model(arch, 3, 10)  # the skip and residuals still join equal widths
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_mobilenet_v2_scaled_matches_the_zoos_narrow_member_below_the_head():
    half = scale_width(resolve_arch("zoo:mobilenet_v2_cifar@1.0"), 0.5)
    zoo = resolve_arch("zoo:mobilenet_v2_cifar@0.5")
    assert half.blocks == zoo.blocks and half.stem == zoo.stem
    assert half.head == zoo.head // 2  # the zoo never narrows the last conv; the multiplier scales every width


def test_macs_shrink_roughly_with_alpha_squared():
    base = parse_arch(ARCH)
    ratio = count_macs(scale_width(base, 0.5, divisor=1), 3, 10, 32) / count_macs(base, 3, 10, 32)
    assert 0.2 < ratio < 0.35


def test_bad_factors_are_refused():
    with pytest.raises(ArchError, match="positive"):
        scale_width(parse_arch(ARCH), 0)


def _spec(tmp_path, archs: str) -> str:
    return f"""
name: sweep
dataset: {{name: digits}}
space: {{name: layerwise, options: {{stages: [{{channels: 16, layers: 1, stride: 1}}]}}}}
devices: [{{name: torch-cpu}}]
search: {{enabled: false}}
train: {{archs: {archs}, config: {{epochs: 1}}}}
morph: {{enabled: false}}
deploy: {{enabled: false}}
registry: {{path: {tmp_path / 'r.duckdb'}}}
"""


def test_train_archs_width_sweep_is_one_entry(tmp_path):
    spec = parse_spec(_spec(tmp_path, f'[{{arch: "{ARCH}", widths: [0.5, 1.0, 2.0], divisor: 4}}, "{ARCH}"]'), "s.yaml")
    base = parse_arch(ARCH)
    assert spec.train.archs == [format_arch(scale_width(base, w, 4)) for w in (0.5, 1.0, 2.0)] + [ARCH]


def test_train_archs_width_sweep_bad_entries(tmp_path):
    with pytest.raises(SpecError, match="widths must be a non-empty list of positive factors"):
        parse_spec(_spec(tmp_path, f'[{{arch: "{ARCH}", widths: []}}]'), "s.yaml")
    with pytest.raises(SpecError, match="unknown keys: width"):
        parse_spec(_spec(tmp_path, f'[{{arch: "{ARCH}", width: [0.5]}}]'), "s.yaml")


def test_width_multiplier_compressor_retrains_the_scaled_network():
    data = load_dataset(DatasetConfig())
    torch.set_num_threads(1)
    parent_arch = parse_arch("stem_c16_s1-ir_k3_e3_c16_s1-ir_k3_e3_c32_s2-head_c64")
    parent = build_model(parent_arch, 1, 10)
    compressor = get_plugins().create("compressor", "width-multiplier", {"alpha": 0.5, "epochs": 2})
    ctx = CompressContext(parent, parent_arch, data, TrainConfig(batch_size=64, lr=0.05), data.input_shape)
    result = compressor.compress(ctx)
    assert format_arch(result.arch) == format_arch(scale_width(parent_arch, 0.5))
    assert result.stats["macs_after"] < result.stats["macs_before"] and result.stats["epochs"] == 2
    assert result.val_accuracy > 0.25  # trained from scratch for real (2 epochs): chance is 0.1
