"""The `fbnet` space: macro-architecture and presets, decisions, to_arch / from_arch (the zoo's
FBNet-C included), size, supernet shapes, LUT operators, problems, notes, the example spec."""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasflow.arch import Arch, count_arch_params, count_macs, format_arch, parse_arch, zoo_arch
from nasflow.arch.builder import build_model, count_params, stem_module
from nasflow.errors import ArchError, PluginError, SpecError
from nasflow.lut import arch_ops
from nasflow.plugin_api import Geometry, SearchSpace
from nasflow.plugins import get_plugins
from nasflow.spaces import known_geometry
from nasflow.spaces.fbnet import CANDIDATES, IMAGENET, FBNetOptions, FBNetSpace
from nasflow.spec import build_space, load_spec, parse_spec

IMAGENET_224 = Geometry(3, 1000, 224)
CIFAR = Geometry(3, 10, 32)
DIGITS = Geometry(1, 10, 8)
ROOT = Path(__file__).parent.parent
NINE = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")

# A small space the tests enumerate genome by genome: two stages, the second widening and striding.
SMALL = dict(preset="cifar", stem_channels=8, channels=[8, 16], layers=[2, 2], strides=[1, 2], head_channels=16,
             candidates=["k3_e1", "k3_e1_g2", "k5_e6", "skip"])


def _space(geometry=DIGITS, **options) -> FBNetSpace:
    return FBNetSpace(FBNetOptions(**options), geometry)


def _all_genomes(space: FBNetSpace):
    return itertools.product(*(range(len(d.choices)) for d in space.decisions))


def _lut_keys(space: FBNetSpace, geometry: Geometry) -> set:
    return {op.lut_key for op in space.lut_ops(geometry) if op.kind != "null"}


def _without_skips(arch: Arch) -> Arch:
    return replace(arch, blocks=tuple(b for b in arch.blocks if b.kind != "skip"))


# ---------------------------------------------------------------- macro-architecture, decisions


def test_is_a_builtin_space_plugin_with_a_supernet():
    info = get_plugins().get("space", "fbnet")
    assert info.cls is FBNetSpace and info.package == "nasflow"
    assert FBNetSpace().supernet() is not None


def test_the_default_macro_architecture_is_fbnets_table_1():
    space = _space(IMAGENET_224)
    m = space.macro
    assert (m.stem_channels, m.stem_stride, m.head_channels) == (16, 2, 1984)
    assert list(zip(m.channels, m.layers, m.strides)) == [
        (16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1)
    ]
    assert len(space.decisions) == 22 and [d.name for d in space.decisions] == [f"layer{i}" for i in range(22)]
    # The first layer of a stage carries its stride; 224x224 ends at 7x7.
    assert [layer.stride for layer in space.layers if layer.stride > 1] == [2, 2, 2, 2]
    assert space.layers[-1].out_size == (7, 7)


def test_the_cifar_preset_strides_the_stem_and_stage_2_by_1_as_the_zoo_variants():
    space = _space(CIFAR, preset="cifar")
    assert space.macro.stem_stride == 1 and space.macro.strides == (1, 1, 2, 2, 1, 2, 1)
    assert space.layers[-1].out_size == (4, 4)
    zoo = zoo_arch("fbnet_c_cifar")  # the zoo's own rule gives the same strides
    assert zoo.stem_stride == 1 and _without_skips(space.to_arch(space.from_arch(zoo))) == zoo
    assert _space(DIGITS, preset="cifar").problems() == []


def test_overrides_replace_the_presets_values():
    space = _space(CIFAR, preset="cifar", stem_channels=8, channels=[8, 16, 32], layers=[1, 2, 3], strides=[1, 2, 2],
                   head_channels=64)
    assert [(layer.stage, layer.in_channels, layer.out, layer.stride) for layer in space.layers] == [
        (1, 8, 8, 1), (2, 8, 16, 2), (2, 16, 16, 1), (3, 16, 32, 2), (3, 32, 32, 1), (3, 32, 32, 1)
    ]
    arch = space.to_arch(space.sample(random.Random(0)))
    assert (arch.stem, arch.stem_stride, arch.head) == (8, 1, 64)
    # Strides given are taken as written, whatever the preset.
    assert _space(CIFAR, preset="cifar", strides=[2, 2, 2, 2, 1, 1, 1]).macro.strides == (2, 2, 2, 2, 1, 1, 1)


