"""DuckDB results registry: schema and migrations, batched idempotent writes, read-only queries."""

from __future__ import annotations

import datetime as dt
import json
import numbers
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from nasflow.errors import RegistryError
from nasflow.processes import is_running, process_started_at

DEFAULT_PATH = "registry.duckdb"

RUN_STATUSES = ("running", "finished", "failed", "interrupted")
# Migration 1's CHECK also allows 'deploy', but deployed files are `artifacts` rows, never candidates.
CANDIDATE_STAGES = ("search", "train", "morph")
CANDIDATE_STATUSES = ("ok", "failed")
MEASUREMENT_SOURCES = ("measured", "lut", "predicted", "estimated")
MEASUREMENT_METRICS = ("latency", "energy")
ACCURACY_SOURCES = ("proxy", "full", "supernet", "artifact")

# The description of every table as the migrations leave it (columns in database order): it types
# the rows written, builds the README's schema section, and a test checks it against a registry
# built by MIGRATIONS. A schema change is a new numbered migration *and* an edit here, never an
# edit here alone; migrations already released are frozen text.
SCHEMA_DOC: dict[str, list[tuple[str, str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR", "Identifier of the run; re-running the same spec resumes it."),
        ("name", "VARCHAR", "The spec's `name`."),
        ("spec_hash", "VARCHAR", "Hash of the spec's settings that define the run (the hash in `run_id`)."),
        ("spec_yaml", "VARCHAR", "The spec as YAML text, as last run."),
        ("status", "VARCHAR", "Where the run stands."),
        ("runner", "VARCHAR", "Prefect task runner that evaluated candidates (`execution.runner`)."),
        ("nasflow_version", "VARCHAR", "nasflow version that last started the run."),
        ("host", "VARCHAR", "Host name of the machine that last started the run."),
        ("started_at", "TIMESTAMP", "When the run was first started (UTC)."),
        ("finished_at", "TIMESTAMP", "When the run last ended (UTC); NULL while running."),
        ("error", "VARCHAR", "Why the run failed or was interrupted."),
        ("pid", "INTEGER", "Process id of the `nasflow run` that last started the run, on `host`; a `running` run whose process is gone is shown as `interrupted`."),
        ("train_device", "VARCHAR", "Where candidates were trained (`execution.device` as resolved, e.g. `cpu`, `cuda:0`)."),
        ("pid_started_at", "TIMESTAMP", "When process `pid` started (UTC), so that a later process given the same pid is not taken for the run's."),
    ],
    "candidates": [
        ("candidate_id", "VARCHAR", "Identifier of the candidate."),
        ("run_id", "VARCHAR", "Run that evaluated it (`runs.run_id`)."),
        ("stage", "VARCHAR", "Pipeline stage that produced the row."),
        ("arch", "VARCHAR", "Canonical architecture string."),
        ("arch_hash", "VARCHAR", "Hash of `arch`: the architecture's identity across runs."),
        ("parent_id", "VARCHAR", "Candidate this one was derived from: the search candidate a train row trained, the train row a morph row compressed (with `morph.options.cycles` > 1, each cycle's network the one before it; `extra.seed_id` names the train row)."),
        ("status", "VARCHAR", "Whether evaluation succeeded."),
        ("error", "VARCHAR", "Why evaluation failed."),
        ("params", "BIGINT", "Number of trainable parameters."),
        ("macs", "BIGINT", "Multiply-accumulate operations for one input."),
        ("accuracy", "DOUBLE", "Validation accuracy, 0 to 1."),
        ("val_loss", "DOUBLE", "Validation loss."),
        ("train_epochs", "INTEGER", "Epochs trained before evaluation."),
        ("train_seconds", "DOUBLE", "Wall-clock training time in seconds."),
        ("score", "DOUBLE", "Scalarised objective the search ranked candidates by."),
        ("extra", "JSON", "Strategy- or plugin-specific fields; `stage_key` (hash of the settings a train or morph row was made with), `attempts` and `last_error` (a row that failed before and was evaluated again)."),
        ("created_at", "TIMESTAMP", "When the row was recorded (UTC)."),
        ("accuracy_source", "VARCHAR", "How `accuracy` was obtained: short training on a subset, full training, with a supernet's shared weights, or of the deployed file."),
        ("test_accuracy", "DOUBLE", "Accuracy on the test split, which selection never sees (NULL where not evaluated, e.g. search proxies)."),
    ],
    "measurements": [
        ("measurement_id", "VARCHAR", "Identifier of the measurement."),
        ("candidate_id", "VARCHAR", "Candidate measured (`candidates.candidate_id`)."),
        ("run_id", "VARCHAR", "Run that recorded it (`runs.run_id`)."),
        ("device", "VARCHAR", "Device backend name from the spec."),
        ("runtime", "VARCHAR", "Inference runtime that executed the model."),
        ("artifact_format", "VARCHAR", "Form of the model measured (e.g. `pytorch`, `onnx`, `tflite_int8`)."),
        ("artifact_id", "VARCHAR", "Deployed file timed (`artifacts.artifact_id`); NULL when the live model was."),
        ("source", "VARCHAR", "How the number was obtained: on the device, from a LUT, by a model, or analytically."),
        ("metric", "VARCHAR", "Quantity measured; the `*_ms` statistics are filled for `latency` rows only."),
        ("median_ms", "DOUBLE", "Median over the timed runs, milliseconds; NULL when the measurement failed (`extra.error` says why)."),
        ("p90_ms", "DOUBLE", "90th percentile, milliseconds."),
        ("mean_ms", "DOUBLE", "Mean, milliseconds."),
        ("std_ms", "DOUBLE", "Standard deviation, milliseconds."),
        ("runs", "INTEGER", "Number of timed runs behind the statistics (outliers included)."),
        ("outliers", "INTEGER", "Timed runs set aside: in contended windows, or single outliers above median + 5 MAD."),
        ("rel_ci", "DOUBLE", "Half-width of the median's 95 % confidence interval, relative to the median."),
        ("threads", "INTEGER", "Threads the runtime was pinned to."),
        ("batch_size", "INTEGER", "Batch size of the measured input."),
        ("fingerprint", "JSON", "Device fingerprint: CPU model, runtime and library versions, threads."),
        ("fingerprint_hash", "VARCHAR", "Hash of `fingerprint`, for grouping comparable numbers."),
        ("created_at", "TIMESTAMP", "When the row was recorded (UTC)."),
        ("extra", "JSON", "Everything else the device reported (e.g. compiler op counts, energy details, input shape); `error` on a measurement that failed."),
        ("unit", "VARCHAR", "Unit of `value`: `ms` for latency, `mJ` for energy per inference."),
        ("value", "DOUBLE", "The metric's headline number in `unit` (latency: the median; energy: millijoules per image); rank by it across metrics."),
    ],
    "lut": [
        ("device", "VARCHAR", "Device backend name."),
        ("fingerprint_hash", "VARCHAR", "Hash of the device fingerprint the entry is valid for."),
        ("op_key", "VARCHAR", "Canonical description of the operator or block."),
        ("input_shape", "VARCHAR", "Input shape the operator was timed with (e.g. `1x3x32x32`)."),
        ("median_ms", "DOUBLE", "Median latency, milliseconds: the fastest of `profile.passes` measurements."),
        ("p90_ms", "DOUBLE", "90th-percentile latency of that measurement, milliseconds."),
        ("runs", "INTEGER", "Number of timed runs behind that measurement's statistics."),
        ("source", "VARCHAR", "How the entry was obtained (normally `measured`)."),
        ("fingerprint", "JSON", "Full device fingerprint."),
        ("created_at", "TIMESTAMP", "When the entry was recorded (UTC)."),
    ],
    "artifacts": [
        ("artifact_id", "VARCHAR", "Identifier of the artifact."),
        ("candidate_id", "VARCHAR", "Candidate exported (`candidates.candidate_id`)."),
        ("run_id", "VARCHAR", "Run that exported it (`runs.run_id`)."),
        ("format", "VARCHAR", "Export format (`deploy.formats`: `onnx`, `onnx-int8`, `tflite`, `tflite-int8`, `edgetpu`, or a plugin's)."),
        ("path", "VARCHAR", "Where the file was written."),
        ("sha256", "VARCHAR", "SHA-256 of the file."),
        ("size_bytes", "BIGINT", "File size in bytes."),
        ("max_abs_err", "DOUBLE", "Largest absolute difference from PyTorch's outputs on the check inputs."),
        ("tolerance", "DOUBLE", "Largest difference accepted."),
        ("verified", "BOOLEAN", "Verdict: float32 formats, `max_abs_err` and `cosine_diff` within `tolerance`; int8 formats, `reference_accuracy - accuracy` within `max_accuracy_drop`."),
        ("created_at", "TIMESTAMP", "When the row was recorded (UTC)."),
        ("accuracy", "DOUBLE", "Accuracy of the artifact itself on the test split, 0 to 1 (NULL where not evaluated)."),
        ("cosine_diff", "DOUBLE", "Largest 1 - cosine similarity of the artifact's and PyTorch's outputs on the check inputs."),
        ("reference_accuracy", "DOUBLE", "Accuracy of the float32 PyTorch model on the same test images, 0 to 1."),
        ("top1_agreement", "DOUBLE", "Share of test images on which the artifact and PyTorch pick the same class."),
        ("max_accuracy_drop", "DOUBLE", "Largest accuracy drop accepted for an int8 format (`deploy.max_accuracy_drop`)."),
        ("failure", "VARCHAR", "Why verification failed, with its numbers; NULL when `verified`."),
        ("options", "JSON", "The exporter's settings (opset, calibration images, ...)."),
    ],
    "search_log": [
        ("run_id", "VARCHAR", "Run whose search logged it (`runs.run_id`)."),
        ("strategy", "VARCHAR", "Search strategy that reported it (`search.strategy`)."),
        ("step", "INTEGER", "Batch (ask/tell strategies) or epoch (supernet strategies), from 1."),
        ("metric", "VARCHAR", "What was logged, e.g. `entropy`, `mean_reward`, `baseline` (the `mnasnet` controller)."),
        ("value", "DOUBLE", "The number."),
        ("created_at", "TIMESTAMP", "When the row was recorded (UTC)."),
    ],
    "search_state": [
        ("run_id", "VARCHAR", "Run whose search saved it (`runs.run_id`)."),
        ("strategy", "VARCHAR", "Search strategy whose state it is (`search.strategy`)."),
        ("step", "INTEGER", "Batch after which the state was taken, from 1."),
        ("state", "JSON", "The strategy's `state_dict()`: what a resumed run restores instead of replaying (strategies that replay exactly save none)."),
        ("pending", "JSON", "Genomes the strategy proposed in that batch that were not evaluated yet (the budget cut the batch short); a raised budget evaluates them first."),
        ("created_at", "TIMESTAMP", "When the row was recorded (UTC)."),
    ],
    "schema_version": [
        ("version", "INTEGER", "Number of an applied migration."),
        ("name", "VARCHAR", "What the migration does."),
        ("applied_at", "TIMESTAMP", "When it was applied (UTC)."),
    ],
}

PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "candidates": ("candidate_id",),
    "measurements": ("measurement_id",),
    "lut": ("device", "fingerprint_hash", "op_key", "input_shape"),
    "artifacts": ("artifact_id",),
    "search_log": ("run_id", "step", "metric"),
    "search_state": ("run_id", "step"),
    "schema_version": ("version",),
}

