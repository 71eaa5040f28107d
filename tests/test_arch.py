"""The architecture package: every block kind's grammar, counting, model, LUT operator and Edge TPU mapping."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nasflow.arch import (
    ACTIVATIONS,
    KINDS,
    Arch,
    Block,
    ConvBlock,
    DSBlock,
    FusedIRBlock,
    IRBlock,
    SkipBlock,
    arch_hash,
    count_arch_params,
    count_macs,
    format_arch,
    parse_arch,
    validate_arch,
)
from nasflow.arch.builder import build_model, count_params
from nasflow.arch.fields import FIELDS, split_field
from nasflow.arch.layers import ChannelShuffle, DepthwiseSeparable, FusedInvertedResidual, InvertedResidual
from nasflow.arch.operators import arch_operators
from nasflow.spaces.layerwise import LayerwiseOptions, StageOptions
from nasflow.edgetpu import _layers_fx, layers_from_arch, op_compatibility
from nasflow.errors import ArchError
from nasflow.spaces.layerwise import LayerwiseSpace

from test_space import _hooked_macs

# ---------------------------------------------------------------- strategies

acts = st.sampled_from(ACTIVATIONS)
kernels = st.sampled_from([1, 3, 5, 7])
widths = st.integers(1, 48)
strides = st.integers(1, 3)
# Decimal text of these round-trips exactly; the grammar writes no exponent.
ratios = st.floats(min_value=0.0625, max_value=8.0, allow_nan=False).map(lambda x: round(x, 4)).filter(lambda x: x > 0)
se_ratios = st.floats(min_value=0.0, max_value=1.0).map(lambda x: round(x, 3))


@st.composite
def se_fields(draw) -> dict:
    choice = draw(st.sampled_from(["none", "ratio", "squeeze"]))
    if choice == "ratio":
        return {"se": draw(se_ratios)}
    if choice == "squeeze":
        return {"squeeze": draw(widths)}
    return {}


@st.composite
def expansion_fields(draw) -> dict:
    return {"mid": draw(widths)} if draw(st.booleans()) else {"expansion": draw(ratios)}


@st.composite
def any_block(draw) -> Block:
    """A valid record of any kind (its input width is not known yet)."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    common = {"kernel": draw(kernels), "stride": draw(strides), "act": draw(acts), "shortcut": draw(st.booleans())}
    if kind == "ir":
        groups = draw(st.sampled_from([1, 1, 2, 4]))
        out = draw(widths) * groups
        width = draw(expansion_fields())
        if groups > 1 and "mid" in width:
            width = {"mid": width["mid"] * groups}
        return IRBlock(out=out, groups=groups, **common, **width, **draw(se_fields()))
    if kind == "fir":
        return FusedIRBlock(out=draw(widths), **common, **draw(expansion_fields()), **draw(se_fields()))
    if kind == "ds":
        return DSBlock(out=draw(widths), **common, **draw(se_fields()))
    if kind == "conv":
        return ConvBlock(out=draw(widths), **common)
    return SkipBlock(out=draw(widths))


@st.composite
def residual_arch(draw) -> Arch:
    """An architecture of stride-1 blocks of every convolutional kind, most keeping the width (so a
    residual is possible), each with its ``r`` flag drawn."""
    stem = draw(st.integers(2, 12))
    channels, blocks = stem, []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["ir", "fir", "ds", "conv"]))
        out = channels if draw(st.integers(0, 3)) else draw(st.integers(2, 12))
        common = {"kernel": draw(st.sampled_from([1, 3])), "out": out, "stride": 1, "shortcut": draw(st.booleans())}
        extra = {"expansion": draw(st.sampled_from([1, 2]))} if kind in ("ir", "fir") else {}
        if kind != "conv":
            extra.update(draw(se_fields()))
        blocks.append(Block(kind, **common, **extra))
        channels = out
    return Arch(stem=stem, stem_stride=1, blocks=tuple(blocks), head=8)


@st.composite
def any_arch(draw, max_blocks: int = 6) -> Arch:
    """A record that parses and formats, not necessarily one that fits an input (see valid_arch)."""
    head = draw(st.none() | widths)
    fc = draw(st.none() | widths)
    head_act = draw(acts) if head or fc else "relu"
    return Arch(
        stem=draw(widths), stem_stride=draw(strides), stem_act=draw(acts),
        blocks=tuple(draw(st.lists(any_block(), max_size=max_blocks))),
        head=head, head_fc=fc, head_act=head_act,
    )


