"""Query results as an aligned text table, CSV or JSON, written row by row so large results stream."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import numbers
import uuid
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any, TextIO

# A streamed table takes its column widths and alignment from this many first rows: enough to
# be right for nearly every query, few enough that nothing large is held. A later, wider cell
# pushes its own line out of alignment rather than being cut.
TABLE_SAMPLE_ROWS = 1000


# --- text table ------------------------------------------------------------------------------


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Aligned plain-text table (numbers right-aligned, floats to 4 significant digits) with a row count."""
    buffer = io.StringIO()
    shown = write_table(columns, rows, buffer, sample_rows=max(len(rows), 1))
    buffer.write(row_count_line(shown) + "\n")
    return buffer.getvalue().rstrip("\n")


def write_table(columns: list[str], rows: Iterable[tuple], out: TextIO, sample_rows: int = TABLE_SAMPLE_ROWS) -> int:
    """Write the header and the rows (no count line); widths come from the first `sample_rows` rows.

    Returns the number of rows written.
    """
    rows = iter(rows)
    sample = list(islice(rows, sample_rows))
    widths = [len(c) for c in columns]
    for row in sample:
        widths = [max(w, len(_table_cell(v))) for w, v in zip(widths, row)]
    numeric = [_is_numeric_column(sample, i) for i in range(len(columns))]
    out.write(_table_line(columns, widths, [False] * len(columns)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    count = 0
    for row in chain(sample, rows):
        out.write(_table_line([_table_cell(v) for v in row], widths, numeric) + "\n")
        count += 1
    return count


def row_count_line(shown: int, more: int = 0) -> str:
    """The table's last line: how many rows it shows and, when some were left out, how many more exist."""
    if more:
        return f"(first {shown} of {shown + more} rows; {more} more not shown)"
    return f"({shown} row{'' if shown == 1 else 's'})"


def _table_line(cells: list[str], widths: list[int], right: list[bool]) -> str:
    """One padded line of the text table."""
    padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
    return "  ".join(padded).rstrip()


def _is_numeric_column(rows: list[tuple], index: int) -> bool:
    """Whether every non-NULL value of the column is a number (bools are not)."""
    values = [row[index] for row in rows if row[index] is not None]
    return bool(values) and all(_is_number(v) for v in values)


def _is_number(value: Any) -> bool:
    """Numbers for alignment and rounding purposes: ints, floats, decimals, not bools."""
    return isinstance(value, (numbers.Number, decimal.Decimal)) and not isinstance(value, bool)


def _table_cell(value: Any) -> str:
    """Text of one value in the plain-text table."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (float, decimal.Decimal)):
        return _four_significant(float(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    # Newlines (e.g. spec_yaml) would break the alignment of every following row.
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _four_significant(value: float) -> str:
    """A float to 4 significant digits, positional unless very small or very large."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if 1e4 <= abs(value) < 1e15:
        exponent = math.floor(math.log10(abs(value)))
        return f"{round(value, 3 - exponent):.0f}"
    return f"{value:.4g}"


# --- CSV -------------------------------------------------------------------------------------


def format_csv(columns: list[str], rows: list[tuple]) -> str:
    """CSV with a header row; NULL is empty, timestamps ISO 8601, JSON values as JSON text."""
    buffer = io.StringIO()
    write_csv(columns, rows, buffer)
    return buffer.getvalue()


def write_csv(columns: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """Write CSV (header first) row by row; returns the number of rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
        count += 1
    return count


def _csv_cell(value: Any) -> Any:
    """Value of one CSV cell."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return value


# --- JSON ------------------------------------------------------------------------------------


def format_json(columns: list[str], rows: list[tuple]) -> str:
    """A JSON list with one object per row; timestamps ISO 8601, NaN and infinities null."""
    buffer = io.StringIO()
    write_json(columns, rows, buffer)
    return buffer.getvalue().rstrip("\n")


def write_json(columns: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """Write one JSON array, an object per row, as the rows come; returns the number of rows written.

    The text is what json.dumps(list, indent=2) would give, so a streamed result and a formatted
    one are byte for byte the same.
    """
    names = _unique_names(columns)
    count = 0
    for row in rows:
        obj = json.dumps({n: _json_value(v) for n, v in zip(names, row)}, indent=2, allow_nan=False)
        out.write(("[\n" if count == 0 else ",\n") + _indented(obj))
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def _indented(text: str) -> str:
    """Text indented two spaces per line, as an element of an indent=2 JSON list."""
    return "\n".join("  " + line for line in text.split("\n"))


def _unique_names(columns: list[str]) -> list[str]:
    """Column names made unique (a_1, a_2, ...) so that no value is lost as a duplicate JSON key."""
    seen: dict[str, int] = {}
    names = []
    for column in columns:
        count = seen.get(column, 0)
        seen[column] = count + 1
        names.append(column if count == 0 else f"{column}_{count}")
    return names


def _json_value(value: Any) -> Any:
    """A query value as something json.dumps writes faithfully and validly."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return _json_value(float(value))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (uuid.UUID, bytes)):
        return value.hex() if isinstance(value, bytes) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


# One writer per `--format`, for callers that stream.
WRITERS: dict[str, Callable[[list[str], Iterator[tuple], TextIO], int]] = {
    "table": write_table,
    "csv": write_csv,
    "json": write_json,
}
