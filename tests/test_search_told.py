"""What a real search run tells its strategy (full results, replayed identically on a re-run), the
per-step log it records, Pareto selection for training, and the checks at validation."""

import pytest

from nasflow.errors import SpecError
from nasflow.flows.pipeline import run_spec
from nasflow.plugin_api import CandidateResult
from nasflow.plugins.search.nsga2 import Nsga2
from nasflow.registry import Registry
from nasflow.spec import load_spec, parse_spec

from conftest import tiny_spec_text

PARETO = "{reward: accuracy, pareto: [accuracy, latency@onnxruntime-cpu, params]}"


def pareto_spec(tmp_path, train: bool = False, budget: int = 6) -> str:
    text = tiny_spec_text(tmp_path, name="pareto", objectives=PARETO, profile=False, train=train, morph=False, deploy=False)
    text = text.replace("  strategy: evolution\n", "  strategy: nsga2\n").replace(
        "  options: {population_size: 3, sample_size: 2}\n", "  options: {population_size: 4}\n"
    ).replace("  budget: 6\n", f"  budget: {budget}\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def told(monkeypatch):
    """Every result the nsga2 strategy is told, in order (the real tell still runs)."""
    seen: list[CandidateResult] = []
    original = Nsga2.tell

    def spy(self, results):
        seen.extend(results)
        return original(self, results)

    monkeypatch.setattr(Nsga2, "tell", spy)
    return seen


def test_the_strategy_is_told_full_results_and_a_rerun_tells_the_same(tmp_path, told):
    path = pareto_spec(tmp_path)
    summary = run_spec(load_spec(path))
    first = list(told)
    assert len(first) >= 6
    registry = Registry(tmp_path / "registry.duckdb")
    rows = {r["arch_hash"]: r for r in registry.get_candidates(summary.run_id, stage="search")}
    for result in first:
        assert isinstance(result, CandidateResult) and not result.failed
        assert result.accuracy_source == "proxy" and 0 <= result.accuracy <= 1
        assert set(result.latency) == {"torch-cpu", "onnxruntime-cpu"}
        assert all(lat.source == "measured" and lat.ms > 0 for lat in result.latency.values())
        assert result.params > 0 and result.macs > 0
        assert result.costs == (-result.accuracy, result.latency["onnxruntime-cpu"].ms, float(result.params))
    by_genome = {tuple(r["extra"]["genome"]): r for r in rows.values()}
    assert all(by_genome[r.genome]["accuracy"] == r.accuracy for r in first)

    told.clear()
    again = run_spec(load_spec(path))  # everything is in the registry: replayed, nothing re-evaluated
    assert again.run_id == summary.run_id
    assert [(r.genome, r.score, r.accuracy, r.latency, r.params, r.costs) for r in told] == [
        (r.genome, r.score, r.accuracy, r.latency, r.params, r.costs) for r in first
    ]
    log = registry.query(
        "SELECT step, metric, value FROM search_log WHERE run_id = ? ORDER BY step, metric", [summary.run_id]
    )[1]
    # batches of 3, a population of 4: the first generation is selected at step 2 (nothing to log before)
    assert [(s, m) for s, m, _ in log] == [(2, "front_size"), (2, "generation")] and log[1][2] == 1
    assert all(strategy == "nsga2" for (strategy,) in registry.query("SELECT strategy FROM search_log")[1])


def test_training_takes_its_top_k_from_the_pareto_front(tmp_path):
    from nasflow.objectives import non_dominated_fronts
    from nasflow.flows.told import candidate_result

    path = pareto_spec(tmp_path, train=True, budget=8)
    text = path.read_text().replace("top_k: 1, config: {epochs: 2}", "top_k: 2, config: {epochs: 1}")
    path.write_text(text)
    summary = run_spec(load_spec(path))
    registry = Registry(tmp_path / "registry.duckdb")
    search = [r for r in registry.get_candidates(summary.run_id, stage="search") if r["status"] == "ok"]
    measurements = registry.get_measurements([r["candidate_id"] for r in search])
    spec = load_spec(path).spec
    costs = [
        candidate_result((), r, [m for m in measurements if m["candidate_id"] == r["candidate_id"]], "measured", spec.pareto).costs
        for r in search
    ]
    front = {search[i]["candidate_id"] for i in non_dominated_fronts(costs)[0]}
    parents = {r["parent_id"] for r in registry.get_candidates(summary.run_id, stage="train")}
    assert len(parents) == 2
    assert parents <= front or front <= parents  # a front of one: the second pick comes from the next front


@pytest.mark.parametrize("change,message", [
    (("objectives: {reward: mnasnet, target_ms: 0.2}", "objectives: {pareto: [accuracy, latency@litert]}"),
     "objectives.pareto entry 'latency@litert' names a device not in devices"),
    (("objectives: {reward: mnasnet, target_ms: 0.2}", "objectives: {pareto: [accuracy, speed]}"),
     "unknown Pareto objective 'speed'; choose from accuracy, latency, params, macs, energy"),
    (("objectives: {reward: mnasnet, target_ms: 0.2}", "objectives: {pareto: [accuracy]}"),
     "objectives.pareto needs at least two objectives"),
    (("objectives: {reward: mnasnet, target_ms: 0.2}", "objectives: {pareto: [accuracy, latency]}"),
     "strategy 'evolution' ranks candidates by one score"),
    (("strategy: evolution", "strategy: nsga2"), "'nsga2' searches for a Pareto front and needs objectives.pareto"),
])
def test_bad_pareto_settings_are_refused_at_validation(tmp_path, change, message):
    text = tiny_spec_text(tmp_path).replace("  options: {population_size: 3, sample_size: 2}\n", "").replace(*change)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(text, "s.yaml")


def test_a_budget_below_the_first_population_names_the_minimum(tmp_path):
    text = tiny_spec_text(tmp_path, objectives="{pareto: [accuracy, latency]}").replace(
        "strategy: evolution", "strategy: nsga2").replace("{population_size: 3, sample_size: 2}", "{population_size: 8}")
    with pytest.raises(SpecError, match=r"search.budget: 6 is below what 'nsga2' needs with these options \(8: its first population\)"):
        parse_spec(text, "s.yaml")


def test_pareto_leaves_the_run_id_of_specs_without_it_alone(tmp_path):
    text = tiny_spec_text(tmp_path)
    assert parse_spec(text, "s.yaml").run_id() == parse_spec(text.replace("target_ms: 0.2}", "target_ms: 0.2, pareto: []}"), "s.yaml").run_id()


# ------------------------------------------------------------------ warm starts


def warm_spec(tmp_path, name: str, seed: int, warm: str = "", epochs: int = 1, strategy: str = "evolution") -> str:
    text = tiny_spec_text(tmp_path, name=name, objectives="{reward: accuracy}", profile=False, train=False, morph=False, deploy=False)
    text = text.replace("execution: {runner: thread,", f"execution: {{seed: {seed}, runner: thread,")
    text = text.replace("  proxy: {epochs: 1, subset: 0.5}\n", f"  proxy: {{epochs: {epochs}, subset: 0.5}}\n" + (f"  warm_start: {warm}\n" if warm else ""))
    if strategy != "evolution":
        text = text.replace("  strategy: evolution\n", f"  strategy: {strategy}\n").replace("  options: {population_size: 3, sample_size: 2}\n", "")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_warm_start_reuses_compatible_earlier_candidates_and_records_where_they_came_from(tmp_path, monkeypatch):
    from nasflow.plugins.search.evolution import RegularizedEvolution

    first = run_spec(load_spec(warm_spec(tmp_path, "cold", seed=0)))
    registry = Registry(tmp_path / "registry.duckdb")
    earlier = {r["arch_hash"]: r for r in registry.get_candidates(first.run_id, stage="search") if r["status"] == "ok"}

    warmed: list = []
    original = RegularizedEvolution.warm_start

    def spy(self, results):
        warmed.extend(results)
        return original(self, results)

    monkeypatch.setattr(RegularizedEvolution, "warm_start", spy)
    path = warm_spec(tmp_path, "warm", seed=1, warm="{enabled: true, top: 4}")
    second = run_spec(load_spec(path))
    rows = registry.get_candidates(second.run_id, stage="search")
    reused = [r for r in rows if (r["extra"] or {}).get("reused_from")]
    assert len(reused) == 4 and all(r["extra"]["reused_from"] == first.run_id for r in reused)
    best = sorted(earlier.values(), key=lambda r: (-r["score"], r["arch_hash"]))[:4]
    assert {r["arch_hash"] for r in reused} == {r["arch_hash"] for r in best}
    for r in reused:
        assert r["accuracy"] == earlier[r["arch_hash"]]["accuracy"] and r["extra"]["reused_candidate"] == earlier[r["arch_hash"]]["candidate_id"]
    copied = registry.get_measurements([r["candidate_id"] for r in reused])
    assert copied and all(m["extra"]["reused_from"] == first.run_id for m in copied)
    assert len(rows) - len(reused) == 6  # the budget counts this run's own evaluations only
    assert sorted(r.genome for r in warmed) == sorted(tuple(r["extra"]["genome"]) for r in reused)
    assert all(set(r.latency) == {"torch-cpu", "onnxruntime-cpu"} for r in warmed)

    warmed.clear()
    again = run_spec(load_spec(path))  # resumed: the same warm start, read back, nothing new
    assert again.run_id == second.run_id and len(registry.get_candidates(second.run_id, stage="search")) == len(rows)
    assert sorted(r.genome for r in warmed) == sorted(tuple(r["extra"]["genome"]) for r in reused)


def test_a_warm_start_with_nothing_compatible_warns_why(tmp_path):
    run_spec(load_spec(warm_spec(tmp_path, "cold", seed=0)))
    path = warm_spec(tmp_path, "other-space", seed=0, warm="{enabled: true}")
    path.write_text(path.read_text().replace("kernels: [3, 5]", "kernels: [3]"))
    summary = run_spec(load_spec(path))
    assert any("search.warm_start: no earlier candidate could be reused" in w and "were searched in another space" in w
               for w in summary.stages["search"]["warnings"]), summary.stages["search"]


def test_earlier_architectures_whose_numbers_do_not_carry_over_are_evaluated_again_first(tmp_path):
    first = run_spec(load_spec(warm_spec(tmp_path, "cold", seed=0)))
    registry = Registry(tmp_path / "registry.duckdb")
    earlier = sorted((r for r in registry.get_candidates(first.run_id, stage="search") if r["status"] == "ok"),
                     key=lambda r: (-r["score"], r["arch_hash"]))
    path = warm_spec(tmp_path, "other-proxy", seed=0, warm="{enabled: true, top: 3}", epochs=2)
    summary = run_spec(load_spec(path))
    rows = registry.get_candidates(summary.run_id, stage="search")
    seeded = [r for r in rows if (r["extra"] or {}).get("seeded_from")]
    assert {r["arch_hash"] for r in seeded} == {r["arch_hash"] for r in earlier[:3]}
    assert all(r["extra"]["seeded_from"] == first.run_id and r["train_epochs"] == 2 for r in seeded)  # trained anew
    assert not any((r["extra"] or {}).get("reused_from") for r in rows)
    assert len(rows) == 6 and summary.stages["search"]["evaluated"] == 6  # the seeds count against the budget
    again = run_spec(load_spec(path))  # resumed: the same seeds, nothing evaluated again
    assert again.stages["search"]["evaluated"] == 0 and len(registry.get_candidates(summary.run_id, stage="search")) == 6


@pytest.mark.parametrize("strategy", ["optuna", "nsga2", "mnasnet"])
def test_every_strategy_takes_a_warm_start(tmp_path, strategy):
    run_spec(load_spec(warm_spec(tmp_path, "cold", seed=0)))
    text = warm_spec(tmp_path, f"warm-{strategy}", seed=2, warm="{enabled: true, top: 3}", strategy=strategy).read_text()
    if strategy == "nsga2":
        text = text.replace("objectives: {reward: accuracy}", "objectives: {pareto: [accuracy, latency]}").replace(
            "  strategy: nsga2\n", "  strategy: nsga2\n  options: {population_size: 4}\n")
    path = tmp_path / "w.yaml"
    path.write_text(text)
    summary = run_spec(load_spec(path))
    assert summary.stages["search"]["warm_start"] == 3 and summary.stages["search"]["evaluated"] == 6


# ------------------------------------------------------------------ strategies that cannot be replayed

UNSEEDED = '''
import random

from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import SearchStrategy


class Unseeded(SearchStrategy):
    """Proposes from an unseeded generator: a replay would propose other genomes."""

    name = "unseeded-test"

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self.rng = random.Random()
        self.told = []
        self.restored = 0

    def ask(self, n):
        proposals = []
        while len(proposals) < n:  # never a repeat, so every proposal is a new evaluation
            genome = self.space.sample(self.rng)
            if list(genome) not in self.told and genome not in proposals:
                proposals.append(genome)
        return proposals

    def tell(self, results):
        self.told += [list(r.genome) for r in results]

    def state_dict(self):
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "told": self.told, "restored": self.restored}

    def load_state_dict(self, state):
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.told = state["told"]
        self.restored = state["restored"] + 1


@hookimpl
def nasflow_search_strategies():
    return [Unseeded]
'''


@pytest.fixture
def unseeded(tmp_path, monkeypatch):
    import sys

    from nasflow.plugins import reset_plugins
    from test_plugins import install_dist

    site = tmp_path / "site"
    site.mkdir()
    install_dist(site, "nasflow-unseeded", "0.1", "nasflow_unseeded", UNSEEDED, "unseeded")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_plugins()
    yield
    sys.modules.pop("nasflow_unseeded", None)
    monkeypatch.undo()
    reset_plugins()


def test_a_strategy_that_cannot_replay_is_restored_from_its_saved_state(tmp_path, unseeded):
    text = tiny_spec_text(tmp_path, name="unseeded", objectives="{reward: accuracy}", profile=False, train=False, morph=False, deploy=False)
    text = text.replace("  strategy: evolution\n", "  strategy: unseeded-test\n").replace("  options: {population_size: 3, sample_size: 2}\n", "")
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("  budget: 6\n", "  budget: 4\n"))
    first = run_spec(load_spec(path))
    registry = Registry(tmp_path / "registry.duckdb")
    states = registry.query("SELECT step, state, pending FROM search_state WHERE run_id = ? ORDER BY step", [first.run_id])[1]
    assert [s for s, _, _ in states] == [1, 2]
    pending = [tuple(g) for g in states[-1][2]]
    assert len(pending) == 2 and len(states[-1][1]["told"]) == 4  # batches of 3: the budget cut the second after 1

    path.write_text(text.replace("  budget: 6\n", "  budget: 8\n"))
    second = run_spec(load_spec(path))
    assert second.run_id == first.run_id
    rows = registry.get_candidates(first.run_id, stage="search")
    assert len(rows) == 8 and second.stages["search"]["evaluated"] == 4
    genomes = {tuple(r["extra"]["genome"]) for r in rows}
    assert set(pending) <= genomes  # the cut batch's rest was evaluated first, not re-proposed differently
    last = registry.latest_search_state(first.run_id)
    assert last["step"] > 2 and last["state"]["restored"] == 1 and len(last["state"]["told"]) == 8


def test_validate_says_what_the_search_will_rank_by():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "nasflow.cli", "validate", str(root / "examples" / "pareto.yaml")],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert ("search nsga2: 24 architectures in batches of 4, by Pareto front of accuracy, latency@torch-cpu, "
            "latency@onnxruntime-cpu (measured latency); warm start from earlier runs in the registry") in out.stdout
