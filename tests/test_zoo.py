"""The model zoo: published networks as architecture strings, their counts against the papers, zoo names in specs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from nasflow.arch import (
    ZOO,
    count_arch_params,
    count_macs,
    format_arch,
    parse_arch,
    resolve_arch,
    zoo_arch,
)
from nasflow.arch.builder import build_model, count_params
from nasflow.arch.counting import block_shapes, head_size
from nasflow.arch.zoo import canonical_zoo_name, cifar_variant, make_divisible
from nasflow.errors import ArchError, SpecError
from nasflow.spec import parse_spec

from specs import tiny_spec_text

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.03


@pytest.mark.parametrize("name", list(ZOO))
def test_counts_are_within_3_percent_of_the_paper(name):
    model = ZOO[name]
    arch = model.arch()
    macs = count_macs(arch, 3, 1000, 224)
    # Papers count conv and fc weights; BatchNorm is folded away at inference and not counted.
    params = count_arch_params(arch, 3, 1000, batchnorm=False)
    assert abs(macs / (model.macs_m * 1e6) - 1) <= TOLERANCE, (name, macs)
    assert abs(params / (model.params_m * 1e6) - 1) <= TOLERANCE, (name, params)
    assert model.differences and model.source


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_build_run_and_count_what_they_build(name):
    arch = zoo_arch(name)
    assert parse_arch(format_arch(arch)) == arch
    model = build_model(arch, 3, 1000).eval()
    assert count_params(model) == count_arch_params(arch, 3, 1000)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    assert head_size(arch, 3, 224) == (7, 7)  # every one of them reduces 224 by 32


# TensorFlow's MobileNetV2 checkpoints table (research/slim/nets/mobilenet/README.md): multiplier,
# million MACs, million parameters, at 224x224.
MOBILENET_V2_WIDTHS = [(1.4, 582, 6.06), (1.3, 509, 5.34), (1.0, 300, 3.47), (0.75, 209, 2.61), (0.5, 97, 1.95),
                       (0.35, 59, 1.66)]


@pytest.mark.parametrize("width, macs_m, params_m", MOBILENET_V2_WIDTHS)
def test_mobilenet_v2_width_family_matches_the_reference_checkpoints(width, macs_m, params_m):
    arch = zoo_arch(f"zoo:mobilenet_v2@{width}")
    assert count_macs(arch, 3, 1000, 224) / 1e6 == pytest.approx(macs_m, rel=0.01)
    assert count_arch_params(arch, 3, 1000, batchnorm=False) / 1e6 == pytest.approx(params_m, rel=0.01)
    widths = [arch.stem, *(b.out for b in arch.blocks), arch.head]
    assert all(w % 8 == 0 for w in widths)
    assert arch.head == (1280 if width <= 1 else make_divisible(1280 * width))


def test_make_divisible():
    assert [make_divisible(v) for v in (16, 12, 8.0, 3, 18, 30, 36, 120 * 0.35)] == [16, 16, 8, 8, 24, 32, 40, 40]


def test_cifar_variant_keeps_the_channels_and_ends_at_4x4_on_32x32():
    for name in ZOO:
        base, cifar = zoo_arch(name), zoo_arch(f"{name}_cifar")
        assert [b.out for b in cifar.blocks] == [b.out for b in base.blocks] and cifar.head == base.head
        assert head_size(cifar, 3, 32) == (4, 4), name
        assert cifar == cifar_variant(base)
    cifar = zoo_arch("zoo:mobilenet_v2_cifar@0.5")
    strides = [cifar.stem_stride, *(b.stride for b in cifar.blocks)]
    assert strides[:4] == [1, 1, 1, 1] and strides.count(2) == 3  # stem and the 24-channel stage became 1
    assert [s.in_size for s in block_shapes(cifar, 3, 32)][-1] == (4, 4)


def test_resolve_arch_takes_strings_and_zoo_names():
    text = "stem_c8_s1-ir_k3_e6_c16_s2-head_c32"
    assert resolve_arch(text) == parse_arch(text)
    assert resolve_arch(" zoo:mobilenet_v2@0.50 ") == zoo_arch("mobilenet_v2@0.5")
    assert resolve_arch("zoo:mobilenet_v2@1") == zoo_arch("mobilenet_v2")
    assert canonical_zoo_name("zoo:mobilenet_v2_cifar@0.50") == "zoo:mobilenet_v2_cifar@0.5"
    assert canonical_zoo_name("fbnet_c@1.0") == "zoo:fbnet_c"


@pytest.mark.parametrize(
    "name, message",
    [
        ("zoo:resnet50", "unknown zoo model 'resnet50'; known: mobilenet_v1, mobilenet_v2"),
        ("zoo:mobilenet_v2@x", "width multiplier must be a positive number, got 'x'"),
        ("zoo:mobilenet_v2@0", "width multiplier must be a positive number"),
        ("zoo:mobilenet_v2@inf", "width multiplier must be a positive number"),
        ("zoo:fbnet_c@0.5", "'fbnet_c' has no width multiplier (models that have one: mobilenet_v2)"),
    ],
)
def test_bad_zoo_names(name, message):
    with pytest.raises(ArchError, match=re.escape(message)):
        resolve_arch(name)


def test_train_archs_take_zoo_names_and_fail_at_validation(tmp_path):
    text = tiny_spec_text(tmp_path)
    good = text.replace("train: {enabled: true, top_k: 1,", "train: {enabled: true, top_k: 1, archs: [zoo:mobilenet_v2_cifar@0.5],")
    assert parse_spec(good, check_plugins=False).train.archs == ["zoo:mobilenet_v2_cifar@0.5"]
    bad = good.replace("zoo:mobilenet_v2_cifar@0.5", "zoo:mobilenet_v9")
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "spec.yaml", check_plugins=False)
    line = next(i for i, row in enumerate(bad.splitlines(), 1) if "mobilenet_v9" in row)
    assert f"spec.yaml:{line}:" in str(info.value) and "unknown zoo model 'mobilenet_v9'" in str(info.value)
    broken = good.replace("zoo:mobilenet_v2_cifar@0.5", "stem_c8_s1-ir_k4_e6_c8_s1-head_c8")
    with pytest.raises(SpecError, match="kernel must be odd"):
        parse_spec(broken, "spec.yaml", check_plugins=False)


def _readme_zoo_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- zoo-table -->")[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[1].startswith("`zoo:"):
            rows[cells[1].strip("`")] = cells
    return rows


def test_readme_zoo_table_shows_what_nasflow_counts():
    rows = _readme_zoo_rows()
    assert set(rows) == {f"zoo:{name}" for name in ZOO}
    for name, model in ZOO.items():
        arch = model.arch()
        cells = rows[f"zoo:{name}"]
        macs = f"{count_macs(arch, 3, 1000, 224) / 1e6:.1f} M / {model.macs_m:g} M"
        params = f"{count_arch_params(arch, 3, 1000, batchnorm=False) / 1e6:.2f} M / {model.params_m:g} M"
        with_bn = f"{count_arch_params(arch, 3, 1000) / 1e6:.2f} M"
        assert cells[2:5] == [macs, params, with_bn], (name, cells)


def test_a_zoo_model_named_in_train_archs_is_trained(tmp_path):
    from nasflow.flows.pipeline import run_spec
    from nasflow.registry import open_readonly
    from nasflow.spec import load_spec

    text = tiny_spec_text(tmp_path, name="zoo", profile=False, search=False, morph=False, deploy=False)
    text = text.replace("train: {enabled: true, top_k: 1, config: {epochs: 2}}",
                        "train: {enabled: true, top_k: 1, archs: ['zoo:mobilenet_v2_cifar@0.25'], config: {epochs: 1}}")
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    run_spec(load_spec(path))
    arch = zoo_arch("mobilenet_v2_cifar@0.25")
    _, rows = open_readonly(tmp_path / "registry.duckdb").query("SELECT stage, arch, status, params FROM candidates")
    assert rows == [("train", format_arch(arch), "ok", count_arch_params(arch, 1, 10))]
