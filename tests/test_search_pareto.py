"""NSGA-II and Optuna as strategies: on an exact small problem (every genome's costs known) they
beat random search over many seeds, they replay exactly, and bad options are refused clearly."""

import itertools

import pytest

from nasflow.errors import PluginError
from nasflow.objectives import crowding_distances, hypervolume_2d, non_dominated_fronts, spread_along_front
from nasflow.plugin_api import CandidateResult
from nasflow.plugins import get_plugins

from test_search_mnasnet_rl import SPACE, TARGET, fitness, finds_optimum, one_thread  # noqa: F401 (fixture)


def costs(genome) -> tuple[float, float]:
    """(-accuracy, latency): accuracy peaks at TARGET (every layer's last, largest choice), latency
    grows with every choice index, so the front trades one for the other."""
    return (-fitness(genome), float(sum(genome)))


ALL = [costs(g) for g in itertools.product(*[range(len(d.choices)) for d in SPACE.decisions])]
REFERENCE = (1e-9, max(c[1] for c in ALL) + 1)
TRUE_HV = hypervolume_2d([ALL[i] for i in non_dominated_fronts(ALL)[0]], REFERENCE)


def result(genome, failed=False) -> CandidateResult:
    if failed:
        return CandidateResult(tuple(genome), None, error="boom")
    return CandidateResult(tuple(genome), fitness(genome), accuracy=fitness(genome), costs=costs(genome))


def hv_share(name: str, seed: int, budget: int = 120, batch: int = 8, **options) -> float:
    strategy = get_plugins().create("search", name, options, SPACE, seed)
    strategy.pareto_labels = ("accuracy", "latency@d")
    seen = set()
    for _ in range(budget // batch):
        genomes = strategy.ask(batch)
        seen |= set(map(tuple, genomes))
        strategy.tell([result(g) for g in genomes])
    return hypervolume_2d([costs(g) for g in seen], REFERENCE) / TRUE_HV


# ------------------------------------------------------------------ the Pareto machinery


def test_fronts_and_crowding_follow_the_definitions():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (6, 6), (2, 2)]
    fronts = non_dominated_fronts(points)
    assert fronts[0] == [0, 1, 2, 5] and fronts[1] == [3] and fronts[2] == [4]
    distance = crowding_distances(points, [0, 1, 2])
    assert distance[0] == distance[2] == float("inf") and 0 < distance[1] < float("inf")
    # k picks: the whole first front's ends first, then by room along it
    assert set(spread_along_front(points, 2)) <= {0, 1, 2, 5} and set(spread_along_front(points, 2)) >= {0, 2}


def test_hypervolume_of_a_staircase():
    assert hypervolume_2d([(1, 3), (2, 1)], (4, 4)) == pytest.approx(3 * 1 + 2 * 2)
    assert hypervolume_2d([(5, 5)], (4, 4)) == 0  # outside the reference box


# ------------------------------------------------------------------ the strategies learn


@pytest.mark.parametrize("name,options", [("nsga2", {}), ("optuna", {"sampler": "nsga2", "sampler_options": {"population_size": 16}}), ("optuna", {"sampler": "tpe"})])
def test_multi_objective_strategies_cover_more_of_the_true_front_than_random(name, options):
    seeds = range(10)
    ours = [hv_share(name, s, **options) for s in seeds]
    rnd = [hv_share("random", s) for s in seeds]
    wins = sum(o > r for o, r in zip(ours, rnd))
    # 120 of 1,764 genomes; random covers about half the true front's hypervolume.
    assert wins >= 8 and sorted(ours)[5] > sorted(rnd)[5] + 0.15, (ours, rnd)


def test_evolution_finds_the_single_objective_optimum_more_often_than_random():
    seeds = range(12)
    found = sum(finds_optimum("evolution", s, budget=160)[0] for s in seeds)
    rnd = sum(finds_optimum("random", s, budget=160)[0] for s in seeds)
    assert found >= 8 and found > rnd + 4, (found, rnd)


def test_optuna_tpe_finds_the_single_objective_optimum_more_often_than_random():
    seeds = range(12)
    found = sum(finds_optimum("optuna", s, budget=160, sampler="tpe")[0] for s in seeds)
    rnd = sum(finds_optimum("random", s, budget=160)[0] for s in seeds)
    assert found >= 6 and found > rnd + 3, (found, rnd)


@pytest.mark.parametrize("name,options", [
    ("nsga2", {}), ("optuna", {"sampler": "tpe"}), ("optuna", {"sampler": "nsga2", "sampler_options": {"population_size": 8}}),
])
def test_replay_proposes_the_same_genomes(name, options):
    runs = []
    for _ in range(2):
        strategy = get_plugins().create("search", name, options, SPACE, 3)
        strategy.pareto_labels = ("accuracy", "latency@d")
        proposed = []
        for step in range(6):
            genomes = strategy.ask(5)
            proposed += genomes
            strategy.tell([result(g, failed=(step == 1 and i == 0)) for i, g in enumerate(genomes)])
        runs.append(proposed)
    assert runs[0] == runs[1]


def test_optuna_cmaes_samples_the_choice_indices_and_replays():
    runs = []
    for _ in range(2):
        strategy = get_plugins().create("search", "optuna", {"sampler": "cmaes"}, SPACE, 5)
        proposed = []
        for _ in range(5):
            genomes = strategy.ask(6)
            proposed += genomes
            strategy.tell([(g, fitness(g)) for g in genomes])
        runs.append(proposed)
    assert runs[0] == runs[1]
    assert all(SPACE.validate_genome(g) == g for g in runs[0]) and len(set(runs[0])) > 10


def test_nsga2_survives_failures_and_a_batch_cut_short():
    strategy = get_plugins().create("search", "nsga2", {"population_size": 4}, SPACE, 0)
    strategy.pareto_labels = ("accuracy", "latency@d")
    genomes = strategy.ask(6)
    strategy.tell([result(genomes[0], failed=True)] + [result(g) for g in genomes[1:3]])  # the budget ended after 3
    strategy.tell([result(g) for g in strategy.ask(4)])
    assert strategy.generation == 1 and len(strategy.parents) == 4
    assert all(costs is not None for _, costs in strategy.parents)  # the failed one lost its place
    assert strategy.step_log()["generation"] == 1


def test_optuna_sampler_options_are_checked_against_optuna():
    with pytest.raises(PluginError, match=r"TPESampler has no option 'n_startup'; its options: .*n_startup_trials"):
        get_plugins().create("search", "optuna", {"sampler": "tpe", "sampler_options": {"n_startup": 3}}, SPACE, 0)
    with pytest.raises(PluginError, match=r"seed comes from execution.seed"):
        get_plugins().create("search", "optuna", {"sampler_options": {"seed": 3}}, SPACE, 0)
    with pytest.raises(PluginError, match=r"sampler"):
        get_plugins().create("search", "optuna", {"sampler": "gp-bandit"}, SPACE, 0)


def test_the_old_scalar_form_unpacks():
    told = result(TARGET)
    genome, score = told
    assert genome == TARGET and score == 1.0 and told[1] == 1.0 and len(told) == 2
