"""Progress reporting interface: the library reports, the CLI decides how (or whether) to show it."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager


class Reporter:
    """Silent reporter; the CLI installs one that draws progress bars."""

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
