"""No process a run starts outlives it: a watchdog process ends them when the run's process ends.

Some children are started by libraries nasflow does not control (Prefect's API server, Dask's
workers), and a run can end in ways that run no clean-up code at all (SIGKILL, SIGTERM, a crash).
So the run starts a tiny watchdog process (Linux, /proc) that

- notes the run's descendants every `interval` seconds by following parent pids, because once
  the run is gone its orphans are re-parented and that chain is lost;
- marks them: a random token in the environment the run's children inherit, so that one started
  between two scans (or by a descendant that has itself exited) is still recognised;
- when the run's pid disappears (or turns zombie), sends SIGTERM to every such process that is
  still alive, SIGKILL after `grace` seconds, and exits.

Nothing is ever signalled by process group (the run may be one child of a test runner), and a
pid is signalled only while its start time is the one that was noted, through a pidfd where the
kernel has them, so a pid reused by an unrelated process is never hit.

Worker pools nasflow creates itself also call `exit_with_parent` in each worker, which covers
runs without a watchdog (library use, `nasflow profile`). This module imports only the standard
library: the watchdog runs it as a script (`python -I reaper.py ...`) and starts in milliseconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

TOKEN_VARIABLE = "NASFLOW_RUN_TOKEN"
SCAN_INTERVAL = 0.25  # seconds between two notes of the run's descendants
GRACE = 5.0  # seconds between SIGTERM and SIGKILL

_PROC = "/proc"


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    start: int  # clock ticks after boot: with the pid, identifies one process for good
    state: str  # "Z" (zombie) and "X" (dead) have ended: nothing to stop


def proc_info(pid: int) -> ProcInfo | None:
    """Parent, start time and state of `pid` from /proc, or None when there is no such process."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = raw.rsplit(b")", 1)[-1].split()
    try:
        return ProcInfo(ppid=int(fields[1]), start=int(fields[19]), state=fields[0].decode())
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, ProcInfo]:
    """Every process visible in /proc."""
    table = {}
    for name in os.listdir(_PROC):
        if name.isdigit():
            info = proc_info(int(name))
            if info is not None:
                table[int(name)] = info
    return table


def descendants(root: int, table: dict[int, ProcInfo]) -> set[int]:
    """Pids below `root` in the parent chain of `table` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found: set[int] = set()
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in found and child != root:
                found.add(child)
                frontier.append(child)
    return found


def has_token(pid: int, token: str) -> bool:
    """Whether `pid` started with TOKEN_VARIABLE=token in its environment (unreadable: no)."""
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # another user's process, or gone
        return False
    return f"{TOKEN_VARIABLE}={token}".encode() in environ.split(b"\0")


def alive(pid: int, start: int) -> bool:
    """Whether the process noted as (`pid`, `start`) still runs (a zombie has ended)."""
    info = proc_info(pid)
    return info is not None and info.start == start and info.state not in "ZX"


def send_signal(pid: int, start: int, sig: int) -> None:
    """Signal (`pid`, `start`) if it is still that process; never a process that reused the pid."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)  # pins this process: the pid cannot be reused while it is open
        except OSError:
            pidfd = None
    try:
        if not alive(pid, start):
            return
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except OSError:  # ended meanwhile
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ----------------------------------------------------------------------------------- the watchdog


def _leftovers(noted: dict[int, int], token: str, me: int) -> dict[int, int]:
    """{pid: start} of the run's processes still alive: noted, marked, or started by one of those."""
    table = process_table()
    found = {pid for pid, start in noted.items() if pid in table and table[pid].start == start}
    found |= {pid for pid in table if has_token(pid, token)}
    for pid in list(found):
        found |= descendants(pid, table)
    found.discard(me)
    return {pid: table[pid].start for pid in found if table[pid].state not in "ZX"}


def sweep(noted: dict[int, int], token: str, grace: float = GRACE) -> None:
    """SIGTERM every leftover process of the run, SIGKILL what is still there after `grace` s."""
    me = os.getpid()
    term_until = time.monotonic() + grace
    give_up = term_until + max(grace, 2.0)
    signalled: dict[int, int] = {}  # pid -> the last signal sent
    while time.monotonic() < give_up:
        left = _leftovers(noted, token, me)
        if not left:
            return
        sig = signal.SIGTERM if time.monotonic() < term_until else signal.SIGKILL
        for pid, start in left.items():
            if signalled.get(pid) != sig:
                send_signal(pid, start, sig)
                signalled[pid] = sig
        # A leftover may start processes while it stops (a nanny restarting its worker): rescan.
        time.sleep(0.05)


def watch(run_pid: int, run_start: int, token: str, interval: float = SCAN_INTERVAL, grace: float = GRACE) -> None:
    """Note the run's descendants until the run ends, then stop those that are left."""
    # The run's Ctrl-C and its terminal's hang-up are the run's to handle; this process must
    # outlive the run by the moment it takes to clean up after it.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    noted: dict[int, int] = {}
    me = os.getpid()
    while alive(run_pid, run_start):
        table = process_table()
        for pid in descendants(run_pid, table) - {me}:
            noted[pid] = table[pid].start
        time.sleep(interval)
    sweep(noted, token, grace)


def main(argv: list[str]) -> int:
    run_pid, run_start, token = int(argv[0]), int(argv[1]), argv[2]
    interval, grace = float(argv[3]), float(argv[4])
    watch(run_pid, run_start, token, interval, grace)
    return 0


# ------------------------------------------------------------------------------- the run's side

_watchdog: subprocess.Popen | None = None
_watchdog_lock = threading.Lock()


def start_watchdog(interval: float = SCAN_INTERVAL, grace: float = GRACE) -> int | None:
    """Start this process's watchdog once (later calls reuse it); its pid, or None without /proc.

    Call it before the process starts any child: the token it puts into the environment is
    inherited only by children started afterwards.
    """
    global _watchdog
    with _watchdog_lock:
        if _watchdog is not None and _watchdog.poll() is None:
            return _watchdog.pid
        me = proc_info(os.getpid()) if sys.platform.startswith("linux") else None
        if me is None:
            return None  # no /proc (not Linux): nothing to watch with
        token = secrets.token_hex(16)
        os.environ[TOKEN_VARIABLE] = token
        _watchdog = subprocess.Popen(
            # -I: only the standard library, whatever the current directory or PYTHONPATH holds
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), str(me.start), token, str(interval), str(grace)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # its own session: a signal sent to the run's process group does not stop the clean-up
            start_new_session=True, cwd="/",
        )
        return _watchdog.pid


def exit_with_parent(interval: float = 1.0) -> None:
    """Make the calling (worker) process exit when the process that started it ends.

    For pool initializers (`ProcessPoolExecutor(initializer=exit_with_parent)`). A daemon thread
    compares the parent pid, which changes when the parent dies. PR_SET_PDEATHSIG is not used:
    it fires when the *thread* that started the worker ends, and pools start workers from
    whichever thread submits first, which may end long before the process.
    """
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch_parent, name="nasflow-exit-with-parent", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