# Checked on every row written (and by CHECK constraints where migration 1 created the column), so
# that, e.g., a predicted latency can never pass for a measured one. DuckDB cannot add a column
# with a constraint, so columns of later migrations are checked here only.
ALLOWED_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("runs", "status"): RUN_STATUSES,
    ("candidates", "stage"): CANDIDATE_STAGES,
    ("candidates", "status"): CANDIDATE_STATUSES,
    ("candidates", "accuracy_source"): ACCURACY_SOURCES,
    ("measurements", "source"): MEASUREMENT_SOURCES,
    ("measurements", "metric"): MEASUREMENT_METRICS,
}

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
}

# Opening a DuckDB file twice in one process with different settings fails, so all registry
# connections of this process take turns; DuckDB's file lock arbitrates between processes.
_PROCESS_LOCK = threading.RLock()
_BATCH_VIEW = "_nasflow_batch"
_ORDINAL = "_nasflow_ordinal"  # extra batch column that keeps rows in the caller's order


def _create_schema_version_sql() -> str:
    """The bookkeeping table, created before any migration runs (its shape never changes)."""
    return (
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER, name VARCHAR, applied_at TIMESTAMP, PRIMARY KEY (version));"
    )


# Frozen: registries in the wild were created by exactly this text. Never edit a released migration.
_MIGRATION_1 = """\
CREATE TABLE runs (
    run_id VARCHAR,
    name VARCHAR,
    spec_hash VARCHAR,
    spec_yaml VARCHAR,
    status VARCHAR CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    runner VARCHAR,
    nasflow_version VARCHAR,
    host VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    error VARCHAR,
    PRIMARY KEY (run_id)
);
CREATE TABLE candidates (
    candidate_id VARCHAR,
    run_id VARCHAR,
    stage VARCHAR CHECK (stage IN ('search', 'train', 'morph', 'deploy')),
    arch VARCHAR,
    arch_hash VARCHAR,
    parent_id VARCHAR,
    status VARCHAR CHECK (status IN ('ok', 'failed')),
    error VARCHAR,
    params BIGINT,
    macs BIGINT,
    accuracy DOUBLE,
    val_loss DOUBLE,
    train_epochs INTEGER,
    train_seconds DOUBLE,
    score DOUBLE,
    extra JSON,
    created_at TIMESTAMP,
    PRIMARY KEY (candidate_id)
);
CREATE TABLE measurements (
    measurement_id VARCHAR,
    candidate_id VARCHAR,
    run_id VARCHAR,
    device VARCHAR,
    runtime VARCHAR,
    artifact_format VARCHAR,
    artifact_id VARCHAR,
    source VARCHAR CHECK (source IN ('measured', 'lut', 'predicted', 'estimated')),
    metric VARCHAR,
    median_ms DOUBLE,
    p90_ms DOUBLE,
    mean_ms DOUBLE,
    std_ms DOUBLE,
    runs INTEGER,
    outliers INTEGER,
    rel_ci DOUBLE,
    threads INTEGER,
    batch_size INTEGER,
    fingerprint JSON,
    fingerprint_hash VARCHAR,
    created_at TIMESTAMP,
    PRIMARY KEY (measurement_id)
);
CREATE TABLE lut (
    device VARCHAR,
    fingerprint_hash VARCHAR,
    op_key VARCHAR,
    input_shape VARCHAR,
    median_ms DOUBLE,
    p90_ms DOUBLE,
    runs INTEGER,
    source VARCHAR,
    fingerprint JSON,
    created_at TIMESTAMP,
    PRIMARY KEY (device, fingerprint_hash, op_key, input_shape)
);
CREATE TABLE artifacts (
    artifact_id VARCHAR,
    candidate_id VARCHAR,
    run_id VARCHAR,
    format VARCHAR,
    path VARCHAR,
    sha256 VARCHAR,
    size_bytes BIGINT,
    max_abs_err DOUBLE,
    tolerance DOUBLE,
    verified BOOLEAN,
    created_at TIMESTAMP,
    PRIMARY KEY (artifact_id)
);
"""

