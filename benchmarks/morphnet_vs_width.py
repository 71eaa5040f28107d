"""MorphNet against the width multiplier (and torch-pruning) on CIFAR-10: FLOPs saved at equal accuracy.

The setting (issue "MorphNet as the paper describes it"): 32x32 CIFAR-10 from
`../shared/data/cifar10-jpeg.tar.gz` (`--images` stratified training images, 10 % of them for
validation; the 10,000 test images for test accuracy). One seed network, `--seed-arch`; the
default is a MobileNetV2-style CIFAR network (`SEED_ARCH`: MobileNetV2's stages and ReLU6, one or
two blocks per stage, the stem at stride 1, a 320-wide head: 3.2 MMACs). The zoo's
MobileNetV2-0.5 CIFAR variant the issue suggests has 28 MMACs and trains at about 25 images/s on
one core here: 30 trainings of it do not fit in two hours on two cores. A first try with an
8.4 MMAC seed at 5 epochs was stopped: its width family was not capacity-bound (alpha 0.5 at
3.2 MMACs tested 57.0 %, alpha 1 at 8.4 MMACs 56.2 %), so no accuracy could be matched.

- **width multiplier**: the seed with every width times each `--alphas` (MobileNet's rounding, to
  multiples of `--divisor`, 4: with 8 the seed's 8-channel layers cannot shrink), trained from scratch;
- **MorphNet** (`target: flops`): the trained seed regularised for `--reg-epochs` at
  `--strength`, shrunk, and expanded by bisection to each `--budgets` share of the seed's MACs;
  the learned architecture is then trained from scratch, as the MorphNet paper retrains its
  final structures;
- **MorphNet, latency target** (with `--latency`, litert): the same at the middle budget, its
  channels priced by a width-aware latency model fitted to a LUT measured here on litert (every
  operator of the width family), the budget a share of the seed's estimated latency;
- **prune** (torch-pruning, magnitude): the trained seed cut to each budget's share of the MACs,
  trained from scratch as well.

Every final architecture is trained `--epochs` from scratch with the same recipe for each of
`--seeds`; test accuracy is the mean over seeds. Each unique architecture's litert latency is
measured (fastest of 3 passes) at the end, when no training runs. `flops_reduction_at_equal_accuracy`
is, per MorphNet model, 1 - its MACs / the width family's MACs at its accuracy (linear in
log MACs between the two family members bracketing it; none outside the family's range).

Resumable: every finished unit (a training, a structure, the LUT, a latency) is written to
`benchmarks/results/state/morphnet_vs_width.json` at once; a re-run with the same settings skips
them. The trained seed's weights are cached under `.cache/` (retrained when missing).

Run from the repository root::

    .venv/bin/python benchmarks/morphnet_vs_width.py --latency          # the setting (about 2 hours)
    .venv/bin/python benchmarks/morphnet_vs_width.py --images 600 --epochs 1 --alphas 0.5 1.0 \\
        --budgets 0.6 --seeds 0 --out /tmp/m.json --state /tmp/m.state.json   # a smoke run
    .venv/bin/python benchmarks/morphnet_vs_width.py --markdown          # the README table, from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

NAME = "morphnet_vs_width"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / f"{NAME}.json"
DEFAULT_STATE = ROOT / "benchmarks" / "results" / "state" / f"{NAME}.json"  # outside results/*.json: not a report
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SEED_ARCH = (
    "stem_c8_s1_arelu6-ir_k3_e1_c8_s1_arelu6-ir_k3_e6_c8_s2_arelu6-ir_k3_e6_c8_s1_arelu6-ir_k3_e6_c16_s2_arelu6"
    "-ir_k3_e6_c16_s1_arelu6-ir_k3_e6_c16_s1_arelu6-ir_k3_e6_c16_s1_arelu6-ir_k3_e6_c32_s2_arelu6"
    "-ir_k3_e6_c32_s1_arelu6-ir_k3_e6_c56_s1_arelu6-head_c320_arelu6"
)
TARGET_REDUCTION = 0.10  # the target: at least 10 % fewer MACs at equal test accuracy
ANCHOR = "MorphNet paper: 11-15 % fewer FLOPs than the width multiplier at equal accuracy (Inception V2)"
LATENCY_DEVICE = "litert"


# ---------------------------------------------------------------- settings and data


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What a unit's result depends on: a state file written under other settings is not reused."""
    return {
        "seed_arch": args.seed_arch, "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "alphas": args.alphas, "budgets": args.budgets, "seeds": args.seeds,
        "strength": args.strength, "reg_epochs": args.reg_epochs, "latency": args.latency, "divisor": args.divisor,
        "min_channels": args.min_channels, "strength_unit": "shift per regularisation phase",
    }


