"""Tests for the search space: grammar, records, model builder, counting and the layerwise space."""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasflow.spaces.layerwise import LayerwiseOptions, StageOptions
from nasflow.errors import ArchError
from nasflow.space import (
    Arch,
    ArchNet,
    Block,
    HardSwish,
    LayerwiseSpace,
    arch_hash,
    block_shapes,
    build_model,
    count_arch_params,
    count_macs,
    count_params,
    format_arch,
    hard_sigmoid,
    mid_channels,
    parse_arch,
    validate_arch,
)

CANONICAL = [
    "stem_c16_s1-head_c64",
    "stem_c16_s1-ir_k3_e6_c24_s2-head_c64",
    "stem_c8_s2-ir_k5_e3_c24_s1_se0.25-ir_k3_m40_c24_s1-skip_c24-head_c32",
    "stem_c16_s1-ir_k3_e6_c24_s1_ahswish-ir_k7_e2.5_c24_s1_se0.5_ahswish-head_c64",
    "stem_c4_s1-ir_k1_e1_c4_s1-ir_k3_e0.00001_c4_s3-head_c1",
]

# A small but varied architecture: expansion 1 (no expand conv), SE, hswish, strides, skip, explicit mid.
VARIED = "stem_c8_s1-ir_k3_e1_c8_s1-ir_k5_e3_c12_s2_se0.25-ir_k3_m20_c12_s1_ahswish-skip_c12-ir_k7_e6_c16_s2-head_c24"


# ---------------------------------------------------------------- grammar


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_strings_round_trip(text):
    assert format_arch(parse_arch(text)) == text
    assert str(parse_arch(text)) == text


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("stem_s1_c16-ir_s2_c24_e6_k3-head_c64", "stem_c16_s1-ir_k3_e6_c24_s2-head_c64"),
        ("stem_c16_s1-ir_k3_e6.0_c24_s1_se0_arelu-head_c64", "stem_c16_s1-ir_k3_e6_c24_s1-head_c64"),
        ("stem_c016_s1-ir_ahswish_se0.250_k5_e2.50_c24_s1-head_c64", "stem_c16_s1-ir_k5_e2.5_c24_s1_se0.25_ahswish-head_c64"),
        ("  stem_c16_s1-ir_m40_k3_c24_s1-head_c64\n", "stem_c16_s1-ir_k3_m40_c24_s1-head_c64"),
    ],
)
def test_parse_accepts_any_field_order_and_reformats_canonically(given, canonical):
    assert format_arch(parse_arch(given)) == canonical


def test_parsed_record_fields():
    arch = parse_arch("stem_c8_s2-ir_k5_e3_c24_s2_se0.25_ahswish-ir_k3_m40_c24_s1-skip_c24-head_c32")
    assert (arch.stem, arch.stem_stride, arch.head) == (8, 2, 32)
    assert arch.blocks == (
        Block("ir", kernel=5, expansion=3.0, out=24, stride=2, se=0.25, act="hswish"),
        Block("ir", kernel=3, mid=40, out=24, stride=1),
        Block("skip", out=24),
    )