def test_each_layer_offers_the_nine_candidates_and_skip_only_where_the_shape_is_kept():
    space = _space(IMAGENET_224)
    assert tuple(CANDIDATES) == NINE
    fixed = {1, 5, 9, 13, 17, 21}  # first layers that stride or widen (stage 5 widens 64 -> 112 at stride 1)
    for layer, decision in zip(space.layers, space.decisions):
        expected = NINE if layer.index not in fixed else NINE[:-1]
        assert decision.choices == expected, layer
        assert (layer.stride == 1 and layer.in_channels == layer.out) == (layer.index not in fixed)
    (note,) = space.notes()
    assert note.startswith("skip is left out of layer1, layer5, layer9, layer13, layer17, layer21:")
    blocks = dict(zip(NINE, space.choices[2]))
    assert blocks["k3_e1_g2"].token() == "ir_k3_e1_c24_s1_g2" and blocks["k5_e6"].token() == "ir_k5_e6_c24_s1"
    assert blocks["skip"].token() == "skip_c24"


def test_candidates_keep_the_papers_order_and_drop_repeats():
    space = _space(CIFAR, candidates=["skip", "k5_e6", "k3_e1", "k5_e6"])
    assert space.decisions[0].choices == ("k3_e1", "k5_e6", "skip")
    assert space.decisions[1].choices == ("k3_e1", "k5_e6")
    assert space.describe(space.cheapest_genome())["layer2"] == "skip"


# ---------------------------------------------------------------- the zoo's FBNet-C


def test_zoo_fbnet_c_is_a_genome_of_the_imagenet_preset():
    space = _space(IMAGENET_224)
    zoo = zoo_arch("fbnet_c")
    genome = space.from_arch(zoo)
    arch = space.to_arch(genome)
    assert _without_skips(arch) == zoo and space.from_arch(arch) == genome
    assert space.from_arch(format_arch(zoo)) == genome
    # The zoo leaves out one skip layer (its stage 2 has three blocks): the space puts it last in the stage.
    described = space.describe(genome)
    assert [k for k, v in described.items() if v == "skip"] == ["layer4"]
    assert [described[f"layer{i}"] for i in range(1, 5)] == ["k3_e6", "k3_e1", "k3_e1", "skip"]
    g = IMAGENET_224
    assert count_macs(arch, 3, 1000, 224) == count_macs(zoo, 3, 1000, 224)
    assert count_arch_params(arch, 3, 1000) == count_arch_params(zoo, 3, 1000)
    assert sorted(arch_ops(arch, g.in_channels, g.num_classes, g.image_size)) == sorted(
        arch_ops(zoo, g.in_channels, g.num_classes, g.image_size))


# ---------------------------------------------------------------- genomes


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_to_arch_and_from_arch_round_trip(data):
    space = _space(CIFAR, preset="cifar")
    genome = tuple(data.draw(st.integers(0, len(d.choices) - 1)) for d in space.decisions)
    arch = space.to_arch(genome)
    assert space.from_arch(arch) == genome
    assert space.from_arch(format_arch(arch)) == genome and parse_arch(format_arch(arch)) == arch
    # Left without its skip layers, the arch is found again as the genome with the stages' skips last.
    canonical = space.from_arch(_without_skips(arch))
    assert _without_skips(space.to_arch(canonical)) == _without_skips(arch)
    assert len(arch.blocks) == len(space.decisions)


def test_skips_left_out_are_put_last_in_their_stage():
    space = _space(DIGITS, **SMALL)
    for genome in _all_genomes(space):
        arch = space.to_arch(genome)
        assert space.from_arch(arch) == genome
        canonical = space.describe(space.from_arch(_without_skips(arch)))
        labels = [canonical[f"layer{i}"] for i in range(len(space.decisions))]
        for stage in (labels[:2], labels[2:]):
            written = [label for label in stage if label != "skip"]
            assert stage == written + ["skip"] * (len(stage) - len(written))


def test_sample_mutate_and_crossover_give_genomes_of_the_space():
    space = _space(CIFAR, preset="cifar")
    rng = random.Random(1)
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        mutated = space.mutate(a, rng)
        assert sum(x != y for x, y in zip(a, mutated)) == 1
        child = space.crossover(a, b, rng)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        for genome in (a, mutated, child):
            assert space.from_arch(space.to_arch(genome)) == genome


