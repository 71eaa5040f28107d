"""Search strategies and the objective: real ask/tell loops over a real space."""

import random

import pytest

from nasflow.config import ObjectivesConfig
from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.objectives import pareto_front, score
from nasflow.plugins import get_plugins
from nasflow.space import LayerwiseSpace


def make(name, seed=0, **options):
    space = LayerwiseSpace(LayerwiseOptions())
    return get_plugins().create("search", name, options, space, seed), space


def test_random_is_seeded_and_avoids_repeats():
    a, space = make("random", seed=3)
    b, _ = make("random", seed=3)
    first, second = a.ask(10), b.ask(10)
    assert first == second
    assert len(set(first)) == 10
    for genome in first:
        space.validate_genome(genome)


def test_evolution_improves_on_a_known_fitness():
    strategy, space = make("evolution", seed=1, population_size=8, sample_size=3)
    target = tuple(len(c) - 1 for c in space.choices)  # fitness: layers equal to the last choice

    def fitness(genome):
        return sum(g == t for g, t in zip(genome, target)) / len(target)

    history = []
    for _ in range(40):
        genomes = strategy.ask(4)
        scores = [fitness(g) for g in genomes]
        history += scores
        strategy.tell(list(zip(genomes, scores)))
    first, last = sum(history[:16]) / 16, sum(history[-16:]) / 16
    assert last > first + 0.2
    assert len(strategy.population) == 8  # aging keeps the population size fixed


def test_evolution_replays_identically_given_the_same_scores():
    runs = []
    for _ in range(2):
        strategy, _ = make("evolution", seed=5, population_size=4, sample_size=2)
        seen = []
        for _ in range(5):
            genomes = strategy.ask(3)
            seen += genomes
            strategy.tell([(g, float(sum(g))) for g in genomes])
        runs.append(seen)
    assert runs[0] == runs[1]


def test_evolution_failed_candidates_never_win():
    strategy, space = make("evolution", seed=0, population_size=3, sample_size=3)
    genomes = strategy.ask(3)
    strategy.tell([(genomes[0], None), (genomes[1], 0.9), (genomes[2], None)])
    child = strategy.ask(1)[0]
    assert sum(a != b for a, b in zip(child, genomes[1])) <= 1


def test_mnasnet_reward_soft_and_hard():
    soft = ObjectivesConfig(reward="mnasnet", target_ms=2.0)
    assert score(0.8, 2.0, soft) == pytest.approx(0.8)
    assert score(0.8, 4.0, soft) == pytest.approx(0.8 * 2 ** -0.07)
    assert score(0.8, 1.0, soft) == pytest.approx(0.8 * 0.5 ** -0.07)
    hard = ObjectivesConfig(reward="mnasnet", target_ms=2.0, alpha=0.0, beta=-1.0)
    assert score(0.8, 1.0, hard) == pytest.approx(0.8)
    assert score(0.8, 4.0, hard) == pytest.approx(0.4)
    capped = ObjectivesConfig(reward="accuracy", max_latency_ms=3.0)
    assert score(0.8, 4.0, capped) == 0.0 and score(0.8, 2.0, capped) == 0.8


def test_pareto_front():
    rows = [
        {"id": "a", "accuracy": 0.9, "latency_ms": 3.0},
        {"id": "b", "accuracy": 0.8, "latency_ms": 1.0},
        {"id": "c", "accuracy": 0.7, "latency_ms": 2.0},  # dominated by b
        {"id": "d", "accuracy": 0.95, "latency_ms": 5.0},
        {"id": "e", "accuracy": None, "latency_ms": 0.5},
    ]
    assert [r["id"] for r in pareto_front(rows)] == ["b", "a", "d"]
    random.shuffle(rows)
    assert [r["id"] for r in pareto_front(rows)] == ["b", "a", "d"]