@pytest.mark.parametrize(
    "text, token, position, reason",
    [
        ("stem_c16_s1-ir_k4_e6_c24_s1-head_c8", "ir_k4_e6_c24_s1", 1, "kernel must be odd"),
        ("stem_c8_s1-ir_k3_e6_c8_s1-skip_c8-ir_k4_e6-head_c8", "ir_k4_e6", 3, "kernel must be odd, got 4"),
        ("stem_c16_s1-ir_k3_e6_c24_s1-ir_k3_e6_c24-head_c8", "ir_k3_e6_c24", 2, "missing field(s) s"),
        ("stem_c16_s1-ir_k3_e6_m3_c24_s1-head_c8", "ir_k3_e6_m3_c24_s1", 1, "exactly one of e"),
        ("stem_c16_s1-ir_k3_c24_s1-head_c8", "ir_k3_c24_s1", 1, "exactly one of e"),
        ("stem_c16_s1-ir_k3_e6_c24_s1_ax-head_c8", "ir_k3_e6_c24_s1_ax", 1, "activation"),
        ("stem_c16_s1-ir_k3_e6_c0_s1-head_c8", "ir_k3_e6_c0_s1", 1, "positive integer"),
        ("stem_c16_s1-ir_k3_e0_c8_s1-head_c8", "ir_k3_e0_c8_s1", 1, "expansion must be positive"),
        ("stem_c16_s1-ir_k3_e6_c8_s1_se1.5-head_c8", "ir_k3_e6_c8_s1_se1.5", 1, "se ratio"),
        ("stem_c16_s1-ir_k3_ex_c8_s1-head_c8", "ir_k3_ex_c8_s1", 1, "decimal number"),
        ("stem_c16_s1-ir_k3_e6_c8_s1_x4-head_c8", "ir_k3_e6_c8_s1_x4", 1, "unknown field"),
        ("stem_c16_s1-ir_k3_k5_e6_c8_s1-head_c8", "ir_k3_k5_e6_c8_s1", 1, "given twice"),
        ("stem_c16_s1-pool_k3-head_c8", "pool_k3", 1, "unknown layer kind"),
        ("stem_c16_s1-conv_k3-head_c8", "conv_k3", 1, "missing field(s) c, s"),
        ("stem_c16_s1-skip_c16_s2-head_c8", "skip_c16_s2", 1, "not allowed"),
        ("stem_c16_s1-stem_c16_s1-head_c8", "stem_c16_s1", 1, "stem must be the first"),
        ("ir_k3_e6_c8_s1-head_c8", "ir_k3_e6_c8_s1", 0, "stem must be the first"),
        ("stem_c16_s1-ir_k3_e6_c8_s1", "ir_k3_e6_c8_s1", 1, "head must be the last"),
        ("stem_c16_s1--head_c8", "", 1, "unknown layer kind"),
        ("stem_c16_s1-ir_k3_e6_c8_s-1-head_c8", "ir_k3_e6_c8_s", 1, "unknown field"),
    ],
)
def test_parse_errors_name_token_and_position(text, token, position, reason):
    with pytest.raises(ArchError) as info:
        parse_arch(text)
    message = str(info.value)
    assert f"bad token {token!r} at position {position}:" in message
    assert reason in message


@pytest.mark.parametrize("text", ["", "   ", "stem_c16_s1"])
def test_parse_rejects_degenerate_strings(text):
    with pytest.raises(ArchError):
        parse_arch(text)


def test_arch_errors_are_value_errors():
    # Callers outside nasflow can catch the usual ValueError.
    with pytest.raises(ValueError):
        parse_arch("nonsense")


def test_arch_hash():
    text = CANONICAL[2]
    digest = arch_hash(text)
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
    assert arch_hash(parse_arch(text)) == digest
    assert arch_hash(text.replace("e3", "e3.0")) == digest  # non-canonical spelling, same arch
    assert arch_hash(CANONICAL[1]) != digest


# ---------------------------------------------------------------- records


def test_block_validation():
    with pytest.raises(ArchError, match="odd"):
        Block("ir", kernel=2, expansion=6, out=8)
    with pytest.raises(ArchError, match="'skip' blocks have no field 'stride'"):
        Block("skip", out=8, stride=2)
    with pytest.raises(ArchError, match="kind"):
        Block("pool", out=8)
    with pytest.raises(ArchError, match="channels"):
        Block("ir", kernel=3, out=0)
    with pytest.raises(ArchError, match="positive integer"):
        Block("ir", kernel=3, mid=2.5, out=8)
    with pytest.raises(ArchError, match="stem channels"):
        Arch(stem=-1, stem_stride=1, blocks=(), head=8)


def test_records_normalise_so_equal_strings_mean_equal_records():
    assert Block("ir", kernel=3, expansion=6, out=8) == Block("ir", kernel=3, expansion=6.0, out=8)
    # An explicit mid overrides the ratio, exactly as the string (which drops the ratio) says.
    with_mid = Block("ir", kernel=3, expansion=6.0, mid=40, out=8)
    assert with_mid.expansion == 1.0
    arch = Arch(stem=8, stem_stride=1, blocks=[with_mid], head=16)
    assert isinstance(arch.blocks, tuple)
    assert parse_arch(format_arch(arch)) == arch
    assert hash(parse_arch(format_arch(arch))) == hash(arch)


def test_mid_channels():
    assert mid_channels(Block("ir", kernel=3, expansion=6, out=8), 16) == 96
    assert mid_channels(Block("ir", kernel=3, expansion=0.01, out=8), 16) == 1
    assert mid_channels(Block("ir", kernel=3, expansion=6, mid=7, out=8), 16) == 7


def test_validate_arch_checks_skip_channels():
    validate_arch(parse_arch("stem_c8_s1-skip_c8-ir_k3_e6_c12_s1-skip_c12-head_c8"), 3)
    bad = parse_arch("stem_c8_s1-ir_k3_e6_c12_s1-skip_c8-head_c8")
    with pytest.raises(ArchError, match=r"'skip_c8' at position 2: skip needs in == out channels"):
        validate_arch(bad, 3)
    with pytest.raises(ArchError):
        build_model(bad, 3, 10)


# ---------------------------------------------------------------- model