def test_from_arch_says_why_an_arch_is_not_in_the_space():
    space = _space(CIFAR, preset="cifar")
    arch = space.to_arch(space.sample(random.Random(2)))
    with pytest.raises(ArchError, match="stem or head that differs"):
        space.from_arch(replace(arch, head=64))
    odd = list(arch.blocks)
    odd[3] = parse_arch("stem_c8_s1-ir_k7_e6_c24_s1-head_c8").blocks[0]
    with pytest.raises(ArchError, match=r"block 4 \(ir_k7_e6_c24_s1\) is no candidate of layer3 \(k3_e1, .*skip\)"):
        space.from_arch(replace(arch, blocks=tuple(odd)))
    with pytest.raises(ArchError, match="end before layer21, which cannot be skipped"):
        space.from_arch(replace(arch, blocks=arch.blocks[:-1]))
    with pytest.raises(ArchError, match="genome has 2 entries, the space has 22 decisions"):
        space.to_arch((0, 0))


# ---------------------------------------------------------------- size


def test_size_counts_genomes_and_is_the_documented_one():
    space = _space(IMAGENET_224)
    assert space.size() == 9**16 * 8**6 == math.prod(len(d.choices) for d in space.decisions)
    assert f"{space.size():.1e}" == "4.9e+20"
    assert "9^16 x 8^6 = 4.9e20" in FBNetSpace.__doc__
    readme = (ROOT / "README.md").read_text()
    assert "9^16 x 8^6" in readme and "485,758,124,386,377,007,104" in readme
    assert f"{space.size():,}" == "485,758,124,386,377,007,104"
    small = _space(DIGITS, **SMALL)
    assert small.size() == len({format_arch(small.to_arch(g)) for g in _all_genomes(small)}) == 4 * 4 * 3 * 4  # stage 1 keeps the stem's width: both its layers may skip


# ---------------------------------------------------------------- supernet


@pytest.mark.parametrize("geometry, options", [(DIGITS, {"preset": "cifar"}), (Geometry(3, 10, 64), {})],
                         ids=["digits-cifar", "64px-imagenet"])
def test_every_candidate_of_a_supernet_layer_maps_its_input_to_one_output_shape(geometry, options):
    torch.manual_seed(0)
    space = _space(geometry, **options)
    supernet = space.supernet()
    assert [layer.position for layer in supernet.layers] == [layer.decision for layer in supernet.layers] == list(range(22))
    assert supernet.skeleton == space.to_arch((0,) * 22)
    x = torch.randn(2, geometry.in_channels, *geometry.image_size)
    with torch.no_grad():
        x = stem_module(supernet.skeleton, geometry.in_channels).eval()(x)
        for layer, info in zip(supernet.layers, space.layers):
            outputs = set()
            for block in layer.candidates:
                module = block.module(x.shape[1]).eval()
                outputs.add(tuple(module(x).shape))
            assert outputs == {(2, info.out, *info.out_size)}, (layer.position, outputs)
            assert [b.token() for b in layer.candidates] == [b.token() for b in space.choices[layer.position]]
            x = supernet.skeleton.blocks[layer.position].module(x.shape[1]).eval()(x)


# ---------------------------------------------------------------- LUT operators


@pytest.mark.parametrize(
    "geometry, options",
    [(DIGITS, {"preset": "cifar"}), (CIFAR, {"preset": "cifar"}), (Geometry(3, 10, 32, batch_size=4), {}),
     (DIGITS, dict(preset="cifar", channels=[8, 12, 16, 20, 24, 28, 32], candidates=["k3_e1", "k5_e1_g2", "skip"]))],
    ids=["digits", "cifar", "cifar-imagenet-batch4", "narrow"],
)
def test_every_operator_of_a_sampled_arch_is_in_the_lut(geometry, options):
    space = _space(geometry, **options)
    ops = space.lut_ops()
    keys = _lut_keys(space, geometry)
    assert ops[0].kind == "null" and len(keys) == len(ops) - 1
    rng = random.Random(3)
    for _ in range(150):
        used = set(arch_ops(space.to_arch(space.sample(rng)), geometry.in_channels, geometry.num_classes,
                            geometry.image_size, geometry.batch_size))
        assert used <= keys, used - keys


