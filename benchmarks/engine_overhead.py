"""Engine overhead benchmark: what nasflow itself costs, apart from training and timing models.

Three measurements, each written to one JSON file (default ``benchmarks/results/engine_overhead.json``):

1. **Orchestration + registry overhead per candidate.** The real ``search`` stage flow (a real
   Prefect flow run on the thread task runner, a real DuckDB registry) evaluates N distinct
   architectures with the two costly parts replaced by zero-cost stand-ins, *in this process
   only*: a ``null-device`` DeviceBackend plugin whose measurement returns at once (recorded with
   ``source="estimated"``, so nothing passes for a measurement) and a zero-work Prefect task in
   place of ``train_candidates`` (one task per worker chunk). Everything else the stage does per
   candidate is counted as engine work: asking/telling the strategy, building each candidate's
   PyTorch model (the model a real device would time), parameter/MAC counts, Prefect task
   submission and collection, building rows and writing them to the registry, the flow run's start
   and end. The CPU that Prefect's
   ephemeral API server (a child process) spends recording the task runs is reported beside it.
2. **Time to the first candidate.** ``nasflow run spec.yaml`` as a subprocess on a tiny real spec
   (torch-cpu + onnxruntime-cpu, digits, 1-epoch proxies), polling the registry read-only until
   the first candidate row appears, with a timeline of the steps before it; then the same for
   ``examples/quickstart.yaml`` as shipped, once with the ephemeral Prefect server the run starts
   itself and once with ``PREFECT_API_URL`` set to a running server.
3. **Registry append throughput.** ``Registry.add_candidates`` / ``add_measurements`` of realistic
   rows in one call each, and in search-sized batches written the way the search stage writes them.

Prefect runs against a fresh, private ``PREFECT_HOME`` (``--prefect-home`` to choose one), so the
user's Prefect database and other processes using it do not affect the numbers; creating that
database is part of the first empty flow run, which is timed and reported on its own.

Run from the repository root::

    .venv/bin/python benchmarks/engine_overhead.py            # full size (a few minutes)
    .venv/bin/python benchmarks/engine_overhead.py --quick --out /tmp/bench.json   # CI size
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import nasflow.flows  # noqa: F401  (applies nasflow's Prefect settings before Prefect is imported)
from nasflow import __version__ as NASFLOW_VERSION
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "engine_overhead.json"

TARGET_OVERHEAD_MS = 20.0  # per candidate, near-zero-cost evaluation, 1,000 candidates
TARGET_ROWS_PER_SECOND = 10_000.0  # Registry.add_candidates
TARGET_QUICKSTART_FIRST_SECONDS = 10.0  # `nasflow run examples/quickstart.yaml` to its first candidate row

NULL_DEVICE = "null-device"
NULL_PLUGIN_MODULE = "nasflow_benchmark_null_device"


# ------------------------------------------------------------------------------------ stand-ins


class NullDevice(DeviceBackend):
    """Zero-cost device: returns a fixed *estimated* latency without running the model."""

    name = NULL_DEVICE
    description = "benchmark stand-in: no timing, fixed estimated latency"
    artifact_formats = ()

    def __init__(self, options=None):
        super().__init__(options)
        self._fingerprint = base_fingerprint("null", "0", 1)
        self._stats = LatencyStats(
            median_ms=1.0, p90_ms=1.0, mean_ms=1.0, std_ms=0.0, min_ms=1.0, runs=0, warmup=0, rel_ci=float("inf")
        )

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def measure_model(self, model, input_shape) -> Measurement:
        return Measurement(
            device=self.name,
            runtime="null 0",
            artifact_format="pytorch",
            source="estimated",  # nothing was timed: this must never pass for a measurement
            stats=self._stats,
            threads=1,
            batch_size=1,
            fingerprint=self._fingerprint,
        )


def register_null_device() -> Callable[[], None]:
    """Make `null-device` a registered device plugin in this process; returns an undo function.

    A module object with a ``nasflow_devices`` hookimpl is added to the modules the plugin
    manager registers, and the plugin registry is rebuilt (``reset_plugins``) so that it is
    registered with pluggy before the registry is built, like any built-in module.
    """
    import nasflow.plugins as plugins

    module = types.ModuleType(NULL_PLUGIN_MODULE, "benchmark-only null device plugin")

    @hookimpl
    def nasflow_devices():
        return [NullDevice]

    module.nasflow_devices = nasflow_devices
    sys.modules[NULL_PLUGIN_MODULE] = module
    original = plugins.BUILTIN_MODULES
    plugins.BUILTIN_MODULES = (*original, NULL_PLUGIN_MODULE)
    plugins.reset_plugins()
    assert NULL_DEVICE in plugins.get_plugins().names("device")

    def undo() -> None:
        plugins.BUILTIN_MODULES = original
        sys.modules.pop(NULL_PLUGIN_MODULE, None)
        plugins.reset_plugins()

    return undo


def _null_accuracy(arch: str) -> float:
    return 0.5 + int(hashlib.sha256(arch.encode()).hexdigest()[:6], 16) / 0x1000000 / 2


def make_null_train_task():
    """A zero-work Prefect task with train_candidates' signature and result shape."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="null-train-candidates", cache_policy=NO_CACHE, persist_result=False)
    def null_train_candidates(
        archs, dataset_cfg, train_cfg, epochs, subset, threads, checkpoints=None, test=False, progress=None,
        device="auto", amp=False,
    ):
        return [
            {
                "arch": arch,
                "error": None,
                "accuracy": _null_accuracy(arch),
                "val_loss": 1.0,
                "train_epochs": epochs,
                "train_seconds": 0.0,
            }
            for arch in archs
        ]

    return null_train_candidates


# ------------------------------------------------------------------------------------ timers


