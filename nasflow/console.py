"""Terminal presentation: progress bars per stage and result tables (used only by the CLI)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .progress import Reporter


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
        self.progress.console.log(text) if self.console.is_terminal else None


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


def arch_legend(rows: list[dict]) -> str:
    return "\n".join(f"#{number} {row['arch']}" for number, row in enumerate(rows, 1))
