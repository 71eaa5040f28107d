"""The search-space protocol: the base class's genome operations, spaces as plugins, and a
third-party space (installed as a distribution, as pip leaves it) going through validation,
profiling (a real LUT on torch-cpu) and the LUT-sum predictor."""

import json
import random

import pytest

from nasflow.arch import count_macs
from nasflow.errors import ArchError, SpecError
from nasflow.lut import arch_ops, lut_entries
from nasflow.plugin_api import Geometry, SearchSpace
from nasflow.plugins import get_plugins
from nasflow.spaces import make_space
from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace, StageOptions
from nasflow.spec import parse_spec

from test_plugins import install_dist, nasflow_cli

# A third-party space: per stage, a width and a block kind. Widths change the next stage's input,
# so it has no supernet form; its lut_ops enumerate every (previous width, width, kind) per stage.
WIDTHS_SPACE = '''
from pydantic import Field

from nasflow.arch import Arch, Block, parse_arch
from nasflow.arch.operators import arch_operators, null_operator
from nasflow.errors import ArchError
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import Decision, PluginOptions, SearchSpace, SearchStrategy

KINDS = ("ds", "conv")


class Options(PluginOptions):
    widths: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    stages: int = Field(2, ge=1)


class WidthsSpace(SearchSpace):
    name = "widths"
    description = "per stage: a width and ds or conv"
    Options = Options

    def __init__(self, options=None, geometry=None):
        super().__init__(options, geometry)
        widths = tuple(str(w) for w in self.options.widths)
        self.decisions = tuple(
            d for s in range(self.options.stages)
            for d in (Decision(f"stage{s}.width", widths), Decision(f"stage{s}.kind", KINDS))
        )

    def _block(self, stage, width, kind):
        return Block(kind, kernel=3, out=width, stride=2 if stage else 1)

    def to_arch(self, genome):
        genome = self.validate_genome(genome)
        blocks = [self._block(s, self.options.widths[genome[2 * s]], KINDS[genome[2 * s + 1]]) for s in range(self.options.stages)]
        return Arch(stem=8, stem_stride=1, blocks=tuple(blocks), head=32)

    def from_arch(self, arch):
        arch = parse_arch(arch) if isinstance(arch, str) else arch
        try:
            genome = [x for s, b in enumerate(arch.blocks) for x in (self.options.widths.index(b.out), KINDS.index(b.kind))]
        except ValueError:
            raise ArchError("not an architecture of the widths space") from None
        if self.to_arch(genome) != arch:
            raise ArchError("not an architecture of the widths space")
        return tuple(genome)

    def lut_ops(self, geometry=None):
        g = geometry or self.geometry
        ops = {}
        null = null_operator(g.in_channels, g.image_size, g.batch_size)
        ops[null.lut_key] = null
        import itertools
        for genome in itertools.product(*(range(len(d.choices)) for d in self.decisions)):
            for op in arch_operators(self.to_arch(genome), g.in_channels, g.num_classes, g.image_size, g.batch_size):
                ops.setdefault(op.lut_key, op)
        return list(ops.values())

    def problems(self):
        size = min(self.geometry.image_size)
        needed = 2 ** (self.options.stages - 1)
        return [] if size >= needed else [f"{self.options.stages} stages halve the input {self.options.stages - 1} times; {size} px is too small"]


class OneShot(SearchStrategy):
    name = "one-shot-test"
    needs_supernet = True

    def ask(self, n):
        return [self.space.sample(self.rng) for _ in range(n)]

    def tell(self, results):
        pass


@hookimpl
def nasflow_search_spaces():
    return [WidthsSpace]


@hookimpl
def nasflow_search_strategies():
    return [OneShot]
'''


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_dist(site, "nasflow-widths", "0.2.0", "nasflow_widths", WIDTHS_SPACE, "widths")
    return site


def spec_file(tmp_path, space: str, extra: str = "", name: str = "s") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: widths\nspace: {space}\n"
        "devices:\n  - {name: torch-cpu, options: {threads: 1, min_seconds: 0, max_seconds: 0.1, max_runs: 20, passes: 1}}\n"
        f"registry: {{path: {tmp_path / 'r.duckdb'}}}\nexecution: {{work_dir: {tmp_path / 'runs'}}}\n{extra}"
    )
    return str(path)


