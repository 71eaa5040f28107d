"""Run one untrusted SQL statement on the registry so that it can only read, and stream its rows.

Two layers. First the text is checked with DuckDB's own parser: exactly one statement, of a
reading kind (see ALLOWED), with no INSERT/UPDATE/DELETE hidden in a WITH clause. Then it runs on
a connection that is read-only, has external access (files, extensions, secrets) switched off and
its configuration locked before the statement touches it. The second layer is the guarantee: it
holds for whatever the first misses; the first exists so that a refusal says what was refused.
(DuckDB still lets a query read the open registry file itself, e.g. read_blob('registry.duckdb'):
that is the registry's own data.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from nasflow.errors import RegistryError, SqlRefused
from nasflow.registry import open_readonly

# Rows fetched from DuckDB per call: one DuckDB vector, so memory stays flat however large the result.
FETCH_ROWS = 2048

# PRAGMAs that only describe the database or the engine (each checked to run on the locked
# connection). Everything else is refused: the profiling, checkpoint, import and verification
# pragmas change settings or state, and `PRAGMA name = value` is a SET.
ALLOWED_PRAGMAS = (
    "collations", "database_list", "database_size", "functions", "metadata_info", "platform",
    "show_databases", "show_tables", "show_tables_expanded", "storage_info", "table_info",
    "user_agent", "version",
)

ALLOWED = (
    "exactly one reading statement: SELECT, WITH ... SELECT, FROM ..., VALUES, PIVOT ... IN (...), "
    "DESCRIBE, SHOW, SUMMARIZE, EXPLAIN [ANALYZE] of one of those, or PRAGMA " + ", ".join(ALLOWED_PRAGMAS)
)

# Applied in this order to the registry connection before the user's statement. temp_directory
# and the extension switches can only change while external access is on; lock_configuration
# comes last and freezes everything (SET, RESET, PRAGMA x = y). No temp directory: a read-only
# query never writes, not even <registry>.tmp spill files (a query that needs more memory fails).
LOCKDOWN: dict[str, Any] = {
    "temp_directory": "",
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,  # never let a query read this process's Python variables
    "enable_external_access": False,
    "lock_configuration": True,
}

# Query nodes that modify data (DuckDB allows INSERT/UPDATE/DELETE ... RETURNING inside WITH).
_WRITING_NODE_SUFFIX = "_QUERY_NODE"


def check_statement(sql: str) -> duckdb.Statement:
    """The single statement of `sql` when it only reads; SqlRefused saying what and why otherwise."""
    with _parser() as con:
        statements = _parse(con, sql)
        if not statements:
            raise SqlRefused(f"no SQL statement given; read-only SQL runs {ALLOWED}")
        if len(statements) > 1:
            kinds = ", ".join(_describe(s) for s in statements)
            raise SqlRefused(f"refused {len(statements)} statements ({kinds}): read-only SQL runs {ALLOWED}")
        statement = statements[0]
        refused = _refusal(con, statement)
        if refused:
            raise SqlRefused(f"refused {refused}: read-only SQL runs {ALLOWED}")
        return statement


@contextmanager
def run_readonly_query(
    path: str | Path, sql: str, *, lock_timeout: float = 30.0, chunk_rows: int = FETCH_ROWS
) -> Iterator[StreamedResult]:
    """Check `sql`, run it on the locked-down registry connection and yield its streamed result.

    The connection (and DuckDB's shared lock on the file) is held until the block ends, so a
    writer waits, retrying, while the rows are consumed.
    """
    statement = check_statement(sql)  # before the file is even opened
    with locked_connection(path, lock_timeout) as con:
        try:
            cursor = con.execute(statement)
        except duckdb.Error as error:
            raise _run_error(error) from error
        yield StreamedResult(cursor, chunk_rows)


@contextmanager
def locked_connection(path: str | Path, lock_timeout: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only registry connection with LOCKDOWN applied and checked, closed when the block ends."""
    registry = open_readonly(path, lock_timeout)
    # The registry's own opening: its retry on lock conflicts, its in-process lock, its file checks.
    with registry._connection(read_only=True) as con:
        _lock_down(con)
        yield con


class StreamedResult:
    """Column names of a running query and its rows, fetched from DuckDB `chunk_rows` at a time."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, chunk_rows: int):
        if chunk_rows < 1:
            raise RegistryError(f"chunk_rows must be at least 1, got {chunk_rows}")
        description = cursor.description or []
        self.columns: list[str] = [column[0] for column in description]
        self._json_columns = [i for i, column in enumerate(description) if str(column[1]) == "JSON"]
        self._cursor = cursor if description else None
        self._chunk_rows = chunk_rows
        self._held: list[tuple] = []  # fetched, not yet handed out (the rest of a chunk cut by a limit)

    def chunks(self) -> Iterator[list[tuple]]:
        """The rows in chunks of at most `chunk_rows`, JSON values decoded."""
        while True:
            chunk, self._held = (self._held, []) if self._held else (self._fetch(), [])
            if not chunk:
                return
            yield self._decoded(chunk) if self._json_columns else chunk

    def rows(self, limit: int | None = None) -> Iterator[tuple]:
        """The rows one by one, at most `limit` of them; the rest stay for count_remaining."""
        left = limit
        for chunk in self.chunks():
            if left is not None and len(chunk) >= left:
                self._held = chunk[left:]
                yield from chunk[:left]
                return
            yield from chunk
            if left is not None:
                left -= len(chunk)

    def count_remaining(self) -> int:
        """How many rows are left unread; reads (and drops) them chunk by chunk."""
        count, self._held = len(self._held), []
        while chunk := self._fetch():
            count += len(chunk)
        return count

    def _fetch(self) -> list[tuple]:
        if self._cursor is None:
            return []
        try:
            return self._cursor.fetchmany(self._chunk_rows)
        except duckdb.Error as error:
            raise _run_error(error) from error

    def _decoded(self, chunk: list[tuple]) -> list[tuple]:
        """Rows with their JSON columns parsed from DuckDB's text form."""
        out = []
        for row in chunk:
            values = list(row)
            for i in self._json_columns:
                if values[i] is not None:
                    values[i] = json.loads(values[i])
            out.append(tuple(values))
        return out


# --- checking the text -----------------------------------------------------------------------


@contextmanager
def _parser() -> Iterator[duckdb.DuckDBPyConnection]:
    """A locked in-memory connection for parsing; the user's text only ever reaches it as a value."""
    config = {k: v for k, v in LOCKDOWN.items() if k != "temp_directory"}  # in memory: no file either way
    con = duckdb.connect(":memory:", config=config)
    try:
        yield con
    finally:
        con.close()


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    """DuckDB's own split of the text into statements; a syntax error keeps DuckDB's message."""
    try:
        return con.extract_statements(sql)
    except duckdb.Error as error:
        raise RegistryError(str(error)) from error


def _refusal(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> str | None:
    """What is wrong with a single statement (e.g. 'COPY'), or None when it only reads."""
    kind = _kind(statement)
    if kind == "SELECT":
        return _hidden_write(con, statement.query)
    if kind == "EXPLAIN":
        inner = _explained(con, statement.query)
        if inner is None:
            return "an EXPLAIN whose explained statement cannot be read"
        if _kind(inner) != "SELECT":
            return f"EXPLAIN of {_describe(inner)}"
        return _hidden_write(con, inner.query)
    if kind == "PRAGMA":
        name = _pragma_name(statement.query)
        return None if name in ALLOWED_PRAGMAS else f"PRAGMA {name}"
    return _describe(statement)


def _kind(statement: duckdb.Statement) -> str:
    """DuckDB's statement type name; kinds this duckdb module has no name for are 'UNKNOWN'."""
    try:
        return statement.type.name
    except ValueError:  # a type number newer than the Python enum (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"


def _describe(statement: duckdb.Statement) -> str:
    """A statement as a user would name it: its first word, plus DuckDB's kind when that differs."""
    names = [w for w, _ in _words(statement.query) if w[:1].isalpha()]  # e.g. past the "(" of "(SELECT 1)"
    word = names[0].upper() if names else ""
    kind = _kind(statement)
    if kind == "MULTI":  # what DuckDB's parser makes of a PIVOT whose values it must look up first
        return f"{word} (several statements in one: a PIVOT without an IN list; name the values: ON column IN (...))"
    if kind == "UNKNOWN":
        return f"{word} (a kind of statement this DuckDB module cannot name)"
    return word if word == kind or not word else f"{word} (a {kind} statement)"


def _words(text: str) -> list[tuple[str, int]]:
    """DuckDB's tokens of the text (comments left out) as (token text, byte offset) pairs."""
    raw = text.encode()
    tokens = duckdb.tokenize(text)  # offsets are in bytes of the UTF-8 text
    words = []
    for i, (start, token_type) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(raw)
        if token_type != duckdb.token_type.comment:
            words.append((raw[start:end].decode().strip(), start))
    return words


def _pragma_name(text: str) -> str:
    """The name after PRAGMA, lower-cased and unquoted."""
    words = _words(text)
    name = words[1][0] if len(words) > 1 else ""
    return name.strip('"').lower()


def _explained(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.Statement | None:
    """The statement an EXPLAIN [ANALYZE] [(options)] explains, parsed on its own; None if unreadable."""
    words = _words(text)[1:]  # after EXPLAIN
    if words and words[0][0].upper() == "ANALYZE":
        words = words[1:]
    raw = text.encode()
    starts = [words[0][1]] if words else []
    if words and words[0][0] == "(":  # either `(options) statement` or a parenthesised query
        depth = 0
        for i, (word, _) in enumerate(words):
            depth += (word == "(") - (word == ")")
            if depth == 0:
                if i + 1 < len(words):
                    starts.append(words[i + 1][1])
                break
    for start in starts:
        try:
            inner = con.extract_statements(raw[start:].decode())
        except duckdb.Error:
            continue
        if len(inner) == 1:
            return inner[0]
    return None


def _hidden_write(con: duckdb.DuckDBPyConnection, text: str) -> str | None:
    """'SELECT containing DELETE ...' when a query node of the SELECT modifies data, else None.

    Read from DuckDB's serialised syntax tree. Some reading statements (PIVOT) cannot be
    serialised; those go on to the locked connection, which refuses writes in any case.
    """
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    except duckdb.Error:  # a DuckDB built without its json extension: the locked connection still holds
        return None
    if tree.get("error"):
        return None
    for node_type in _node_types(tree):
        if node_type.endswith(_WRITING_NODE_SUFFIX):
            return f"SELECT containing {node_type.removesuffix(_WRITING_NODE_SUFFIX)} (a data-modifying WITH)"
    return None


def _node_types(tree: Any) -> Iterator[str]:
    """Every `type` value in the serialised tree."""
    if isinstance(tree, dict):
        if isinstance(tree.get("type"), str):
            yield tree["type"]
        for value in tree.values():
            yield from _node_types(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _node_types(value)


# --- the locked connection -------------------------------------------------------------------


def _lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Apply LOCKDOWN, then read every setting back: a DuckDB that ignored one is not trusted."""
    try:
        for name, value in LOCKDOWN.items():
            con.execute(f"SET {name} = {_sql_literal(value)}")
        rows = con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN (SELECT UNNEST(?))", [list(LOCKDOWN)]
        ).fetchall()
    except duckdb.Error as error:
        raise RegistryError(f"cannot lock down the read-only connection: {error}") from error
    found = dict(rows)
    wrong = [name for name, value in LOCKDOWN.items() if found.get(name) != _setting_text(value)]
    if wrong:
        raise RegistryError(f"cannot lock down the read-only connection: DuckDB did not apply {', '.join(wrong)}")


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


def _setting_text(value: Any) -> str:
    """How duckdb_settings() shows a value."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _run_error(error: duckdb.Error) -> RegistryError:
    """A failure while running or fetching, saying so when the lockdown is what stopped it."""
    if isinstance(error, duckdb.PermissionException):
        return SqlRefused(f"refused: the statement reaches outside the registry (files, extensions, secrets), "
                          f"which read-only SQL does not allow: {error}")
    # Matched on DuckDB's wording: only sharpens the message, the statement has failed either way.
    if "read-only mode" in str(error):
        return SqlRefused(f"refused: the statement writes, and the registry is read-only here: {error}")
    if "configuration has been locked" in str(error):
        return SqlRefused(f"refused: the statement changes a setting, and settings are locked here: {error}")
    return RegistryError(str(error))
