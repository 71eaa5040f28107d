"""The `nasflow` command: a thin layer that turns library calls into output and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import NasflowError, RunInterrupted

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command cut off by `| head`


def _default_registry() -> str:
    return os.environ.get("NASFLOW_REGISTRY", "registry.duckdb")


def _console():
    from rich.console import Console

    return Console()


def cmd_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec

    loaded = load_spec(args.spec)
    spec = loaded.spec
    stages = [s for s in ("profile", "search", "train", "morph", "deploy") if getattr(spec, s).enabled]
    print(f"{args.spec}: valid (run id {spec.run_id()}; stages: {', '.join(stages) or 'none'})")
    from .spaces import known_geometry
    from .spec import build_space, space_for_data

    space = build_space(spec, known_geometry(spec.dataset))
    if args.data:
        from .data import load_dataset

        data = load_dataset(spec.dataset)
        print("\n".join(data.summary()))
        space = space_for_data(spec, data)
    print(f"space {spec.space.name}: {len(space.decisions)} decisions, {space.size():,} genomes")
    for note in space.notes():
        print(f"  {note}")
    if spec.search.enabled:
        print(_search_line(spec))
    return 0


def _search_line(spec) -> str:
    """What the search will do, in one line: strategy, budget, what it ranks by, warm start."""
    search, objectives = spec.search, spec.objectives
    ranks = (
        f"Pareto front of {', '.join(o.label for o in spec.pareto)}" if objectives.pareto
        else f"reward {objectives.reward}" + (f" on {spec.objective_device}" if objectives.reward == "mnasnet" else "")
    )
    from .plugins import get_plugins

    plugins = get_plugins()
    strategy = plugins.get("search", search.strategy).cls
    if strategy.protocol == "supernet":
        options = plugins.options("search", search.strategy, search.options)
        term = strategy.latency_device(options, spec.objective_device)
        latency = f"latency term from the {term} LUT" if term else "no latency term"
        return (f"search {search.strategy} (supernet): {getattr(options, 'epochs', '?')} epochs on the space's supernet, "
                f"{latency}; the derived architectures measured ({search.latency} latency) and ranked by {ranks}")
    warm = ""
    if search.warm_start.enabled:
        warm = "; warm start from " + (", ".join(search.warm_start.runs) if search.warm_start.runs else "earlier runs in the registry")
    return f"search {search.strategy}: {search.budget} architectures in batches of {search.batch_size}, by {ranks} ({search.latency} latency){warm}"


def cmd_run(args: argparse.Namespace) -> int:
    from .console import arch_legend, front_table, make_reporter, print_table
    from .progress import using_reporter
    from .spec import load_spec

    loaded = load_spec(args.spec)
    from .flows.prefect_server import start_run_helpers

    start_run_helpers()  # Prefect's API server comes up while the imports and the data load below go on
    from .data import load_dataset

    data = load_dataset(loaded.spec.dataset)  # bad data stops the run here, before any flow starts
    from .spec import space_for_data

    space_for_data(loaded.spec, data)  # and so does a space that does not fit the images
    from .flows.pipeline import run_spec  # imports Prefect: only once the spec is known to be good

    console = _console()
    console.print(f"[bold]nasflow {__version__}[/] running [cyan]{loaded.spec.name}[/] (run {loaded.spec.run_id()})")
    with make_reporter(console) as rep, using_reporter(rep):
        summary = run_spec(loaded)
    if summary.resume_message:
        console.print(summary.resume_message, soft_wrap=True)
    for note in summary.warnings:  # said during the run; repeated where the user reads the outcome
        console.print(f"warning: {note}", soft_wrap=True, highlight=False)
    counts = ", ".join(f"{stage} {n}" for stage, n in summary.counts.items())
    console.print(f"candidates in the registry for this run: {counts}")
    print_table(console, front_table(summary.front, summary.devices, summary.objective_device, "accuracy/latency Pareto front"))
    console.print(arch_legend(summary.front), soft_wrap=True, highlight=False)
    for artifact in summary.artifacts:
        status = "verified" if artifact["verified"] else "NOT verified"
        console.print(
            f"deployed {artifact['format']}: {artifact['path']} ({status}, max |err| {artifact['max_abs_err']:.2e}, "
            f"sha256 {artifact['sha256'][:12]}...)",
            soft_wrap=True,
        )
    console.print(f"registry: {summary.registry_path}  (try: nasflow sql \"SELECT stage, count(*) FROM candidates GROUP BY stage\")", soft_wrap=True)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from .output_formats import WRITERS, row_count_line
    from .readonly_sql import run_readonly_query

    try:
        with run_readonly_query(args.registry, args.query) as result:
            shown = WRITERS[args.format](result.columns, result.rows(args.limit), sys.stdout)
            more = result.count_remaining() if args.limit is not None else 0
        if args.format == "table":
            sys.stdout.write(row_count_line(shown, more) + "\n")
        elif more:  # stdout stays valid CSV/JSON: the count of what was left out goes to stderr
            print(f"note: {more} more row{'' if more == 1 else 's'} not shown (--limit {args.limit})", file=sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped reading: stop quietly, like other commands in a pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command cut off by `| head`
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugins
    from .output_formats import format_table

    plugins = get_plugins()
    # Search strategies say which protocol drives them (ask/tell or supernet); other kinds have none.
    rows = [
        (p.kind, p.name, p.package, p.version, p.description, getattr(p.cls, "protocol", "") if p.kind == "search" else "")
        for p in plugins.list()
    ]
    print(format_table(["kind", "name", "package", "version", "description", "protocol"], rows))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .plugins import get_plugins
    from .output_formats import format_table

    rows = []
    for info in get_plugins().list("device"):
        reason = info.cls.unavailable_reason()
        rows.append((info.name, "yes" if reason is None else "no", reason or "", info.package))
    print(format_table(["device", "usable", "why not", "package"], rows))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_profile(args: argparse.Namespace) -> int:
    from .spec import load_spec, with_options

    spec = load_spec(args.spec).spec
    options: dict = {("profile", "lut"): (None, True)}  # what the command is for: always on
    if args.calibrate is not None:
        options[("profile", "calibrate")] = ("--calibrate", args.calibrate)
    if args.passes is not None:
        options[("profile", "passes")] = ("--passes", args.passes)
    spec = with_options(spec, options)
    chosen = [d for d in spec.devices if not args.device or d.name in args.device]
    unknown = sorted(set(args.device or []) - {d.name for d in spec.devices})
    if unknown:
        raise NasflowError(f"device(s) {', '.join(unknown)} not in the spec's devices ({', '.join(d.name for d in spec.devices)})")
    from .console import make_reporter  # torch and Prefect: only once the command line is known to be good
    from .data import load_dataset
    from .flows.evaluate import make_devices
    from .flows.latency import profile_device
    from .lut import device_fingerprint_hash
    from .progress import using_reporter
    from .output_formats import format_table
    from .registry import Registry

    data = load_dataset(spec.dataset)
    registry = Registry(spec.registry.path)
    rows = []
    for name, device in make_devices(chosen).items():
        with make_reporter(_console()) as rep, using_reporter(rep):
            record = profile_device(registry, spec, device, data, refresh=args.refresh)
        fit = record.get("predictor_fit") or {}
        rows.append((
            name, device_fingerprint_hash(device), record["lut_entries"], "measured" if record["lut_built"] else "reused",
            record.get("predictor", "-"), fit.get("lut_sum_rel_rmse"), fit.get("loo_rel_rmse"),
        ))
    headers = ["device", "fingerprint", "lut ops", "lut", "predictor", "LUT-sum rel. RMSE", "predictor LOO rel. RMSE"]
    print(format_table(headers, rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .registry import open_readonly

    run_ids = list(dict.fromkeys([args.run_id, *(args.compare or [])]))
    if args.png and args.out is None:
        raise NasflowError("--png writes the plots beside the page: give --out FILE.html as well")
    if args.out is not None:
        _check_writable(args.out)
    registry = open_readonly(args.registry)
    if args.out is not None:
        return _write_report_page(registry, run_ids, args)
    for run_id in run_ids:
        _print_run_report(registry, run_id, args)
    return 0


def _print_run_report(registry, run_id: str, args: argparse.Namespace) -> None:
    """The terminal report: the run's front (or every candidate) as a table."""
    from .console import arch_legend, front_table, print_table
    from .flows.pipeline import candidate_table
    from .objectives import pareto_front
    from .spec import parse_spec

    from .report.data import unknown_run

    run = registry.get_run(run_id)
    if run is None:
        raise unknown_run(registry, run_id, str(args.registry))
    spec = parse_spec(run["spec_yaml"], f"<spec of {run_id}>", check_plugins=False)
    devices = [d.name for d in spec.devices]
    table = candidate_table(registry, run_id, spec.objective_device, devices)
    rows = table if args.all else pareto_front(table)
    title = f"run {run_id} ({run['status']}): {'all candidates' if args.all else 'Pareto front'}"
    console = _console()
    print_table(console, front_table(rows, devices, spec.objective_device, title))
    console.print(arch_legend(rows), soft_wrap=True, highlight=False)