def test_lut_holds_exactly_the_operators_some_genome_executes():
    space = _space(DIGITS, **SMALL)
    used = set()
    for genome in _all_genomes(space):
        used |= set(arch_ops(space.to_arch(genome), 1, 10, 8))
    assert _lut_keys(space, DIGITS) == used
    # At another geometry, the same candidates at that geometry's shapes.
    other = Geometry(3, 100, 16, batch_size=2)
    arch = space.to_arch(space.sample(random.Random(4)))
    assert set(arch_ops(arch, 3, 100, 16, 2)) <= _lut_keys(space, other)


def test_the_default_lut_sizes_are_the_documented_ones():
    # 12 distinct layer shapes (each stage's first layer, its later ones) x 8 blocks, stem, head, null.
    assert len(_space(IMAGENET_224).lut_ops()) == len(_space(CIFAR, preset="cifar").lut_ops()) == 12 * 8 + 3
    assert "99 entries" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------- models and cost


def test_sampled_genomes_build_models_whose_counts_match():
    space = _space(DIGITS, preset="cifar")
    rng = random.Random(5)
    for _ in range(3):
        arch = space.to_arch(space.sample(rng))
        model = build_model(arch, 1, 10).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        assert count_params(model) == count_arch_params(arch, 1, 10)


def test_cheapest_genome_is_the_cheapest():
    space = _space(DIGITS, preset="cifar")
    macs = lambda genome: count_macs(space.to_arch(genome), 1, 10, 8)  # noqa: E731
    cheapest = macs(space.cheapest_genome())
    assert cheapest == macs(SearchSpace.cheapest_genome(space))
    rng = random.Random(6)
    assert all(cheapest <= macs(space.sample(rng)) for _ in range(100))
    # Skip costs nothing, so every layer that may skip does.
    described = space.describe(space.cheapest_genome())
    assert all((described[d.name] == "skip") == ("skip" in d.choices) for d in space.decisions)


# ---------------------------------------------------------------- bad input


def test_a_macro_architecture_that_does_not_fit_the_input_is_one_problem():
    (problem,) = _space(DIGITS).problems()
    # 8x8: the stem, stages 2 and 3 halve it to 1x1, and stage 4's first layer has nothing left to halve.
    assert problem == (
        "the macro-architecture does not fit the 8x8 input: layer9 (stage 4) has stride 2 but gets a 1x1 map, "
        "below one pixel after it (imagenet preset); use `preset: cifar`, fewer stride-2 stages (`strides`) or a larger input"
    )
    (problem,) = _space(Geometry(1, 10, 1), preset="cifar").problems()
    assert "layer5 (stage 3) has stride 2 but gets a 1x1 map" in problem
    (problem,) = _space(Geometry(1, 10, 1), stem_stride=2).problems()
    assert "the stem has stride 2 but gets a 1x1 map" in problem


def test_a_layer_left_without_candidates_is_one_problem():
    (problem,) = _space(CIFAR, preset="cifar", candidates=["skip"]).problems()
    assert problem.startswith(
        "layer1 (16 -> 24 channels, stride 1), layer5 (24 -> 32 channels, stride 2), layer9 (32 -> 64 channels, stride 2), "
        "layer13 (64 -> 112 channels, stride 1), layer17 (112 -> 184 channels, stride 2), layer21 (184 -> 352 channels, stride 1) "
        "have no candidate: of `candidates` (skip), skip needs stride 1 and equal widths"
    )
    # Grouped candidates need even widths: a 12 -> 9 layer has none of them.
    space = _space(CIFAR, preset="cifar", channels=[12, 9, 10], layers=[1, 1, 2], strides=[1, 2, 1],
                   candidates=["k3_e1_g2", "k5_e1_g2"])
    (problem,) = space.problems()
    assert problem.startswith("layer1 (12 -> 9 channels, stride 2), layer2 (9 -> 10 channels, stride 1) have no candidate")
    assert "widths divisible by 2; add a k*_e* candidate" in problem


