"""`nasflow sql` only reads: every attempt to write, escape or reconfigure is refused, and results stream."""

import csv
import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import duckdb
import pytest

from nasflow.errors import RegistryError, SqlRefused
from nasflow.output_formats import TABLE_SAMPLE_ROWS, format_json, format_table, write_csv, write_table
from nasflow.readonly_sql import (
    ALLOWED_PRAGMAS, FETCH_ROWS, _run_error, check_statement, locked_connection, run_readonly_query,
)
from nasflow.registry import Registry

from test_cli import ROWS, assert_clean_error, cli_env, nasflow

ROOT = Path(__file__).resolve().parents[1]
SECRET = "the-secret-text-of-another-file"
BIG = 200_000  # rows in the streaming registry's candidates table


# ----------------------------------------------------------------------------------------- fixtures


def make_registry(path: Path) -> Path:
    registry = Registry(path)
    registry.start_run("r1", "demo", "spec-hash", "name: demo\n", "sequential", "0.0")
    assert registry.add_candidates(ROWS) == len(ROWS)
    assert registry.add_measurements([
        {"measurement_id": "m1", "candidate_id": "cand-a", "run_id": "r1", "device": "torch-cpu",
         "metric": "latency", "median_ms": 1.5},
    ]) == 1
    return path


@pytest.fixture
def place(tmp_path):
    """A working directory with the registry, files a query might try to read, and a private TMPDIR."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.txt").write_text(SECRET + "\n")
    (work / "rows.csv").write_text("candidate_id,run_id\n" + SECRET + ",r1\n")
    other = work / "other.duckdb"
    duckdb.connect(str(other)).close()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {"registry": make_registry(work / "registry.duckdb"), "cwd": work, "tmp": tmp}


def snapshot(place) -> dict:
    """Everything an attempt could change: tables and row counts, the file's bytes and mtime, files around."""
    path = place["registry"]
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()
    stat = path.stat()
    return {
        "counts": counts,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "cwd": sorted(p.name for p in place["cwd"].rglob("*")),
        "tmp": sorted(p.name for p in place["tmp"].rglob("*")),
    }


def sql(place, *args):
    """`nasflow sql` in the place's directory, with the place's TMPDIR, on its registry."""
    env = cli_env(TMPDIR=str(place["tmp"]))
    return nasflow("sql", *args, "--registry", place["registry"], cwd=place["cwd"], env=env)


# ------------------------------------------------------------------------------------- the attempts

REFUSED = "read-only SQL runs exactly one reading statement"
OUTSIDE = "reaches outside the registry"

