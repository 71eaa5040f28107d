"""The `mnasnet` space: skeleton and strides, decisions, to_arch / from_arch, exact size, LUT operators, problems."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from nasflow.arch import Block, count_arch_params, format_arch, zoo_arch
from nasflow.arch.builder import build_model, count_params
from nasflow.arch.operators import arch_operators
from nasflow.arch.zoo import make_divisible
from nasflow.errors import ArchError, PluginError, SpecError
from nasflow.plugin_api import Geometry
from nasflow.plugins import get_plugins
from nasflow.spaces import known_geometry
from nasflow.spaces.mnasnet import MnasNetOptions, MnasNetSpace, StageOptions
from nasflow.spec import build_space, load_spec, parse_spec

IMAGENET = Geometry(3, 1000, 224)
CIFAR = Geometry(3, 10, 32)
DIGITS = Geometry(1, 10, 8)
ROOT = Path(__file__).parent.parent


def _space(geometry=DIGITS, **options) -> MnasNetSpace:
    return MnasNetSpace(MnasNetOptions(**options), geometry)


def _all_genomes(space: MnasNetSpace):
    return itertools.product(*(range(len(d.choices)) for d in space.decisions))


def _lut_keys(ops) -> set:
    return {op.lut_key for op in ops if op.kind != "null"}


# Small option sets that the tests enumerate genome by genome.
# AMBIGUOUS: equal widths meet at stride-1 boundaries, so identical stages can trade layers, and
# expansions are ignored by `ds` stages: many genomes per architecture.
AMBIGUOUS = dict(
    stem_channels=8, stem_stride=1, head_channels=16, strides="skeleton",
    stages=[StageOptions(channels=8, layers=1), StageOptions(channels=8, layers=2), StageOptions(channels=16, layers=1, stride=2)],
    kinds=["ds", "ir"], kernels=[3], expansions=[1, 3], se_ratios=[0], width_factors=[1.0],
)
# WIDTHS: widths vary per stage, and stage 1 at 1.5x meets stage 2 at 1.0x (12 channels, stride 1).
WIDTHS = dict(
    stem_channels=8, stem_stride=1, head_channels=16, strides="skeleton", width_divisor=4,
    stages=[StageOptions(channels=8, layers=1), StageOptions(channels=12, layers=1), StageOptions(channels=16, layers=1, stride=2)],
    kinds=["conv", "ir"], kernels=[3], expansions=[6], se_ratios=[0], layer_deltas=[0, 1], width_factors=[1.0, 1.5],
)
# KINDS: one stage of every kind with every decision open: conv ignores expansion and SE, ds the expansion.
KINDS = dict(
    stem_channels=8, stem_stride=1, head_channels=16, strides="skeleton",
    stages=[StageOptions(channels=8, layers=2)],
    kinds=["conv", "ds", "ir", "fir"], kernels=[3, 5], expansions=[1, 3], layer_deltas=[-1, 0], width_factors=[1.0],
)


# ---------------------------------------------------------------- skeleton, strides, decisions


def test_is_a_builtin_space_plugin():
    info = get_plugins().get("space", "mnasnet")
    assert info.cls is MnasNetSpace and info.package == "nasflow"
    assert MnasNetSpace().supernet() is None


def test_default_skeleton_is_mnasnet_a1():
    a1 = zoo_arch("mnasnet_a1")
    space = _space(IMAGENET)
    cfg = space.options
    assert (cfg.stem_channels, cfg.stem_stride, cfg.head_channels) == (a1.stem, a1.stem_stride, a1.head) == (32, 2, 1280)
    assert [(s.channels, s.layers, s.stride) for s in cfg.stages] == [
        (16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 4, 2), (112, 2, 1), (160, 3, 2), (320, 1, 1)
    ]
    # MnasNet-A1 itself is one architecture of the space at 224x224, and from_arch finds it.
    genome = space.from_arch(a1)
    assert space.to_arch(genome) == a1
    described = space.describe(genome)
    assert described["stage3.kind"] == "ir" and described["stage3.kernel"] == "5" and described["stage3.se"] == "0.25"


def test_decisions_are_named_per_stage_with_deduplicated_choices():
    space = _space(IMAGENET)
    assert len(space.decisions) == 7 * 7
    assert [d.name for d in space.decisions[:7]] == [
        "stage1.kind", "stage1.kernel", "stage1.expansion", "stage1.se", "stage1.skip", "stage1.layers", "stage1.width"
    ]
    by_name = {d.name: d.choices for d in space.decisions}
    assert by_name["stage1.kind"] == ("conv", "ds", "ir")
    assert by_name["stage1.expansion"] == ("1", "3", "6") and by_name["stage1.se"] == ("0", "0.25")
    assert by_name["stage1.skip"] == ("identity", "none")
    # One layer -1 is clamped to 1; 16 x 0.75 rounds to 16 as 16 x 1.0 does (MnasNet's round_filters).
    assert by_name["stage1.layers"] == ("1", "2") and by_name["stage4.layers"] == ("3", "4", "5")
    for stage, channels in zip(range(1, 8), (16, 24, 40, 80, 112, 160, 320)):
        expected = tuple(dict.fromkeys(str(make_divisible(channels * f)) for f in (0.75, 1.0, 1.25)))
        assert by_name[f"stage{stage}.width"] == expected
    assert by_name["stage1.width"] == ("16", "24") and by_name["stage4.width"] == ("64", "80", "104")


@pytest.mark.parametrize(
    "geometry, rule, stem_stride, strides, final",
    [
        (IMAGENET, "skeleton", 2, (1, 2, 2, 2, 1, 2, 1), (7, 7)),
        (Geometry(3, 10, 128), "skeleton", 2, (1, 2, 2, 2, 1, 2, 1), (4, 4)),
        (Geometry(3, 10, 96), "cifar", 1, (1, 1, 2, 2, 1, 2, 1), (12, 12)),
        (CIFAR, "cifar", 1, (1, 1, 2, 2, 1, 2, 1), (4, 4)),
        (DIGITS, "cifar", 1, (1, 1, 2, 2, 1, 2, 1), (1, 1)),
    ],
)
def test_auto_strides_follow_the_input_size(geometry, rule, stem_stride, strides, final):
    space = _space(geometry)
    assert (space.stride_rule, space.stem_stride, tuple(s.stride for s in space.stages)) == (rule, stem_stride, strides)
    assert space.stages[-1].out_size == final and space.problems() == []
    arch = space.to_arch(space.sample(random.Random(0)))
    assert arch.stem_stride == stem_stride
    assert [b.stride for b in arch.blocks if b.stride > 1] == [2] * strides.count(2)
    (note,) = space.notes()
    assert f"auto {'kept' if rule == 'skeleton' else 'took'} the" in note and "x".join(map(str, geometry.image_size)) in note


def test_explicit_strides_are_kept_and_noted_nowhere():
    assert _space(IMAGENET, strides="cifar").stride_rule == "cifar"
    space = _space(CIFAR, strides="skeleton")
    assert space.stem_stride == 2 and space.stages[-1].out_size == (1, 1) and space.notes() == []


# ---------------------------------------------------------------- to_arch / from_arch


def test_all_layers_of_a_stage_share_its_choice_and_the_first_carries_the_stride():
    space = _space(CIFAR)
    rng = random.Random(1)
    for _ in range(30):
        genome = space.sample(rng)
        described = space.describe(genome)
        blocks = list(space.to_arch(genome).blocks)
        channels = space.options.stem_channels
        for stage in space.stages:
            n = int(described[f"stage{stage.number}.layers"])
            layers, blocks = blocks[:n], blocks[n:]
            width = int(described[f"stage{stage.number}.width"])
            kind = described[f"stage{stage.number}.kind"]
            assert {b.kind for b in layers} == {kind} and {b.out for b in layers} == {width}
            assert {b.kernel for b in layers} == {int(described[f"stage{stage.number}.kernel"])}
            assert [b.stride for b in layers] == [stage.stride] + [1] * (n - 1)
            if kind == "ir":
                assert {b.expansion for b in layers} == {float(described[f"stage{stage.number}.expansion"])}
            identity = described[f"stage{stage.number}.skip"] == "identity"
            for i, b in enumerate(layers):
                fed = channels if i == 0 else width
                assert b.residual(fed) == (identity and b.stride == 1 and fed == width)
            channels = width
        assert blocks == []


def test_skip_choice_writes_the_residual_field():
    space = _space(CIFAR)
    genome = list(space.from_arch(space.to_arch(space.sample(random.Random(2)))))
    names = [d.name for d in space.decisions]
    for kind, skip, token in (("ir", "none", "_r0"), ("ds", "identity", "_r1"), ("conv", "identity", "_r1"),
                              ("ir", "identity", ""), ("ds", "none", ""), ("conv", "none", "")):
        genome[names.index("stage4.kind")] = space.decisions[names.index("stage4.kind")].choices.index(kind)
        genome[names.index("stage4.skip")] = space.decisions[names.index("stage4.skip")].choices.index(skip)
        arch = space.to_arch(genome)
        stage4 = [b for b in arch.blocks if b.out in (64, 80, 104) and b.kind == kind]
        first, later = stage4[0], stage4[1:]
        assert first.stride == 2 and "_r" not in first.token()  # no residual possible: the field stays at its default
        assert later and all(b.token().endswith(token) if token else "_r" not in b.token() for b in later)


def test_from_arch_gives_the_canonical_genome():
    space = _space(CIFAR)
    rng = random.Random(3)
    for _ in range(100):
        genome = space.sample(rng)
        arch = space.to_arch(genome)
        canonical = space.from_arch(arch)
        assert space.to_arch(canonical) == arch
        assert space.from_arch(format_arch(arch)) == canonical
        # Decisions the architecture ignores are at index 0.
        for stage in space.stages:
            described = space.describe(canonical)
            kind = described[f"stage{stage.number}.kind"]
            if kind in ("conv", "ds"):
                assert described[f"stage{stage.number}.expansion"] == "1"
            if kind == "conv":
                assert described[f"stage{stage.number}.se"] == "0"
    # A genome that already is canonical comes back unchanged.
    names = [d.name for d in space.decisions]
    genome = list(space.sample(random.Random(4)))
    for stage in range(1, 8):
        genome[names.index(f"stage{stage}.kind")] = 2  # ir everywhere: expansion and SE matter
        genome[names.index(f"stage{stage}.layers")] = len(space.stages[stage - 1].layers) - 1  # >= 2 layers
    assert space.from_arch(space.to_arch(genome)) == tuple(genome)


def test_from_arch_says_why_an_arch_is_not_in_the_space():
    space = _space(CIFAR)
    arch = space.to_arch(space.sample(random.Random(5)))
    with pytest.raises(ArchError, match="stem or head that differs"):
        space.from_arch(format_arch(arch).replace("head_c1280", "head_c64"))
    odd = arch.blocks[:3] + (Block("ir", kernel=7, expansion=6, out=arch.blocks[2].out),) + arch.blocks[3:]
    with pytest.raises(ArchError, match="do not split into the 7 stages' choices"):
        space.from_arch(type(arch)(stem=arch.stem, stem_stride=arch.stem_stride, blocks=odd, head=arch.head))


@pytest.mark.parametrize("options", [AMBIGUOUS, WIDTHS, KINDS], ids=["ambiguous", "widths", "kinds"])
def test_round_trip_over_every_genome_of_small_spaces(options):
    space = _space(Geometry(1, 10, 8), **options)
    for genome in _all_genomes(space):
        arch = space.to_arch(genome)
        canonical = space.from_arch(arch)
        assert space.to_arch(canonical) == arch and space.from_arch(space.to_arch(canonical)) == canonical


# ---------------------------------------------------------------- size


@pytest.mark.parametrize("options", [AMBIGUOUS, WIDTHS, KINDS], ids=["ambiguous", "widths", "kinds"])
def test_size_counts_distinct_architectures_exactly(options):
    space = _space(Geometry(1, 10, 8), **options)
    genomes = list(_all_genomes(space))
    distinct = {format_arch(space.to_arch(g)) for g in genomes}
    assert space.size() == len(distinct) < len(genomes)


def test_stages_that_trade_layers_are_one_architecture():
    # AMBIGUOUS: stages 1 and 2 both 8 wide at stride 1 after an 8-channel stem, so their layers
    # are interchangeable when they choose alike: (1 + 2) and (2 + 1) layers are one network.
    space = _space(Geometry(1, 10, 8), **AMBIGUOUS)
    names = [d.name for d in space.decisions]
    genome = [0] * len(names)
    one_two, two_one = list(genome), list(genome)
    one_two[names.index("stage1.layers")], one_two[names.index("stage2.layers")] = 0, 1  # 1 + 2 layers
    two_one[names.index("stage1.layers")], two_one[names.index("stage2.layers")] = 1, 0  # 2 + 1 layers
    assert space.to_arch(one_two) == space.to_arch(two_one)
    assert space.from_arch(space.to_arch(one_two)) == tuple(two_one)  # the earlier stage takes the most


def test_default_sizes_are_the_documented_ones():
    genomes = math.prod(len(d.choices) for d in _space(IMAGENET).decisions)
    assert f"{genomes:.1e}" == "9.5e+18"
    doc = MnasNetSpace.__doc__.replace("\n    ", " ")
    for geometry, size in ((IMAGENET, 28_920_784_535_654_400), (CIFAR, 30_259_709_745_638_400), (DIGITS, 30_259_709_745_638_400)):
        assert _space(geometry).size() == size
        assert f"{size:,}" in doc
    readme = (ROOT / "README.md").read_text()
    assert "28,920,784,535,654,400" in readme and "30,259,709,745,638,400" in readme
    # The LUT sizes the README gives.
    assert (len(_space(IMAGENET).lut_ops()), len(_space(CIFAR).lut_ops())) == (1553, 1499)
    assert "1,553 entries at 224x224, 1,499\nat 32x32" in readme


# ---------------------------------------------------------------- LUT operators


@pytest.mark.parametrize("geometry", [DIGITS, CIFAR, Geometry(3, 10, 32, batch_size=4)])
def test_every_operator_of_a_sampled_arch_is_in_the_lut(geometry):
    space = _space(geometry)
    ops = space.lut_ops()
    keys = _lut_keys(ops)
    assert ops[0].kind == "null" and len(keys) == len(ops) - 1
    rng = random.Random(6)
    for _ in range(150):
        arch = space.to_arch(space.sample(rng))
        used = {op.lut_key for op in arch_operators(arch, geometry.in_channels, geometry.num_classes,
                                                     geometry.image_size, geometry.batch_size)}
        assert used <= keys, used - keys


@pytest.mark.parametrize("options", [AMBIGUOUS, WIDTHS, KINDS], ids=["ambiguous", "widths", "kinds"])
def test_lut_holds_exactly_the_operators_some_genome_executes(options):
    geometry = Geometry(1, 10, 8)
    space = _space(geometry, **options)
    used = set()
    for genome in _all_genomes(space):
        used |= {op.lut_key for op in arch_operators(space.to_arch(genome), 1, 10, 8)}
    assert _lut_keys(space.lut_ops()) == used


def test_lut_at_another_geometry_keeps_the_spaces_strides():
    space = _space(CIFAR)
    other = Geometry(3, 100, 32, batch_size=2)
    arch = space.to_arch(space.sample(random.Random(7)))
    used = {op.lut_key for op in arch_operators(arch, 3, 100, 32, 2)}
    assert used <= _lut_keys(space.lut_ops(other))


# ---------------------------------------------------------------- models


def test_sampled_genomes_build_models_whose_counts_match():
    space = _space(DIGITS)
    rng = random.Random(8)
    for _ in range(3):
        arch = space.to_arch(space.sample(rng))
        model = build_model(arch, 1, 10).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        assert count_params(model) == count_arch_params(arch, 1, 10)


def test_cheapest_genome_is_cheap():
    from nasflow.arch import count_macs

    space = _space(DIGITS)
    cheapest = count_macs(space.to_arch(space.cheapest_genome()), 1, 10, 8)
    rng = random.Random(9)
    assert all(cheapest <= count_macs(space.to_arch(space.sample(rng)), 1, 10, 8) for _ in range(50))


# ---------------------------------------------------------------- bad input


def test_a_skeleton_that_does_not_fit_the_input_is_one_problem():
    (problem,) = _space(DIGITS, strides="skeleton").problems()
    # 8x8: the stem, stages 2 and 3 halve it to 1x1, and stage 4 has nothing left to halve.
    assert problem.startswith("the skeleton does not fit the 8x8 input: stage 4 has stride 2 but gets a 1x1 map")
    assert "`strides: cifar`" in problem
    (problem,) = _space(Geometry(1, 10, 2), strides="cifar").problems()
    assert "stage 4 has stride 2 but gets a 1x1 map" in problem  # cifar strides: 2x2 -> stage 3 -> 1x1


def test_a_width_factor_that_leaves_a_stage_without_channels_is_one_problem():
    space = _space(DIGITS, width_factors=[0.02, 1.0])
    (problem,) = space.problems()
    # 16 x 0.02 = 0.32 and 24 x 0.02 = 0.48 round to no channel; 40 x 0.02 = 0.8 to one.
    assert problem == (
        "width factor 0.02 leaves stage 1 (16 x 0.02 = 0.32), stage 2 (24 x 0.02 = 0.48) with no channels "
        "(rounding to a multiple of 8 would make them 8, not what the factor asks); use a larger factor"
    )
    assert space.decisions[6].choices == ("8", "16")  # what round_filters makes of them
    assert _space(DIGITS, width_factors=[0.05]).problems() == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kinds": ["pool"]}, "kinds"),
        ({"kernels": [4]}, "kernels"),
        ({"se_ratios": [0.25, 1.5]}, "se_ratios.1: Input should be less than or equal to 1"),
        ({"expansions": [0]}, "expansions.0: Input should be greater than 0"),
        ({"width_factors": [-1]}, "width_factors.0: Input should be greater than 0"),
        ({"layer_deltas": [20]}, "layer_deltas.0: Input should be less than or equal to 16"),
        ({"layer_deltas": []}, "layer_deltas"),
        ({"skips": ["pool"]}, "skips"),
        ({"strides": "imagenet"}, "strides"),
        ({"colour": 1}, "colour"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(PluginError, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_plugins().options("space", "mnasnet", options)


SPEC = """name: t
dataset: {name: digits}
space:
  name: mnasnet
  options: OPTIONS
search: {strategy: random, budget: 2}
"""


def test_spec_validation_reports_space_problems_with_their_line():
    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace("OPTIONS", "{strides: skeleton, width_factors: [0.02, 1.0]}"), "s.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("s.yaml:3: space: ") for line in lines)
    assert "does not fit the 8x8 input" in lines[0] and "width factor 0.02" in lines[1]
    parse_spec(SPEC.replace("OPTIONS", "{}"))


def test_the_example_spec_searches_this_space_on_digits():
    loaded = load_spec(ROOT / "examples" / "mnasnet.yaml")
    spec = loaded.spec
    assert spec.space.name == "mnasnet" and spec.dataset.name == "digits"
    assert spec.objectives.reward == "mnasnet" and spec.search.strategy == "mnasnet"
    space = build_space(spec, known_geometry(spec.dataset))
    assert isinstance(space, MnasNetSpace) and space.problems() == []
