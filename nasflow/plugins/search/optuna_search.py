"""`optuna` search strategy: Optuna's samplers through its ask/tell interface.

Each decision of the space is one categorical parameter (its choice index; an integer one for
CMA-ES, which samples a continuous relaxation and works on ordered numbers). The study lives in
Optuna's in-memory storage: a resumed run re-creates it by replaying the recorded results in
order, which reproduces the proposals because every sampler is seeded from the run's seed.
With `objectives.pareto` the study is multi-objective (one direction per objective, all
minimised costs); otherwise it maximises the spec's scalar score.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

from pydantic import Field, model_validator

from ...hookspecs import hookimpl
from ...plugin_api import CandidateResult, Genome, PluginOptions, SearchStrategy

SAMPLERS = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "cmaes": "CmaEsSampler", "random": "RandomSampler"}
"""Option value -> Optuna sampler class (in `optuna.samplers`)."""

_OWNED = {"seed"}  # set from execution.seed, so runs replay; not a user option


def sampler_parameters(sampler: str) -> list[str]:
    """The keyword options Optuna's sampler class accepts (without the seed nasflow sets)."""
    import optuna

    cls = getattr(optuna.samplers, SAMPLERS[sampler])
    return [name for name in inspect.signature(cls).parameters if name not in _OWNED | {"self", "args", "kwargs"}]


class OptunaOptions(PluginOptions):
    sampler: Literal["tpe", "nsga2", "cmaes", "random"] = Field("tpe", description="Optuna sampler")
    sampler_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the Optuna sampler class (e.g. n_startup_trials for tpe)"
    )

    @model_validator(mode="after")
    def _known_sampler_options(self) -> "OptunaOptions":
        if not self.sampler_options:
            return self
        allowed = sampler_parameters(self.sampler)
        unknown = sorted(set(self.sampler_options) - set(allowed))
        if unknown:
            raise ValueError(
                f"Optuna's {SAMPLERS[self.sampler]} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(sorted(allowed))}"
                + (" (the seed comes from execution.seed)" if "seed" in unknown else "")
            )
        return self


class OptunaSearch(SearchStrategy):
    """A thin adapter: Optuna decides, nasflow evaluates; no sampler logic is written here."""

    name = "optuna"
    description = "Optuna samplers (tpe, nsga2, cmaes, random) via study.ask / study.tell"
    Options = OptunaOptions
    pareto_support = "accepted"

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self._seed = seed
        self._study = None
        self._pending: list[Any] = []  # asked trials, oldest first, awaiting their results

    @classmethod
    def minimum_budget(cls, options: OptunaOptions) -> int:
        if options.sampler == "nsga2":
            return int(options.sampler_options.get("population_size", 50))
        return 1

    def _make_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        multi = len(self.pareto_labels) > 0
        if multi and self.options.sampler == "cmaes":
            raise ValueError("Optuna's CMA-ES sampler is single-objective; remove objectives.pareto or pick tpe / nsga2")
        cls = getattr(optuna.samplers, SAMPLERS[self.options.sampler])
        with warnings.catch_warnings():  # some sampler options are flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = cls(seed=self._seed, **self.options.sampler_options)
        directions = ["minimize"] * len(self.pareto_labels) if multi else ["maximize"]
        return optuna.create_study(directions=directions, sampler=sampler)

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if self.options.sampler == "cmaes":
            return {d.name: IntDistribution(0, len(d.choices) - 1) for d in self.space.decisions}
        return {d.name: CategoricalDistribution(list(range(len(d.choices)))) for d in self.space.decisions}

    def ask(self, n: int) -> list[Genome]:
        if self._study is None:
            self._study = self._make_study()
        distributions = self._distributions()
        proposals = []
        for _ in range(n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. CMA-ES's note that it falls back for some parameters
                trial = self._study.ask(fixed_distributions=distributions)
            self._pending.append(trial)
            proposals.append(tuple(int(trial.params[d.name]) for d in self.space.decisions))
        return proposals

    def tell(self, results: list[CandidateResult]) -> None:
        from optuna.trial import TrialState

        for result in results:
            trial = self._pending.pop(0)
            _, score = result
            if score is None:
                values = None
            elif self.pareto_labels:
                values = result.costs  # None when a Pareto objective has no value for it
            else:
                values = [float(score)]
            if values is None:
                self._study.tell(trial, state=TrialState.FAIL)
            else:
                self._study.tell(trial, list(values))

    def warm_start(self, results: list[CandidateResult]) -> None:
        """Earlier results go into the study as finished trials, so the sampler starts from them."""
        import optuna

        if self._study is None:
            self._study = self._make_study()
        distributions = self._distributions()
        for result in results:
            values = result.costs if self.pareto_labels else (None if result.score is None else [float(result.score)])
            if values is None:
                continue
            params = {d.name: int(g) for d, g in zip(self.space.decisions, result.genome)}
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=list(values)))

    def step_log(self) -> dict[str, float]:
        if self._study is None:
            return {}
        from optuna.trial import TrialState

        complete = self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        log = {"complete_trials": float(len(complete))}
        if complete and not self.pareto_labels:
            log["best_value"] = float(self._study.best_value)
        elif complete:
            log["front_size"] = float(len(self._study.best_trials))
        return log


@hookimpl
def nasflow_search_strategies():
    return [OptunaSearch]