ATTEMPTS = [
    ("copy-to", "COPY (SELECT * FROM runs) TO 'x.csv'", ["refused COPY", REFUSED]),
    ("copy-to-format", "COPY candidates TO 'x.parquet' (FORMAT parquet)", ["refused COPY"]),
    ("second-statement", "SELECT 1; COPY (SELECT * FROM runs) TO 'x.csv'", ["refused 2 statements (SELECT, COPY)"]),
    ("trailing-statement", "SELECT count(*) FROM candidates; DELETE FROM candidates", ["refused 2 statements (SELECT, DELETE)"]),
    ("read_text", "SELECT * FROM read_text('secret.txt')", [OUTSIDE, "secret.txt"]),
    ("read_csv", "SELECT * FROM read_csv('rows.csv')", [OUTSIDE, "rows.csv"]),
    ("file-as-table", "SELECT * FROM 'rows.csv'", [OUTSIDE]),
    ("read_csv-in-subquery", "SELECT count(*) FROM candidates WHERE candidate_id IN (SELECT candidate_id FROM read_csv('rows.csv'))", [OUTSIDE]),
    ("glob", "SELECT * FROM glob('*')", [OUTSIDE]),
    ("load", "LOAD json", ["refused LOAD", REFUSED]),
    ("install", "INSTALL httpfs", ["refused INSTALL (a LOAD statement)"]),
    ("set", "SET enable_external_access = true", ["refused SET"]),
    ("set-threads", "SET threads = 1", ["refused SET"]),
    ("reset", "RESET lock_configuration", ["refused RESET (a SET statement)"]),
    ("use", "USE memory", ["refused USE (a SET statement)"]),
    ("attach", "ATTACH 'other.duckdb' AS other", ["refused ATTACH"]),
    ("detach", "DETACH registry", ["refused DETACH"]),
    ("create", "CREATE TABLE notes (a INTEGER)", ["refused CREATE"]),
    ("create-view", "CREATE VIEW v AS SELECT * FROM candidates", ["refused CREATE"]),
    ("create-macro", "CREATE MACRO m(x) AS x + 1", ["refused CREATE"]),
    ("insert", "INSERT INTO runs (run_id) VALUES ('intruder')", ["refused INSERT"]),
    ("update", "UPDATE candidates SET accuracy = 1.0", ["refused UPDATE"]),
    ("delete", "DELETE FROM candidates", ["refused DELETE", "read-only"]),
    ("drop", "DROP TABLE candidates", ["refused DROP"]),
    ("alter", "ALTER TABLE candidates ADD COLUMN x INTEGER", ["refused ALTER"]),
    ("checkpoint", "CHECKPOINT", ["refused CHECKPOINT (a CALL statement)"]),
    ("force-checkpoint", "FORCE CHECKPOINT", ["refused FORCE (a CALL statement)"]),
    ("vacuum", "VACUUM", ["refused VACUUM"]),
    ("cte-delete", "WITH gone AS (DELETE FROM candidates RETURNING *) SELECT count(*) FROM gone",
     ["refused SELECT containing DELETE (a data-modifying WITH)"]),
    ("cte-insert", "WITH added AS (INSERT INTO runs (run_id) VALUES ('x') RETURNING *) SELECT * FROM added",
     ["refused SELECT containing INSERT"]),
    ("copy-from", "COPY candidates FROM 'rows.csv'", ["refused COPY"]),
    ("pragma-profiling", "PRAGMA enable_profiling", ["refused PRAGMA enable_profiling"]),
    ("pragma-profile-output", "PRAGMA profiling_output = 'profile.json'", ["refused PRAGMA (a SET statement)"]),
    ("pragma-threads", "PRAGMA threads = 1", ["refused PRAGMA (a SET statement)"]),
    ("pragma-checkpoint", "PRAGMA force_checkpoint", ["refused PRAGMA force_checkpoint"]),
    ("pragma-import", "PRAGMA import_database('dump')", ["refused PRAGMA import_database"]),
    ("export", "EXPORT DATABASE 'dump'", ["refused EXPORT"]),
    ("call-read_text", "CALL read_text('secret.txt')", ["refused CALL", REFUSED]),
    ("call-read_csv", "CALL read_csv('rows.csv')", ["refused CALL"]),
    ("explain-analyze-copy", "EXPLAIN ANALYZE COPY candidates TO 'x.csv'", ["refused EXPLAIN of COPY"]),
    ("explain-delete", "EXPLAIN DELETE FROM candidates", ["refused EXPLAIN of DELETE"]),
    ("explain-cte-delete", "EXPLAIN ANALYZE WITH g AS (DELETE FROM candidates RETURNING *) SELECT * FROM g",
     ["refused SELECT containing DELETE (a data-modifying WITH)"]),
    ("transaction", "BEGIN TRANSACTION", ["refused BEGIN (a TRANSACTION statement)"]),
    ("prepare", "PREPARE p AS SELECT 1", ["refused PREPARE"]),
    ("update-extensions", "UPDATE EXTENSIONS", ["refused UPDATE (a kind of statement"]),
    ("secrets", "SELECT * FROM duckdb_secrets()", [OUTSIDE]),
    ("delete-inside-query-function",
     "SELECT * FROM query('WITH g AS (DELETE FROM candidates RETURNING *) SELECT count(*) FROM g')",
     ["data-modifying"]),
    ("nothing", "  -- just a comment\n", ["no SQL statement given"]),
    # DuckDB runs a PIVOT without an IN list as several statements (it creates a type first)
    ("pivot-multi", "PIVOT candidates ON status USING count(*) GROUP BY run_id",
     ["refused PIVOT (several statements in one", "IN (...)"]),
]


@pytest.mark.parametrize("sql_text, fragments", [a[1:] for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS])
def test_attempt_is_refused_and_changes_nothing(place, sql_text, fragments):
    before = snapshot(place)
    result = sql(place, sql_text)
    assert_clean_error(result, *fragments)
    assert result.stdout == ""
    assert SECRET not in result.stderr
    assert snapshot(place) == before


