"""The MnasNet RL controller: it learns (beats random at finding the optimum of a known fitness over
many seeds), its entropy falls, it replays exactly, and it works on any space's decisions."""

import pytest

from nasflow.plugin_api import Geometry
from nasflow.plugins import get_plugins
from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace, StageOptions

SPACE = LayerwiseSpace(
    LayerwiseOptions(
        stem_channels=8, stages=[StageOptions(channels=8, layers=2), StageOptions(channels=16, layers=2, stride=2)],
        kernels=[3, 5], expansions=[1, 3, 6], head_channels=16,
    ),
    Geometry(1, 10, 8),
)
TARGET = tuple(len(d.choices) - 1 for d in SPACE.decisions)  # each layer's last choice


@pytest.fixture(autouse=True)
def one_thread():
    # The controller's networks are tiny: on a loaded 2-core machine extra threads only contend.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fitness(genome) -> float:
    """Share of layers at the target, squared: the optimum is one genome of the space's 7 x 7 x 6 x 7."""
    return (sum(g == t for g, t in zip(genome, TARGET)) / len(TARGET)) ** 2


def finds_optimum(name: str, seed: int, budget: int = 120, batch: int = 8, **options) -> tuple[bool, object]:
    strategy = get_plugins().create("search", name, options, SPACE, seed)
    for _ in range(budget // batch):
        genomes = strategy.ask(batch)
        strategy.tell([(g, fitness(g)) for g in genomes])
        if any(tuple(g) == TARGET for g in genomes):
            return True, strategy
    return False, strategy


@pytest.mark.parametrize("options", [{}, {"policy": "factorized", "algorithm": "reinforce"}, {"algorithm": "reinforce", "lr": 0.01}])
def test_the_controller_finds_the_optimum_more_often_than_random(options):
    seeds = range(12)
    rl = sum(finds_optimum("mnasnet", s, **options)[0] for s in seeds)
    rnd = sum(finds_optimum("random", s)[0] for s in seeds)
    # 120 of 2,058 genomes: random finds the one optimum about 6 % of the time.
    assert rl >= 8 and rl > rnd + 4, (rl, rnd)


def test_the_policy_entropy_falls_and_the_reward_rises():
    _, strategy = finds_optimum("mnasnet", seed=0, budget=400)
    history = strategy.history
    assert len(history) >= 5
    assert history[0]["entropy"] <= strategy.max_entropy() + 1e-6
    assert history[-1]["entropy"] < 0.8 * history[0]["entropy"]
    assert history[-1]["mean_reward"] > history[0]["mean_reward"]


def test_the_controller_replays_identically_given_the_same_scores():
    runs = []
    for _ in range(2):
        strategy = get_plugins().create("search", "mnasnet", {}, SPACE, 7)
        seen = []
        for _ in range(4):
            genomes = strategy.ask(5)
            seen += genomes
            strategy.tell([(g, fitness(g)) for g in genomes])
        runs.append(seen)
    assert runs[0] == runs[1]


def test_a_batch_cut_short_and_failures_are_told_without_error():
    strategy = get_plugins().create("search", "mnasnet", {"failed_reward": -1.0}, SPACE, 0)
    genomes = strategy.ask(6)
    strategy.tell([(genomes[0], None), (genomes[1], 0.5), (genomes[2], None)])  # the budget ended after 3
    assert len(strategy.history) == 1 and strategy.history[0]["mean_reward"] == pytest.approx(-0.5)
    # genomes it never proposed (e.g. replayed from the registry) are scored under the current policy
    strategy.tell([((0, 0, 0, 0), 0.2)])
    assert len(strategy.history) == 2
    for genome in strategy.ask(4):
        SPACE.validate_genome(genome)


def test_bad_options_are_refused_with_the_field():
    from nasflow.errors import PluginError

    with pytest.raises(PluginError, match="invalid options for search strategy 'mnasnet': clip"):
        get_plugins().options("search", "mnasnet", {"clip": 1.5})
    with pytest.raises(PluginError, match="policy"):
        get_plugins().options("search", "mnasnet", {"policy": "gru"})