_MIGRATION_2 = """\
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN train_device VARCHAR;
ALTER TABLE candidates ADD COLUMN accuracy_source VARCHAR;
ALTER TABLE candidates ADD COLUMN test_accuracy DOUBLE;
UPDATE candidates SET accuracy_source = CASE WHEN stage = 'search' THEN 'proxy' ELSE 'full' END
    WHERE accuracy IS NOT NULL;
ALTER TABLE measurements ADD COLUMN extra JSON;
ALTER TABLE measurements ADD COLUMN unit VARCHAR;
ALTER TABLE measurements ADD COLUMN value DOUBLE;
UPDATE measurements SET unit = 'ms', value = median_ms WHERE metric = 'latency';
ALTER TABLE artifacts ADD COLUMN accuracy DOUBLE;
"""

_MIGRATION_3 = """\
ALTER TABLE runs ADD COLUMN pid_started_at TIMESTAMP;
"""

_MIGRATION_4 = """\
CREATE TABLE search_log (
    run_id VARCHAR NOT NULL,
    strategy VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    created_at TIMESTAMP,
    PRIMARY KEY (run_id, step, metric)
);
"""

_MIGRATION_5 = """\
CREATE TABLE search_state (
    run_id VARCHAR NOT NULL,
    strategy VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    state JSON,
    pending JSON,
    created_at TIMESTAMP,
    PRIMARY KEY (run_id, step)
);
"""

