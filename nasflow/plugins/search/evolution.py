"""`evolution` search strategy: regularized (aging) evolution, Real et al. 2019."""

from __future__ import annotations

from collections import deque

from pydantic import Field, model_validator

from ...hookspecs import hookimpl
from ...plugin_api import CandidateResult, Genome, PluginOptions, SearchStrategy


class EvolutionOptions(PluginOptions):
    population_size: int = Field(10, ge=2, description="individuals alive at once (oldest dies first)")
    sample_size: int = Field(3, ge=1, description="tournament size when picking a parent")

    @model_validator(mode="after")
    def _sample_fits(self) -> "EvolutionOptions":
        if self.sample_size > self.population_size:
            raise ValueError("sample_size must not exceed population_size")
        return self


class RegularizedEvolution(SearchStrategy):
    """Tournament-select a parent, mutate one layer, and retire the oldest, not the worst.

    Ageing out the oldest individual (rather than the worst) keeps the population from being
    dominated by one lucky proxy-trained score, which is why it beats plain tournament
    evolution under noisy proxy accuracies. Failed candidates (score None) never win a
    tournament but still age out.
    """

    name = "evolution"
    description = "regularized (aging) evolution with tournament selection and one-layer mutation"
    Options = EvolutionOptions

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self.population: deque[tuple[Genome, float | None]] = deque()
        self._pending = 0

    def ask(self, n: int) -> list[Genome]:
        proposals = []
        for _ in range(n):
            if len(self.population) + self._pending < self.options.population_size:
                proposals.append(self.space.sample(self.rng))
                self._pending += 1
            else:
                proposals.append(self.space.mutate(self._tournament(), self.rng))
        return proposals

    def _tournament(self) -> Genome:
        if not self.population:  # whole first generation still pending: nothing to select from
            return self.space.sample(self.rng)
        contenders = self.rng.sample(list(self.population), min(self.options.sample_size, len(self.population)))
        best = max(contenders, key=lambda item: float("-inf") if item[1] is None else item[1])
        return best[0]

    def tell(self, results: list[CandidateResult]) -> None:
        for genome, score in results:
            self.population.append((genome, score))
            if len(self.population) > self.options.population_size:
                self.population.popleft()
        self._pending = max(0, self._pending - len(results))


@hookimpl
def nasflow_search_strategies():
    return [RegularizedEvolution]
