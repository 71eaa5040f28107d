"""Resuming the way users expect: run identity, a budget that grows, failed rows replaced, runs whose
process vanished, and real `nasflow run` processes interrupted by SIGINT and SIGKILL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasflow.config import ObjectivesConfig
from nasflow.errors import SpecError
from nasflow.flows.records import candidate_id, device_failure_rows, retried
from nasflow.flows.search import chance_band, chance_level_warning
from nasflow.flows.selection import best_candidates
from nasflow.processes import is_running, process_started_at
from nasflow.registry import Registry, open_readonly
from nasflow.spec import parse_spec

from conftest import tiny_spec_text
from test_cli import cli_env

EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------------ run identity


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


@pytest.mark.parametrize(
    "old, new",
    [
        ("execution: {runner: thread, workers: 2,", "execution: {runner: process, workers: 1,"),
        ("registry: {path: ", "registry: {path: /elsewhere"),
        ("deploy: {enabled: true, out_dir: ", "deploy: {enabled: true, out_dir: /elsewhere"),
        ("work_dir: ", "work_dir: /elsewhere"),
        ("  budget: 6\n", "  budget: 60\n"),
        ("train: {enabled: true, top_k: 1, config: {epochs: 2}}", "train: {enabled: false, top_k: 3, config: {epochs: 9}}"),
        ("morph: {enabled: true, top_k: 1,", "morph: {enabled: true, top_k: 2,"),
        ("profile: {enabled: true}", "profile: {enabled: true, lut: true}"),  # the search measures: no LUT used
        ("cache_dir: ", "cache_dir: /elsewhere"),
    ],
)
def test_where_and_how_much_do_not_change_the_run(tmp_path, old, new):
    text = tiny_spec_text(tmp_path)
    assert parse_spec(_edit(text, old, new), check_plugins=False).run_id() == parse_spec(text, check_plugins=False).run_id()


@pytest.mark.parametrize(
    "old, new",
    [
        ("execution: {runner: thread,", "execution: {seed: 1, runner: thread,"),
        ("  batch_size: 3\n", "  batch_size: 2\n"),
        ("proxy: {epochs: 1,", "proxy: {epochs: 2,"),
        ("kernels: [3, 5]", "kernels: [3]"),
        ("target_ms: 0.2", "target_ms: 0.3"),
        ("{name: torch-cpu, options: {threads: 1,", "{name: torch-cpu, options: {threads: 2,"),
    ],
)
def test_what_the_search_finds_changes_the_run(tmp_path, old, new):
    text = tiny_spec_text(tmp_path)
    assert parse_spec(_edit(text, old, new), check_plugins=False).run_id() != parse_spec(text, check_plugins=False).run_id()


# ------------------------------------------------------------------------- replacing failed rows


def _candidate(cid: str, status: str, **extra) -> dict:
    return {"candidate_id": cid, "run_id": "r", "stage": "search", "arch": "a", "arch_hash": cid, "status": status, **extra}


def _measurement(mid: str, cid: str, value: float | None, artifact_id: str | None = None) -> dict:
    return {"measurement_id": mid, "candidate_id": cid, "run_id": "r", "device": "torch-cpu", "source": "measured",
            "metric": "latency", "median_ms": value, "value": value, "artifact_id": artifact_id}


def test_a_retried_candidate_replaces_its_failed_row_and_measurements(tmp_path):
    registry = Registry(tmp_path / "r.duckdb")
    failed = _candidate("c1", "failed", error="onnxruntime-cpu: boom", extra={"genome": [1]})
    registry.add_evaluated([failed, _candidate("c2", "ok", score=0.5)],
                           [_measurement("m1", "c1", None), _measurement("m-art", "c1", 2.0, artifact_id="a1")])
    # skipped without replace, as before: the stored row wins
    assert registry.add_evaluated([_candidate("c1", "ok")], []) == (0, 0)

    again = retried(_candidate("c1", "ok", score=0.7, extra={"genome": [1]}), registry.get_candidates("r")[0])
    assert again["extra"] == {"genome": [1], "attempts": 2, "last_error": "onnxruntime-cpu: boom"}
    assert registry.add_evaluated([again], [_measurement("m1", "c1", 1.5)], replace=True) == (1, 1)
    rows = {r["candidate_id"]: r for r in registry.get_candidates("r")}
    assert len(rows) == 2 and rows["c1"]["status"] == "ok" and rows["c1"]["score"] == 0.7
    assert rows["c1"]["extra"]["attempts"] == 2 and rows["c2"]["score"] == 0.5
    values = {m["measurement_id"]: m["median_ms"] for m in registry.get_measurements(["c1"])}
    assert values == {"m1": 1.5, "m-art": 2.0}  # the live model's number replaced; the artifact's kept

    # a third attempt after a second failure keeps counting
    failed_again = retried(_candidate("c1", "failed", error="second"), {**rows["c1"], "status": "failed", "error": "x"})
    assert failed_again["extra"]["attempts"] == 3 and failed_again["extra"]["last_error"] == "x"


def test_a_replacing_batch_that_fails_leaves_the_stored_rows(tmp_path):
    registry = Registry(tmp_path / "r.duckdb")
    registry.add_evaluated([_candidate("c1", "failed", error="boom")], [_measurement("m1", "c1", None)])
    with pytest.raises(Exception, match="candidates.status"):
        registry.add_evaluated([_candidate("c1", "ok"), _candidate("c2", "meh")], [], replace=True)
    rows = registry.get_candidates("r")
    assert [(r["candidate_id"], r["status"]) for r in rows] == [("c1", "failed")]
    assert len(registry.get_measurements(["c1"])) == 1


def test_one_failing_device_is_its_own_measurement_row():
    rows = device_failure_rows("c1", "r", {"litert": "litert: converter crashed"})
    assert [(r["device"], r["metric"], r.get("median_ms"), r["extra"]) for r in rows] == [
        ("litert", "latency", None, {"error": "litert: converter crashed"})
    ]


def test_stage_settings_are_part_of_train_and_morph_ids():
    assert candidate_id("r", "train", "h", "p", "k1") != candidate_id("r", "train", "h", "p", "k2")
    assert candidate_id("r", "search", "h") == candidate_id("r", "search", "h", None, None)


# ---------------------------------------------------------------- selection: cap and chance level


def test_models_over_the_latency_cap_are_never_chosen():
    objectives = ObjectivesConfig(reward="accuracy", max_latency_ms=1.0)
    rows = [
        {"candidate_id": "fast", "arch_hash": "a", "status": "ok", "score": 0.5, "latency_ms": 0.9},
        {"candidate_id": "slow", "arch_hash": "b", "status": "ok", "score": 0.0, "latency_ms": 1.2},
        {"candidate_id": "unknown", "arch_hash": "c", "status": "ok", "score": 0.0, "latency_ms": None},
    ]
    assert [r["candidate_id"] for r in best_candidates(rows, 3, objectives)] == ["fast"]
    assert len(best_candidates(rows, 3, ObjectivesConfig(reward="accuracy"))) == 3


class _Data:
    num_classes = 10
    val_y = [0] * 300


def test_chance_level_band_and_warning(tmp_path):
    chance, upper = chance_band(10, 300)
    assert chance == pytest.approx(0.1) and upper == pytest.approx(0.1 + 2 * (0.09 / 300) ** 0.5)
    spec = parse_spec(tiny_spec_text(tmp_path), check_plugins=False)
    rows = [{"status": "ok", "accuracy": a} for a in (0.10, 0.11, 0.12, 0.45)]
    warning = chance_level_warning(rows, spec, _Data())
    assert warning and "3 of 4" in warning and "search.proxy.epochs (now 1)" in warning and "search.proxy.subset (now 0.5)" in warning
    learned = [{"status": "ok", "accuracy": a} for a in (0.10, 0.3, 0.4, 0.45)]
    assert chance_level_warning(learned, spec, _Data()) is None
    assert chance_level_warning(rows[:2], spec, _Data()) is None  # too few to say


# ------------------------------------------------------------------------ runs whose process vanished


def test_process_identity_tells_a_reused_pid_apart():
    me = process_started_at(os.getpid())
    assert me is not None and me <= dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert is_running(os.getpid(), me)
    assert not is_running(os.getpid(), me - dt.timedelta(seconds=30))  # same pid, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_running(child.pid, None)


START_AND_HANG = (
    "import sys, time; from nasflow.registry import Registry; "
    "Registry(sys.argv[1]).start_run('r-killed', 'killed', 'h', 'name: killed', 'thread', 'test'); "
    "print('started', flush=True); time.sleep(600)"
)


def test_a_killed_run_reads_as_interrupted_and_is_marked_so(tmp_path):
    path = tmp_path / "r.duckdb"
    registry = Registry(path)
    registry.start_run("r-alive", "alive", "h", "name: alive", "thread", "test")  # this process: alive
    proc = subprocess.Popen([sys.executable, "-c", START_AND_HANG, str(path)], stdout=subprocess.PIPE, text=True,
                            env=cli_env())
    try:
        assert proc.stdout.readline().strip() == "started"
        assert open_readonly(path).get_run("r-killed")["status"] == "running"
    finally:
        proc.kill()
        proc.wait()
    reader = open_readonly(path)
    run = reader.get_run("r-killed")
    assert run["status"] == "interrupted" and f"pid {proc.pid}" in run["error"] and "resume" in run["error"]
    assert reader.query("SELECT status FROM runs WHERE run_id = 'r-killed'")[1] == [("running",)]  # not written
    Registry(path)  # a read-write open records it
    stored = dict(zip(*[["status", "error", "finished_at"], reader.query(
        "SELECT status, error, finished_at FROM runs WHERE run_id = 'r-killed'")[1][0]]))
    assert stored["status"] == "interrupted" and stored["finished_at"] is not None and "ended without" in stored["error"]
    assert reader.get_run("r-alive")["status"] == "running"


# -------------------------------------------------------------------------------- deployed files


def test_exported_files_follow_the_umask(tmp_path):
    from nasflow.export import export_onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    previous = os.umask(0o027)
    try:
        path = export_onnx(model, (1, 4), tmp_path / "m.onnx")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_artifact_accuracy_matches_pytorch_on_labelled_images(tmp_path):
    import numpy as np

    from nasflow.export import export_onnx, onnx_accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    images = np.random.default_rng(0).standard_normal((300, 3, 2, 2)).astype(np.float32)
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    labels = np.where(np.arange(300) % 3 == 0, (predicted + 1) % 3, predicted)  # two thirds right
    path = export_onnx(model, (1, 3, 2, 2), tmp_path / "m.onnx")
    assert onnx_accuracy(path, images, labels, batch_size=64) == pytest.approx(200 / 300)

    from nasflow.plugins.devices.litert import converter_available

    if not converter_available():
        pytest.skip("litert-torch is not installed: the .tflite half needs it")
    from nasflow.export.tflite_fp32 import tflite_accuracy
    from nasflow.plugins.devices.litert import convert_to_tflite

    tflite = convert_to_tflite(model, (1, 3, 2, 2), tmp_path / "m.tflite")
    assert stat.S_IMODE(tflite.stat().st_mode) == 0o666 & ~_umask()
    assert tflite_accuracy(tflite, images, labels, batch_size=64) == pytest.approx(200 / 300)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------- growing and retrying runs


def _search_spec(folder: Path, budget: int, **edits: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # accuracy-only scores: latency-weighted ones are noisy, and the fresh run below must follow
    # the same path as the grown one
    text = tiny_spec_text(folder, name="grow", objectives="{reward: accuracy}",
                          profile=False, train=False, morph=False, deploy=False)
    text = _edit(text, "  budget: 6\n", f"  budget: {budget}\n")
    for old, new in edits.items():
        text = _edit(text, old, new)
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def _fail_candidate(registry_path: Path, cand_id: str, error: str) -> None:
    """Leave the registry as a run leaves it when that candidate failed (its row failed, no numbers)."""
    import duckdb

    con = duckdb.connect(str(registry_path))
    try:
        con.execute("DELETE FROM measurements WHERE candidate_id = ?", [cand_id])
        con.execute("UPDATE candidates SET status = 'failed', error = ?, accuracy = NULL, score = NULL, "
                    "accuracy_source = NULL WHERE candidate_id = ?", [error, cand_id])
    finally:
        con.close()


def test_a_larger_budget_continues_the_search_and_failed_candidates_are_retried(tmp_path):
    from nasflow.flows.pipeline import run_spec
    from nasflow.spec import load_spec

    grown = tmp_path / "grown"
    first = run_spec(load_spec(_search_spec(grown, 4)))
    assert first.stages["search"]["distinct"] == 4 and first.stages["search"]["evaluated"] == 4
    registry = Registry(grown / "registry.duckdb")
    before = registry.get_candidates(first.run_id, stage="search")
    assert len(before) == 4
    failed = before[-1]
    _fail_candidate(grown / "registry.duckdb", failed["candidate_id"], "torch-cpu: out of memory")

    second = run_spec(load_spec(_search_spec(grown, 7)))
    assert second.run_id == first.run_id and second.resumed
    search = second.stages["search"]
    assert (search["distinct"], search["reused"], search["retried"], search["evaluated"]) == (7, 3, 1, 4)
    assert second.reused["search"] == 3 and "search 3" in second.resume_message
    rows = registry.get_candidates(first.run_id, stage="search")
    assert len(rows) == len({r["candidate_id"] for r in rows}) == 7
    again = next(r for r in rows if r["candidate_id"] == failed["candidate_id"])
    assert again["status"] == "ok" and again["accuracy"] == pytest.approx(failed["accuracy"])
    assert again["extra"]["attempts"] == 2 and again["extra"]["last_error"] == "torch-cpu: out of memory"
    assert len([m for m in registry.get_measurements([again["candidate_id"]]) if m["metric"] == "latency"]) == 2
    _, runs = registry.query("SELECT count(*), max(spec_yaml) FROM runs")
    assert runs[0][0] == 1 and "budget: 7" in runs[0][1]

    # the grown search is the search a budget of 7 would have run from the start
    fresh = run_spec(load_spec(_search_spec(tmp_path / "fresh", 7)))
    fresh_rows = Registry(tmp_path / "fresh" / "registry.duckdb").get_candidates(fresh.run_id, stage="search")
    assert [r["arch"] for r in fresh_rows] == [r["arch"] for r in before] + [r["arch"] for r in rows[4:]]
    assert sorted(r["arch"] for r in fresh_rows) == sorted(r["arch"] for r in rows)
    assert not fresh.resumed and fresh.resume_message is None


def test_a_latency_cap_no_architecture_meets_is_refused_before_the_search(tmp_path):
    from nasflow.flows.pipeline import run_spec
    from nasflow.spec import load_spec

    path = _search_spec(tmp_path, 4, **{"objectives: {reward: accuracy}": "objectives: {reward: accuracy, max_latency_ms: 0.0001}"})
    with pytest.raises(SpecError, match=r"max_latency_ms 0.0001 ms cannot be met: the space's fastest architecture \(stem_"):
        run_spec(load_spec(path))
    registry = open_readonly(tmp_path / "registry.duckdb")
    assert registry.query("SELECT count(*) FROM candidates")[1] == [(0,)]
    assert registry.query("SELECT status FROM runs")[1] == [("failed",)]


# ------------------------------------------------- real runs interrupted by SIGINT and SIGKILL, then resumed

BUDGET, TOP_K = 9, 3


def _counts(path: Path, run_id: str) -> dict[str, int] | None:
    """Rows per stage (and train rows already timed) as a reader sees them now; None before the file exists."""
    try:
        reg = open_readonly(path, lock_timeout=10)
        _, rows = reg.query(
            "SELECT stage, count(*), count(score) FROM candidates WHERE run_id = ? GROUP BY stage", [run_id]
        )
    except Exception:  # the run has not created the registry and its tables yet
        return None
    counts = {stage: n for stage, n, _ in rows}
    counts["train_timed"] = next((timed for stage, _, timed in rows if stage == "train"), 0)
    return counts


def _snapshot(path: Path, run_id: str) -> dict:
    reg = open_readonly(path)
    _, rows = reg.query("SELECT candidate_id, stage, status, score, extra FROM candidates WHERE run_id = ?", [run_id])
    return {"run": reg.get_run(run_id), "stored_status": reg.query("SELECT status FROM runs WHERE run_id = ?", [run_id])[1],
            "rows": {r[0]: {"stage": r[1], "status": r[2], "score": r[3], "extra": r[4]} for r in rows}}


def _interrupt(spec: Path, registry: Path, run_id: str, when, sig: int, log: Path) -> dict:
    """Run `nasflow run SPEC` until `when(counts)` holds, then send `sig`; the registry as left behind."""
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasflow.cli", "run", str(spec)], stdout=stdout, stderr=stderr, cwd=spec.parent,
            env=cli_env(), start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before it could be interrupted\n{err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run never reached the point to interrupt it\n{err.read_text()[-3000:]}")
            counts = _counts(registry, run_id)
            if counts is not None and when(counts):
                break
            time.sleep(0.2)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground job
        else:
            os.kill(proc.pid, signal.SIGKILL)  # the run's process alone, as the OOM killer would
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`nasflow run` did not stop within 120 s of signal {sig}\n{err.read_text()[-3000:]}")
    finally:
        try:  # whatever the run left in its process group (the Prefect server) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return {"returncode": proc.returncode, "stderr": err.read_text(), "counts": counts, **_snapshot(registry, run_id)}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """One spec run five times: SIGINT and SIGKILL mid-search, SIGINT and SIGKILL mid-train, then to the end."""
    tmp = tmp_path_factory.mktemp("signals")
    text = tiny_spec_text(tmp, name="signals", objectives="{reward: accuracy}", profile=False)
    text = _edit(text, "  budget: 6\n", f"  budget: {BUDGET}\n")
    # Batches of proxies and three models (two at a time) long enough to be caught between them:
    # each batch lands in the registry on its own (the writer flushes after 2 s), each model too.
    text = _edit(text, "proxy: {epochs: 1, subset: 0.5}", "proxy: {epochs: 8, subset: 1.0}")
    text = _edit(text, "train: {enabled: true, top_k: 1, config: {epochs: 2}}",
                 f"train: {{enabled: true, top_k: {TOP_K}, config: {{epochs: 20}}}}")
    spec = tmp / "signals.yaml"
    spec.write_text(text)
    run_id = parse_spec(text, check_plugins=False).run_id()
    registry = tmp / "registry.duckdb"
    steps = {}
    steps["int_search"] = _interrupt(spec, registry, run_id, lambda c: c.get("search", 0) >= 1, signal.SIGINT, tmp / "1")
    searched = len(steps["int_search"]["rows"])
    steps["kill_search"] = _interrupt(spec, registry, run_id, lambda c: searched < c.get("search", 0) < BUDGET,
                                      signal.SIGKILL, tmp / "2")
    steps["int_train"] = _interrupt(spec, registry, run_id, lambda c: c.get("train", 0) >= 1, signal.SIGINT, tmp / "3")
    trained = steps["int_train"]["counts"]["train"]
    checkpoints = {cid: Path(r["extra"]["checkpoint"]).stat().st_mtime_ns
                   for cid, r in steps["int_train"]["rows"].items() if r["stage"] == "train" and r["status"] == "ok"}
    steps["kill_train"] = _interrupt(spec, registry, run_id, lambda c: c.get("train", 0) > trained, signal.SIGKILL, tmp / "4")
    finished = subprocess.run([sys.executable, "-m", "nasflow.cli", "run", str(spec)], capture_output=True, text=True,
                              cwd=tmp, env=cli_env(), timeout=600)
    return {"registry": registry, "run_id": run_id, "steps": steps, "finished": finished, "checkpoints": checkpoints}


def test_sigint_marks_the_run_interrupted_with_one_message(interrupted):
    for step in ("int_search", "int_train"):
        state = interrupted["steps"][step]
        assert state["returncode"] == EXIT_INTERRUPTED, (step, state["stderr"][-3000:])
        assert state["stored_status"] == [("interrupted",)] and state["run"]["error"] == "interrupted by the user"
        lines = [line for line in state["stderr"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("interrupted") and "resume" in lines[0], state["stderr"][-3000:]


def test_a_killed_run_says_its_process_ended(interrupted):
    for step in ("kill_search", "kill_train"):
        state = interrupted["steps"][step]
        assert state["returncode"] == -signal.SIGKILL
        assert state["stored_status"] == [("running",)]  # nothing could record it
        assert state["run"]["status"] == "interrupted" and "ended without finishing the run" in state["run"]["error"]


def test_interruptions_lose_only_the_work_in_flight(interrupted):
    steps = interrupted["steps"]
    order = ["int_search", "kill_search", "int_train", "kill_train"]
    for earlier, later in zip(order, order[1:]):
        kept = set(steps[earlier]["rows"])
        assert kept <= set(steps[later]["rows"]), f"rows recorded before {earlier} were lost by {later}"
    # each interruption came where it was meant to
    assert steps["int_search"]["counts"]["search"] < BUDGET and steps["kill_search"]["counts"]["search"] < BUDGET
    assert steps["int_train"]["counts"].get("train", 0) >= 1
    assert steps["int_train"]["counts"]["train_timed"] == 0  # models are timed once all are trained: still training
    # a model recorded before Ctrl-C was not trained again
    reg = open_readonly(interrupted["registry"])
    for cid, mtime in interrupted["checkpoints"].items():
        row = next(r for r in reg.get_candidates(interrupted["run_id"], stage="train") if r["candidate_id"] == cid)
        assert Path(row["extra"]["checkpoint"]).stat().st_mtime_ns == mtime, "a finished model was trained again"


def test_the_same_spec_then_finishes_without_duplicates(interrupted):
    result = interrupted["finished"]
    assert result.returncode == 0, result.stderr[-5000:]
    assert "resumed: finished work was reused" in result.stdout
    reg = open_readonly(interrupted["registry"])
    run = reg.get_run(interrupted["run_id"])
    assert run["status"] == "finished" and run["error"] is None
    _, totals = reg.query("SELECT count(*), count(DISTINCT candidate_id) FROM candidates")
    assert totals[0][0] == totals[0][1]
    _, per_stage = reg.query("SELECT stage, count(*), count(DISTINCT arch_hash) FROM candidates GROUP BY stage ORDER BY stage")
    assert per_stage == [("morph", 1, 1), ("search", BUDGET, BUDGET), ("train", TOP_K, TOP_K)]
    _, untimed = reg.query("SELECT count(*) FROM candidates WHERE status = 'ok' AND score IS NULL")
    assert untimed == [(0,)]
    _, measurements = reg.query("SELECT count(*), count(DISTINCT measurement_id) FROM measurements")
    assert measurements[0][0] == measurements[0][1]
    assert len(reg.get_artifacts(interrupted["run_id"])) == 1


def test_a_failing_device_fails_the_candidate_only_when_it_drives_the_objective(tmp_path):
    from nasflow.flows.context import RunContext
    from nasflow.flows.evaluate import make_devices, measure_everywhere, model_for
    from nasflow.flows.search import candidate_row
    from nasflow.spaces import make_space

    from test_pipeline import FlakyDevice

    spec = parse_spec(tiny_spec_text(tmp_path), check_plugins=False)
    space = make_space(spec.space)
    genome = space.sample(__import__("random").Random(0))
    arch = space.to_arch(genome)
    devices = {"torch-cpu": make_devices(spec.devices)["torch-cpu"], "flaky": FlakyDevice()}
    measured, failures = measure_everywhere(devices, model_for(arch, spec.dataset), (1, 1, 8, 8))
    assert [m.device for m in measured] == ["torch-cpu"] and failures == {"flaky": "flaky: lost the connection"}
    trained = {"error": None, "accuracy": 0.5, "val_loss": 1.0, "train_epochs": 1, "train_seconds": 0.1}
    row = candidate_row(RunContext("r", spec), arch, genome, trained, measured, failures)
    assert row["status"] == "ok" and row["score"] is not None
    flaky_objective = spec.model_copy(update={"objectives": spec.objectives.model_copy(update={"device": "flaky"})})
    row = candidate_row(RunContext("r", flaky_objective), arch, genome, trained, measured, failures)
    assert row["status"] == "failed" and row["error"] == "flaky: lost the connection"


# ------------------------------------------------- an interrupt stops the trainings in flight, not after them


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_stops_a_long_proxy_training_within_seconds(tmp_path, sig):
    """Proxies of 2,000 epochs take minutes; SIGTERM (a scheduler, `timeout`) or Ctrl-C during them
    ends the run within seconds, marked interrupted, with one line and no Prefect crash report."""
    spec = tmp_path / "long.yaml"
    spec.write_text(
        "name: long\n"
        f"dataset: {{name: digits, val_split: 0.25, cache_dir: {tmp_path / 'cache'}}}\n"
        "devices:\n  - {name: torch-cpu, options: {threads: 1, min_seconds: 0, max_seconds: 0.2, max_runs: 20}}\n"
        "profile: {enabled: false}\n"
        "search: {budget: 2, batch_size: 2, proxy: {epochs: 2000}}\n"
        f"registry: {{path: {tmp_path / 'r.duckdb'}}}\nexecution: {{work_dir: {tmp_path / 'runs'}, workers: 2}}\n"
    )
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasflow.cli", "run", str(spec)], stdout=stdout, stderr=stderr, cwd=tmp_path,
            env=cli_env(), start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 300
        while "search   started" not in out.read_text():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the search never started"
            time.sleep(0.5)
        time.sleep(3)  # the proxies are training now (the two candidates' timings take well under 3 s)
        start = time.monotonic()
        os.kill(proc.pid, sig)
        proc.wait(timeout=120)
        took = time.monotonic() - start
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    stderr = err.read_text()
    assert proc.returncode == 130, stderr[-3000:]
    assert took < 45, f"the run took {took:.0f} s to stop"
    assert stderr.count("interrupted:") == 1 and "Crash detected" not in stderr, stderr[-3000:]
    run = open_readonly(tmp_path / "r.duckdb").query("SELECT status, error FROM runs")[1]
    assert run == [("interrupted", "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted by the user")]
