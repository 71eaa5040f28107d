"""Terminal presentation: progress bars per stage (or log lines off a terminal) and result tables (CLI only)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .progress import Reporter


def make_reporter(console: Console) -> Reporter:
    """Progress bars on a terminal; the same events as plain log lines anywhere else (a file, CI, a pipe)."""
    return RichReporter(console) if console.is_terminal else LogReporter(console)


class RichReporter(Reporter):
    """One progress bar per stage, with the latest detail line beside it."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def stage_start(self, stage: str, total: int | None, description: str = "") -> None:
        self.tasks[stage] = self.progress.add_task(description, total=total, stage=stage)

    def advance(self, stage: str, n: int = 1, info: str = "") -> None:
        if stage in self.tasks:
            kwargs = {"description": info} if info else {}
            self.progress.update(self.tasks[stage], advance=n, **kwargs)

    def stage_end(self, stage: str, summary: str = "") -> None:
        if stage in self.tasks:
            task = self.tasks[stage]
            total = self.progress.tasks[task].total if task < len(self.progress.tasks) else None
            self.progress.update(task, completed=total, description=f"[green]{summary}")

    def message(self, text: str) -> None:
        self.progress.console.log(text, markup=False, highlight=False)


class LogReporter(Reporter):
    """Every stage start and end and every message as a timestamped line; advances of a long stage
    at about `steps` evenly spaced points, so a 900-operator LUT does not print 900 lines."""

    def __init__(self, console: Console, steps: int = 10):
        self.console = console
        self.steps = steps
        self._lock = threading.Lock()
        self._stages: dict[str, tuple[int | None, int]] = {}  # stage -> (total, done)

    def __enter__(self) -> "LogReporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _line(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, emoji=False, soft_wrap=True)

    def stage_start(self, stage: str, total: int | None, description: str = "") -> None:
        with self._lock:
            self._stages[stage] = (total, 0)
            size = f" ({total} steps)" if total is not None else ""
            self._line(f"{stage:<8} started{size}{': ' + description if description else ''}")

    def advance(self, stage: str, n: int = 1, info: str = "") -> None:
        with self._lock:
            if stage not in self._stages:
                return
            total, before = self._stages[stage]
            done = before + n
            self._stages[stage] = (total, done)
            every = max(1, math.ceil(total / self.steps)) if total else 1
            # An update that only carries news (an accuracy, a failure) is always shown.
            if (n == 0 and info) or (n > 0 and (done // every > before // every or done == total)):
                count = f"{done}/{total}" if total is not None else str(done)
                self._line(f"{stage:<8} {count}{' ' + info if info else ''}")

    def stage_end(self, stage: str, summary: str = "") -> None:
        with self._lock:
            if self._stages.pop(stage, None) is not None:
                self._line(f"{stage:<8} done{': ' + summary if summary else ''}")

    def message(self, text: str) -> None:
        with self._lock:
            self._line(text)


def fmt_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def latency_cell(measurement: dict | None) -> str:
    """Median latency; a number that was not measured on the device says where it came from."""
    if measurement is None:
        return "-"
    text = fmt_number(measurement["median_ms"])
    return text if measurement["source"] == "measured" else f"{text} ({measurement['source']})"


def front_table(rows: list[dict], devices: list[str], objective_device: str, title: str) -> Table:
    """Candidates as a table; architectures are long, so rows carry a number and `arch_legend` spells them out."""
    table = Table(title=title, title_justify="left")
    for header in ("#", "stage", "accuracy", *[f"{d} ms" for d in devices], "params", "MACs", "score"):
        table.add_column(header, justify="left" if header == "stage" else "right")
    for number, row in enumerate(rows, 1):
        table.add_row(
            str(number), row["stage"], fmt_number(row["accuracy"]),
            *[latency_cell(row["latency"].get(d)) for d in devices],
            fmt_number(row["params"]), fmt_number(row["macs"]), fmt_number(row.get("score")),
        )
    table.caption = (
        f"median latency per inference (batch 1) measured on each device unless marked; "
        f"front and score use {objective_device}"
    )
    return table


def print_table(console: Console, table: Table) -> None:
    """Print `table` at its natural width: fitted to a narrow console, rich would cut device names
    in the headers and digits in the cells ("onnxru…", "1,234,…")."""
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if needed <= console.width:
        console.print(table)
        return
    width = console.width
    console.width = needed
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def arch_legend(rows: list[dict]) -> str:
    return "\n".join(f"#{number} {row['arch']}" for number, row in enumerate(rows, 1))
