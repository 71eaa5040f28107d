"""Progress reporting interface: the library reports, the CLI decides how (or whether) to show it."""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class Reporter:
    """Silent reporter; the CLI installs one that draws progress bars or prints log lines.

    Implementations must be thread-safe: training tasks report from worker threads.
    """

    def stage_start(self, stage: str, total: int | None, description: str = "") -> None:
        pass

    def advance(self, stage: str, n: int = 1, info: str = "") -> None:
        pass

    def stage_end(self, stage: str, summary: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass


_CURRENT: contextvars.ContextVar[Reporter] = contextvars.ContextVar("nasflow_reporter", default=Reporter())


def reporter() -> Reporter:
    return _CURRENT.get()


@contextmanager
def using_reporter(rep: Reporter):
    token = _CURRENT.set(rep)
    try:
        yield rep
    finally:
        _CURRENT.reset(token)


def stage_counter(
    stage: str, description: str, rep: Reporter | None = None, summary: str = "{total} done"
) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback (running totals, as lut.py and predictors.py call it) that
    drives a stage of the reporter: the first call starts it, each call advances it, `done == total`
    ends it with `summary` (formatted with `total`)."""
    rep = rep if rep is not None else reporter()
    state = {"done": None, "ended": False}

    def progress(done: int, total: int) -> None:
        if state["ended"]:
            return
        if state["done"] is None:
            rep.stage_start(stage, total, description)
            state["done"] = 0
        if done > state["done"]:
            rep.advance(stage, done - state["done"])
            state["done"] = done
        if done >= total:
            state["ended"] = True
            rep.stage_end(stage, summary.format(total=total))

    return progress


# ------------------------------------------------------------------ reporting from worker threads

_OPEN: dict[int, Reporter] = {}
_KEYS = itertools.count()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProgressChannel:
    """A picklable handle to one stage of the reporter of the process that opened it.

    Work running on a task runner's threads reaches that reporter through it, whether or not the
    runner carries context variables over. In another process (the process, Dask and Ray
    runners) there is no reporter to reach: `advance` does nothing and returns False, and the
    stage reports that work when its result comes back instead.
    """

    stage: str
    pid: int
    key: int

    def advance(self, n: int = 1, info: str = "") -> bool:
        """Advance the stage; True when the reporter was reached from here."""
        rep = _OPEN.get(self.key) if os.getpid() == self.pid else None
        if rep is None:
            return False
        rep.advance(self.stage, n, info)
        return True


@contextmanager
def progress_channel(stage: str) -> Iterator[ProgressChannel]:
    """A channel to `stage` of the current reporter, open for the block."""
    key = next(_KEYS)
    with _LOCK:
        _OPEN[key] = reporter()
    try:
        yield ProgressChannel(stage, os.getpid(), key)
    finally:
        with _LOCK:
            _OPEN.pop(key, None)
