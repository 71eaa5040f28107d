"""`random` search strategy: uniform samples of the space, without repeats while the space allows."""

from __future__ import annotations

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import CandidateResult, Genome, PluginOptions, SearchStrategy


class RandomOptions(PluginOptions):
    max_tries: int = Field(50, ge=1, description="resamples per proposal to avoid a repeat")


class RandomSearch(SearchStrategy):
    """Baseline every NAS paper compares against: sample each layer's choice uniformly."""

    name = "random"
    description = "uniform random sampling of the space (no repeats while possible)"
    Options = RandomOptions
    pareto_support = "accepted"  # the baseline of multi-objective searches too

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self._seen: set[Genome] = set()

    def ask(self, n: int) -> list[Genome]:
        proposals = []
        for _ in range(n):
            genome = self.space.sample(self.rng)
            for _ in range(self.options.max_tries):
                if genome not in self._seen:
                    break
                genome = self.space.sample(self.rng)
            self._seen.add(genome)
            proposals.append(genome)
        return proposals

    def tell(self, results: list[CandidateResult]) -> None:
        """Random search ignores scores."""


@hookimpl
def nasflow_search_strategies():
    return [RandomSearch]