def test_grouped_candidates_are_left_out_of_odd_widths_and_noted():
    space = _space(CIFAR, preset="cifar", channels=[16, 9, 10], layers=[1, 1, 1], strides=[1, 2, 1])
    assert space.problems() == []
    assert [d.choices for d in space.decisions] == [NINE, tuple(c for c in NINE[:-1] if "g2" not in c),
                                                     tuple(c for c in NINE[:-1] if "g2" not in c)]
    assert "k3_e1_g2, k5_e1_g2 left out of layer1, layer2: their input or output width is not divisible by 2" in space.notes()


def test_the_imagenet_preset_on_a_small_input_suggests_the_cifar_one():
    notes = _space(CIFAR).notes()
    assert "the imagenet preset leaves the last stage 1x1 at the 32x32 input; `preset: cifar` keeps more of it" in notes
    assert not any("preset" in note for note in _space(CIFAR, preset="cifar").notes())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"candidates": ["k3_e1", "k7_e6"]}, "candidates: unknown candidate 'k7_e6'; allowed: " + ", ".join(NINE)),
        ({"candidates": []}, "candidates: List should have at least 1 item"),
        ({"preset": "coco"}, "preset"),
        ({"channels": [16, 0, 32, 64, 112, 184, 352]}, "channels.1: Input should be greater than 0"),
        ({"layers": [1, 4, 4, 4, 4, 4, 17]}, "layers.6: Input should be less than or equal to 16"),
        ({"strides": [1, 2, 3, 2, 1, 2, 1]}, "strides.2"),
        ({"channels": [16, 24]}, "channels, layers and strides must list the same number of stages, got channels 2, "
                                 "layers 7 (the imagenet preset's), strides 7 (the imagenet preset's)"),
        ({"stem_stride": True}, "stem_stride"),
        ({"colour": 1}, "colour: unknown key"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(PluginError) as err:
        get_plugins().options("space", "fbnet", options)
    assert message in str(err.value)


# ---------------------------------------------------------------- specs, the example, a real LUT

SPEC = """name: t
dataset: {name: digits}
space:
  name: fbnet
  options: OPTIONS
search: {strategy: random, budget: 2}
"""


def test_spec_validation_reports_space_problems_with_their_line():
    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace("OPTIONS", "{candidates: [skip]}"), "s.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("s.yaml:3: space: ") for line in lines)
    assert "does not fit the 8x8 input" in lines[0] and "no candidate" in lines[1]
    parse_spec(SPEC.replace("OPTIONS", "{preset: cifar}"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nasflow.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def test_the_example_spec_searches_this_space_on_digits():
    path = ROOT / "examples" / "fbnet.yaml"
    spec = load_spec(path).spec
    assert spec.space.name == "fbnet" and spec.dataset.name == "digits"
    space = build_space(spec, known_geometry(spec.dataset))
    assert isinstance(space, FBNetSpace) and space.problems() == [] and len(space.decisions) == 22
    assert space.options.candidates == list(NINE)
    validated = _cli("validate", str(path))
    assert validated.returncode == 0, validated.stderr
    assert f"space fbnet: 22 decisions, {space.size():,} genomes" in validated.stdout
    assert "skip is left out of layer1, layer5, layer9, layer13, layer17, layer21:" in validated.stdout


def test_nasflow_profile_builds_the_spaces_lut_on_torch_cpu(tmp_path):
    import duckdb

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: fbnet-lut\ndataset: {name: digits}\n"
        "space: {name: fbnet, options: {preset: cifar, stem_channels: 8, channels: [8, 16], layers: [2, 2], "
        "strides: [1, 2], head_channels: 16, candidates: [k3_e1, k3_e1_g2, k5_e6, skip]}}\n"
        "devices:\n  - {name: torch-cpu, options: {threads: 1, min_seconds: 0, max_seconds: 0.1, max_runs: 20, passes: 1}}\n"
        f"registry: {{path: {tmp_path / 'r.duckdb'}}}\nexecution: {{work_dir: {tmp_path / 'runs'}}}\nprofile: {{passes: 1}}\n"
    )
    profiled = _cli("profile", str(spec))
    assert profiled.returncode == 0, profiled.stderr
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT op_key, input_shape, median_ms FROM lut").fetchall()
    expected = _lut_keys(_space(DIGITS, **SMALL), DIGITS) | {("null@1", "1x1x8x8")}
    assert {(key, shape) for key, shape, _ in rows} == expected
    assert all(ms > 0 for _, _, ms in rows)
    assert ("ir_k3_e1_c16_s2_g2@8", "1x8x8x8") in expected