def test_syntax_error_keeps_duckdbs_message(place):
    before = snapshot(place)
    assert_clean_error(sql(place, "SELEC candidate_id FROM candidates"), "syntax error", "SELEC")
    assert snapshot(place) == before


# Attempts the statement check itself refuses; the others get past it and are stopped by the
# locked connection (a file access, or DuckDB's binder inside query('...')).
CHECKED = [a for a in ATTEMPTS if a[2][0].startswith(("refused ", "no SQL"))]


@pytest.mark.parametrize("sql_text", [a[1] for a in CHECKED], ids=[a[0] for a in CHECKED])
def test_refused_before_the_registry_is_opened(sql_text):
    """The statement check needs no registry: a refused statement never reaches a connection."""
    with pytest.raises(SqlRefused):
        check_statement(sql_text)


# The second layer on its own: even a statement that skipped the check cannot write, escape or
# reconfigure on the locked connection.
ENGINE_ATTEMPTS = [
    "COPY (SELECT * FROM runs) TO 'x.csv'",
    "COPY candidates FROM 'rows.csv'",
    "SELECT * FROM read_text('secret.txt')",
    "ATTACH 'other.duckdb' AS other",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET temp_directory = 'spill'",
    "PRAGMA profiling_output = 'profile.json'",
    "INSERT INTO runs (run_id) VALUES ('intruder')",
    "WITH gone AS (DELETE FROM candidates RETURNING *) SELECT count(*) FROM gone",
    "EXPORT DATABASE 'dump'",
]


@pytest.mark.parametrize("sql_text", ENGINE_ATTEMPTS)
def test_locked_connection_refuses_even_unchecked_statements(place, monkeypatch, sql_text):
    monkeypatch.chdir(place["cwd"])
    monkeypatch.setenv("TMPDIR", str(place["tmp"]))
    before = snapshot(place)
    with locked_connection(place["registry"]) as con:
        with pytest.raises(duckdb.Error) as caught:
            con.execute(sql_text).fetchall()
    assert snapshot(place) == before
    # and should such an error reach a user, it reads as a refusal
    assert isinstance(_run_error(caught.value), SqlRefused), caught.value


def test_locked_connection_settings_as_a_query_sees_them(place):
    query = ("SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
             "'lock_configuration', 'autoload_known_extensions', 'autoinstall_known_extensions', "
             "'access_mode', 'temp_directory') ORDER BY name")
    with run_readonly_query(place["registry"], query) as result:
        settings = dict(result.rows())
    assert settings == {
        "access_mode": "read_only", "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
        "enable_external_access": "false", "lock_configuration": "true", "temp_directory": "",
    }


# ----------------------------------------------------------------------------------- allowed kinds

ALLOWED_KINDS = [
    ("select", "SELECT candidate_id FROM candidates ORDER BY 1", ["cand-a", "cand-b", "cand-c", "(3 rows)"]),
    ("with", "WITH ok AS (SELECT * FROM candidates WHERE status = 'ok') SELECT count(*) AS n FROM ok", ["n", "2", "(1 row)"]),
    ("from-first", "FROM runs SELECT run_id, status", ["r1", "running"]),
    ("values", "VALUES (1, 'one'), (2, 'two')", ["one", "two", "(2 rows)"]),
    ("pivot", "PIVOT candidates ON status IN ('ok', 'failed') USING count(*) GROUP BY run_id", ["failed", "ok", "r1"]),
    ("explain", "EXPLAIN SELECT * FROM candidates", ["physical_plan", "Seq Scan"]),
    ("explain-analyze", "EXPLAIN ANALYZE SELECT count(*) FROM candidates", ["analyzed_plan"]),
    ("explain-format", "EXPLAIN (FORMAT json) SELECT 1", ["physical_plan", "PROJECTION"]),
    ("describe", "DESCRIBE candidates", ["candidate_id", "VARCHAR", "accuracy", "DOUBLE"]),
    ("show-tables", "SHOW TABLES", ["candidates", "measurements", "runs", "schema_version"]),
    ("show-table", "SHOW candidates", ["candidate_id", "column_type"]),
    ("summarize", "SUMMARIZE candidates", ["column_name", "accuracy", "0.8125"]),
    ("pragma-table_info", "PRAGMA table_info('candidates')", ["candidate_id", "accuracy", "notnull"]),
    ("pragma-show_tables", "PRAGMA show_tables", ["candidates", "runs"]),
    ("settings", "SELECT value FROM duckdb_settings() WHERE name = 'enable_external_access'", ["false"]),
    ("trailing-semicolon", "SELECT count(*) AS n FROM candidates;", ["n", "3"]),
]