def load_data(args: argparse.Namespace):
    from nasflow.config import DatasetConfig
    from nasflow.data import load_dataset

    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: this benchmark needs the CIFAR-10 JPEG archive (../shared/data)")
    cfg = DatasetConfig(name="image_folder", path=args.archive, split="train", test="test", subset=args.images,
                        val_split=0.1, cache_dir=args.cache_dir)
    return load_dataset(cfg)


def train_config(args: argparse.Namespace, seed: int):
    from nasflow.config import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, augment=True, seed=seed)


# ---------------------------------------------------------------- units (each runs in a worker process)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two cores; more threads per worker only contend


def train_unit(args: argparse.Namespace, arch_text: str, seed: int, save: str | None = None) -> dict[str, Any]:
    """Train `arch_text` from scratch; test accuracy. `save`: also write the weights there."""
    import torch

    from nasflow.arch import count_macs, count_params, format_arch, resolve_arch
    from nasflow.arch.builder import build_model
    from nasflow.train import evaluate, train_model

    data = load_data(args)
    arch = resolve_arch(arch_text)
    torch.manual_seed(seed)
    model = build_model(arch, data.in_channels, data.num_classes)
    start = time.perf_counter()
    result = train_model(model, data, train_config(args, seed), device=args.device)
    test_accuracy, _ = evaluate(model, data, split="test")
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save)
    return {
        "arch": format_arch(arch), "seed": seed, "val_accuracy": result.val_accuracy, "test_accuracy": test_accuracy,
        "macs": count_macs(arch, data.in_channels, data.num_classes, data.image_size), "params": count_params(model),
        "train_seconds": time.perf_counter() - start,
    }


def _seed_model(args: argparse.Namespace, data):
    import torch

    from nasflow.arch import resolve_arch
    from nasflow.arch.builder import build_model

    model = build_model(resolve_arch(args.seed_arch), data.in_channels, data.num_classes)
    model.load_state_dict(torch.load(seed_checkpoint(args), weights_only=True))
    return model.eval()