@st.composite
def valid_arch(draw, max_blocks: int = 5) -> Arch:
    """A small architecture whose every block accepts its input: skips keep widths, groups divide them."""
    stem = draw(st.integers(2, 16))
    channels, blocks = stem, []
    for _ in range(draw(st.integers(0, max_blocks))):
        block = draw(any_block())
        if isinstance(block, SkipBlock):
            block = SkipBlock(out=channels)
        elif isinstance(block, IRBlock) and block.groups > 1:
            g = block.groups
            if channels % g or block.mid_channels(channels) % g:  # the block's own rounding (at least 1)
                block = IRBlock(kernel=block.kernel, mid=g * 3, out=block.out, stride=block.stride, groups=g) \
                    if channels % g == 0 else IRBlock(kernel=block.kernel, expansion=2, out=block.out, stride=1)
        blocks.append(block)
        channels = block.out
    arch = draw(any_arch(max_blocks=0))
    arch = Arch(stem=stem, stem_stride=draw(st.integers(1, 2)), stem_act=arch.stem_act, blocks=tuple(blocks),
                head=arch.head, head_fc=arch.head_fc, head_act=arch.head_act)
    validate_arch(arch, 3)
    return arch


# ---------------------------------------------------------------- the package stays torch-free


def test_grammar_counting_and_zoo_import_without_torch():
    code = (
        "import sys; import nasflow.arch, nasflow.arch.grammar, nasflow.arch.counting, nasflow.arch.zoo, "
        "nasflow.arch.operators, nasflow.edgetpu; from nasflow.arch import zoo_arch, count_macs, layer_table; "
        "a = zoo_arch('mobilenet_v3_large'); count_macs(a, 3, 1000, 224); layer_table(a, 3, 1000, 224); "
        "nasflow.edgetpu.estimate_arch(a); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_torch_names_load_on_first_use():
    import nasflow.arch as arch_package

    assert arch_package.build_model is build_model
    assert arch_package.InvertedResidual is InvertedResidual
    with pytest.raises(AttributeError):
        arch_package.no_such_name  # noqa: B018


# ---------------------------------------------------------------- identities stored in registries

# Written by the grammar before the block kinds existed (nasflow.space at e718a5c): these
# strings and hashes are candidates' identities in users' registries and must never change.
FROZEN = {
    "stem_c16_s1-head_c64": "00bcd755d67b439b",
    "stem_c8_s2-ir_k5_e3_c24_s1_se0.25-ir_k3_m40_c24_s1-skip_c24-head_c32": "d97580cccab0565a",
    "stem_c16_s1-ir_k3_e6_c24_s1_ahswish-ir_k7_e2.5_c24_s1_se0.5_ahswish-head_c64": "facff32c495f73f1",
    "stem_c4_s1-ir_k1_e1_c4_s1-ir_k3_e0.00001_c4_s3-head_c1": "1e4d1072a0242d6f",
    "stem_c8_s1-ir_k3_m20_c8_s1_se0.25-ir_k5_m6_c12_s2-ir_k3_m34_c12_s1_ahswish-ir_k3_e1_c12_s1-ir_k3_m48_c12_s1"
    "-head_c14": "7f41a9c6c988f281",
}


@pytest.mark.parametrize("text, digest", FROZEN.items())
def test_strings_written_before_the_kinds_keep_their_hash(text, digest):
    assert format_arch(parse_arch(text)) == text
    assert arch_hash(text) == digest


def _space_digest(config: LayerwiseOptions, step: int = 1) -> tuple[int, str]:
    space = LayerwiseSpace(config)
    genomes = itertools.islice(itertools.product(*(range(len(c)) for c in space.choices)), 0, None, step)
    lines = []
    for genome in genomes:
        arch = space.to_arch(genome)
        text = format_arch(arch)
        assert parse_arch(text) == arch
        lines.append(f"{text} {arch_hash(arch)}")
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_every_string_of_the_default_space_keeps_its_hash():
    # Digest of "canonical string, hash" of all 10,584 genomes, computed with the pre-kinds grammar.
    assert _space_digest(LayerwiseOptions()) == (10584, "5d5df85ef43eed38ca6d7edd405123b4c5d3e97fc101bdb4c797b57dc591a9b8")


def test_a_wide_space_sample_keeps_its_hashes():
    # Every 97th genome of a space with SE ratios, fractional expansions, 7x7 kernels, stem stride 2.
    wide = LayerwiseOptions(
        stem_channels=8, stem_stride=2,
        stages=[StageOptions(channels=8, layers=2, stride=1), StageOptions(channels=12, layers=2, stride=2)],
        kernels=[3, 5, 7], expansions=[1.0, 2.5, 6.0], se_ratios=[0.0, 0.25, 0.5], head_channels=16,
    )
    assert _space_digest(wide, step=97) == (5893, "17658f242f1d615b221fec797afe159bfac55d91242bb66940de28f826e86777")


# ---------------------------------------------------------------- grammar over all kinds


@given(any_arch())
@settings(deadline=None)  # a loaded shared machine must not fail a grammar test on time
def test_format_parse_round_trip(arch):
    text = format_arch(arch)
    assert parse_arch(text) == arch
    assert format_arch(parse_arch(text)) == text
    assert arch_hash(parse_arch(text)) == arch_hash(arch)


@given(any_arch(), st.randoms(use_true_random=False))
@settings(deadline=None)
def test_any_field_order_and_explicit_defaults_parse_to_the_same_record(arch, rng):
    defaults = {"stem": ["arelu"], "head": [], "ir": ["arelu", "g1", "se0", "r1"], "fir": ["arelu", "se0", "r1"],
                "ds": ["arelu", "se0", "r0"], "conv": ["arelu", "r0"], "skip": []}
    tokens = []
    for token in format_arch(arch).split("-"):
        kind, *fields = token.split("_")
        keys = {split_field(f)[0] for f in fields}
        exclusive = {"se": "sq", "sq": "se"}
        extra = [d for d in defaults[kind] if split_field(d)[0] not in keys and exclusive.get(split_field(d)[0]) not in keys]
        fields += extra[: rng.randrange(len(extra) + 1)]
        rng.shuffle(fields)
        tokens.append("_".join([kind, *fields]))
    assert parse_arch("-".join(tokens)) == arch


def _valid_value(key: str) -> str:
    return {"k": "3", "e": "2", "m": "8", "c": "8", "s": "1", "g": "2", "se": "0.5", "sq": "4", "f": "16", "a": "relu6",
            "r": "1"}[key]


def _layer_rules(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if kind == "stem":
        return ("c", "s", "a"), ("c", "s")
    if kind == "head":
        return ("c", "f", "a"), ()
    return KINDS[kind].ALLOWED, KINDS[kind].REQUIRED


def _corrupt(token: str, how: str, rng) -> tuple[str, str] | None:
    """A broken version of a layer token and the reason its error must give (None: not applicable)."""
    kind, *fields = token.split("_")
    allowed, required = _layer_rules(kind)
    if how == "unknown field":
        return "_".join([kind, *fields, "x4"]), "unknown field 'x4'"
    if how == "twice" and fields:
        field = rng.choice(fields)
        return "_".join([kind, *fields, field]), "given twice"
    if how == "not allowed":
        banned = [key for key in FIELDS if key not in allowed]
        if banned:
            key = rng.choice(banned)
            return "_".join([kind, *fields, key + _valid_value(key)]), f"field {key!r} is not allowed in a {kind!r} layer"
    if how == "missing":
        present = [f for f in fields if any(f.startswith(k) and not f.startswith(("se", "sq")) for k in required)]
        if present:
            dropped = rng.choice(present)
            return "_".join([kind, *(f for f in fields if f != dropped)]), "missing field(s)"
    if how == "kind" and kind not in ("stem", "head"):
        return "_".join(["pool", *fields]), "unknown layer kind 'pool'"
    if how == "even kernel" and "k" in allowed and any(f.startswith("k") for f in fields):
        return "_".join([kind, *(("k4" if f.startswith("k") else f) for f in fields)]), "kernel must be odd, got 4"
    if how == "zero channels" and any(f.startswith("c") for f in fields):
        return "_".join([kind, *(("c0" if f.startswith("c") else f) for f in fields)]), "channels must be a positive integer"
    if how == "bad activation" and "a" in allowed:
        return "_".join([kind, *(f for f in fields if not f.startswith("a")), "agelu"]), "activation must be one of"
    if how == "bad residual" and "r" in allowed:
        value = rng.choice(["2", "01", "yes"])
        return "_".join([kind, *(f for f in fields if not f.startswith("r")), "r" + value]), "field 'r' needs 0 or 1"
    return None


@given(
    any_arch(max_blocks=4),
    st.sampled_from(["unknown field", "twice", "not allowed", "missing", "kind", "even kernel", "zero channels",
                     "bad activation", "bad residual"]),
    st.randoms(use_true_random=False),
)
@settings(deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_every_bad_token_names_itself_and_its_position(arch, how, rng):
    tokens = format_arch(arch).split("-")
    position = rng.randrange(len(tokens))
    broken = _corrupt(tokens[position], how, rng)
    if broken is None:
        return
    bad, reason = broken
    tokens[position] = bad
    with pytest.raises(ArchError) as info:
        parse_arch("-".join(tokens))
    message = str(info.value)
    assert message.startswith(f"bad token {bad!r} at position {position}: "), message
    assert reason in message, message


@pytest.mark.parametrize(
    "text, token, reason",
    [
        ("stem_c8_s1-ir_k3_e6_c8_s1_se0.25_sq4-head_c8", "ir_k3_e6_c8_s1_se0.25_sq4", "at most one of se<se ratio> or sq"),
        ("stem_c8_s1-ir_k3_e6_c9_s1_g2-head_c8", "ir_k3_e6_c9_s1_g2", "output channels 9 is not divisible by groups 2"),
        ("stem_c8_s1-fir_k3_e6_c8_s1_g2-head_c8", "fir_k3_e6_c8_s1_g2", "field 'g' is not allowed in a 'fir' layer"),
        ("stem_c8_s1-ds_k3_e6_c8_s1-head_c8", "ds_k3_e6_c8_s1", "field 'e' is not allowed in a 'ds' layer"),
        ("stem_c8_s1-conv_k3_c8_s1_se0.25-head_c8", "conv_k3_c8_s1_se0.25", "not allowed in a 'conv' layer"),
        ("stem_c8_s1-head_ahswish", "head_ahswish", "no activation to set"),
        ("stem_c8_s1-head_c0", "head_c0", "positive integer"),
        ("stem_c8_s1-head_k3", "head_k3", "field 'k' is not allowed in a 'head' layer"),
        ("stem_c8_s1_aswish_k3-head", "stem_c8_s1_aswish_k3", "field 'k' is not allowed in a 'stem' layer"),
    ],
)
def test_new_fields_are_checked(text, token, reason):
    with pytest.raises(ArchError) as info:
        parse_arch(text)
    assert f"bad token {token!r}" in str(info.value) and reason in str(info.value)


def test_block_records_build_by_kind_name_and_reject_foreign_fields():
    assert Block("fir", kernel=3, expansion=4, out=8) == FusedIRBlock(kernel=3, expansion=4, out=8)
    assert Block("conv", kernel=1, out=8).token() == "conv_k1_c8_s1"
    with pytest.raises(ArchError, match="'ds' blocks have no field 'expansion'"):
        Block("ds", expansion=2, out=8)
    with pytest.raises(ArchError, match="block kind must be one of"):
        Block("pool", out=8)


def test_grouped_blocks_check_their_input_width():
    arch = parse_arch("stem_c9_s1-ir_k3_e2_c8_s1_g2-head_c8")
    with pytest.raises(ArchError, match=r"'ir_k3_e2_c8_s1_g2' at position 1: grouped ir: input channels 9"):
        validate_arch(arch, 3)
    with pytest.raises(ArchError, match="mid channels 9"):
        validate_arch(parse_arch("stem_c6_s1-ir_k3_e1.5_c8_s1_g2-head_c8"), 3)


def test_head_forms():
    plain = parse_arch("stem_c8_s1-ds_k3_c16_s2-head")
    assert (plain.head, plain.head_fc, plain.features) == (None, None, 16)
    v3 = parse_arch("stem_c8_s1_ahswish-head_c32_f64_ahswish")
    assert (v3.head, v3.head_fc, v3.head_act, v3.features) == (32, 64, "hswish", 64)
    assert format_arch(parse_arch("stem_c8_s1-head_arelu")) == "stem_c8_s1-head"
    model = build_model(plain, 3, 5)
    assert model.head_conv is None and model.head_fc is None and model.classifier.in_features == 16
    model = build_model(v3, 3, 5)
    assert model.head_fc.in_features == 32 and model.classifier.in_features == 64


# ---------------------------------------------------------------- models and counts of every kind

KINDS_ARCH = (
    "stem_c8_s2_ahswish-conv_k3_c12_s1_arelu6-ds_k5_c16_s2_se0.25_aswish-fir_k3_e4_c16_s1_sq6"
    "-ir_k3_e1_c16_s1_g2-ir_k5_m24_c24_s2_g4_ahswish-skip_c24-fir_k5_m40_c32_s1_aswish-head_c48_f64_ahswish"
)


def test_every_kind_builds_the_module_its_record_describes():
    arch = parse_arch(KINDS_ARCH)
    model = build_model(arch, 3, 10)
    conv, ds, fir, grouped, grouped4, skip, fir2 = model.blocks
    assert conv.conv.kernel_size == (3, 3) and isinstance(conv.act, nn.ReLU6)
    assert isinstance(ds, DepthwiseSeparable) and ds.dw.groups == 12 and ds.dw.stride == (2, 2)
    assert ds.se.reduce.out_channels == 3 and isinstance(ds.act, nn.SiLU)
    assert isinstance(fir, FusedInvertedResidual) and fir.expand.kernel_size == (3, 3) and fir.expand.out_channels == 64
    assert fir.se.reduce.out_channels == 6 and fir.use_residual
    # g2 at e1 keeps its (grouped) expand conv; the shuffle sits between it and the depthwise conv.
    assert grouped.expand.groups == 2 and grouped.project.groups == 2 and isinstance(grouped.shuffle, ChannelShuffle)
    assert grouped.use_residual and grouped4.expand.groups == 4 and not grouped4.use_residual
    assert isinstance(skip, nn.Identity) and not fir2.use_residual
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


# ---------------------------------------------------------------- the residual field (r0 / r1)


def test_residual_field_is_written_only_against_the_kinds_default():
    assert DSBlock(kernel=3, out=8).token() == "ds_k3_c8_s1"
    assert DSBlock(kernel=3, out=8, shortcut=True).token() == "ds_k3_c8_s1_r1"
    assert ConvBlock(kernel=3, out=8, act="relu6", shortcut=True).token() == "conv_k3_c8_s1_arelu6_r1"
    assert IRBlock(kernel=3, expansion=6, out=8).token() == "ir_k3_e6_c8_s1"
    assert IRBlock(kernel=3, expansion=6, out=8, se=0.25, shortcut=False).token() == "ir_k3_e6_c8_s1_se0.25_r0"
    assert FusedIRBlock(kernel=3, expansion=4, out=8, shortcut=False).token() == "fir_k3_e4_c8_s1_r0"
    # Explicit defaults parse to the default record; the flag is a kind's own, skip has none.
    assert parse_arch("stem_c8_s1-ir_r1_k3_e6_c8_s1-ds_k3_c8_s1_r0-head") == parse_arch("stem_c8_s1-ir_k3_e6_c8_s1-ds_k3_c8_s1-head")
    with pytest.raises(ArchError, match="residual must be 0 or 1, got 2"):
        DSBlock(kernel=3, out=8, shortcut=2)


@given(residual_arch(), st.integers(3, 6))
@settings(max_examples=30, deadline=None)
def test_residual_flag_adds_the_input_exactly_where_the_shape_allows(arch, size):
    """Each block built with and without its shortcut, same weights: they differ by exactly the input
    where stride is 1 and in == out, and not at all elsewhere; the Edge TPU mapping has one add per
    residual and MorphNet may remove a block only when it is residual."""
    channels, residuals = arch.stem, 0
    for block in arch.blocks:
        x = torch.randn(2, channels, size, size)
        on, off = dataclasses.replace(block, shortcut=True), dataclasses.replace(block, shortcut=False)
        torch.manual_seed(0)
        with_add = on.module(channels).eval()
        without = off.module(channels).eval()
        without.load_state_dict(with_add.state_dict())
        with torch.no_grad():
            diff = with_add(x) - without(x)
        possible = block.stride == 1 and channels == block.out
        torch.testing.assert_close(diff, x if possible else torch.zeros_like(diff))
        assert block.residual(channels) == (possible and block.shortcut)
        assert block.module(channels).use_residual == block.residual(channels)
        for group in block.prunable(channels):
            assert group.can_vanish == block.residual(channels)
        residuals += block.residual(channels)
        channels = block.out
    adds = [layer for layer in layers_from_arch(arch, 3, size, 10) if layer.op == "add"]
    assert len(adds) == residuals
    assert parse_arch(format_arch(arch)) == arch


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def _norm_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


@given(valid_arch(), st.integers(5, 12))
@settings(max_examples=25, deadline=None)
def test_counts_edgetpu_layers_and_lut_operators_agree_with_the_built_model(arch, size):
    model = build_model(arch, 3, 10).eval()
    x = torch.zeros(1, 3, size, size)
    macs = count_macs(arch, 3, 10, size)
    assert macs == _hooked_macs(model, x)
    assert count_arch_params(arch, 3, 10) == count_params(model)
    assert count_arch_params(arch, 3, 10, batchnorm=False) == count_params(model) - _norm_params(model)
    layers = layers_from_arch(arch, 3, size, 10)
    assert sum(layer.macs for layer in layers) == macs
    assert sum(layer.params for layer in layers) >= count_arch_params(arch, 3, 10, batchnorm=False)
    with torch.no_grad():
        traced = _layers_fx(model, x)
    assert [(layer.op, layer.macs) for layer in traced if layer.macs] == [(layer.op, layer.macs) for layer in layers if layer.macs]
    ops = arch_operators(arch, 3, 10, size)
    assert sum(op.macs for op in ops) == macs
    with torch.no_grad():
        y = x
        for op in ops:
            assert tuple(y.shape) == op.input_shape, op.key
            y = op.module().eval()(y)
        assert y.shape == (1, 10)


def test_new_kinds_export_to_plain_onnx():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build_model(parse_arch(KINDS_ARCH), 3, 10).eval()
    x = torch.randn(1, 3, 16, 16)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], output_names=["y"], opset_version=13, dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert {"Reshape", "Transpose", "Sigmoid", "Clip"} <= ops  # shuffle, swish, relu6 / hard-sigmoid
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)


def test_lut_keys_and_families_come_from_the_kinds():
    arch = parse_arch(KINDS_ARCH)
    ops = arch_operators(arch, 3, 10, 16)
    assert [op.key for op in ops] == [
        "stem_c8_s2_ahswish@3", "conv_k3_c12_s1_arelu6@8", "ds_k5_c16_s2_se0.25_aswish@12", "fir_k3_e4_c16_s1_sq6@16",
        "ir_k3_e1_c16_s1_g2@16", "ir_k5_m24_c24_s2_g4_ahswish@16", "fir_k5_m40_c32_s1_aswish@24",
        "head_c48_f64_ahswish_n10@32",
    ]
    assert [op.family for op in ops] == ["stem", "dense", "depthwise", "dense", "dense", "dense", "dense", "head"]
    assert arch_operators(parse_arch("stem_c8_s1-ds_k3_c8_s1-head"), 1, 4, 8)[-1].key == "head_n4@8"


# ---------------------------------------------------------------- Edge TPU mapping per kind


def test_edgetpu_compatibility_of_the_new_kinds():
    found = op_compatibility(parse_arch(KINDS_ARCH))
    fallbacks = {(i.position, i.op) for i in found if i.severity == "cpu_fallback"}
    assert fallbacks == {
        (0, "hswish"), (2, "swish"), (2, "se"), (3, "se"), (4, "grouped_conv"), (4, "channel_shuffle"),
        (5, "grouped_conv"), (5, "channel_shuffle"), (5, "hswish"), (7, "swish"), (8, "hswish"),
    }
    slow = {(i.position, i.op) for i in found if i.severity == "slow"}
    assert slow == {(2, "depthwise5x5"), (5, "depthwise5x5")}  # fir's 5x5 is a dense conv: no note
    assert all(i.token == format_arch(parse_arch(KINDS_ARCH)).split("-")[i.position] for i in found)
    edge = "stem_c8_s2-fir_k3_e4_c16_s1-fir_k3_e8_c24_s2-ir_k3_e6_c24_s1-ds_k3_c32_s1_arelu6-conv_k1_c40_s1-head_c64"
    assert op_compatibility(parse_arch(edge)) == []


def test_counting_json_row_table():
    from nasflow.arch import layer_table

    rows = layer_table(parse_arch(KINDS_ARCH), 3, 10, 16)
    assert [r["kind"] for r in rows] == ["stem", "conv", "ds", "fir", "ir", "ir", "skip", "fir", "head"]
    assert sum(r["macs"] for r in rows) == count_macs(parse_arch(KINDS_ARCH), 3, 10, 16)
    assert rows[2]["out_shape"] == [16, 4, 4] and json.dumps(rows)