@pytest.mark.parametrize("sql_text, fragments", [a[1:] for a in ALLOWED_KINDS], ids=[a[0] for a in ALLOWED_KINDS])
def test_reading_kinds_work(place, sql_text, fragments):
    before = snapshot(place)
    result = sql(place, sql_text)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for fragment in fragments:
        assert fragment in result.stdout, (fragment, result.stdout)
    assert snapshot(place) == before


@pytest.mark.parametrize("pragma", ALLOWED_PRAGMAS)
def test_every_allowed_pragma_runs_on_the_locked_connection(place, pragma):
    statement = f"PRAGMA {pragma}('candidates')" if pragma in ("table_info", "storage_info") else f"PRAGMA {pragma}"
    before = snapshot(place)
    with run_readonly_query(place["registry"], statement) as result:
        assert result.columns and list(result.rows())
    assert snapshot(place) == before


def test_readme_lists_the_allowed_pragmas():
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("`nasflow sql` runs exactly one"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    for pragma in ALLOWED_PRAGMAS:
        assert f"`{pragma}`" in paragraph, pragma


# -------------------------------------------------------------------------------- streaming, --limit


@pytest.fixture(scope="module")
def big_registry(tmp_path_factory):
    """A registry whose candidates table holds BIG rows (inserted in one statement, to be quick)."""
    path = tmp_path_factory.mktemp("big") / "registry.duckdb"
    Registry(path)  # the schema
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "INSERT INTO candidates (candidate_id, run_id, stage, arch, status, params, accuracy, extra) "
            "SELECT 'cand-' || lpad(i::VARCHAR, 6, '0'), 'big', 'search', 'stem_c8_s1-head_c32', 'ok', i, "
            "i / ?, json_object('i', i) FROM range(?) AS t(i)",
            [BIG, BIG],
        )
    finally:
        con.close()
    return path


BIG_QUERY = "SELECT candidate_id, params, accuracy, extra FROM candidates ORDER BY candidate_id"