_MIGRATION_6 = """\
ALTER TABLE artifacts ADD COLUMN cosine_diff DOUBLE;
ALTER TABLE artifacts ADD COLUMN reference_accuracy DOUBLE;
ALTER TABLE artifacts ADD COLUMN top1_agreement DOUBLE;
ALTER TABLE artifacts ADD COLUMN max_accuracy_drop DOUBLE;
ALTER TABLE artifacts ADD COLUMN failure VARCHAR;
ALTER TABLE artifacts ADD COLUMN options JSON;
"""

# Ordered (version, name, sql); applied once each, in order, one transaction per migration.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema: runs, candidates, measurements, lut, artifacts", _MIGRATION_1),
    (
        2,
        "measurements.extra/unit/value (energy rows), candidates.accuracy_source/test_accuracy, "
        "artifacts.accuracy, runs.pid/train_device",
        _MIGRATION_2,
    ),
    (3, "runs.pid_started_at (a run whose process is gone is told apart from one still running)", _MIGRATION_3),
    (4, "search_log: what a search strategy reports per step (policy entropy, reward, ...)", _MIGRATION_4),
    (5, "search_state: the state of strategies that cannot be replayed, per step", _MIGRATION_5),
    (
        6,
        "artifacts.cosine_diff/reference_accuracy/top1_agreement/max_accuracy_drop/failure/options (int8 verification)",
        _MIGRATION_6,
    ),
]


def schema_markdown() -> str:
    """The schema as markdown: one heading and column table per registry table."""
    parts = []
    for table, columns in SCHEMA_DOC.items():
        parts.append(f"### `{table}`\n")
        parts.append("| column | type | description |")
        parts.append("|---|---|---|")
        for column, sql_type, description in columns:
            kind = _doc_type(table, column, sql_type)
            parts.append(f"| `{column}` | {kind} | {_doc_description(table, column, description)} |")
        parts.append("")
    return "\n".join(parts)


def _doc_type(table: str, column: str, sql_type: str) -> str:
    """Type cell of the schema docs, marking primary-key columns."""
    return f"{sql_type}, primary key" if column in PRIMARY_KEYS[table] else sql_type


def _doc_description(table: str, column: str, description: str) -> str:
    """Description cell of the schema docs, listing allowed values where a CHECK enforces them."""
    allowed = ALLOWED_VALUES.get((table, column))
    if not allowed:
        return description
    return f"{description} One of " + ", ".join(f"`{v}`" for v in allowed) + "."


def _utcnow() -> dt.datetime:
    """Current UTC time as a naive datetime, the form DuckDB's TIMESTAMP stores."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _is_lock_error(error: Exception) -> bool:
    """Whether DuckDB refused to open the file because another process holds its lock."""
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def _lock_holder_pid(message: str) -> str:
    """PID of the process holding the lock, as DuckDB reports it, or '?' when it does not."""
    match = re.search(r"PID (\d+)", message)
    return match.group(1) if match else "?"


def _looks_like_duckdb(path: Path) -> bool:
    """Whether the file starts with DuckDB's header (magic 'DUCK' after an 8-byte checksum)."""
    with path.open("rb") as handle:
        return handle.read(12)[8:12] == b"DUCK"


