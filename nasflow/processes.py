"""Whether a process recorded earlier (its pid and start time) is still running on this machine."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

_PROC = Path("/proc")


def _boot_time() -> float | None:
    """Seconds since the epoch at which this Linux machine booted (None where /proc has no stat)."""
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may itself contain spaces)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_started_at(pid: int) -> dt.datetime | None:
    """When process `pid` started (naive UTC, to the clock tick), or None when it is gone or unknown.

    Stored beside a pid so that a later process given the same pid is not taken for it.
    """
    fields = _proc_stat(pid)
    boot = _boot_time()
    if fields is None or boot is None or fields[0] == "Z":
        return None
    seconds = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)


def is_running(pid: int, started_at: dt.datetime | None) -> bool:
    """Whether `pid` is still the process that started at `started_at` (a zombie counts as ended).

    Where /proc is missing (not Linux) only the pid's existence can be checked.
    """
    if pid <= 0:
        return False
    if _proc_stat(os.getpid()) is None:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = process_started_at(pid)
    if now is None:
        return False
    # Both sides come from the same boot time and tick count; allow a tick of rounding.
    return started_at is None or abs((now - started_at).total_seconds()) < 0.05