def test_rows_are_fetched_in_chunks(big_registry):
    with run_readonly_query(big_registry, BIG_QUERY, chunk_rows=1000) as result:
        sizes = []
        first = None
        for chunk in result.chunks():
            sizes.append(len(chunk))
            first = first or chunk[0]
    assert sizes == [1000] * (BIG // 1000)
    assert first == ("cand-000000", 0, 0.0, {"i": 0})  # JSON decoded per chunk


def test_default_chunk_is_one_duckdb_vector(big_registry):
    with run_readonly_query(big_registry, BIG_QUERY) as result:
        chunk = next(result.chunks())
    assert len(chunk) == FETCH_ROWS


class CountingSink:
    """A text stream that keeps only how much was written."""

    def __init__(self):
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def _peak_bytes(work) -> tuple[int, object]:
    tracemalloc.start()
    try:
        value = work()
        return tracemalloc.get_traced_memory()[1], value
    finally:
        tracemalloc.stop()


def test_streaming_a_large_result_holds_only_chunks(big_registry):
    """Streaming 200k rows peaks at a small fraction of what materialising them costs."""
    query = "SELECT candidate_id, arch, params, accuracy FROM candidates ORDER BY candidate_id"

    def stream():
        with run_readonly_query(big_registry, query) as result:
            sink = CountingSink()
            return write_csv(result.columns, result.rows(), sink), sink.chars

    def materialise():
        return len(Registry(big_registry, read_only=True).query(query)[1])

    streamed_peak, (rows, chars) = _peak_bytes(stream)
    materialised_peak, all_rows = _peak_bytes(materialise)
    assert rows == all_rows == BIG and chars > BIG * 30
    assert streamed_peak * 10 < materialised_peak, (streamed_peak, materialised_peak)


def test_limit_cuts_inside_and_across_chunks_and_counts_the_rest(big_registry):
    for chunk_rows, limit in [(7, 10), (7, 14), (1000, 5), (1000, 2500)]:
        with run_readonly_query(big_registry, BIG_QUERY, chunk_rows=chunk_rows) as result:
            rows = list(result.rows(limit))
            more = result.count_remaining()
        assert [r[0] for r in rows] == [f"cand-{i:06d}" for i in range(limit)], (chunk_rows, limit)
        assert more == BIG - limit


def test_limit_larger_than_the_result(place):
    with run_readonly_query(place["registry"], "SELECT * FROM candidates", chunk_rows=2) as result:
        assert len(list(result.rows(10))) == len(ROWS)
        assert result.count_remaining() == 0
    table = sql(place, "SELECT candidate_id FROM candidates", "--limit", "10")
    assert table.returncode == 0 and table.stdout.splitlines()[-1] == "(3 rows)" and table.stderr == ""


def test_cli_limit_table_says_how_many_more(big_registry):
    result = nasflow("sql", BIG_QUERY, "--registry", big_registry, "--limit", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == [f"cand-{i:06d}" for i in range(5)]
    assert lines[-1] == f"(first 5 of {BIG} rows; {BIG - 5} more not shown)"
    assert result.stderr == ""


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_limit_keeps_stdout_valid_and_counts_on_stderr(big_registry, fmt):
    result = nasflow("sql", BIG_QUERY, "--registry", big_registry, "--format", fmt, "--limit", "3")
    assert result.returncode == 0, result.stderr
    if fmt == "csv":
        ids = [row["candidate_id"] for row in csv.DictReader(io.StringIO(result.stdout))]
    else:
        ids = [obj["candidate_id"] for obj in json.loads(result.stdout)]
    assert ids == ["cand-000000", "cand-000001", "cand-000002"]
    assert result.stderr == f"note: {BIG - 3} more rows not shown (--limit 3)\n"


def test_cli_streams_every_row_of_a_large_result_as_csv(big_registry):
    result = nasflow("sql", BIG_QUERY, "--registry", big_registry, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["candidate_id", "params", "accuracy", "extra"]
    assert len(rows) == BIG + 1 and rows[-1][0] == f"cand-{BIG - 1:06d}"
    assert json.loads(rows[1][3]) == {"i": 0}


def test_cli_json_over_several_chunks_is_one_valid_array(big_registry):
    n = 3 * FETCH_ROWS + 17
    query = f"SELECT candidate_id, accuracy, extra FROM candidates ORDER BY candidate_id LIMIT {n}"
    result = nasflow("sql", query, "--registry", big_registry, "--format", "json")
    assert result.returncode == 0, result.stderr
    objects = json.loads(result.stdout)
    assert len(objects) == n and objects[-1]["extra"] == {"i": n - 1}
    with run_readonly_query(big_registry, query) as streamed:
        rows = list(streamed.rows())
    assert result.stdout == format_json(streamed.columns, rows) + "\n"  # byte for byte the one-shot form


def test_cli_empty_json_result_is_an_empty_array(place):
    result = sql(place, "SELECT * FROM candidates WHERE false", "--format", "json")
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_streamed_table_takes_widths_from_its_first_rows():
    columns = ["name", "n"]
    rows = [("a", 1)] * TABLE_SAMPLE_ROWS + [("a_much_longer_name", 123456)]
    out = io.StringIO()
    assert write_table(columns, rows, out) == len(rows)
    lines = out.getvalue().splitlines()
    assert lines[0] == "name  n" and lines[2] == "a     1"
    assert lines[-1] == "a_much_longer_name  123456"  # pushed out of line, never cut
    # the one-shot form still measures every row
    assert format_table(columns, rows).splitlines()[-2].split() == ["a_much_longer_name", "123456"]


def test_limit_must_be_positive(place):
    result = sql(place, "SELECT 1", "--limit", "0")
    assert result.returncode == 2 and "--limit" in result.stderr and "Traceback" not in result.stderr


def test_missing_registry_is_an_error_not_a_refusal(tmp_path):
    with pytest.raises(RegistryError, match="no registry at"):
        with run_readonly_query(tmp_path / "none.duckdb", "SELECT 1"):
            pass