def _write_report_page(registry, run_ids: list[str], args: argparse.Namespace) -> int:
    from .report import compare_page, load_run, run_page, write_report

    runs = [load_run(registry, run_id, str(args.registry)) for run_id in run_ids]
    page = run_page(runs[0]) if len(runs) == 1 else compare_page(runs)
    written = write_report(page, args.out, png=args.png)
    print(f"wrote {written[0]} ({len(page.plots)} plots)")
    for path in written[1:]:
        print(f"wrote {path}")
    return 0


def _check_writable(out: Path) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if out.is_dir():
        raise NasflowError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise NasflowError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NasflowError(f"--out {out}: the folder {folder} is not writable")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes read like every other user mistake: one `error:` line, status 2.

    Values that argparse accepts are then validated by the spec's own models (`with_options`).
    """

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def cmd_arch(args: argparse.Namespace) -> int:
    """Inspect an architecture string or zoo name: layers, shapes, params, MACs (torch is never imported)."""
    import json

    from .arch import count_arch_params, format_arch, layer_table, resolve_arch
    from .arch.zoo import PREFIX, canonical_zoo_name

    text = args.arch.strip()
    is_zoo = text.startswith(PREFIX) or "-" not in text  # a bare zoo name works too; strings have layers
    name = canonical_zoo_name(text) if is_zoo else None
    arch = resolve_arch(f"{PREFIX}{text}" if is_zoo and not text.startswith(PREFIX) else text)
    rows = layer_table(arch, args.channels, args.classes, args.size)  # raises if a block cannot take its input
    latency = _lut_latency(arch, args) if args.device else None
    result = {
        "name": name,
        "arch": format_arch(arch),
        "input": [args.channels, args.size, args.size],
        "classes": args.classes,
        "params": sum(r["params"] for r in rows),
        "params_without_bn": count_arch_params(arch, args.channels, args.classes, batchnorm=False),
        "macs": sum(r["macs"] for r in rows),
        "blocks": rows,
    }
    if latency is not None:
        result["latency"] = {k: v for k, v in latency.items() if k not in ("per_layer", "geometry", "missing")}
        for row, ms in zip(rows, latency["per_layer"]):
            row["lut_ms"] = ms
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    from .registry import format_table

    headers = ["#", "layer", "fields", "output", "params", "MACs"] + (["LUT ms"] if latency else [])
    table = [
        (r["position"], r["kind"], " ".join(r["token"].split("_")[1:]), "x".join(map(str, r["out_shape"])),
         r["params"], r["macs"], *([r["lut_ms"]] if latency else []))
        for r in rows
    ]
    print(f"{name}: " if name else "", result["arch"], sep="")
    print(format_table(headers, table))
    print(
        f"total: {result['params']:,} params ({result['params_without_bn']:,} without BatchNorm), "
        f"{result['macs']:,} MACs for one {args.channels}x{args.size}x{args.size} input, {args.classes} classes"
    )
    if latency:
        print(f"LUT-sum latency on {latency['device']}: {latency['lut_sum_ms']:.4g} ms "
              f"(fingerprint {latency['fingerprint_hash']}, batch {latency['batch_size']}, {latency['operators']} operators)")
    return 0


def _lut_latency(arch, args: argparse.Namespace) -> dict:
    """LUT-sum latency of `arch` from the registry's newest LUT of the device that covers all its operators."""
    from .lut_breakdown import lut_breakdown
    from .registry import open_readonly

    return lut_breakdown(open_readonly(args.registry), args.device, arch, args.channels, args.classes, args.size,
                         registry_name=f"the registry {args.registry}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nasflow", description="Hardware-aware neural architecture search workflows.")
    parser.add_argument("--version", action="version", version=f"nasflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a workflow spec")
    p.add_argument("spec", type=Path)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="validate a workflow spec without running it")
    p.add_argument("spec", type=Path)
    p.add_argument("--data", action="store_true", help="also load the dataset: sizes, classes, unreadable images")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sql", help="run one read-only SQL statement (SELECT, DESCRIBE, ...) against the results registry")
    p.add_argument("query")
    p.add_argument("--registry", default=_default_registry(), help="registry file (default: $NASFLOW_REGISTRY or ./registry.duckdb)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="print only the first N rows, then how many more there were (csv/json: on stderr)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("plugins", help="list search strategies, devices and compressors")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("devices", help="which device backends are usable here, and why not")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("profile", help="build or refresh the per-operator latency LUT of a spec's space on its devices")
    p.add_argument("spec", type=Path)
    p.add_argument("--device", action="append", help="only this device (repeatable; default: all of the spec's)")
    p.add_argument("--refresh", action="store_true", help="re-measure even when a LUT for this fingerprint exists")
    p.add_argument("--calibrate", type=int, metavar="N", help="also fit the calibrated predictor on N measured models")
    p.add_argument("--passes", type=int, metavar="N", help="measure each operator N times, interleaved, keep the fastest (default: profile.passes)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("arch", help="show an architecture string or zoo model: layers, shapes, params, MACs")
    p.add_argument("arch", metavar="NAME_OR_STRING", help="an architecture string, or a zoo name (mobilenet_v2@0.5, zoo:fbnet_c)")
    p.add_argument("--size", type=_positive_int, default=224, help="input height and width (default: 224)")
    p.add_argument("--classes", type=_positive_int, default=1000, help="classifier outputs (default: 1000)")
    p.add_argument("--channels", type=_positive_int, default=3, help="input channels (default: 3)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--device", help="also show the LUT-sum latency from this device's LUT in the registry")
    p.add_argument("--registry", default=_default_registry(), help="registry holding the LUT (with --device)")
    p.set_defaults(func=cmd_arch)

    p = sub.add_parser("report", help="show a run's candidates and Pareto front; with --out, an HTML page of its results")
    p.add_argument("run_id")
    p.add_argument("--registry", default=_default_registry())
    p.add_argument("--all", action="store_true", help="every candidate, not only the Pareto front (terminal table)")
    p.add_argument("--out", type=Path, metavar="FILE.html",
                   help="write a self-contained HTML page (fronts, search progress, chosen model, morph, artifacts)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="overlay these runs' fronts with RUN's")
    p.add_argument("--png", action="store_true", help="with --out: also write each plot as FILE-<plot>.png")
    p.set_defaults(func=cmd_report)
    return parser


_WARNED: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Python shows a warning once per place it is raised; a user needs each one once, full stop
    # (plugin discovery may run again, e.g. after reset_plugins(), and warn from the same place).
    text = str(message)
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NasflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader (`nasflow plugins | head`) stopped reading: stop quietly, as commands in a pipe do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