def test_build_model_structure_and_output():
    arch = parse_arch(VARIED)
    model = build_model(arch, 3, 7)
    assert isinstance(model, ArchNet) and model.arch == arch
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == len(arch.blocks)
    first, se_block, mid_block, skip, last = (model.blocks[i] for i in (0, 1, 2, 3, 4))
    assert first.expand is None and first.expand_bn is None and first.use_residual  # mid == in
    assert se_block.expand.out_channels == 24 and not se_block.use_residual
    assert se_block.dw.groups == 24 and se_block.dw.stride == (2, 2) and se_block.dw.padding == (2, 2)
    assert se_block.se.reduce.out_channels == 2  # int(8 * 0.25): SE width follows the block input
    assert se_block.se.expand.out_channels == 24 and se_block.project.out_channels == 12
    assert mid_block.mid == 20 and mid_block.use_residual and isinstance(mid_block.act, HardSwish)
    assert isinstance(skip, nn.Identity)
    assert last.dw.kernel_size == (7, 7) and last.se is None
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert model(torch.randn(1, 3, 9, 13)).shape == (1, 7)  # odd, non-square inputs also work


def test_residual_block_adds_its_input():
    arch = parse_arch("stem_c4_s1-ir_k3_e2_c4_s1-head_c4")
    model = build_model(arch, 1, 2).eval()
    block = model.blocks[0]
    nn.init.zeros_(block.project_bn.weight)  # branch outputs exactly zero
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_hard_sigmoid_and_swish_match_torch():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(hard_sigmoid(x), F.hardsigmoid(x))
    torch.testing.assert_close(HardSwish()(x), F.hardswish(x))


def test_eval_model_exports_to_plain_onnx():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build_model(parse_arch(VARIED), 1, 10).eval()
    x = torch.randn(1, 1, 8, 8)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], output_names=["y"], opset_version=13, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    plain = {"Conv", "Relu", "Add", "Mul", "Div", "Clip", "GlobalAveragePool", "Flatten", "Gemm", "Constant", "Identity"}
    assert {node.op_type for node in graph.node} <= plain
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)


# ---------------------------------------------------------------- counting


def _hooked_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs counted from the shapes that actually flow through every conv and linear layer."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("text", CANONICAL + [VARIED])
@pytest.mark.parametrize("in_channels, size", [(1, 8), (3, 11), (3, (9, 14))])
def test_count_macs_matches_hooked_count(text, in_channels, size):
    arch = parse_arch(text)
    model = build_model(arch, in_channels, 10)
    h, w = (size, size) if isinstance(size, int) else size
    assert count_macs(arch, in_channels, 10, size) == _hooked_macs(model, torch.randn(1, in_channels, h, w))


@pytest.mark.parametrize("text", CANONICAL + [VARIED])
def test_count_arch_params_matches_built_model(text):
    arch = parse_arch(text)
    assert count_arch_params(arch, 3, 10) == count_params(build_model(arch, 3, 10))


def test_block_shapes():
    shapes = block_shapes(parse_arch(VARIED), 1, 8)
    assert [s.in_channels for s in shapes] == [8, 8, 12, 12, 12]
    assert [s.in_size for s in shapes] == [(8, 8), (8, 8), (4, 4), (4, 4), (4, 4)]
    assert [s.out_size for s in shapes] == [(8, 8), (4, 4), (4, 4), (4, 4), (2, 2)]


# ---------------------------------------------------------------- layerwise space

SMALL = LayerwiseOptions(
    stem_channels=8,
    stages=[StageOptions(channels=8, layers=2, stride=1), StageOptions(channels=12, layers=2, stride=2)],
    kernels=[3, 5],
    expansions=[1.0, 3.0],
    se_ratios=[0.0, 0.25],
    head_channels=16,
)


def test_default_space_layout():
    space = LayerwiseSpace(LayerwiseOptions())
    assert space.num_layers == 5
    assert [len(c) for c in space.choices] == [6, 6, 7, 6, 7]
    assert space.size() == 6 * 6 * 7 * 6 * 7
    assert [c[0].stride for c in space.choices] == [1, 2, 1, 2, 1]
    assert [c[0].out for c in space.choices] == [16, 24, 24, 32, 32]
    for i in (0, 1, 3):  # first layer of a stage: carries stride/channel change, never skipped
        assert all(b.kind == "ir" for b in space.choices[i])
    for i in (2, 4):
        assert space.choices[i][-1] == Block("skip", out=space.choices[i][0].out)


