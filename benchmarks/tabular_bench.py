"""Tabular benchmark of the search strategies: every architecture of a small space evaluated once,
then every strategy run on table look-ups, where evaluation is exact and free.

On a noisy 2-core machine a strategy that does not learn looks just like one that does; on a
table it cannot hide. Two steps:

``build``
    Evaluates every architecture of a small ``layerwise`` space (preset ``default``: 4 layers,
    kernels 3/5 x expansions 1/3/6, skip where allowed, 1,512 architectures) on ``digits``:
    a proxy training (``--epochs``, fixed seed, nasflow's own training) for validation accuracy,
    and the LUT-sum latency on litert and onnxruntime-cpu (1 thread; each LUT timed once here, as
    ``nasflow profile`` does). Rows go to a DuckDB file (``--table``, a build output: not
    committed) as they finish, with the command, the devices' fingerprints and the settings in
    its ``meta`` table; an interrupted build resumes where it stopped.
``run``
    Runs each strategy ``--seeds`` times with a budget of ``--budget-share`` of the space,
    counting distinct architectures as the search flow does (a repeat is told its recorded
    result for free). The scalar score is MnasNet's soft reward ACC x (LAT/T)^-0.07 on litert
    (T: the table's median litert latency); Pareto strategies search (accuracy, litert latency).
    Reported per strategy under ``strategies.<name>``: ``median_regret`` (optimum score of the
    table minus the best score found), ``median_evals_to_top1pct`` (distinct evaluations until an
    architecture of the table's top 1 % by score is found; null when the median run never finds
    one), ``top1pct_found_share``, and for Pareto strategies ``median_hypervolume_share`` (of the
    table's true front, accuracy x litert latency). The RL controller's policy entropy, first and
    last step, shows whether it learned. Writes ``benchmarks/results/tabular_bench.json`` and a
    plot (median regret vs evaluations, one line per strategy).

Run from the repository root::

    .venv/bin/python benchmarks/tabular_bench.py build             # about 40 minutes here
    .venv/bin/python benchmarks/tabular_bench.py run               # a few minutes
    .venv/bin/python benchmarks/tabular_bench.py --markdown        # the README table
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import duckdb

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TABLE = ROOT / ".nasflow" / "tabular" / "tabular_{preset}.duckdb"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "tabular_bench.json"
DEFAULT_PLOT = ROOT / "benchmarks" / "results" / "tabular_bench.svg"
DEVICES = ("litert", "onnxruntime-cpu")
OBJECTIVE_DEVICE = "litert"
SOFT_W = -0.07  # MnasNet's soft constraint

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "stem_channels": 8,
        "stages": [{"channels": 8, "layers": 1}, {"channels": 16, "layers": 2, "stride": 2}, {"channels": 24, "layers": 1, "stride": 2}],
        "kernels": [3, 5], "expansions": [1, 3, 6], "head_channels": 32,
    },
    # for tests: 12 architectures
    "tiny": {
        "stem_channels": 8, "stages": [{"channels": 8, "layers": 1}, {"channels": 16, "layers": 2, "stride": 2}],
        "kernels": [3], "expansions": [1, 3], "head_channels": 16,
    },
}

# name -> (strategy plugin, its options, whether it searches the Pareto front)
STRATEGIES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "random": ("random", {}, False),
    "evolution": ("evolution", {"population_size": 16, "sample_size": 4}, False),
    "mnasnet": ("mnasnet", {}, False),
    "optuna-tpe": ("optuna", {"sampler": "tpe"}, False),
    "random-pareto": ("random", {}, True),
    "nsga2": ("nsga2", {"population_size": 16}, True),
    "optuna-nsga2": ("optuna", {"sampler": "nsga2", "sampler_options": {"population_size": 16}}, True),
}
BASELINE, PARETO_BASELINE = "random", "random-pareto"


def log(message: str) -> None:
    print(f"[tabular] {message}", file=sys.stderr, flush=True)


def make_space(preset: str):
    from nasflow.plugin_api import Geometry
    from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace

    return LayerwiseSpace(LayerwiseOptions.model_validate(PRESETS[preset]), Geometry(1, 10, 8))


def all_genomes(space) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(len(d.choices)) for d in space.decisions)))


# ------------------------------------------------------------------------------------ build


def _dataset():
    from nasflow.config import DatasetConfig

    return DatasetConfig(name="digits", val_split=0.25, cache_dir=str(ROOT / ".nasflow" / "tabular" / "cache"))


def _train(arch: str, epochs: int, seed: int) -> dict[str, Any]:
    """One proxy training in a worker process (1 torch thread: workers must not share cores)."""
    import torch

    torch.set_num_threads(1)
    from nasflow.config import TrainConfig
    from nasflow.flows.evaluate import train_one

    return train_one(arch, _dataset(), TrainConfig(seed=seed), epochs, 1.0, device="cpu")


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE IF NOT EXISTS archs (genome VARCHAR PRIMARY KEY, arch VARCHAR, accuracy DOUBLE, val_loss DOUBLE, "
        "train_seconds DOUBLE, params BIGINT, macs BIGINT, litert_ms DOUBLE, onnxruntime_ms DOUBLE)"
    )
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value JSON)")
    return con


def _meta(con, key: str) -> Any:
    row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def _set_meta(con, key: str, value: Any) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, json.dumps(value)])


def _lut_predictors(con, space) -> dict[str, Any]:
    """LUT-sum predictors per device at digits geometry, each LUT timed once and kept in `meta`."""
    from nasflow.lut import build_lut
    from nasflow.plugins import get_plugins
    from nasflow.predictors import LutSumPredictor

    predictors = {}
    for name in DEVICES:
        stored = _meta(con, f"lut:{name}")
        if stored is None:
            device = get_plugins().create("device", name, {"threads": 1})
            log(f"{name}: timing the LUT")
            start = time.perf_counter()
            rows = build_lut(device, space, 1, 10, 8)
            stored = {
                "fingerprint": device.fingerprint(), "build_seconds": time.perf_counter() - start,
                "entries": [[r["op_key"], r["input_shape"], r["median_ms"]] for r in rows],
            }
            _set_meta(con, f"lut:{name}", stored)
        table = {(key, shape): ms for key, shape, ms in stored["entries"]}
        predictors[name] = LutSumPredictor(table, 1, 10, 8)
    return predictors


def build(args: argparse.Namespace) -> int:
    from nasflow.arch import count_arch_params, count_macs, format_arch

    space = make_space(args.preset)
    path = Path(str(args.table).format(preset=args.preset))
    con = _connect(path)
    settings = {"preset": args.preset, "space": PRESETS[args.preset], "epochs": args.epochs, "seed": args.seed, "dataset": "digits"}
    previous = _meta(con, "settings")
    if previous is not None and previous != settings:
        raise SystemExit(f"error: {path} was built with other settings ({previous}); pass another --table")
    _set_meta(con, "settings", settings)
    _set_meta(con, "command", " ".join(sys.argv))
    predictors = _lut_predictors(con, space)
    done = {g for (g,) in con.execute("SELECT genome FROM archs").fetchall()}
    todo = [g for g in all_genomes(space) if json.dumps(list(g)) not in done]
    log(f"{len(done)} of {space.size()} architectures in {path}; training {len(todo)} ({args.workers} workers)")
    start, finished = time.perf_counter(), 0
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(_train, format_arch(space.to_arch(g)), args.epochs, args.seed): g for g in todo}
        for future in as_completed(futures):
            genome = futures[future]
            arch = space.to_arch(genome)
            result = future.result()
            if result.get("error"):
                raise SystemExit(f"error: training {format_arch(arch)} failed: {result['error']}")
            con.execute(
                "INSERT INTO archs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [json.dumps(list(genome)), format_arch(arch), result["accuracy"], result["val_loss"], result["train_seconds"],
                 count_arch_params(arch, 1, 10), count_macs(arch, 1, 10, 8),
                 predictors["litert"].predict(arch), predictors["onnxruntime-cpu"].predict(arch)],
            )
            finished += 1
            if finished % 25 == 0 or finished == len(todo):
                rate = finished / (time.perf_counter() - start)
                log(f"{len(done) + finished} of {space.size()} ({rate:.2f}/s, {(len(todo) - finished) / rate / 60:.1f} min left)")
    con.close()
    return 0


# ------------------------------------------------------------------------------------ run


def load_table(path: Path) -> tuple[dict[tuple[int, ...], dict[str, Any]], dict[str, Any]]:
    con = duckdb.connect(str(path), read_only=True)
    columns = [c[0] for c in con.execute("SELECT * FROM archs LIMIT 0").description]
    rows = {tuple(json.loads(r[0])): dict(zip(columns, r)) for r in con.execute("SELECT * FROM archs").fetchall()}
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
    con.close()
    return rows, meta


def scored_table(rows: dict, target_ms: float) -> dict[tuple[int, ...], float]:
    return {g: r["accuracy"] * (r["litert_ms"] / target_ms) ** SOFT_W for g, r in rows.items()}


def _result(genome, row: dict, score: float):
    from nasflow.plugin_api import CandidateResult, DeviceLatency

    latency = {"litert": DeviceLatency(row["litert_ms"], "lut"), "onnxruntime-cpu": DeviceLatency(row["onnxruntime_ms"], "lut")}
    return CandidateResult(
        tuple(genome), score, accuracy=row["accuracy"], accuracy_source="proxy", latency=latency,
        params=row["params"], macs=row["macs"], costs=(-row["accuracy"], row["litert_ms"]),
    )


def simulate(space, rows: dict, scores: dict, strategy_name: str, seed: int, budget: int, batch: int) -> dict[str, Any]:
    """One search on the table, as the search flow runs it: distinct evaluations up to the budget."""
    from nasflow.plugins import get_plugins

    plugin, options, pareto = STRATEGIES[strategy_name]
    strategy = get_plugins().create("search", plugin, options, space, seed)
    if pareto:
        strategy.pareto_labels = ("accuracy", f"latency@{OBJECTIVE_DEVICE}")
    seen: dict[tuple[int, ...], Any] = {}
    order: list[tuple[int, ...]] = []
    logs: list[dict[str, float]] = []
    stalled = 0
    while len(order) < budget and stalled < 200:
        genomes = [tuple(g) for g in strategy.ask(batch)]
        told = []
        for genome in genomes:
            if genome not in seen:
                if len(order) >= budget:
                    break  # the budget cuts the batch short, as in the flow
                seen[genome] = _result(genome, rows[genome], scores[genome])
                order.append(genome)
            told.append(seen[genome])
        stalled = 0 if any(g in order[-len(genomes):] for g in genomes) else stalled + len(genomes)
        strategy.tell(told)
        logs.append(strategy.step_log())
    return {"order": order, "logs": logs}


def hypervolume_share(points: list[tuple[float, float]], true_front: list[tuple[float, float]], reference) -> float:
    from nasflow.objectives import hypervolume_2d

    return hypervolume_2d(points, reference) / hypervolume_2d(true_front, reference)


def run(args: argparse.Namespace) -> int:
    from nasflow.objectives import non_dominated_fronts

    space = make_space(args.preset)
    path = Path(str(args.table).format(preset=args.preset))
    if not path.exists():
        raise SystemExit(f"error: no table at {path}; run `benchmarks/tabular_bench.py build --preset {args.preset}` first")
    rows, meta = load_table(path)
    if len(rows) < space.size():
        raise SystemExit(f"error: {path} holds {len(rows)} of {space.size()} architectures; finish `build` first")
    target = statistics.median(r["litert_ms"] for r in rows.values())
    scores = scored_table(rows, target)
    ranked = sorted(scores.values(), reverse=True)
    optimum = ranked[0]
    top_n = max(1, math.ceil(0.01 * len(ranked)))
    top_threshold = ranked[top_n - 1]
    costs = {g: (-r["accuracy"], r["litert_ms"]) for g, r in rows.items()}
    genomes = list(costs)
    all_costs = [costs[g] for g in genomes]
    true_front = [all_costs[i] for i in non_dominated_fronts(all_costs)[0]]
    reference = (-min(r["accuracy"] for r in rows.values()), max(r["litert_ms"] for r in rows.values()))
    budget = max(1, round(args.budget_share * len(rows)))
    report: dict[str, Any] = {
        "benchmark": "tabular_bench",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("torch", "optuna"),
        "table": {
            "path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "architectures": len(rows),
            "settings": meta.get("settings"), "command": meta.get("command"),
            "lut": {d: {"fingerprint": meta[f"lut:{d}"]["fingerprint"], "entries": len(meta[f"lut:{d}"]["entries"]),
                        "build_seconds": meta[f"lut:{d}"]["build_seconds"]} for d in DEVICES},
            "accuracy": "proxy, validation split", "latency": "lut (LUT-sum, 1 thread)",
        },
        "settings": {"seeds": args.seeds, "budget": budget, "batch_size": args.batch, "score": f"mnasnet soft reward on {OBJECTIVE_DEVICE}, w = {SOFT_W}",
                     "target_ms": target, "optimum": optimum, "top1pct": {"architectures": top_n, "threshold": top_threshold},
                     "pareto": ["accuracy", f"latency@{OBJECTIVE_DEVICE}"], "true_front_size": len(true_front)},
        "strategies": {},
    }
    for name in args.strategies:
        plugin, options, pareto = STRATEGIES[name]
        regrets, evals_to_top, hv, curves, entropy = [], [], [], [], []
        start = time.perf_counter()
        for seed in range(args.seeds):
            sim = simulate(space, rows, scores, name, seed, budget, args.batch)
            found = [scores[g] for g in sim["order"]]
            best = list(itertools.accumulate(found, max))
            curves.append([optimum - b for b in best] + [optimum - best[-1]] * (budget - len(best)))
            regrets.append(optimum - best[-1])
            hit = next((i + 1 for i, s in enumerate(found) if s >= top_threshold), None)
            evals_to_top.append(hit)
            if pareto:
                hv.append(hypervolume_share([costs[g] for g in sim["order"]], true_front, reference))
            entropies = [entry["entropy"] for entry in sim["logs"] if "entropy" in entry]
            if entropies:
                entropy.append((entropies[0], entropies[-1]))
        censored = [math.inf if e is None else e for e in evals_to_top]
        median_hit = statistics.median(censored)
        entry: dict[str, Any] = {
            "plugin": plugin, "options": options, "pareto": pareto,
            "median_regret": statistics.median(regrets),
            "median_evals_to_top1pct": None if math.isinf(median_hit) else median_hit,
            "top1pct_found_share": sum(e is not None for e in evals_to_top) / len(evals_to_top),
            "regrets": regrets, "evals_to_top1pct": evals_to_top,
            "median_regret_curve": [statistics.median(c[i] for c in curves) for i in range(budget)],
            "seconds": time.perf_counter() - start,
        }
        if pareto:
            entry["median_hypervolume_share"] = statistics.median(hv)
            entry["hypervolume_shares"] = hv
        if entropy:
            entry["entropy"] = {"median_first": statistics.median(a for a, _ in entropy), "median_last": statistics.median(b for _, b in entropy),
                                "fell_share": sum(b < a for a, b in entropy) / len(entropy)}
        report["strategies"][name] = entry
        log(f"{name}: median regret {entry['median_regret']:.4f}, evaluations to top 1 % {entry['median_evals_to_top1pct']}"
            + (f", hypervolume share {entry['median_hypervolume_share']:.3f}" if pareto else ""))
    report["verdict"] = verdict(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, Path(args.plot))
    print(markdown(report))
    return 0


def _beats(entry: dict, base: dict) -> dict[str, bool]:
    inf = math.inf
    hit, base_hit = entry["median_evals_to_top1pct"], base["median_evals_to_top1pct"]
    result = {
        "regret": entry["median_regret"] < base["median_regret"],
        "evals_to_top1pct": (hit if hit is not None else inf) < (base_hit if base_hit is not None else inf),
    }
    if "median_hypervolume_share" in entry and "median_hypervolume_share" in base:
        result["hypervolume"] = entry["median_hypervolume_share"] > base["median_hypervolume_share"]
    return result


def verdict(report: dict) -> dict[str, dict[str, bool]]:
    """Per strategy: does it beat random (the Pareto baseline for Pareto strategies) on each measure."""
    strategies = report["strategies"]
    out = {}
    for name, entry in strategies.items():
        base = PARETO_BASELINE if entry["pareto"] else BASELINE
        if name != base and base in strategies:
            out[name] = _beats(entry, strategies[base])
    return out


def plot(report: dict, path: Path) -> None:
    """Median regret vs distinct evaluations, one line per strategy (Altair, rendered to SVG)."""
    import altair as alt

    points = [
        {"strategy": name, "evaluations": i + 1, "median regret": value}
        for name, entry in report["strategies"].items()
        for i, value in enumerate(entry["median_regret_curve"])
    ]
    chart = alt.Chart(alt.Data(values=points)).mark_line().encode(
        x=alt.X("evaluations:Q", title="distinct architectures evaluated"),
        y=alt.Y("median regret:Q", title=f"median regret over {report['settings']['seeds']} seeds"),
        color=alt.Color("strategy:N"),
    ).properties(width=520, height=300, title=f"Tabular benchmark: {report['table']['architectures']:,} architectures")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path))


def _layers(table: dict) -> int:
    return sum(stage["layers"] for stage in table["settings"]["space"]["stages"])


def markdown(report: dict) -> str:
    settings, table = report["settings"], report["table"]
    rows = []
    for name, e in report["strategies"].items():
        beats = report["verdict"].get(name)
        rows.append([
            name, tables.significant(e["median_regret"]),
            "never (median run)" if e["median_evals_to_top1pct"] is None else tables.number(e["median_evals_to_top1pct"], 0),
            tables.percent(e["top1pct_found_share"], 0),
            tables.percent(e["median_hypervolume_share"]) if "median_hypervolume_share" in e else "-",
            "-" if beats is None else ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in beats.items()),
        ])
    head = tables.paragraph(
        f"{table['architectures']:,} architectures of a {_layers(table)}-layer `layerwise` space on `digits`, each evaluated once "
        f"({table['accuracy']} accuracy, {table['settings']['epochs']} epochs; {table['latency']} latency on litert and "
        f"onnxruntime-cpu). {settings['seeds']} seeds per strategy, budget {settings['budget']} distinct architectures "
        f"(batches of {settings['batch_size']}); score: {settings['score']}, T = {settings['target_ms']:.3g} ms; top 1 % = "
        f"{settings['top1pct']['architectures']} architectures.",
    )
    body = tables.table(
        ["strategy", "median regret", "median evaluations to top 1 %", "runs reaching top 1 %", "median hypervolume share", "beats random on"],
        rows,
    )
    notes = []
    rl = report["strategies"].get("mnasnet", {}).get("entropy")
    if rl:
        notes.append(tables.paragraph(
            f"The RL controller's policy entropy: median {rl['median_first']:.3g} at the first step, {rl['median_last']:.3g} at "
            f"the last; it fell in {tables.percent(rl['fell_share'], 0)} of the runs."
        ))
    return tables.blocks(head, body, *notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tables.add_markdown_option(parser)
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="evaluate every architecture of the space once (resumes)")
    b.add_argument("--preset", choices=sorted(PRESETS), default="default")
    b.add_argument("--table", default=str(DEFAULT_TABLE))
    b.add_argument("--epochs", type=int, default=5)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    r = sub.add_parser("run", help="run every strategy on the table")
    r.add_argument("--preset", choices=sorted(PRESETS), default="default")
    r.add_argument("--table", default=str(DEFAULT_TABLE))
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--budget-share", type=float, default=0.1)
    r.add_argument("--batch", type=int, default=8)
    r.add_argument("--strategies", nargs="+", choices=sorted(STRATEGIES), default=list(STRATEGIES))
    r.add_argument("--out", default=str(DEFAULT_OUT))
    r.add_argument("--plot", default=str(DEFAULT_PLOT), help="SVG path ('' for none)")
    args = parser.parse_args(argv)
    if args.markdown:
        return tables.print_markdown("tabular_bench", markdown, DEFAULT_OUT)
    if args.command == "build":
        return build(args)
    if args.command == "run":
        import torch

        torch.set_num_threads(1)  # the RL controller's networks are tiny
        return run(args)
    parser.error("give a command: build or run (or --markdown)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