def test_a_third_party_space_is_listed_validated_and_profiled(site, tmp_path):
    listed = nasflow_cli(site, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert ["space", "widths", "nasflow-widths", "0.2.0"] in [line.split()[:4] for line in listed.stdout.splitlines()]

    spec = spec_file(tmp_path, "{name: widths, options: {widths: [8, 16, 24]}}", "profile: {passes: 1}\n")
    ok = nasflow_cli(site, "validate", spec)
    assert ok.returncode == 0, ok.stderr
    assert "space widths: 4 decisions, 36 genomes" in ok.stdout

    bad = nasflow_cli(site, "validate", spec_file(tmp_path, "{name: widths, options: {widths: []}}", name="bad"))
    assert bad.returncode == 2 and "space.options" in bad.stderr and "widths" in bad.stderr

    # digits are 8x8: five stages halve them four times, which the space itself refuses.
    small = nasflow_cli(site, "validate", spec_file(tmp_path, "{name: widths, options: {stages: 5}}", name="small"))
    assert small.returncode == 2 and "8 px is too small" in small.stderr, small.stderr

    profiled = nasflow_cli(site, "profile", spec)
    assert profiled.returncode == 0, profiled.stderr
    import duckdb

    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        keys = {k for (k,) in con.execute("SELECT op_key FROM lut").fetchall()}
    # 3 widths x 2 kinds in the first stage, 3 x 3 x 2 in the second, stem, 3 heads, null.
    assert len(keys) == 6 + 18 + 1 + 3 + 1
    assert {"null@1", "stem_c8_s1@1"} <= keys and any(k.startswith("conv_k3_c24_s2@16") for k in keys)


def test_a_supernet_strategy_is_refused_on_a_space_without_one(site, tmp_path):
    spec = spec_file(tmp_path, "{name: widths}", "search: {strategy: one-shot-test}\n")
    refused = nasflow_cli(site, "validate", spec)
    assert refused.returncode == 2
    assert "search.strategy: 'one-shot-test' trains a supernet, and space 'widths' has no supernet form" in refused.stderr
    spec = spec_file(tmp_path, "{name: layerwise}", "search: {strategy: one-shot-test}\n")
    accepted = nasflow_cli(site, "validate", spec)
    assert accepted.returncode == 0, accepted.stderr


def test_an_unknown_space_lists_the_registered_ones():
    with pytest.raises(SpecError, match=r"s.yaml:2: space.name: 'mobilenet' is not a registered search space; available: .*layerwise"):
        parse_spec("name: t\nspace: {name: mobilenet}\n", "s.yaml")


def test_old_style_space_keys_are_refused_with_the_new_form():
    with pytest.raises(SpecError) as err:
        parse_spec("name: t\nspace:\n  kernels: [3]\n  head_channels: 32\n", "s.yaml")
    message = str(err.value)
    assert "s.yaml:2: space:" in message
    assert "write `space: {name: layerwise, options: {kernels: [3], head_channels: 32}}`" in message


def _small_space() -> LayerwiseSpace:
    options = LayerwiseOptions(
        stem_channels=8, stages=[StageOptions(channels=8, layers=2), StageOptions(channels=16, layers=2, stride=2)],
        kernels=[3, 5], expansions=[1, 3], head_channels=16,
    )
    return LayerwiseSpace(options, Geometry(1, 10, 8))


def test_mutation_changes_exactly_one_decision_and_crossover_mixes_the_parents():
    space = _small_space()
    rng = random.Random(0)
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        mutated = space.mutate(a, rng)
        assert sum(x != y for x, y in zip(a, mutated)) == 1
        child = space.crossover(a, b, rng)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        assert space.from_arch(space.to_arch(child)) == child


def test_genomes_are_checked_and_described():
    space = _small_space()
    with pytest.raises(ArchError, match="genome has 2 entries, the space has 4 decisions"):
        space.to_arch((0, 0))
    with pytest.raises(ArchError, match=r"genome entry 9 for layer1 is not in 0..4"):
        space.to_arch((0, 9, 0, 0))
    with pytest.raises(ArchError, match="for layer0"):
        space.validate_genome((True, 0, 0, 0))
    described = space.describe((0, 4, 0, 0))
    assert described == {"layer0": "ir_k3_e1_c8_s1", "layer1": "skip_c8", "layer2": "ir_k3_e1_c16_s2", "layer3": "ir_k3_e1_c16_s1"}


def test_the_greedy_cheapest_genome_of_the_base_class_matches_the_layerwise_one():
    space = _small_space()
    greedy = SearchSpace.cheapest_genome(space)
    g = space.geometry
    macs = lambda genome: count_macs(space.to_arch(genome), g.in_channels, g.num_classes, g.image_size)  # noqa: E731
    assert macs(greedy) == macs(space.cheapest_genome())
    rng = random.Random(1)
    assert all(macs(greedy) <= macs(space.sample(rng)) for _ in range(100))


def test_layerwise_lut_ops_cover_every_sampled_architecture_and_the_supernet_is_exact():
    space = _small_space()
    g = space.geometry
    keys = {op.lut_key for op in lut_entries(space, g.in_channels, g.num_classes, g.image_size)}
    rng = random.Random(2)
    for _ in range(100):
        assert set(arch_ops(space.to_arch(space.sample(rng)), g.in_channels, g.num_classes, g.image_size)) <= keys
    supernet = space.supernet()
    assert [layer.position for layer in supernet.layers] == list(range(len(space.decisions)))
    from nasflow.arch import block_shapes

    shapes = block_shapes(supernet.skeleton, g.in_channels, g.image_size)
    for layer, shape in zip(supernet.layers, shapes):
        fixed = supernet.skeleton.blocks[layer.position]
        assert {(b.out, b.out_size(shape.in_size)) for b in layer.candidates} == {(fixed.out, shape.out_size)}


def test_make_space_validates_options_through_the_plugin():
    from nasflow.config import SpaceRef
    from nasflow.errors import PluginError

    assert isinstance(make_space(SpaceRef()), LayerwiseSpace)
    with pytest.raises(PluginError, match="invalid options for search space 'layerwise': kernels"):
        make_space(SpaceRef(options={"kernels": [4]}))
    assert get_plugins().get("space", "layerwise").cls is LayerwiseSpace
    assert json.loads(json.dumps(SpaceRef().model_dump())) == {"name": "layerwise", "options": {}}