def test_size_counts_distinct_archs():
    space = LayerwiseSpace(SMALL)
    genomes = list(itertools.product(*(range(len(c)) for c in space.choices)))
    assert len(genomes) == space.size() == 8 * 9 * 8 * 9
    assert len({format_arch(space.to_arch(g)) for g in genomes}) == space.size()


def test_repeated_config_values_do_not_inflate_the_space():
    config = SMALL.model_copy(update={"kernels": [3, 3], "expansions": [3.0, 3], "se_ratios": [0.0]})
    space = LayerwiseSpace(config)
    assert [len(c) for c in space.choices] == [1, 2, 1, 2]


def test_no_skip_when_disabled():
    space = LayerwiseSpace(SMALL.model_copy(update={"allow_skip": False}))
    assert all(b.kind == "ir" for choices in space.choices for b in choices)


def test_every_genome_builds():
    space = LayerwiseSpace(SMALL)
    rng = random.Random(0)
    for _ in range(5):
        genome = space.sample(rng)
        model = build_model(space.to_arch(genome), 1, 10)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_sample_is_uniform_and_seeded():
    space = LayerwiseSpace(SMALL)
    samples = [space.sample(random.Random(7)) for _ in range(3)]
    assert samples[0] == samples[1] == samples[2]
    rng = random.Random(1)
    counts = np.zeros(len(space.choices[1]))
    for _ in range(3000):
        genome = space.sample(rng)
        space.validate_genome(genome)
        counts[genome[1]] += 1
    assert counts.min() > 0.7 * counts.mean()


def test_mutate_changes_exactly_one_layer():
    space = LayerwiseSpace(SMALL)
    rng = random.Random(3)
    genome = space.sample(rng)
    changed_layers = set()
    for _ in range(200):
        child = space.mutate(genome, rng)
        diff = [i for i, (a, b) in enumerate(zip(genome, child)) if a != b]
        assert len(diff) == 1
        changed_layers.add(diff[0])
        space.validate_genome(child)
    assert changed_layers == set(range(space.num_layers))


def test_mutate_skips_layers_without_alternatives():
    config = SMALL.model_copy(update={"kernels": [3], "expansions": [3.0], "se_ratios": [0.0]})
    space = LayerwiseSpace(config)  # only non-first layers have a choice (ir or skip)
    rng = random.Random(0)
    for _ in range(50):
        child = space.mutate((0, 0, 0, 0), rng)
        assert child in {(0, 1, 0, 0), (0, 0, 0, 1)}
    frozen = LayerwiseSpace(config.model_copy(update={"allow_skip": False}))
    assert frozen.size() == 1
    assert frozen.mutate((0, 0, 0, 0), rng) == (0, 0, 0, 0)


def test_to_arch_and_from_arch_are_inverse():
    space = LayerwiseSpace(SMALL)
    rng = random.Random(5)
    for _ in range(20):
        genome = space.sample(rng)
        arch = space.to_arch(genome)
        assert (arch.stem, arch.stem_stride, arch.head) == (8, 1, 16)
        assert space.from_arch(arch) == genome
        assert space.from_arch(format_arch(arch)) == genome
    assert space.to_arch(np.array(genome)) == space.to_arch(genome)  # numpy indices are fine too


@pytest.mark.parametrize("genome", [(0, 0, 0), (0, 0, 0, 0, 0), (0, 9, 0, 0), (0, -1, 0, 0), (0, 0.5, 0, 0)])
def test_to_arch_rejects_bad_genomes(genome):
    with pytest.raises(ArchError):
        LayerwiseSpace(SMALL).to_arch(genome)


@pytest.mark.parametrize(
    "text",
    [
        "stem_c8_s1-ir_k3_e1_c8_s1-ir_k3_e1_c8_s1-ir_k3_e1_c12_s2-head_c16",  # too few layers
        "stem_c8_s1-ir_k3_e1_c8_s1-ir_k3_e1_c8_s1-ir_k3_e1_c12_s2-ir_k3_e1_c12_s1-head_c32",  # head
        "stem_c8_s1-ir_k3_e1_c8_s1-ir_k3_e6_c8_s1-ir_k3_e1_c12_s2-ir_k3_e1_c12_s1-head_c16",  # e6
        "stem_c8_s1-ir_k3_m8_c8_s1-ir_k3_e1_c8_s1-ir_k3_e1_c12_s2-ir_k3_e1_c12_s1-head_c16",  # mid
        "stem_c8_s1-ir_k3_e1_c8_s1-skip_c8-ir_k3_e1_c12_s2-ir_k3_e1_c12_s1_ahswish-head_c16",  # act
    ],
)
def test_from_arch_rejects_archs_outside_the_space(text):
    with pytest.raises(ArchError):
        LayerwiseSpace(SMALL).from_arch(text)