class Timers:
    """Seconds and calls per label, for the cheap breakdown (single-threaded use: the flow thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        self.calls[label] = self.calls.get(label, 0) + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        timed.__wrapped__ = fn
        return timed


class _ClockReporter:
    """Progress reporter that notes when the stage's loop starts and ends (splits flow setup/teardown off)."""

    def __init__(self) -> None:
        self.started = self.ended = None

    def stage_start(self, stage, total, description=""):
        self.started = time.perf_counter()

    def advance(self, stage, n=1, info=""):
        pass

    def stage_end(self, stage, summary=""):
        self.ended = time.perf_counter()

    def message(self, text):
        pass


class _TimedFuture:
    def __init__(self, future, timers: Timers):
        self._future, self._timers = future, timers

    def result(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._future.result(*args, **kwargs)
        finally:
            self._timers.add("prefect_collect", time.perf_counter() - start)

    def __getattr__(self, name):
        return getattr(self._future, name)


class _TimedTask:
    """Delegates to a real Prefect task; times `.map` (submission) and each `.result()` (collection)."""

    def __init__(self, task, timers: Timers):
        self._task, self._timers = task, timers

    def map(self, *args, **kwargs):
        start = time.perf_counter()
        futures = self._task.map(*args, **kwargs)
        self._timers.add("prefect_submit", time.perf_counter() - start)
        return [_TimedFuture(f, self._timers) for f in futures]

    def __getattr__(self, name):
        return getattr(self._task, name)


@contextmanager
def patched(obj: Any, name: str, value: Any):
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


# ------------------------------------------------------------------------------------ specs

# The quickstart's layer-wise space: 74,088 distinct architectures, realistic model sizes.
OVERHEAD_SPACE = """\
space:
  name: layerwise
  options:
    stem_channels: 16
    stages:
      - {channels: 16, layers: 1, stride: 1}
      - {channels: 24, layers: 2, stride: 2}
      - {channels: 40, layers: 3, stride: 2}
    kernels: [3, 5]
    expansions: [1, 3, 6]
    allow_skip: true
    head_channels: 96
"""


def overhead_spec_text(tmp: Path, name: str, candidates: int, batch_size: int, workers: int) -> str:
    return (
        f"name: {name}\n"
        f"dataset: {{name: digits, val_split: 0.25, cache_dir: {tmp / 'cache'}}}\n"
        + OVERHEAD_SPACE
        + f"""\
devices:
  - {{name: {NULL_DEVICE}}}
objectives: {{reward: mnasnet, target_ms: 1.5}}
profile: {{enabled: false}}
search:
  strategy: random
  budget: {candidates}
  batch_size: {batch_size}
  proxy: {{epochs: 1, subset: 1.0}}
train: {{enabled: false}}
morph: {{enabled: false}}
deploy: {{enabled: false}}
registry: {{path: {tmp / (name + '.duckdb')}}}
execution: {{runner: thread, workers: {workers}, work_dir: {tmp / 'runs'}}}
"""
    )


def first_candidate_spec_text(tmp: Path) -> str:
    """The test suite's tiny spec (tests/specs.py), search stage only: real devices, 1-epoch proxies."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from specs import tiny_spec_text

    return tiny_spec_text(tmp, name="first-candidate", train=False, morph=False, deploy=False)


# ------------------------------------------------------------------------------------ 1. overhead


def _time_prefect_start() -> float:
    """Seconds of this process's first (empty) Prefect flow run: the ephemeral server starts here."""
    from prefect import flow

    @flow(name="benchmark-empty", persist_result=False)
    def empty() -> int:
        return 0

    start = time.perf_counter()
    empty()
    return time.perf_counter() - start


def _tree_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process and its descendants (the Prefect ephemeral server); Linux only."""
    try:
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # the process ended meanwhile
                parents[int(entry.name)] = int(fields[1])
                stats[int(entry.name)] = fields
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [child for child, parent in parents.items() if parent == pid and child not in tree]
            tree.update(children)
            frontier += children
        ticks = sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in tree if pid in stats)
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def wait_for_prefect_idle(max_wait: float = 120.0, window: float = 1.0, busy_share: float = 0.1) -> float:
    """Wait until this process tree (Prefect's ephemeral server included) is nearly idle; returns seconds waited.

    After a flow with many task runs returns, the ephemeral server goes on recording them for a while;
    a flow run started meanwhile waits for it. Runs are measured from an idle server.
    """
    start = time.perf_counter()
    before = _tree_cpu_seconds()
    if before is None:
        return 0.0
    while time.perf_counter() - start < max_wait:
        time.sleep(window)
        after = _tree_cpu_seconds()
        if after is None or after - before < busy_share * window:
            break
        before = after
    return time.perf_counter() - start


def _run_search(tmp: Path, name: str, candidates: int, batch_size: int, workers: int, timers: Timers) -> dict:
    from nasflow.flows.context import RunContext
    from nasflow.flows.runners import make_task_runner
    from nasflow.flows.search import search_stage
    from nasflow.progress import using_reporter
    from nasflow.registry import Registry
    from nasflow.spec import parse_spec

    text = overhead_spec_text(tmp, name, candidates, batch_size, workers)
    spec = parse_spec(text, f"{name}.yaml")  # also validates null-device through the plugin registry
    ctx = RunContext(spec.run_id(), spec)
    registry = Registry(spec.registry.path)
    registry.start_run(ctx.run_id, spec.name, spec.spec_hash(), text, spec.execution.runner, NASFLOW_VERSION)
    timers.reset()
    clock = _ClockReporter()
    tree_before, own_before = _tree_cpu_seconds(), _own_cpu_seconds()
    with using_reporter(clock):
        start = time.perf_counter()
        summary = search_stage.with_options(task_runner=make_task_runner(spec.execution))(ctx)
        wall = time.perf_counter() - start
    own_cpu = _own_cpu_seconds() - own_before
    # Flow-run start and stage setup (dataset, space, strategy, devices, registry read), and the end.
    timers.add("flow_setup", clock.started - start)
    timers.add("flow_teardown", start + wall - clock.ended)
    drain = wait_for_prefect_idle()
    # CPU of the child processes (Prefect's ephemeral server), during the flow and until it went idle.
    tree_after, own_after = _tree_cpu_seconds(), _own_cpu_seconds()
    server_cpu = None
    if tree_before is not None and tree_after is not None:
        server_cpu = (tree_after - tree_before) - (own_after - own_before)
    registry.finish_run(ctx.run_id, "finished")
    _, rows = registry.query(
        "SELECT count(*), count(DISTINCT arch_hash), count(*) FILTER (WHERE status = 'ok') "
        "FROM candidates WHERE run_id = ?",
        [ctx.run_id],
    )
    _, mrows = registry.query(
        "SELECT count(*), count(*) FILTER (WHERE source = 'estimated') FROM measurements WHERE run_id = ?",
        [ctx.run_id],
    )
    return {
        "wall": wall,
        "prefect_drain": drain,
        "own_cpu": own_cpu,
        "server_cpu": server_cpu,
        "summary": summary,
        "candidate_rows": rows[0][0],
        "distinct_archs": rows[0][1],
        "ok_rows": rows[0][2],
        "measurement_rows": mrows[0][0],
        "estimated_rows": mrows[0][1],
        "seconds": dict(timers.seconds),
        "calls": dict(timers.calls),
    }


def _engine_modules() -> list[types.ModuleType]:
    """Flow modules through which the search stage may reach the evaluation helpers."""
    import importlib

    modules = []
    for name in ("nasflow.flows.evaluate", "nasflow.flows.search", "nasflow.flows.latency"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    return modules


def bench_overhead(tmp: Path, candidates: int, batch_sizes: list[int], workers: int) -> dict:
    import nasflow.flows.evaluate as evaluate_mod
    from nasflow.registry import Registry
    from nasflow.spaces import make_space
    from nasflow.spec import parse_spec

    timers = Timers()
    undo = register_null_device()
    try:
        patches = [(evaluate_mod, "train_candidates", _TimedTask(make_null_train_task(), timers))]
        # Engine work timed wherever a flow module holds the helper (imported by name, or looked up
        # in nasflow.flows.evaluate at call time).
        for label, name in (
            ("model_build_for_measurement", "model_for"),
            ("arch_costs", "arch_costs"),
            ("device_measure", "measure_everywhere"),
        ):
            original = getattr(evaluate_mod, name)
            wrapped = timers.wrap(label, original)
            patches += [(m, name, wrapped) for m in _engine_modules() if getattr(m, name, None) is original]
        for label, name in (
            ("registry_write_candidates", "add_candidates"),
            ("registry_write_measurements", "add_measurements"),
            ("registry_write_evaluated", "add_evaluated"),  # candidates + measurements in one transaction
        ):
            if hasattr(Registry, name):
                patches.append((Registry, name, timers.wrap(label, getattr(Registry, name))))
        with _all_patched(patches):
            # Warm-up: first search flow run of the process (imports, dataset load, torch init).
            warm_start = time.perf_counter()
            _run_search(tmp, "warmup", max(batch_sizes), max(batch_sizes), workers, timers)
            warmup = time.perf_counter() - warm_start
            runs = []
            for batch_size in batch_sizes:
                result = _run_search(tmp, f"overhead-b{batch_size}", candidates, batch_size, workers, timers)
                runs.append(_overhead_entry(result, candidates, batch_size, workers))
    finally:
        undo()
    space = make_space(parse_spec(overhead_spec_text(tmp, "x", 1, 1, 1), check_plugins=False).space)
    return {
        "warmup_search_seconds": warmup,
        "space_size": space.size(),
        "runs": runs,
    }


@contextmanager
def _all_patched(patches):
    if not patches:
        yield
        return
    obj, name, value = patches[0]
    with patched(obj, name, value), _all_patched(patches[1:]):
        yield


def _overhead_entry(result: dict, candidates: int, batch_size: int, workers: int) -> dict:
    evaluated = result["summary"]["evaluated"]
    per = lambda seconds: 1000.0 * seconds / max(evaluated, 1)  # noqa: E731
    seconds = result["seconds"]
    model_build = seconds.get("model_build_for_measurement", 0.0)
    arch_costs = seconds.get("arch_costs", 0.0)
    registry_write = sum(
        seconds.get(label, 0.0)
        for label in ("registry_write_candidates", "registry_write_measurements", "registry_write_evaluated")
    )
    submit, collect = seconds.get("prefect_submit", 0.0), seconds.get("prefect_collect", 0.0)
    accounted = model_build + arch_costs + registry_write + submit + collect + seconds.get("device_measure", 0.0)
    setup, teardown = seconds.get("flow_setup", 0.0), seconds.get("flow_teardown", 0.0)
    accounted += setup + teardown
    breakdown = {
        "model_build_for_measurement": per(model_build),
        "arch_costs_params_macs": per(arch_costs),
        "null_device_measure": per(seconds.get("device_measure", 0.0)),
        "prefect_task_submit": per(submit),
        "prefect_task_collect": per(collect),
        "registry_writes": per(registry_write),
        "flow_run_setup_and_teardown": per(setup + teardown),
        "other": per(result["wall"] - accounted),
    }
    overhead = per(result["wall"])
    breakdown_total = sum(breakdown.values())
    assert abs(breakdown_total - overhead) < 1e-6 * max(overhead, 1.0)
    return {
        "batch_size": batch_size,
        "workers": workers,
        "candidates_requested": candidates,
        "candidates_evaluated": evaluated,
        "distinct_architectures": result["distinct_archs"],
        "candidate_rows": result["candidate_rows"],
        "measurement_rows": result["measurement_rows"],
        "measurement_rows_estimated": result["estimated_rows"],
        "registry_write_transactions": sum(
            result["calls"].get(label, 0)
            for label in ("registry_write_candidates", "registry_write_measurements", "registry_write_evaluated")
        ),
        "wall_seconds": result["wall"],
        "prefect_server_busy_after_flow_seconds": result["prefect_drain"],
        "benchmark_process_cpu_ms_per_candidate": per(result["own_cpu"]),
        "prefect_server_cpu_ms_per_candidate": None if result["server_cpu"] is None else per(result["server_cpu"]),
        "overhead_ms_per_candidate": overhead,
        "overhead_ms_per_candidate_excluding_model_build": overhead - breakdown["model_build_for_measurement"],
        "breakdown_ms_per_candidate": breakdown,
        "target_ms_per_candidate": TARGET_OVERHEAD_MS,
        "meets_target": overhead <= TARGET_OVERHEAD_MS,
    }


# ------------------------------------------------------------------------------------ 2. first candidate


def _nasflow_command() -> list[str]:
    script = Path(sys.executable).parent / "nasflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nasflow.cli"]


def _utc_epoch(value: dt.datetime | str) -> float:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def _poll(registry_path: Path, sql: str, params: list) -> tuple | None:
    from nasflow.errors import RegistryError
    from nasflow.registry import open_readonly

    if not registry_path.exists():  # a stat, not a DuckDB open, until nasflow has created the file
        return None
    try:
        _, rows = open_readonly(registry_path, lock_timeout=5.0).query(sql, params)
    except RegistryError:  # still being created, or locked for longer than the timeout
        return None
    return rows[0] if rows else None


def _prefect_flow_starts(since_epoch: float) -> dict[str, tuple[float, float | None]]:
    """(created, started) UTC epochs of the flow runs created after `since_epoch`, by flow name.

    Read from the Prefect home's SQLite database (the benchmark uses a private one); {} when unreadable.
    """
    import sqlite3

    db = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "prefect.db"
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute(
                "SELECT f.name, fr.created, fr.start_time FROM flow_run fr JOIN flow f ON f.id = fr.flow_id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    starts: dict[str, tuple[float, float | None]] = {}
    for name, created, started in rows:
        created_epoch = _utc_epoch(created)
        if created_epoch >= since_epoch and (name not in starts or created_epoch < starts[name][0]):
            starts[name] = (created_epoch, _utc_epoch(started) if started else None)
    return starts


def _run_env(extra: dict | None) -> dict[str, str]:
    """The timed run's environment: an inherited PREFECT_API_URL (e.g. of a server an earlier run in
    this process started) is dropped, so "its own server" is measured unless `extra` names one."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, **(extra or {})}


def bench_first_candidate(
    tmp: Path,
    timeout: float,
    finish: bool,
    name: str = "first-candidate",
    spec_text: str | None = None,
    spec_description: str = "tests/specs.py tiny spec, search stage only: profile on, budget 6, batch 3, 2 thread workers",
    env: dict[str, str] | None = None,
    poll_interval: float = 0.25,
) -> dict:
    """Start `nasflow run` on a spec in a folder of its own; seconds until its first candidate row is recorded.

    The spec defaults to the tiny one; relative paths in it (registry, deploy folder) land in the folder.
    """
    from nasflow.spec import parse_spec

    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / f"{name}.yaml"
    text = spec_text if spec_text is not None else first_candidate_spec_text(folder)
    spec_path.write_text(text)
    spec = parse_spec(text, str(spec_path))
    run_id = spec.run_id()
    registry_path = spec.registry.path if spec.registry.path.is_absolute() else folder / spec.registry.path
    command = [*_nasflow_command(), "run", str(spec_path)]
    log_path = folder / f"{name}.log"
    with log_path.open("w") as log:
        start_epoch, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
            env=_run_env(env),
        )
        first_seen = file_seen = None
        try:
            while time.perf_counter() - start < timeout and proc.poll() is None:
                if file_seen is None:
                    if registry_path.exists():  # nasflow opened (created) the registry: spec checked, imports done
                        file_seen = time.time()
                    time.sleep(0.05)
                    continue
                row = _poll(registry_path, "SELECT count(*) FROM candidates WHERE run_id = ?", [run_id])
                if row and row[0]:
                    first_seen = time.perf_counter() - start
                    break
                time.sleep(poll_interval)
            if first_seen is not None and not finish:
                proc.send_signal(signal.SIGINT)  # nasflow records the run as interrupted and exits
            try:
                returncode = proc.wait(timeout=max(timeout - (time.perf_counter() - start), 60.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    exited = time.perf_counter() - start
    if first_seen is None:
        output = log_path.read_text(errors="replace")
        raise RuntimeError(f"no candidate appeared (exit {proc.returncode}); nasflow run said:\n{output[-3000:]}")
    run = _poll(registry_path, "SELECT started_at, status FROM runs WHERE run_id = ?", [run_id])
    first_batch = _first_batch(registry_path, run_id)
    first = _utc_epoch(first_batch[0]["created_at"])
    run_recorded = _utc_epoch(run[0])
    flows = _prefect_flow_starts(start_epoch)
    events = [("process started", start_epoch), ("registry file created", file_seen), ("run row recorded", run_recorded)]
    if "nasflow-run" in flows:
        events.append(("pipeline flow run created", flows["nasflow-run"][0]))
    for stage in ("profile", "search"):
        if stage in flows and flows[stage][1]:
            events.append((f"{stage} flow run started", flows[stage][1]))
    events.append(("first candidate row recorded", first))
    events = sorted((e for e in events if e[1] is not None), key=lambda e: e[1])
    timeline = [
        {"event": event, "seconds_from_start": at - start_epoch, "seconds_since_previous": at - previous}
        for (event, at), previous in zip(events, [start_epoch] + [at for _, at in events[:-1]])
    ]
    return {
        "command": " ".join(["nasflow", "run", f"<tmp>/{name}/{name}.yaml"]),
        "spec": spec_description,
        "prefect_api_url_set": bool((env or {}).get("PREFECT_API_URL")),
        "seconds_to_first_candidate": first - start_epoch,
        "seconds_to_first_candidate_detected_by_polling": first_seen,
        "timeline": timeline,
        "timeline_notes": {
            "registry file created": "Python start, imports (torch, Prefect), spec and plugin checks (polled, 0.05 s)",
            "run row recorded": "in nasflow.flows.pipeline.run_spec, right after the Prefect server starts in the background",
            "pipeline flow run created": "(from the Prefect database) the dataset is loaded and the server is up",
            "profile flow run started": "the profile stage: probes each device with a reference model",
            "search flow run started": "after the profile stage (its own flow run)",
            "first candidate row recorded": "search setup, then the first batch's first slice (one candidate): timing on every device, proxy training",
        },
        "first_batch_candidates": len(first_batch),
        "first_batch_proxy_train_seconds_max": max((r["train_seconds"] or 0.0) for r in first_batch),
        "run_status": run[1],
        "let_finish": finish,
        "exit_code": returncode,
        "seconds_to_exit": exited,
    }


def bench_quickstart_first_candidate(tmp: Path, timeout: float, api_url: str | None) -> dict:
    """examples/quickstart.yaml as it is: time to its first candidate row, stopped (Ctrl-C) right after.

    Twice: with the ephemeral Prefect server `nasflow run` starts itself (on a Prefect database that
    exists already, as on any run after a user's first), and with PREFECT_API_URL set to a running
    server (the benchmark's own), when there is one.
    """
    text = (ROOT / "examples" / "quickstart.yaml").read_text()
    description = "examples/quickstart.yaml as shipped (profile, search budget 24 in batches of 4, 3-epoch proxies)"
    result: dict[str, Any] = {"target_seconds": TARGET_QUICKSTART_FIRST_SECONDS}
    runs = {"ephemeral_server": None, "running_server": api_url}
    for label, url in runs.items():
        if label == "running_server" and url is None:
            continue
        wait_for_prefect_idle()
        entry = bench_first_candidate(
            tmp, timeout, finish=False, name=f"quickstart-{label.replace('_', '-')}", spec_text=text,
            spec_description=description, env={"PREFECT_API_URL": url} if url else None,
        )
        entry["meets_target"] = entry["seconds_to_first_candidate"] <= TARGET_QUICKSTART_FIRST_SECONDS
        result[label] = entry
    return result


def _first_batch(registry_path: Path, run_id: str) -> list[dict]:
    """The candidate rows of the first registry write (one created_at per transaction)."""
    from nasflow.registry import open_readonly

    columns, rows = open_readonly(registry_path).query(
        "SELECT candidate_id, created_at, train_seconds FROM candidates WHERE run_id = ? AND "
        "created_at = (SELECT min(created_at) FROM candidates WHERE run_id = ?)",
        [run_id, run_id],
    )
    return [dict(zip(columns, row)) for row in rows]


# ------------------------------------------------------------------------------------ 3. registry


def realistic_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n candidate rows shaped like the search stage's, and 2 measurement rows (2 devices) each."""
    from nasflow.spaces.layerwise import LayerwiseOptions
    from nasflow.flows.records import measurement_rows, stable_id
    from nasflow.space import LayerwiseSpace, arch_hash, count_arch_params, count_macs, format_arch

    import yaml

    space = LayerwiseSpace(LayerwiseOptions.model_validate(yaml.safe_load(OVERHEAD_SPACE)["space"]["options"]))
    rng = random.Random(seed)
    fingerprints = {d: base_fingerprint(d, "1.0", 1) for d in ("torch-cpu", "onnxruntime-cpu")}
    run_id = "registry-bench-0123456789"
    candidates, measurements = [], []
    for i in range(n):
        genome = space.sample(rng)
        arch = space.to_arch(genome)
        h = arch_hash(arch)
        cid = stable_id("candidate", run_id, "search", h, i)
        row = {
            "candidate_id": cid,
            "run_id": run_id,
            "stage": "search",
            "arch": format_arch(arch),
            "arch_hash": h,
            "extra": {"genome": list(genome), "proxy_epochs": 3, "proxy_subset": 1.0},
            "params": count_arch_params(arch, 1, 10),
            "macs": count_macs(arch, 1, 10, 8),
        }
        if rng.random() < 0.05:
            row.update(status="failed", error="onnxruntime-cpu: DeviceError: export failed", train_seconds=0.4)
        else:
            accuracy = rng.uniform(0.6, 0.99)
            row.update(
                status="ok", accuracy=accuracy, val_loss=rng.uniform(0.05, 1.0), train_epochs=3,
                train_seconds=rng.uniform(1.0, 5.0), score=accuracy * 0.98,
            )
        candidates.append(row)
        ms = []
        for device, fp in fingerprints.items():
            median = rng.uniform(0.3, 3.0)
            stats = LatencyStats(median, median * 1.1, median * 1.02, median * 0.05, median * 0.9, 40, 5, 0.01, 1)
            ms.append(Measurement(device, f"{device} 1.0", "pytorch", "measured", stats, 1, 1, fp))
        measurements += measurement_rows(cid, run_id, ms)
    return candidates, measurements


def _append(registry, method: str, rows: list[dict], batch: int | None) -> float:
    start = time.perf_counter()
    if batch is None:
        written = getattr(registry, method)(rows)
    else:
        written = sum(getattr(registry, method)(rows[i : i + batch]) for i in range(0, len(rows), batch))
    seconds = time.perf_counter() - start
    assert written == len(rows), (method, written, len(rows))
    return seconds


def bench_registry(tmp: Path, sizes: list[int], engine_batch: int) -> list[dict]:
    from nasflow.registry import Registry

    entries = []
    for n in sizes:
        candidates, measurements = realistic_rows(n)
        registry = Registry(tmp / f"append-{n}.duckdb")
        c_seconds = _append(registry, "add_candidates", candidates, None)
        m_seconds = _append(registry, "add_measurements", measurements, None)
        rate = n / c_seconds
        entries.append({
            "rows": n,
            "call": "one call per table",
            "candidate_seconds": c_seconds,
            "candidate_rows_per_second": rate,
            "measurement_rows": len(measurements),
            "measurement_seconds": m_seconds,
            "measurement_rows_per_second": len(measurements) / m_seconds,
            "target_candidate_rows_per_second": TARGET_ROWS_PER_SECOND,
            "meets_target": rate >= TARGET_ROWS_PER_SECOND,
        })
    # Engine-sized batches, written the way the search stage writes them (one transaction per batch
    # for the batch's candidates and measurements), into a registry that already holds rows: each
    # call opens the file, so this is dominated by DuckDB's per-connection cost.
    n = min(sizes)
    candidates, measurements = realistic_rows(n, seed=1)
    registry = Registry(tmp / f"append-{n}.duckdb")
    method = "add_evaluated" if hasattr(registry, "add_evaluated") else None
    calls = -(-n // engine_batch)
    start = time.perf_counter()
    for i in range(0, n, engine_batch):
        batch, mbatch = candidates[i : i + engine_batch], measurements[2 * i : 2 * (i + engine_batch)]
        if method:
            registry.add_evaluated(batch, mbatch)
        else:
            registry.add_candidates(batch)
            registry.add_measurements(mbatch)
    seconds = time.perf_counter() - start
    entries.append({
        "rows": n,
        "call": f"{method or 'add_candidates + add_measurements'}, batches of {engine_batch}",
        "candidate_seconds": seconds,
        "candidate_rows_per_second": n / seconds,
        "measurement_rows": len(measurements),
        "measurement_seconds": seconds,
        "measurement_rows_per_second": len(measurements) / seconds,
        "note": "candidates and measurements written together: both rates share the same seconds",
        "batch_size": engine_batch,
        "ms_per_batch": 1000.0 * seconds / calls,
    })
    return entries


# ------------------------------------------------------------------------------------ report


def format_report(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(
        f"nasflow {m['nasflow']} engine overhead | {m['cpu_model']}, {m['logical_cores']} logical cores | "
        f"Python {m['python']}, Prefect {m['prefect']}, DuckDB {m['duckdb']}, torch {m['torch']}"
    )
    prefect = report.get("prefect")
    overhead = report.get("orchestration_overhead")
    if overhead:
        first_run = overhead["runs"][0]
        lines.append("")
        lines.append(
            f"1. Orchestration + registry overhead: real search flow, {first_run['candidates_evaluated']:,} distinct "
            f"candidates, thread runner ({first_run['workers']} workers),"
        )
        lines.append("   zero-cost stand-ins for device timing and proxy training; ms per candidate")
        header = [
            "batch", "total s", "ms/cand", "<=20?", "models", "params/MACs", "submit", "collect", "registry",
            "flow", "other", "server CPU",
        ]
        rows = []
        for r in overhead["runs"]:
            b = r["breakdown_ms_per_candidate"]
            server = r["prefect_server_cpu_ms_per_candidate"]
            rows.append([
                str(r["batch_size"]), f"{r['wall_seconds']:.1f}", f"{r['overhead_ms_per_candidate']:.1f}",
                "yes" if r["meets_target"] else "no",
                f"{b['model_build_for_measurement']:.1f}", f"{b['arch_costs_params_macs']:.2f}",
                f"{b['prefect_task_submit']:.1f}", f"{b['prefect_task_collect']:.1f}", f"{b['registry_writes']:.1f}",
                f"{b['flow_run_setup_and_teardown']:.1f}", f"{b['other'] + b['null_device_measure']:.1f}",
                "n/a" if server is None else f"{server:.0f}",
            ])
        lines += _table(header, rows)
        lines += [
            "   ms/cand = wall time of the search flow call / candidates; its parts:",
            "   models      = building each candidate's PyTorch model for the device (engine work a real device needs)",
            "   params/MACs = parameter and MAC counts for the registry (analytic, no model built)",
            "   submit      = Prefect task .map();  collect = waiting on .result() (Prefect task engine; the task itself is empty)",
            "   registry    = DuckDB writes, candidates + measurements together ("
            + ", ".join(f"{r['registry_write_transactions']} transactions" for r in overhead["runs"])
            + ")",
            "   flow        = search flow-run start and end, stage setup (strategy, devices, registry read)",
            "   other       = strategy ask/tell, row building, progress",
            "   server CPU  = CPU ms the Prefect ephemeral server (a child process) spent per candidate, during the run and",
            "                 until idle (it kept recording task runs for "
            + ", ".join(f"{r['prefect_server_busy_after_flow_seconds']:.0f} s" for r in overhead["runs"])
            + " after the flow returned); not in ms/cand",
        ]
    first = report.get("first_candidate")
    if first:
        lines.append("")
        lines.append(
            "2. `nasflow run` to the first candidate row: tiny real spec (torch-cpu + onnxruntime-cpu, digits, 1-epoch proxy)"
        )
        labels = {
            "registry file created": "registry file created (imports, spec + plugin checks)",
            "run row recorded": "run row recorded",
            "pipeline flow run created": "pipeline flow run created (Prefect server up)",
            "search flow run started": "search flow run started (profile stage done)",
            "first candidate row recorded": "first candidate row (first batch of 3 timed + trained)",
        }
        rows = [
            [labels.get(e["event"], e["event"]), f"{e['seconds_from_start']:.1f}", f"+{e['seconds_since_previous']:.1f}"]
            for e in first["timeline"] if e["event"] != "process started"
        ]
        lines += _table(["event (from `nasflow run` process start)", "at s", "step s"], rows, left=1)
        if prefect:
            lines.append(
                f"   (a first empty flow in the benchmark process took {prefect['empty_first_flow_seconds']:.1f} s: "
                "Prefect server start plus creating its database)"
            )
    quickstart = report.get("quickstart_first_candidate")
    if quickstart:
        lines.append("")
        lines.append(
            f"2b. `nasflow run examples/quickstart.yaml` to the first candidate row (target <= {quickstart['target_seconds']:.0f} s)"
        )
        servers = [label for label in ("ephemeral_server", "running_server") if quickstart.get(label)]
        events = [e["event"] for e in quickstart[servers[0]]["timeline"] if e["event"] != "process started"]
        at = {label: {e["event"]: e["seconds_from_start"] for e in quickstart[label]["timeline"]} for label in servers}
        rows = [[event] + [f"{at[label][event]:.1f}" if event in at[label] else "-" for label in servers] for event in events]
        headers = {"ephemeral_server": "ephemeral server s", "running_server": "PREFECT_API_URL s"}
        lines += _table(["event (from `nasflow run` process start)"] + [headers[label] for label in servers], rows, left=1)
    registry = report.get("registry_append")
    if registry:
        lines.append("")
        lines.append("3. Registry appends: realistic rows, 2 measurement rows per candidate")
        rows, notes = [], []
        for r in registry:
            ok = r.get("meets_target")
            together = "ms_per_batch" in r
            rows.append([
                f"{r['rows']:,}", r["call"], f"{r['candidate_rows_per_second']:,.0f}",
                "(same transactions)" if together else f"{r['measurement_rows_per_second']:,.0f}",
                "" if ok is None else ("yes" if ok else "no"),
            ])
            if together:
                notes.append(
                    f"   batches: {r['ms_per_batch']:.0f} ms per transaction of {r['batch_size']} candidates + "
                    f"{2 * r['batch_size']} measurements (opening the DuckDB file dominates)"
                )
        lines += _table(["candidates", "how", "candidate rows/s", "measurement rows/s", ">=10k/s?"], rows, left=2)
        lines += notes
    load = report.get("load_average")
    if load:
        lines.append("")
        lines.append(f"load average (1 min) at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], left: int = 0) -> list[str]:
    """Aligned text table; the first `left` columns are left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "   " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header).rstrip(), "   " + "  ".join("-" * w for w in widths)] + [line(r).rstrip() for r in rows]


# ------------------------------------------------------------------------------------ README


_STEPS = {  # timeline event -> README row
    "registry file created": "imports, spec and plugin checks done (registry opened)",
    "pipeline flow run created": "data loaded, Prefect server up: pipeline flow run created",
    "profile flow run started": "profile stage started",
    "search flow run started": "search stage started (devices probed)",
    "first candidate row recorded": "**first candidate row recorded**",
}


def _timeline(entry: dict | None) -> dict[str, float]:
    return {e["event"]: e["seconds_from_start"] for e in entry["timeline"]} if entry else {}


def markdown(report: dict) -> str:
    """The README's "Engine overhead" block, from a report of this script."""
    parts = []
    m, load = report["machine"], report["load_average"]
    overhead = report.get("orchestration_overhead")
    if overhead:
        runs = overhead["runs"]
        last = runs[-1]
        parts.append(tables.paragraph(
            f"A real search flow run ({last['workers']} thread workers) over {last['candidates_evaluated']:,} distinct",
            "candidates with zero-cost stand-ins for device timing (a `null-device` plugin whose rows say `estimated`)",
            "and proxy training (an empty Prefect task), so what remains is nasflow's own work.",
            f"{m['cpu_model']}, {m['logical_cores']} cores, load average {load['start'][0]:.1f} at the start and",
            f"{load['end'][0]:.1f} at the end; milliseconds per candidate:",
        ))
        rows = []
        for r in runs:
            b = r["breakdown_ms_per_candidate"]
            prefect = b["prefect_task_submit"] + b["prefect_task_collect"]
            model, registry = b["model_build_for_measurement"], b["registry_writes"]
            rest = r["overhead_ms_per_candidate"] - model - prefect - registry
            rows.append([r["batch_size"], *(tables.number(v) for v in (r["overhead_ms_per_candidate"], model, prefect, registry, rest))])
        parts.append(tables.table(
            ["search batch", "ms per candidate", "of which: building the PyTorch model a device times", "Prefect tasks",
             "registry writes", "flow, strategy, rows"],
            rows,
        ))
        target = last["target_ms_per_candidate"]
        met = [r for r in runs if r["meets_target"]]
        verdict = (
            f"met at batch {' and '.join(str(r['batch_size']) for r in met)}" if met
            else f"not met in this run ({tables.number(min(r['overhead_ms_per_candidate'] for r in runs))} ms at best)"
        )
        parts.append(tables.paragraph(
            f"Target: at most {target:.0f} ms per candidate at {last['candidates_requested']:,} candidates: {verdict}.",
            "Without building the models, orchestration and registry work is",
            " and ".join(
                f"{tables.number(r['overhead_ms_per_candidate_excluding_model_build'])} ms at batch {r['batch_size']}"
                for r in reversed(runs)
            ) + ";",
            "the rest is constructing each candidate's `nn.Module`, which a real device needs. Prefect's API server",
            "(a separate process, not in these figures) spent",
            " and ".join(
                f"{r['prefect_server_cpu_ms_per_candidate']:.0f} ms at batch {r['batch_size']}" for r in reversed(runs)
                if r["prefect_server_cpu_ms_per_candidate"] is not None
            ),
            "of CPU per candidate recording the task runs.",
        ))
    first, quick = report.get("first_candidate"), report.get("quickstart_first_candidate") or {}
    columns = [("tiny spec", first)]
    columns += [(label, quick.get(key)) for label, key in (
        ("quickstart", "ephemeral_server"), ("quickstart, `PREFECT_API_URL` set", "running_server"),
    ) if quick.get(key)]
    if first or quick:
        timelines = [(label, _timeline(entry)) for label, entry in columns if entry]
        rows = [
            [text, *(tables.number(t[event]) if event in t else "-" for _, t in timelines)]
            for event, text in _STEPS.items() if any(event in t for _, t in timelines)
        ]
        sentences = ["Seconds from `nasflow run` to its first candidate row:"]
        if first:
            sentences.append(
                "the tiny spec of the tests (torch-cpu + onnxruntime-cpu, digits, 1-epoch proxies, batches of 3)"
                + (";" if quick else ".")
            )
        if quick:
            sentences.append(
                "`examples/quickstart.yaml` as shipped (3-epoch proxies, batches of 4), stopped after that row, with the"
                " Prefect API server the run starts itself (on an existing Prefect database) and with `PREFECT_API_URL`"
                " pointing at a running server."
            )
        parts.append(tables.paragraph(*sentences))
        parts.append(tables.table(["step", *(label for label, _ in timelines)], rows))
        if quick.get("ephemeral_server"):
            target = quick["target_seconds"]
            seconds = {key: quick[key]["seconds_to_first_candidate"] for key in ("ephemeral_server", "running_server") if quick.get(key)}
            verdict = "met" if seconds["ephemeral_server"] <= target else "not met"
            search = _timeline(quick["ephemeral_server"]).get("search flow run started")
            parts.append(tables.paragraph(
                f"Target for the quickstart: at most {target:.0f} s: {verdict}"
                f" ({tables.number(seconds['ephemeral_server'])} s).",
                f"Its search stage started {tables.number(search)} s in;" if search is not None else "",
                "the first row waits for the first write: one candidate timed on both devices and proxy-trained"
                f" ({quick['ephemeral_server']['first_batch_candidates']} row(s); its slowest proxy training took"
                f" {tables.number(quick['ephemeral_server']['first_batch_proxy_train_seconds_max'])} s).",
            ))
    appends = report.get("registry_append")
    if appends:
        rows = []
        for r in appends:
            together = "ms_per_batch" in r
            rows.append([
                f"{r['rows']:,}", r["call"].replace("add_evaluated", "`add_evaluated`"),
                tables.number(r["candidate_rows_per_second"], 0),
                tables.number(r["measurement_rows_per_second"], 0) + (" (same transactions)" if together else ""),
            ])
        single = [r for r in appends if "meets_target" in r]
        batched = [r for r in appends if "ms_per_batch" in r]
        parts.append("Registry appends (realistic rows, 2 measurement rows per candidate):")
        parts.append(tables.table(["candidates", "how", "candidate rows/s", "measurement rows/s"], rows))
        parts.append(tables.paragraph(
            f"Target: at least {single[0]['target_candidate_rows_per_second']:,.0f} candidate rows/s in one call:"
            f" {'met' if all(r['meets_target'] for r in single) else 'not met'}." if single else "",
            f"In batches, each transaction of {batched[0]['batch_size']} candidates takes"
            f" {batched[0]['ms_per_batch']:.0f} ms, mostly opening the DuckDB file." if batched else "",
        ))
    return tables.blocks(*parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-size settings (about a minute)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help="JSON output (default benchmarks/results/engine_overhead.json); with --markdown, the report to render",
    )
    parser.add_argument("--candidates", type=int, help="candidates per overhead run (default 1000; --quick 60)")
    parser.add_argument("--batch-sizes", default="8,32", help="search batch sizes, comma-separated (default 8,32)")
    parser.add_argument("--workers", type=int, default=2, help="thread runner workers (default 2)")
    parser.add_argument("--rows", help="registry append sizes, comma-separated (default 10000,50000; --quick 2000)")
    parser.add_argument(
        "--only", choices=("overhead", "first", "quickstart", "registry"), action="append", help="run only this part (repeatable)"
    )
    parser.add_argument("--first-timeout", type=float, default=300.0, help="seconds to wait for the first candidate")
    tables.add_markdown_option(parser)
    parser.add_argument(
        "--prefect-home", type=Path,
        help="PREFECT_HOME for the benchmark (default: a fresh temporary one, so that the user's Prefect "
        "database and other processes using it do not affect the numbers)",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        return tables.print_markdown("engine_overhead", markdown, args.out)

    candidates = args.candidates or (60 if args.quick else 1000)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [int(r) for r in (args.rows or ("2000" if args.quick else "10000,50000")).split(",")]
    parts = set(args.only or ("overhead", "first", "quickstart", "registry"))
    report: dict[str, Any] = {
        "benchmark": "nasflow engine overhead",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/engine_overhead.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info("prefect", "duckdb", "pyarrow", "torch"),
        "load_average": {"start": list(os.getloadavg())},
        "settings": {
            "quick": args.quick,
            "candidates": candidates,
            "batch_sizes": batch_sizes,
            "workers": args.workers,
            "runner": "thread",
            "registry_append_rows": rows,
            "parts": sorted(parts),
            "prefect_home": str(args.prefect_home) if args.prefect_home else "fresh temporary directory",
            "stand_ins": {
                "device": f"{NULL_DEVICE}: a DeviceBackend plugin returning a fixed 1.0 ms with source='estimated'",
                "training": "a zero-work Prefect task in place of nasflow.flows.evaluate.train_candidates",
            },
        },
        "targets": {
            "overhead_ms_per_candidate_max": TARGET_OVERHEAD_MS,
            "candidate_rows_per_second_min": TARGET_ROWS_PER_SECOND,
            "quickstart_seconds_to_first_candidate_max": TARGET_QUICKSTART_FIRST_SECONDS,
        },
    }
    meets: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="nasflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # Before Prefect is imported: its settings (and the subprocess's) follow this home.
        os.environ["PREFECT_HOME"] = str(args.prefect_home or tmp / "prefect-home")
        if parts & {"overhead", "first", "quickstart"}:
            # The first flow of a process starts the ephemeral server (and creates a fresh database).
            report["prefect"] = {"empty_first_flow_seconds": _time_prefect_start()}
            report["prefect"]["busy_after_first_flow_seconds"] = wait_for_prefect_idle()
        if "overhead" in parts:
            report["orchestration_overhead"] = bench_overhead(tmp, candidates, batch_sizes, args.workers)
            meets["overhead_ms_per_candidate"] = all(r["meets_target"] for r in report["orchestration_overhead"]["runs"])
        if "first" in parts:
            report["first_candidate"] = bench_first_candidate(tmp, args.first_timeout, finish=not args.quick)
        if "quickstart" in parts:
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()  # the ephemeral server this process started, a running server to reuse
            report["quickstart_first_candidate"] = bench_quickstart_first_candidate(
                tmp, args.first_timeout, server.api_url if server.running else None
            )
            meets["quickstart_first_candidate"] = report["quickstart_first_candidate"]["ephemeral_server"]["meets_target"]
        if "registry" in parts:
            report["registry_append"] = bench_registry(tmp, rows, max(batch_sizes))
            meets["candidate_rows_per_second"] = all(
                r["meets_target"] for r in report["registry_append"] if "meets_target" in r
            )
    report["load_average"]["end"] = list(os.getloadavg())
    report["meets_target"] = meets
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(format_report(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