class Registry:
    """The results registry in one DuckDB file, opened per batch so that readers are never shut out."""

    def __init__(self, path: str | Path = DEFAULT_PATH, lock_timeout: float = 30.0, *, read_only: bool = False):
        self.path = Path(path)
        self.lock_timeout = float(lock_timeout)
        self.read_only = read_only
        self._check_file()
        if not read_only:
            self._migrate()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"Registry({str(self.path)!r}, {mode})"

    # --- opening ---------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse paths that are not (or cannot become) a DuckDB file, before DuckDB touches them."""
        if self.path.is_dir():
            raise RegistryError(f"'{self.path}' is a directory, not a DuckDB database")
        if self.path.exists():
            if not _looks_like_duckdb(self.path):
                raise RegistryError(f"'{self.path}' is not a DuckDB database: it lacks DuckDB's file header")
        elif self.read_only:
            raise RegistryError(f"no registry at {self.path}; run a spec first or pass --registry")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying with backoff while another process holds a conflicting lock."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as error:
                if not _is_lock_error(error):
                    raise self._open_error(error) from error
                if time.monotonic() >= deadline:
                    raise RegistryError(
                        f"registry file {self.path} is locked by another process "
                        f"(pid {_lock_holder_pid(str(error))}) and stayed locked for "
                        f"{self.lock_timeout:g} s: {error}"
                    ) from error
            # Jitter keeps a polling reader and writer from retrying in lockstep.
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)) * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _open_error(self, error: Exception) -> RegistryError:
        """Translate a DuckDB failure to open the file into a RegistryError."""
        if "not a valid DuckDB database" in str(error):
            return RegistryError(f"'{self.path}' is not a DuckDB database: {error}")
        return RegistryError(f"cannot open registry {self.path}: {error}")

    @contextmanager
    def _connection(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held only for the block, so the file lock is free between batches."""
        with _PROCESS_LOCK:
            con = self._connect(read_only)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def _writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction; DuckDB errors become RegistryError."""
        if self.read_only:
            raise RegistryError(f"registry {self.path} was opened read-only; it cannot be written")
        with self._connection(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except duckdb.Error as error:
                _rollback(con)
                raise RegistryError(f"writing to registry {self.path} failed: {error}") from error
            except BaseException:
                _rollback(con)
                raise

    def _migrate(self) -> None:
        """Apply the migrations this file lacks, each in its own transaction; then mark runs whose
        process vanished as interrupted (opening read-write is the moment a writer may change them)."""
        with self._connection(read_only=False) as con:
            try:
                con.execute(_create_schema_version_sql())
                applied = {row[0] for row in con.execute("SELECT version FROM schema_version").fetchall()}
            except duckdb.Error as error:
                raise RegistryError(f"cannot read the schema version of {self.path}: {error}") from error
            newest = MIGRATIONS[-1][0]
            if applied and max(applied) > newest:
                raise RegistryError(
                    f"registry {self.path} has schema version {max(applied)}, newer than this "
                    f"nasflow understands ({newest}); upgrade nasflow"
                )
            for version, name, sql in MIGRATIONS:
                if version not in applied:
                    self._apply_migration(con, version, name, sql)
            try:
                self._mark_vanished_runs(con)
            except duckdb.Error as error:
                raise RegistryError(f"cannot update the runs of {self.path}: {error}") from error

    def _apply_migration(self, con: duckdb.DuckDBPyConnection, version: int, name: str, sql: str) -> None:
        """Run one migration and record it, atomically."""
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, _utcnow()])
            con.execute("COMMIT")
        except duckdb.Error as error:
            _rollback(con)
            raise RegistryError(f"migration {version} ({name}) failed on {self.path}: {error}") from error

    def verify_readable(self) -> None:
        """Read every value of every table once, so a damaged file fails now, not at the first write.

        A truncated file can still answer `count(*)` from its metadata while its data blocks are
        gone; hashing every column forces each block to be read.
        """
        with self._connection(read_only=self.read_only) as con:
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()]
            for table in tables:
                try:
                    con.execute(f'SELECT sum(hash(COLUMNS(*))) FROM "{table}"').fetchall()
                except duckdb.Error as error:
                    raise RegistryError(
                        f"registry {self.path} is damaged: table {table} cannot be read ({error}); "
                        "restore the file from a backup or point registry.path at another file"
                    ) from error

    # --- runs ------------------------------------------------------------------------------

    def start_run(
        self, run_id: str, name: str, spec_hash: str, spec_yaml: str, runner: str, nasflow_version: str,
        train_device: str | None = None,
    ) -> bool:
        """Record a run as running in this process; returns True when the run already existed (a resume).

        The pid and its start time are stored so that, should this process vanish (SIGKILL, a
        crash, a reboot), the run can later be told apart from one still running.
        """
        pid = os.getpid()
        where = [runner, nasflow_version, socket.gethostname(), pid, process_started_at(pid)]
        with self._writing() as con:
            exists = con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None
            if exists:
                # Keep the start time; record the spec as run now and where and with what it resumed.
                con.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, spec_yaml = ?, "
                    "runner = ?, nasflow_version = ?, host = ?, pid = ?, pid_started_at = ?, train_device = ? "
                    "WHERE run_id = ?",
                    [spec_yaml, *where, train_device, run_id],
                )
            else:
                con.execute(
                    "INSERT INTO runs (run_id, name, spec_hash, spec_yaml, status, runner, nasflow_version, "
                    "host, pid, pid_started_at, started_at, train_device) "
                    "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, name, spec_hash, spec_yaml, *where, _utcnow(), train_device],
                )
        return exists

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Mark a run finished, failed or interrupted, with the error when there is one."""
        if status not in RUN_STATUSES or status == "running":
            ends = ", ".join(s for s in RUN_STATUSES if s != "running")
            raise RegistryError(f"cannot finish run {run_id!r} with status {status!r}; use one of {ends}")
        with self._writing() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
                raise RegistryError(f"no run {run_id!r} in registry {self.path}")
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
                [status, _utcnow(), error, run_id],
            )

    def _mark_vanished_runs(self, con: duckdb.DuckDBPyConnection) -> None:
        """Mark `running` runs of this host whose process is gone as `interrupted`, saying so."""
        rows = con.execute(
            "SELECT run_id, pid, pid_started_at FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
            [socket.gethostname()],
        ).fetchall()
        for run_id, pid, started in rows:
            if not is_running(pid, started):
                con.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE run_id = ? "
                    "AND status = 'running'",
                    [_utcnow(), vanished_error(pid), run_id],
                )

    # --- batched appends -------------------------------------------------------------------

    def add_candidates(self, rows: list[dict[str, Any]]) -> int:
        """Append candidate rows; rows whose candidate_id exists are skipped. Returns rows added."""
        return self._insert("candidates", rows)

    def add_measurements(self, rows: list[dict[str, Any]]) -> int:
        """Append measurement rows; rows whose measurement_id exists are skipped. Returns rows added."""
        return self._insert("measurements", rows)

    def add_artifacts(
        self, rows: list[dict[str, Any]], measurements: list[dict[str, Any]] | None = None, replace: bool = False
    ) -> int:
        """Append artifact rows (and the measurements of those files) in one transaction; returns artifacts added.

        Rows whose artifact_id exists are skipped, or with `replace` supersede the stored artifact
        and its measurements (a file exported again).
        """
        batches = [("artifacts", rows, False), ("measurements", measurements or [], False)]
        if not replace:
            return self._insert_tables(batches)[0]
        ids = sorted({row.get("artifact_id") for row in rows if isinstance(row, dict)} - {None})
        return self._insert_tables(batches, before=lambda con: _delete_artifacts(con, ids))[0]

    def add_search_log(self, rows: list[dict[str, Any]]) -> int:
        """Append search-log rows; a (run, step, metric) already logged (a resumed run replaying
        its steps) is skipped. Returns rows added."""
        return self._insert("search_log", rows)

    def latest_search_state(self, run_id: str) -> dict[str, Any] | None:
        """The last state a run's search saved (see `search_state`), or None."""
        rows = self._select("SELECT * FROM search_state WHERE run_id = ? ORDER BY step DESC LIMIT 1", [run_id])
        return rows[0] if rows else None

    def add_lut(self, rows: list[dict[str, Any]], replace: bool = False) -> int:
        """Append LUT entries; existing keys are skipped, or overwritten with replace=True (re-profiling)."""
        return self._insert("lut", rows, replace=replace)

    def add_evaluated(
        self,
        candidates: list[dict[str, Any]],
        measurements: list[dict[str, Any]],
        replace: bool = False,
        search_log: list[dict[str, Any]] | None = None,
        search_state: list[dict[str, Any]] | None = None,
    ) -> tuple[int, int]:
        """Append candidates and their measurements in one transaction; returns (candidates, measurements) added.

        Same rules as add_candidates and add_measurements, but both tables are written through one
        connection (opening the file is the dominant cost of a small batch) and atomically: a crash
        cannot leave candidates recorded without their measurements.

        With `replace`, these rows supersede stored candidates with the same ids (a failed
        candidate evaluated again, a row completed with its timings): the stored rows and the
        measurements of their live models are deleted in the same transaction, so the new
        measurements are not skipped as already present. Measurements of deployed artifacts stay.
        `search_log` and `search_state` rows ride along in the same transaction.
        """
        batches = [("candidates", candidates, False), ("measurements", measurements, False)]
        if search_log:
            batches.append(("search_log", search_log, False))
        if search_state:
            batches.append(("search_state", search_state, False))
        if not replace:
            written = self._insert_tables(batches)
        else:
            ids = sorted({row.get("candidate_id") for row in candidates if isinstance(row, dict)} - {None})
            written = self._insert_tables(batches, before=lambda con: _delete_candidates(con, ids))
        return written[0], written[1]

    def _insert(self, table: str, rows: list[dict[str, Any]], replace: bool = False) -> int:
        """Insert a batch through an Arrow table in one transaction; returns the rows written."""
        return self._insert_tables([(table, rows, replace)])[0]

    def _insert_tables(
        self,
        batches: list[tuple[str, list[dict[str, Any]], bool]],
        before: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> list[int]:
        """Insert (table, rows, replace) batches in one transaction; returns the rows written per batch.

        `before` runs first inside the same transaction (deleting the rows a batch supersedes).
        """
        # Every batch is converted (and checked) before the file is opened.
        arrow = [
            _arrow_batch(table, _unique_rows(table, rows, keep_last=replace)) if rows else None
            for table, rows, replace in batches
        ]
        if all(batch is None for batch in arrow):
            return [0] * len(batches)
        written = []
        with self._writing() as con:
            if before is not None:
                before(con)
            for (table, _, replace), batch in zip(batches, arrow):
                if batch is None:
                    written.append(0)
                    continue
                # The view dies with the connection, which closes right after these batches.
                con.register(_BATCH_VIEW, batch)
                row = con.execute(_insert_sql(table, batch.column_names, replace)).fetchone()
                con.unregister(_BATCH_VIEW)
                written.append(int(row[0]) if row else 0)
        return written

    # --- reads -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row, or None when the registry has no such run.

        A `running` run of this host whose process is gone reads as `interrupted` (with the reason
        in `error`) even from a read-only registry, which cannot record it; the next read-write
        open records it.
        """
        rows = self._select("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            return None
        run = rows[0]
        if (run["status"] == "running" and run.get("pid") is not None and run["host"] == socket.gethostname()
                and not is_running(run["pid"], run.get("pid_started_at"))):
            run.update(status="interrupted", error=vanished_error(run["pid"]))
        return run

    def get_candidates(self, run_id: str, stage: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """A run's candidates in the order they were recorded, optionally of one stage and status."""
        sql = "SELECT * FROM candidates WHERE run_id = ?"
        params: list[Any] = [run_id]
        if stage is not None:
            sql += " AND stage = ?"
            params.append(stage)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return self._select(sql + " ORDER BY rowid", params)

    def get_measurements(self, candidate_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Every measurement of the given candidates, in the order they were recorded."""
        ids = list(candidate_ids)
        if not ids:
            return []
        return self._select(
            "SELECT * FROM measurements WHERE candidate_id IN (SELECT UNNEST(?)) ORDER BY rowid", [ids]
        )

    def get_artifacts(self, run_id: str) -> list[dict[str, Any]]:
        """A run's exported artifacts, in the order they were recorded."""
        return self._select("SELECT * FROM artifacts WHERE run_id = ? ORDER BY rowid", [run_id])

    def _select(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        """Rows of a trusted SELECT as dicts, JSON columns decoded."""
        columns, rows = self.query(sql, params)
        return [dict(zip(columns, row)) for row in rows]

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run SQL on a read-only connection; returns column names and rows (JSON values decoded)."""
        with self._connection(read_only=True) as con:
            try:
                cursor = con.execute(sql, params) if params is not None else con.execute(sql)
                if cursor.description is None:
                    return [], []
                description = cursor.description
                rows = cursor.fetchall()
            except duckdb.Error as error:
                raise _query_error(error) from error
        columns = [column[0] for column in description]
        json_columns = [i for i, column in enumerate(description) if str(column[1]) == "JSON"]
        if json_columns:
            rows = [_decode_json(row, json_columns) for row in rows]
        return columns, rows


def open_readonly(path: str | Path = DEFAULT_PATH, lock_timeout: float = 30.0) -> Registry:
    """Open an existing registry for reading only (nasflow sql, reports); never creates or migrates."""
    return Registry(path, lock_timeout, read_only=True)


def _insert_sql(table: str, batch_columns: list[str], replace: bool) -> str:
    """INSERT ... SELECT from the registered batch that skips (or replaces) rows already stored.

    Skipping is an anti-join on the primary key rather than INSERT OR IGNORE: DuckDB's OR IGNORE
    path scrambles the batch's row order, and get_* return rows in the order they were recorded.
    """
    columns = [c for c in batch_columns if c != _ORDINAL]
    names = ", ".join(columns)
    source = f"SELECT {names} FROM {_BATCH_VIEW} AS b"
    if replace:
        return f"INSERT OR REPLACE INTO {table} ({names}) {source}"
    same_key = " AND ".join(f"t.{k} = b.{k}" for k in PRIMARY_KEYS[table])
    return (
        f"INSERT INTO {table} ({names}) {source} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {same_key}) ORDER BY b.{_ORDINAL}"
    )


def _delete_candidates(con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
    """Delete candidates and the measurements of their live models (not of their artifacts)."""
    if ids:
        con.execute("DELETE FROM measurements WHERE artifact_id IS NULL AND candidate_id IN (SELECT UNNEST(?))", [ids])
        con.execute("DELETE FROM candidates WHERE candidate_id IN (SELECT UNNEST(?))", [ids])


def _delete_artifacts(con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
    """Delete artifacts and their measurements."""
    if ids:
        con.execute("DELETE FROM measurements WHERE artifact_id IN (SELECT UNNEST(?))", [ids])
        con.execute("DELETE FROM artifacts WHERE artifact_id IN (SELECT UNNEST(?))", [ids])


def vanished_error(pid: int) -> str:
    """The `error` of a run whose process ended without recording how the run ended."""
    return (
        f"the nasflow process (pid {pid}) ended without finishing the run (killed, crashed, or the machine "
        "stopped); everything recorded before is kept: run the same spec again to resume"
    )


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, tolerating a transaction DuckDB has already aborted."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _query_error(error: Exception) -> RegistryError:
    """Translate a failed user query into a RegistryError that keeps DuckDB's message."""
    if "read-only" in str(error):
        return RegistryError(f"the registry is read-only here: {error}")
    return RegistryError(str(error))


def _decode_json(row: tuple, json_columns: list[int]) -> tuple:
    """Row with its JSON columns parsed from DuckDB's text form."""
    values = list(row)
    for i in json_columns:
        if values[i] is not None:
            values[i] = json.loads(values[i])
    return tuple(values)


# --- building a batch ------------------------------------------------------------------------


def _unique_rows(table: str, rows: list[dict[str, Any]], keep_last: bool) -> list[dict[str, Any]]:
    """Rows with one per primary key, in first-seen order.

    DuckDB's conflict handling reorders a batch that repeats a key, so repeats are settled here:
    the first row wins (as it does against rows already stored) unless keep_last is set.
    """
    key = PRIMARY_KEYS[table]
    unique: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise RegistryError(f"rows for {table} must be dicts, got {type(row).__name__}")
        ident = tuple(row.get(k) for k in key)
        if keep_last or ident not in unique:
            unique[ident] = row
    return list(unique.values())


def _arrow_batch(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Arrow table of the rows, typed like the registry table, with created_at and an ordinal added."""
    types = {column: sql_type for column, sql_type, _ in SCHEMA_DOC[table]}
    present = _check_keys(table, rows, types)
    if "created_at" in types:
        present.add("created_at")
    arrays, names = [], []
    for column in (c for c in types if c in present):
        values = [row.get(column) for row in rows]
        arrays.append(_arrow_column(table, column, types[column], values))
        names.append(column)
    arrays.append(pa.array(range(len(rows)), type=pa.int64()))
    names.append(_ORDINAL)
    return pa.Table.from_arrays(arrays, names=names)


def _check_keys(table: str, rows: list[dict[str, Any]], types: dict[str, str]) -> set[str]:
    """Keys used by the rows; unknown keys and missing primary-key values are errors."""
    present = set().union(*(row.keys() for row in rows))
    unknown = sorted(present - types.keys())
    if unknown:
        raise RegistryError(f"unknown column(s) for table {table}: {', '.join(unknown)}")
    for key in PRIMARY_KEYS[table]:
        if any(row.get(key) is None for row in rows):
            raise RegistryError(f"every {table} row needs a value for {key} (part of the primary key)")
    return present


def _arrow_column(table: str, column: str, sql_type: str, values: list[Any]) -> pa.Array:
    """One typed Arrow column; conversion problems name the column."""
    if sql_type == "JSON":
        values = [_to_json_text(v) for v in values]
    elif sql_type == "TIMESTAMP":
        default = _utcnow() if column == "created_at" else None
        values = [_to_timestamp(table, column, v, default) for v in values]
    elif sql_type in ("BIGINT", "INTEGER"):
        _check_integral(table, column, values)
    _check_allowed(table, column, values)
    try:
        return pa.array(values, type=_ARROW_TYPES[sql_type])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as error:
        raise RegistryError(f"bad value for {table}.{column} ({sql_type}): {error}") from error


def _to_json_text(value: Any) -> str | None:
    """JSON text for a JSON column; strings are taken to be JSON already."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    """json.dumps fallback: NumPy scalars and arrays become Python values, anything else its str."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _to_timestamp(table: str, column: str, value: Any, default: dt.datetime | None) -> dt.datetime | None:
    """Naive UTC datetime from a datetime or ISO string; aware times are converted to UTC."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as error:
            raise RegistryError(f"bad value for {table}.{column}: {error}") from error
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _check_allowed(table: str, column: str, values: list[Any]) -> None:
    """Refuse values outside a column's allowed set before DuckDB (or nothing) would."""
    allowed = ALLOWED_VALUES.get((table, column))
    if allowed is None:
        return
    bad = sorted({str(v) for v in values if v is not None and v not in allowed})
    if bad:
        raise RegistryError(
            f"bad value for {table}.{column}: {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}"
        )


def _check_integral(table: str, column: str, values: list[Any]) -> None:
    """Refuse fractional numbers for integer columns: Arrow would truncate them silently."""
    for value in values:
        if value is None or type(value) is int:
            continue
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            if not float(value).is_integer():
                raise RegistryError(f"bad value for {table}.{column}: {value!r} is not a whole number")


# --- output formats --------------------------------------------------------------------------
# They live in nasflow/output_formats.py (streaming writers too); re-exported for existing callers.

from nasflow.output_formats import format_csv, format_json, format_table  # noqa: E402, F401
