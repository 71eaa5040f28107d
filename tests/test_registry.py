"""Tests of the DuckDB registry: migrations, locking across processes, idempotent writes, formats."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from nasflow import registry as reg
from nasflow.errors import RegistryError
from nasflow.registry import Registry, format_csv, format_json, format_table, open_readonly

# Child processes stand in for `nasflow sql` and for a second process holding the file lock.
READER = (
    "import sys; from nasflow.registry import open_readonly; "
    "print(open_readonly(sys.argv[1], lock_timeout=10).query('SELECT count(*) FROM candidates')[1][0][0])"
)
HOLDER = (
    "import sys, time, duckdb; con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
    "print('locked', flush=True); time.sleep(float(sys.argv[3])); con.close()"
)


def candidate(i: int, run_id: str = "r1", **extra) -> dict:
    """A plausible candidate row."""
    row = {
        "candidate_id": f"c{i}",
        "run_id": run_id,
        "stage": "search",
        "arch": f"ir_k3_e6_c{16 + i % 8}_s1",
        "arch_hash": f"h{i}",
        "status": "ok",
        "params": 1000 + i,
        "accuracy": 0.5 + (i % 100) / 1000,
    }
    row.update(extra)
    return row


def measurement(i: int, candidate_id: str = "c0", **extra) -> dict:
    """A plausible measurement row."""
    row = {
        "measurement_id": f"m{i}",
        "candidate_id": candidate_id,
        "run_id": "r1",
        "device": "cpu",
        "source": "measured",
        "metric": "latency",
        "median_ms": 1.25 + i,
        "runs": 50,
    }
    row.update(extra)
    return row


def hold_lock(path, mode: str, seconds: float) -> subprocess.Popen:
    """Start a process that holds the file's lock for a while; returns once it holds it."""
    command = [sys.executable, "-c", HOLDER, str(path), mode, str(seconds)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def count(registry: Registry, table: str) -> int:
    """Number of rows in a table."""
    return registry.query(f"SELECT count(*) FROM {table}")[1][0][0]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "registry.duckdb"


@pytest.fixture
def registry(path):
    return Registry(path, lock_timeout=10)


# --- schema and migrations ---------------------------------------------------------------------


def test_migrations_are_idempotent(path):
    Registry(path)
    Registry(path)
    columns, rows = Registry(path).query("SELECT version, name FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [m[0] for m in reg.MIGRATIONS]


NEXT = reg.MIGRATIONS[-1][0] + 1


def test_reopen_applies_only_missing_migrations(path, monkeypatch):
    Registry(path)
    extra = (NEXT, "add runs.note", "ALTER TABLE runs ADD COLUMN note VARCHAR")
    monkeypatch.setattr(reg, "MIGRATIONS", reg.MIGRATIONS + [extra])
    Registry(path)
    registry = Registry(path)
    versions = [r[0] for r in registry.query("SELECT version FROM schema_version ORDER BY version")[1]]
    assert versions == list(range(1, NEXT + 1))
    assert "note" in registry.query("SELECT * FROM runs")[0]


def test_failed_migration_leaves_no_trace(path, monkeypatch):
    Registry(path)
    broken = (NEXT, "broken", "CREATE TABLE half (x INTEGER); SELECT * FROM no_such_table")
    monkeypatch.setattr(reg, "MIGRATIONS", reg.MIGRATIONS + [broken])
    with pytest.raises(RegistryError, match=f"migration {NEXT}"):
        Registry(path)
    monkeypatch.undo()
    registry = Registry(path)
    assert registry.query("SELECT max(version) FROM schema_version")[1] == [(NEXT - 1,)]
    tables = {r[0] for r in registry.query("SELECT table_name FROM information_schema.tables")[1]}
    assert "half" not in tables


def test_newer_schema_is_refused(path):
    Registry(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (99, 'future', now()::TIMESTAMP)")
    con.close()
    with pytest.raises(RegistryError, match="newer than this nasflow"):
        Registry(path)


def test_schema_doc_matches_database(registry):
    _, rows = registry.query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "ORDER BY table_name, ordinal_position"
    )
    actual: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        actual.setdefault(table, []).append((column, data_type))
    expected = {t: [(c, ty) for c, ty, _ in cols] for t, cols in reg.SCHEMA_DOC.items()}
    assert actual == expected


def test_schema_markdown_lists_every_column():
    text = reg.schema_markdown()
    for table, columns in reg.SCHEMA_DOC.items():
        assert f"### `{table}`" in text
        for column, _, _ in columns:
            assert f"| `{column}` |" in text
    assert "| `run_id` | VARCHAR, primary key |" in text
    assert "One of `measured`, `lut`, `predicted`, `estimated`." in text


# --- opening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"run: not a database\n", b"", b"x" * 5000])
def test_non_duckdb_file_is_refused_and_unchanged(tmp_path, content):
    path = tmp_path / "notes.duckdb"
    path.write_bytes(content)
    with pytest.raises(RegistryError, match="is not a DuckDB database"):
        Registry(path)
    with pytest.raises(RegistryError, match="is not a DuckDB database"):
        open_readonly(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.duckdb"]


def test_directory_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="is a directory"):
        Registry(tmp_path)


def test_parent_directories_are_created(tmp_path):
    Registry(tmp_path / "a" / "b" / "reg.duckdb")
    assert (tmp_path / "a" / "b" / "reg.duckdb").exists()


def test_open_readonly_needs_an_existing_file(tmp_path):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(RegistryError, match="no registry at .*missing.duckdb; run a spec first or pass --registry"):
        open_readonly(missing)
    assert not missing.exists()


def test_open_readonly_refuses_writes(path, registry):
    reader = open_readonly(path)
    with pytest.raises(RegistryError, match="opened read-only"):
        reader.add_candidates([candidate(0)])
    assert count(reader, "candidates") == 0


# --- runs ----------------------------------------------------------------------------------------


def test_start_finish_and_resume_run(registry):
    assert registry.start_run("r1", "demo", "abc", "name: demo\n", "threads", "0.1.0") is False
    run = registry.get_run("r1")
    assert run["status"] == "running" and run["finished_at"] is None and run["host"]
    registry.finish_run("r1", "interrupted", error="Ctrl-C")
    run = registry.get_run("r1")
    assert run["status"] == "interrupted" and run["error"] == "Ctrl-C" and run["finished_at"] >= run["started_at"]
    assert registry.start_run("r1", "demo", "abc", "name: demo\n", "dask", "0.1.1") is True
    run = registry.get_run("r1")
    assert (run["status"], run["error"], run["finished_at"], run["runner"]) == ("running", None, None, "dask")
    registry.finish_run("r1", "finished")
    assert registry.get_run("r1")["status"] == "finished"
    assert count(registry, "runs") == 1
    assert registry.get_run("nope") is None


def test_finish_run_checks_status_and_run(registry):
    registry.start_run("r1", "demo", "abc", "", "threads", "0.1.0")
    with pytest.raises(RegistryError, match="status 'done'"):
        registry.finish_run("r1", "done")
    with pytest.raises(RegistryError, match="no run 'r2'"):
        registry.finish_run("r2", "failed")


# --- appends ----------------------------------------------------------------------------------


def test_insert_or_ignore_never_duplicates(registry):
    assert registry.add_candidates([candidate(i) for i in range(3)]) == 3
    again = [candidate(i, accuracy=0.0) for i in range(5)] + [candidate(4)]
    assert registry.add_candidates(again) == 2
    rows = registry.get_candidates("r1")
    assert [r["candidate_id"] for r in rows] == ["c0", "c1", "c2", "c3", "c4"]
    assert rows[0]["accuracy"] == 0.5  # the first write wins


def test_recorded_order_survives_skipped_rows(registry):
    registry.add_candidates([candidate(i) for i in range(0, 2000, 7)])
    registry.add_candidates([candidate(i) for i in range(2000)])
    ids = [r["candidate_id"] for r in registry.get_candidates("r1")]
    first = list(range(0, 2000, 7))
    assert ids == [f"c{i}" for i in first + [i for i in range(2000) if i % 7]]


def test_missing_keys_are_null_and_defaults_filled(registry):
    before = reg._utcnow()
    extra = {"latency": np.float32(1.5), "blocks": np.array([1, 2]), "when": dt.date(2024, 1, 2)}
    registry.add_candidates([{"candidate_id": "c0", "run_id": "r1", "stage": "train", "extra": extra}])
    row = registry.get_candidates("r1")[0]
    assert row["arch"] is None and row["params"] is None and row["status"] is None
    assert row["extra"] == {"latency": 1.5, "blocks": [1, 2], "when": "2024-01-02"}
    assert before <= row["created_at"] <= reg._utcnow()


def test_explicit_timestamps_and_json_text(registry):
    aware = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    registry.add_measurements([
        measurement(0, created_at=aware, fingerprint='{"cpu": "x"}'),
        measurement(1, created_at="2024-05-01T08:30:00", fingerprint={"cpu": "y"}),
    ])
    rows = registry.get_measurements(["c0"])
    assert rows[0]["created_at"] == dt.datetime(2024, 5, 1, 10, 0)
    assert rows[1]["created_at"] == dt.datetime(2024, 5, 1, 8, 30)
    assert [r["fingerprint"] for r in rows] == [{"cpu": "x"}, {"cpu": "y"}]


def test_unknown_keys_are_named(registry):
    with pytest.raises(RegistryError, match="unknown column.*candidates: latency_ms, zeta"):
        registry.add_candidates([candidate(0), candidate(1, latency_ms=3.0, zeta=1)])
    assert count(registry, "candidates") == 0


def test_primary_key_is_required(registry):
    with pytest.raises(RegistryError, match="needs a value for op_key"):
        registry.add_lut([{"device": "cpu", "fingerprint_hash": "f", "input_shape": "1x3x8x8"}])


def test_bad_values_name_the_column(registry):
    with pytest.raises(RegistryError, match=r"candidates.params: 1.5 is not a whole number"):
        registry.add_candidates([candidate(0, params=1.5)])
    with pytest.raises(RegistryError, match=r"candidates.accuracy"):
        registry.add_candidates([candidate(0, accuracy="high")])
    registry.add_candidates([candidate(0, params=np.float64(7.0), macs=np.int64(9))])
    assert registry.get_candidates("r1")[0]["params"] == 7


def test_measurement_source_check_rejects_guessed(registry):
    with pytest.raises(RegistryError, match="measurements.source: 'guessed'"):
        registry.add_measurements([measurement(0), measurement(1, source="guessed")])
    assert count(registry, "measurements") == 0  # the whole batch is rolled back
    for i, source in enumerate(reg.MEASUREMENT_SOURCES):
        registry.add_measurements([measurement(i, source=source)])
    assert count(registry, "measurements") == 4


def test_candidate_stage_status_and_accuracy_source_checked(registry):
    with pytest.raises(RegistryError, match="candidates.stage: 'profile'"):
        registry.add_candidates([candidate(0, stage="profile")])
    with pytest.raises(RegistryError, match="candidates.status: 'meh'"):
        registry.add_candidates([candidate(0, status="meh")])
    with pytest.raises(RegistryError, match="candidates.accuracy_source: 'guess'; allowed: proxy, full"):
        registry.add_candidates([candidate(0, accuracy_source="guess")])
    assert count(registry, "candidates") == 0


def test_database_check_constraints_still_guard_migration_1_columns(registry, path):
    # A writer that bypasses nasflow's checks still meets the constraints migration 1 created.
    con = duckdb.connect(str(path))
    try:
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO measurements (measurement_id, source) VALUES ('m', 'guessed')")
    finally:
        con.close()


def test_get_filters(registry):
    registry.add_candidates(
        [candidate(0), candidate(1, stage="train", parent_id="c0"), candidate(2, status="failed", error="oom")]
    )
    registry.add_candidates([candidate(9, run_id="r2")])
    assert [r["candidate_id"] for r in registry.get_candidates("r1", stage="search")] == ["c0", "c2"]
    assert [r["candidate_id"] for r in registry.get_candidates("r1", stage="search", status="ok")] == ["c0"]
    assert [r["candidate_id"] for r in registry.get_candidates("r2")] == ["c9"]
    registry.add_measurements([measurement(0, "c0"), measurement(1, "c1"), measurement(2, "c2")])
    assert [r["measurement_id"] for r in registry.get_measurements(["c2", "c0"])] == ["m0", "m2"]
    assert registry.get_measurements([]) == []
    art = {"artifact_id": "a0", "candidate_id": "c1", "run_id": "r1", "format": "onnx"}
    art.update(verified=True, size_bytes=10)
    registry.add_artifacts([art, dict(art, artifact_id="a1", run_id="r2")])
    rows = registry.get_artifacts("r1")
    assert [(r["artifact_id"], r["verified"], r["size_bytes"]) for r in rows] == [("a0", True, 10)]


def test_add_lut_ignores_or_replaces(registry):
    entry = {"device": "cpu", "fingerprint_hash": "f", "op_key": "conv3x3", "input_shape": "1x8x8x8", "median_ms": 1.0}
    registry.add_lut([entry])
    registry.add_lut([dict(entry, median_ms=2.0)])
    assert registry.query("SELECT median_ms FROM lut")[1] == [(1.0,)]
    registry.add_lut([dict(entry, median_ms=3.0), dict(entry, median_ms=4.0)], replace=True)
    assert registry.query("SELECT median_ms FROM lut")[1] == [(4.0,)]


def test_empty_batch_is_a_no_op(registry):
    assert registry.add_candidates([]) == 0


def test_append_20000_candidates(registry):
    rows = [candidate(i, extra={"gen": i // 100}) for i in range(20_000)]
    start = time.perf_counter()
    assert registry.add_candidates(rows) == 20_000
    elapsed = time.perf_counter() - start
    print(f"\nappended 20,000 candidate rows in {elapsed:.3f} s ({20_000 / elapsed:,.0f} rows/s)")
    assert count(registry, "candidates") == 20_000


# --- read-only queries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    ["DELETE FROM candidates", "UPDATE candidates SET accuracy = 0", "DROP TABLE candidates",
     "INSERT INTO candidates (candidate_id) VALUES ('x')", "CREATE TABLE t (x INTEGER)"],
)
def test_query_refuses_writes_and_keeps_data(registry, sql):
    registry.add_candidates([candidate(i) for i in range(3)])
    with pytest.raises(RegistryError, match="the registry is read-only here: .*read-only mode"):
        registry.query(sql)
    assert count(registry, "candidates") == 3
    assert registry.query("SELECT sum(accuracy) FROM candidates")[1][0][0] == pytest.approx(1.503)


def test_query_syntax_error_keeps_duckdb_message(registry):
    with pytest.raises(RegistryError, match="syntax error at or near \"SELEC\""):
        registry.query("SELEC 1")
    with pytest.raises(RegistryError, match="nonexistent"):
        registry.query("SELECT * FROM nonexistent")


def test_query_params_and_json(registry):
    registry.add_candidates([candidate(0, extra={"a": [1, 2]}), candidate(1)])
    columns, rows = registry.query("SELECT candidate_id, extra FROM candidates WHERE params > ? ORDER BY 1", [999])
    assert columns == ["candidate_id", "extra"]
    assert rows == [("c0", {"a": [1, 2]}), ("c1", None)]
    assert registry.query("SELECT $x + 1 AS y", {"x": 1}) == (["y"], [(2,)])


# --- several processes ----------------------------------------------------------------------------


def test_reader_process_works_between_write_batches(path, registry):
    for batch in range(2):
        registry.add_candidates([candidate(batch * 10 + i) for i in range(10)])
        out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(10 * (batch + 1))


def test_writer_waits_for_a_reader_holding_the_lock(path, registry):
    holder = hold_lock(path, "ro", 1.0)
    try:
        start = time.monotonic()
        assert registry.add_candidates([candidate(0)]) == 1
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    print(f"\nwriter waited {waited:.2f} s for the reader's lock")
    assert waited > 0.3  # it really was blocked, then got through
    assert count(registry, "candidates") == 1


def test_reader_waits_for_a_writer_holding_the_lock(path, registry):
    registry.add_candidates([candidate(0)])
    holder = hold_lock(path, "rw", 1.0)
    try:
        assert count(open_readonly(path, lock_timeout=10), "candidates") == 1
    finally:
        holder.wait(timeout=30)


def test_lock_timeout_names_the_holder(path):
    registry = Registry(path, lock_timeout=0.3)
    holder = hold_lock(path, "ro", 30)
    try:
        with pytest.raises(RegistryError, match=rf"locked by another process \(pid {holder.pid}\).*Conflicting lock"):
            registry.add_candidates([candidate(0)])
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --- output formats ---------------------------------------------------------------------------------


def test_format_table():
    columns = ["name", "latency_ms", "params", "ok"]
    rows = [("a", 1.234567, 10, True), ("long-name", 12345.678, None, False), ("x\ny", 0.000012345, 5, None)]
    text = format_table(columns, rows)
    lines = text.splitlines()
    assert lines[0].split() == columns
    assert lines[1].startswith("---------  ----------")
    assert lines[2] == "a               1.235      10  true"
    assert lines[3] == "long-name       12350    NULL  false"
    assert lines[4] == "x\\ny        1.234e-05       5  NULL"
    assert lines[5] == "(3 rows)"
    assert format_table(["n"], []).splitlines() == ["n", "-", "(0 rows)"]


def test_format_csv():
    when = dt.datetime(2024, 1, 2, 3, 4, 5)
    text = format_csv(["a", "b", "c", "d"], [(1, 0.1, None, when), ("x,y", 2.5, {"k": 1}, None)])
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed == [["a", "b", "c", "d"], ["1", "0.1", "", "2024-01-02T03:04:05"], ["x,y", "2.5", '{"k": 1}', ""]]


def test_format_json():
    when = dt.datetime(2024, 1, 2, 3, 4, 5)
    text = format_json(["a", "t", "x", "a"], [(1, when, float("nan"), 2), (None, None, {"k": [1.5]}, 3)])
    assert json.loads(text) == [
        {"a": 1, "t": "2024-01-02T03:04:05", "x": None, "a_1": 2},
        {"a": None, "t": None, "x": {"k": [1.5]}, "a_1": 3},
    ]
    assert json.loads(format_json(["a"], [])) == []


def test_formats_of_a_real_query(registry):
    registry.add_candidates([candidate(0, extra={"k": 1})])
    columns, rows = registry.query("SELECT candidate_id, accuracy, created_at, extra FROM candidates")
    assert "c0" in format_table(columns, rows)
    assert format_csv(columns, rows).startswith("candidate_id,accuracy,created_at,extra\nc0,0.5,")
    obj = json.loads(format_json(columns, rows))[0]
    assert obj["extra"] == {"k": 1} and dt.datetime.fromisoformat(obj["created_at"])


def test_search_log_rows_are_kept_once_per_run_step_and_metric(registry):
    r = registry
    rows = [{"run_id": "a", "strategy": "mnasnet", "step": s, "metric": m, "value": v}
            for s, (m, v) in enumerate([("entropy", 1.9), ("entropy", 1.5)], start=1)]
    assert r.add_search_log(rows) == 2
    # a resumed run replays its steps: nothing is logged twice, the first value stays
    assert r.add_search_log([{**rows[0], "value": 0.1}, {"run_id": "a", "strategy": "mnasnet", "step": 3, "metric": "entropy", "value": 1.2}]) == 1
    _, got = r.query("SELECT step, value FROM search_log WHERE run_id = 'a' ORDER BY step")
    assert got == [(1, 1.9), (2, 1.5), (3, 1.2)]
