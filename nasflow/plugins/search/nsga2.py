"""`nsga2` search strategy: NSGA-II (Deb et al. 2002) over the spec's `objectives.pareto`.

Generational, as in the paper: a parent population of `population_size` breeds offspring
(binary tournament on front rank, then crowding distance; the space's crossover and mutation);
once a generation's worth of offspring has been told, parents and offspring are pooled and the
next parents are taken front by front, the last front cut by crowding distance. The ask/tell
batches need not match the population size: asks between selections breed from the same parents.
Everything is drawn from the strategy's seeded generator, so a replayed run proposes the same.
"""

from __future__ import annotations

from pydantic import Field

from ...hookspecs import hookimpl
from ...objectives import crowding_distances, non_dominated_fronts
from ...plugin_api import CandidateResult, Genome, PluginOptions, SearchStrategy


class Nsga2Options(PluginOptions):
    population_size: int = Field(12, ge=4, description="parents kept per generation (and offspring bred per generation)")
    crossover_rate: float = Field(0.9, ge=0, le=1, description="chance an offspring is a crossover of two parents")
    mutation_rate: float = Field(1.0, ge=0, le=1, description="chance an offspring is mutated (one decision, the space's mutation)")
    max_tries: int = Field(20, ge=1, description="re-breeds per proposal to avoid repeating an evaluated genome")


Member = tuple[Genome, tuple[float, ...] | None]  # genome and its Pareto costs (None: failed or incomplete)


class Nsga2(SearchStrategy):
    """Non-dominated sorting with crowding distance; failed candidates rank behind every front."""

    name = "nsga2"
    description = "NSGA-II over objectives.pareto: non-dominated sorting, crowding distance, tournament selection"
    Options = Nsga2Options
    pareto_support = "required"

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self.parents: list[Member] = []
        self.offspring: list[Member] = []
        self.generation = 0
        self._asked = 0  # proposals of the current generation not yet told
        self._seen: set[Genome] = set()
        self._rank: dict[int, tuple[int, float]] = {}  # parent index -> (front, -crowding)

    @classmethod
    def minimum_budget(cls, options: Nsga2Options) -> int:
        return options.population_size

    # ------------------------------------------------------------------ ask

    def ask(self, n: int) -> list[Genome]:
        proposals = []
        for _ in range(n):
            breed = self._random if not self.parents else self._child
            genome = breed()
            for _ in range(self.options.max_tries):
                if genome not in self._seen:
                    break
                genome = breed()
            self._seen.add(genome)
            proposals.append(genome)
        self._asked += n
        return proposals

    def _random(self) -> Genome:
        return self.space.sample(self.rng)

    def _child(self) -> Genome:
        first = self._tournament()
        child = first
        if self.rng.random() < self.options.crossover_rate:
            child = self.space.crossover(first, self._tournament(), self.rng)
        if self.rng.random() < self.options.mutation_rate or child == first:
            child = self.space.mutate(child, self.rng)
        return child

    def _tournament(self) -> Genome:
        a, b = self.rng.randrange(len(self.parents)), self.rng.randrange(len(self.parents))
        return self.parents[min(a, b, key=lambda i: (self._rank[i], i))][0]

    # ------------------------------------------------------------------ tell

    def tell(self, results: list[CandidateResult]) -> None:
        for result in results:
            self._seen.add(tuple(result.genome))
            costs = None if result.failed else getattr(result, "costs", None)
            self.offspring.append((tuple(result.genome), costs))
        self._asked = max(0, self._asked - len(results))
        if len(self.offspring) >= self.options.population_size:
            self._select()

    def _select(self) -> None:
        """Pool parents and offspring; keep the best `population_size` by front, then crowding."""
        pool = self.parents + self.offspring
        ranked = self._ranks(pool)
        keep = sorted(range(len(pool)), key=lambda i: (ranked[i], i))[: self.options.population_size]
        self.parents = [pool[i] for i in keep]
        self.offspring = []
        self.generation += 1
        full = self._ranks(self.parents)
        self._rank = {i: full[i] for i in range(len(self.parents))}

    @staticmethod
    def _ranks(members: list[Member]) -> dict[int, tuple[int, float]]:
        """Per member index: (front number, -crowding distance); failed members last."""
        scored = [i for i, (_, costs) in enumerate(members) if costs is not None]
        costs = [members[i][1] for i in scored]
        ranks: dict[int, tuple[int, float]] = {}
        fronts = non_dominated_fronts(costs)
        for number, front in enumerate(fronts):
            distance = crowding_distances(costs, front)
            for j in front:
                ranks[scored[j]] = (number, -distance[j])
        for i in range(len(members)):
            ranks.setdefault(i, (len(fronts), 0.0))
        return ranks

    def step_log(self) -> dict[str, float]:
        front = sum(1 for rank in self._rank.values() if rank[0] == 0)
        return {"generation": float(self.generation), "front_size": float(front)} if self.parents else {}


@hookimpl
def nasflow_search_strategies():
    return [Nsga2]