def structure_unit(args: argparse.Namespace, method: str, budget: float, latency_lut: dict | None = None) -> dict[str, Any]:
    """The architecture `method` learns from the trained seed at `budget` (a share of the seed's cost)."""
    from nasflow.arch import format_arch
    from nasflow.plugin_api import CompressContext
    from nasflow.plugins import get_plugins

    data = load_data(args)
    model = _seed_model(args, data)
    latency, options = {}, {}
    if method == "prune":
        options = {"ratio": budget, "resource": "macs", "finetune_epochs": 0}
        compressor = get_plugins().create("compressor", "prune", options)
    else:
        target = "latency" if method == "morphnet-latency" else "flops"
        options = {"target": target, "strength": args.strength, "reg_epochs": args.reg_epochs, "finetune_epochs": 0,
                   "budget": budget, "budget_kind": "relative", "min_channels": args.min_channels}
        if target == "latency":
            latency = {LATENCY_DEVICE: _latency_model(latency_lut, data)}
        compressor = get_plugins().create("compressor", "morphnet", options)
    start = time.perf_counter()
    ctx = CompressContext(model, model.arch, data, train_config(args, 0), data.input_shape, device=args.device,
                          latency=latency, objective_device=LATENCY_DEVICE if latency else None)
    result = compressor.compress(ctx)
    stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}
    return {"method": method, "budget": budget, "arch": format_arch(result.arch), "options": options, "stats": stats,
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- latency (main process, nothing training)


def _lut_ops(archs: list[str]):
    from nasflow.arch import resolve_arch
    from nasflow.lut import arch_op_details, null_op

    ops, seen = [null_op(3, (32, 32))], set()
    for text in archs:
        for op in arch_op_details(resolve_arch(text), 3, 10, (32, 32)):
            if op.lut_key not in seen:
                seen.add(op.lut_key)
                ops.append(op)
    return ops


def measure_lut(archs: list[str]) -> dict[str, Any]:
    """litert LUT of every operator of `archs` (fastest of 3 passes), for the latency target's model."""
    from nasflow.lut import measure_ops
    from nasflow.plugins import get_plugins

    device = get_plugins().create("device", LATENCY_DEVICE, {})
    ops = _lut_ops(archs)
    rows = measure_ops(device, ops, passes=3)
    return {"entries": [[op.lut_key[0], op.lut_key[1], row["median_ms"]] for op, row in zip(ops, rows)], "archs": archs}


def _latency_model(lut: dict, data):
    from nasflow.width_latency import WidthLatencyModel

    table = {(key, shape): ms for key, shape, ms in lut["entries"]}
    return WidthLatencyModel.fit(LATENCY_DEVICE, table, _lut_ops(lut["archs"]), data.in_channels, data.num_classes,
                                 data.image_size)


def measure_latency(archs: list[str]) -> tuple[list[float], str]:
    """Measured litert latency (ms, fastest of 3 passes) of each architecture, and the runtime string."""
    from nasflow.arch import resolve_arch
    from nasflow.arch.builder import build_model
    from nasflow.plugins import get_plugins
    from nasflow.predictors import measure_archs

    device = get_plugins().create("device", LATENCY_DEVICE, {})
    runtime = device.measure_model(build_model(resolve_arch(archs[0]), 3, 10), (1, 3, 32, 32)).runtime
    return measure_archs(device, archs, 3, 10, 32, passes=3), runtime


# ---------------------------------------------------------------- the schedule


def seed_checkpoint(args: argparse.Namespace) -> Path:
    import hashlib

    settings = settings_of(args)
    trained_with = {k: settings[k] for k in ("seed_arch", "images", "epochs", "batch_size", "lr")}  # what its weights depend on
    key = hashlib.sha256(json.dumps(trained_with, sort_keys=True).encode()).hexdigest()[:12]
    return args.cache_dir / f"seed-{key}.pt"


def width_arch(args: argparse.Namespace, alpha: float) -> str:
    from nasflow.arch import format_arch, resolve_arch
    from nasflow.arch.scaling import scale_width

    return format_arch(scale_width(resolve_arch(args.seed_arch), alpha, args.divisor))


class State:
    """The finished units, written through to a JSON file after each one."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path, self.settings = path, settings
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if saved and saved.get("settings") != settings:
            raise SystemExit(f"{path} was written with other settings; pass --state for a new file or delete it")
        self.units: dict[str, Any] = saved.get("units", {})

    def done(self, key: str) -> bool:
        return key in self.units

    def put(self, key: str, value: Any) -> None:
        self.units[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "units": self.units}, indent=1) + "\n")
        tmp.replace(self.path)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_units(args: argparse.Namespace, state: State) -> None:
    """Every training and structure unit, two at a time; structures wait for the seed, their trainings for them."""
    methods = ["morphnet", "prune"]
    structures = [(m, b) for m in methods for b in args.budgets]
    if args.latency:
        structures.append(("morphnet-latency", args.budgets[len(args.budgets) // 2]))
        if not state.done("lut"):
            _log("litert LUT of the width family's operators (quiet machine) ...")
            state.put("lut", measure_lut([width_arch(args, a) for a in args.alphas]))
    pending: dict[Future, str] = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:

        def ready() -> list[tuple[str, Any, tuple]]:
            """Units whose inputs exist, in priority order: the seed, structures (they need its weights), trainings."""
            units: list[tuple[str, Any, tuple]] = []
            seed_key = "train:width:1.0:0"  # the seed network is the width family's alpha 1, seed 0
            seed_ready = state.done(seed_key) and seed_checkpoint(args).is_file()
            pending_structures = any(not state.done(f"structure:{m}:{b}") for m, b in structures)
            if not seed_ready and (pending_structures or not state.done(seed_key)):
                state.units.pop(seed_key, None)  # its weights are gone: train it again
                units.append((seed_key, train_unit, (width_arch(args, 1.0), 0, str(seed_checkpoint(args)))))
            for method, budget in structures:
                key = f"structure:{method}:{budget}"
                if seed_ready:
                    units.append((key, structure_unit, (method, budget, state.units.get("lut"))))
            for method, budget in structures:
                key = f"structure:{method}:{budget}"
                if state.done(key):
                    units += [(f"train:{method}:{budget}:{seed}", train_unit, (state.units[key]["arch"], seed))
                              for seed in args.seeds]
            units += [(f"train:width:{alpha}:{seed}", train_unit, (width_arch(args, alpha), seed))
                      for alpha in args.alphas for seed in args.seeds if (alpha, seed) != (1.0, 0)]
            return [u for u in units if not state.done(u[0]) and u[0] not in pending.values()]

        def submit_ready() -> None:
            for key, fn, fn_args in ready():
                if len(pending) >= args.workers:
                    break  # one unit per worker: a unit made ready later still goes first by priority
                _log(f"start {key}")
                pending[pool.submit(fn, args, *fn_args)] = key

        submit_ready()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                key = pending.pop(future)
                state.put(key, future.result())  # a failed unit stops the run; the others stay recorded
                _log(f"done {key}")
            submit_ready()


def run_latency(args: argparse.Namespace, state: State) -> None:
    archs = sorted({u["arch"] for k, u in state.units.items() if k.startswith("train:")})
    todo = [a for a in archs if not state.done(f"latency:{a}")]
    if todo:
        _log(f"litert latency of {len(todo)} architectures ...")
        measured, runtime = measure_latency(todo)
        for arch, ms in zip(todo, measured):
            state.put(f"latency:{arch}", {"ms": ms, "runtime": runtime})


# ---------------------------------------------------------------- the report


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _models(args: argparse.Namespace, state: State) -> list[dict[str, Any]]:
    """One row per (method, setting): its architecture, counts, accuracy over seeds and latency."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for key, unit in state.units.items():
        if key.startswith("train:"):
            _, method, value, _seed = key.split(":")
            groups.setdefault((method, float(value)), []).append(unit)
    rows = []
    for (method, value), runs in sorted(groups.items()):
        arch = runs[0]["arch"]
        latency = state.units.get(f"latency:{arch}")
        structure = state.units.get(f"structure:{method}:{value}", {})
        rows.append({
            "method": method, ("alpha" if method == "width" else "budget"): value, "arch": arch,
            "macs": runs[0]["macs"], "params": runs[0]["params"],
            "test_accuracy": _mean([r["test_accuracy"] for r in runs]),
            "test_accuracy_per_seed": {str(r["seed"]): r["test_accuracy"] for r in runs},
            "val_accuracy": _mean([r["val_accuracy"] for r in runs]),
            "latency_ms": latency["ms"] if latency else None,
            # The latency target's own estimate of the child (width-aware model on the LUT), to check against `latency_ms`.
            "latency_estimated_ms": structure.get("stats", {}).get("latency_ms_after"),
            "structure_seconds": structure.get("seconds"),
        })
    return rows


def _half_spread(model: dict[str, Any]) -> float:
    """Half the difference between a model's best and worst seed (0 with one seed)."""
    per_seed = list(model["test_accuracy_per_seed"].values())
    return (max(per_seed) - min(per_seed)) / 2


def width_macs_at(family: list[dict[str, Any]], accuracy: float) -> float | None:
    """The width family's MACs at `accuracy`: log-linear between the members bracketing it (None outside)."""
    points = sorted((m["test_accuracy"], m["macs"]) for m in family)
    for (a0, m0), (a1, m1) in zip(points, points[1:]):
        if a0 <= accuracy <= a1 and a1 > a0:
            share = (accuracy - a0) / (a1 - a0)
            return math.exp(math.log(m0) + share * (math.log(m1) - math.log(m0)))
    return None


def width_latency_at(family: list[dict[str, Any]], accuracy: float) -> float | None:
    points = sorted((m["test_accuracy"], m["latency_ms"]) for m in family if m["latency_ms"])
    for (a0, l0), (a1, l1) in zip(points, points[1:]):
        if a0 <= accuracy <= a1 and a1 > a0:
            return l0 + (accuracy - a0) / (a1 - a0) * (l1 - l0)
    return None


def build_report(args: argparse.Namespace, state: State) -> dict[str, Any]:
    from machine import machine_info

    models = _models(args, state)
    family = [m for m in models if m["method"] == "width"]
    for m in models:
        if m["method"] == "width":
            continue
        macs = width_macs_at(family, m["test_accuracy"])
        m["width_macs_at_equal_accuracy"] = macs
        m["flops_reduction_at_equal_accuracy"] = None if macs is None else 1 - m["macs"] / macs
        # seed noise: the same reduction with the accuracy moved down / up by half its seeds' difference
        half = _half_spread(m)
        ends = [width_macs_at(family, m["test_accuracy"] + shift) for shift in (-half, half)]
        m["flops_reduction_range"] = [None if end is None else 1 - m["macs"] / end for end in ends]
        lat = width_latency_at(family, m["test_accuracy"]) if m["latency_ms"] else None
        m["latency_reduction_at_equal_accuracy"] = None if lat is None else 1 - m["latency_ms"] / lat
    morph = [m["flops_reduction_at_equal_accuracy"] for m in models
             if m["method"] == "morphnet" and m["flops_reduction_at_equal_accuracy"] is not None]
    spreads = [2 * _half_spread(m) for m in models if len(m["test_accuracy_per_seed"]) > 1]
    latency_runtime = next((u["runtime"] for k, u in state.units.items() if k.startswith("latency:")), None)
    return {
        "benchmark": NAME,
        "settings": {**settings_of(args), "data": f"CIFAR-10 JPEG ({args.archive.name}): {args.images:,} stratified "
                     "training images (10 % validation), the 10,000 test images", "workers": args.workers,
                     "device": getattr(args, "device", "cpu"),
                     "training": "every final architecture from scratch, the same recipe (SGD, cosine, augmentation)",
                     "latency": f"{LATENCY_DEVICE}, measured, fastest of 3 passes ({latency_runtime})"},
        "models": models,
        "flops_reduction_at_equal_accuracy": _mean(morph) if morph else None,
        "seed_difference_points": 100 * _mean(spreads) if spreads else None,
        "target": {"flops_reduction_at_equal_accuracy": TARGET_REDUCTION},
        "met": bool(morph) and _mean(morph) >= TARGET_REDUCTION,
        "anchor": ANCHOR,
        "machine": machine_info("torch", "torch-pruning"),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Test accuracy against MACs for each method (SVG next to the JSON)."""
    import altair as alt

    points = [{"method": m["method"], "MMACs": m["macs"] / 1e6, "test accuracy": m["test_accuracy"]}
              for m in report["models"]]
    chart = alt.Chart(alt.Data(values=points)).mark_line(point=True).encode(
        x=alt.X("MMACs:Q", scale=alt.Scale(type="log"), title="MMACs (log)"),
        y=alt.Y("test accuracy:Q", scale=alt.Scale(zero=False), title="test accuracy (mean over seeds)"),
        color=alt.Color("method:N"),
    ).properties(title="MorphNet vs width multiplier, CIFAR-10", width=480, height=320)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path))


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = []
    for m in report["models"]:
        setting = f"alpha {m['alpha']}" if m["method"] == "width" else f"budget {m['budget']}"
        reduction = m.get("flops_reduction_at_equal_accuracy")
        lat_reduction = m.get("latency_reduction_at_equal_accuracy")
        rows.append([
            m["method"], setting, tables.number(m["macs"] / 1e6, 2), tables.number(m["params"] / 1e3, 0),
            tables.percent(m["test_accuracy"]), "" if m["latency_ms"] is None else tables.number(m["latency_ms"], 2),
            "" if reduction is None else tables.signed_percent(reduction) + _range_text(m.get("flops_reduction_range")),
            "" if lat_reduction is None else tables.signed_percent(lat_reduction),
        ])
    checks = [f"{m['method']} at budget {m['budget']}: estimated {m['latency_estimated_ms']:.3g} ms by the latency "
              f"model, measured {m['latency_ms']:.3g} ms" for m in report["models"]
              if m.get("latency_estimated_ms") is not None and m["latency_ms"] is not None]
    overall = report["flops_reduction_at_equal_accuracy"]
    verdict = ("no MorphNet model fell inside the width family's accuracy range" if overall is None else
               f"MorphNet's mean FLOP reduction at equal test accuracy: {tables.percent(overall)} "
               f"(target at least {tables.percent(report['target']['flops_reduction_at_equal_accuracy'], 0)}: "
               f"{'met' if report['met'] else '**missed**'}); {report['anchor']}")
    spread = report.get("seed_difference_points")
    if spread is not None:
        verdict += (f". Seed noise: a model's two seeds differ by {spread:.1f} points on average; the range after a "
                    "saving is the same saving with the model's accuracy moved by half its seeds' difference "
                    "(open where that leaves the width family's range), so a saving is only as firm as that range")
    header = ["method", "setting", "MMACs", "k params", "test acc (mean)", f"{LATENCY_DEVICE} ms (measured)",
              "MACs saved at equal acc", "latency saved at equal acc"]
    return tables.blocks(
        tables.table(header, rows),
        tables.paragraph(
            f"Seed `{s['seed_arch']}`; {s['data']}; {s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']}, "
            f"seeds {', '.join(map(str, s['seeds']))}; {s['training']}. MorphNet: strength {s['strength']}, "
            f"min_channels {s.get('min_channels')}, "
            f"{s['reg_epochs']} regularisation epochs on the trained seed, budgets as shares of its MACs "
            f"(the latency variant: of its estimated {LATENCY_DEVICE} latency); prune: magnitude, the same MAC shares. "
            f"Latency: {s['latency']}.",
            verdict + ".",
            *(["Latency model check: " + "; ".join(checks) + "."] if checks else []),
        ),
    )


def _range_text(ends: list | None) -> str:
    if not ends:
        return ""
    low, high = ("?" if e is None else tables.signed_percent(e) for e in ends)
    return f" ({low} to {high})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / NAME, help="decoded images, the seed's weights")
    parser.add_argument("--seed-arch", default=SEED_ARCH)
    parser.add_argument("--images", type=int, default=12_000, help="training images before the validation share")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5])
    parser.add_argument("--divisor", type=int, default=4, help="the width family's channel rounding")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.6, 0.8], help="shares of the seed's MACs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strength", type=float, default=0.1, help="MorphNet's strength (default: the plugin's)")
    parser.add_argument("--min-channels", type=int, default=1,
                        help="MorphNet's min_channels: a layer whose channels all die keeps this many (a first run at "
                        "strength 0.2 without it stopped: the stem lost every channel)")
    parser.add_argument("--reg-epochs", type=int, default=3)
    parser.add_argument("--latency", action="store_true", help=f"add the latency-target variant and {LATENCY_DEVICE} latencies")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one torch thread each")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda; one worker per GPU)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        return tables.print_markdown(NAME, markdown, args.out)
    if 1.0 not in args.alphas:
        raise SystemExit("--alphas must include 1.0 (the seed network itself)")
    state = State(args.state, settings_of(args))
    run_units(args, state)
    if args.latency:
        run_latency(args, state)
    report = build_report(args, state)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".svg"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
