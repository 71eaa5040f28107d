"""No process outlives its run: real processes killed with SIGKILL, then /proc is checked.

Processes are found here by scanning /proc directly (parent pids, command lines), not through
nasflow.reaper, so the watchdog is checked from outside.
"""

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_spec_text

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


# ------------------------------------------------------------------------------- /proc, from outside


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of `pid`, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19]), fields[0].decode()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below `root` right now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = info
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start, state) in table.items():
            if ppid == parent and pid not in found and state not in "ZX":
                found[pid] = start
                frontier.append(pid)
    return found


def running(pid: int, start: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == start and info[2] not in "ZX"


def with_marker(marker: str) -> list[int]:
    """Live processes whose command line contains `marker`."""
    return [
        int(e.name) for e in Path("/proc").iterdir()
        if e.name.isdigit() and marker in _cmdline(int(e.name)) and (s := _stat(int(e.name))) and s[2] not in "ZX"
    ]


def wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def kill_all(processes: dict[int, int]) -> None:
    """Clean up after a failed test: SIGKILL each noted process that is still the same process."""
    for pid, start in processes.items():
        if running(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def python_env() -> dict[str, str]:
    # Without PREFECT_API_URL (an in-process run of another test sets it): the run starts its own server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NASFLOW_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def unique_seconds() -> str:
    """A sleep duration no other process on the machine has in its command line."""
    return f"{random.randint(5000, 9000)}.{random.randint(10**8, 10**9 - 1)}"


# ------------------------------------------------------------------------------- the watchdog alone

PARENT = """\
import os, subprocess, sys, time
from nasflow.reaper import start_watchdog

mark = sys.argv[1]
print("watchdog", start_watchdog(), flush=True)
subprocess.Popen(["sleep", mark])
subprocess.Popen(["bash", "-c", f"sleep {mark} & sleep {mark} & wait"])  # grandchildren
subprocess.Popen([sys.executable, "-c", f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep({mark})"])
# A daemon: re-parented away from this process at once, so no parent chain leads to it.
subprocess.run(["bash", "-c", f"setsid sleep {mark} > /dev/null 2>&1 &"])
print("ready", flush=True)
if sys.argv[2] == "exit":
    sys.exit(0)
while True:  # children started until the very end, some too young for any scan
    subprocess.Popen(["sleep", mark])
    time.sleep(0.02)
"""


def start_parent(tmp_path: Path, mark: str, mode: str) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), mark, mode], stdout=subprocess.PIPE, text=True, env=python_env(), cwd=tmp_path
    )
    watchdog = int(proc.stdout.readline().split()[1])
    assert proc.stdout.readline().strip() == "ready"
    return proc, watchdog


def test_a_killed_process_leaves_no_child_grandchild_daemon_or_stubborn_one(tmp_path):
    mark = unique_seconds()
    bystander = subprocess.Popen(["sleep", mark])  # the same command line, but not the killed process's
    proc, watchdog = start_parent(tmp_path, mark, "loop")
    watchdog_start = _stat(watchdog)[1]
    try:
        time.sleep(0.5)
        before = set(with_marker(mark)) - {bystander.pid}
        assert len(before) >= 6, before  # sleep, bash's two, the stubborn one, the daemon, the loop's
        proc.kill()
        proc.wait()
        assert wait_until(lambda: set(with_marker(mark)) <= {bystander.pid}, timeout=20), [
            _cmdline(p) for p in with_marker(mark)
        ]
        assert wait_until(lambda: not running(watchdog, watchdog_start), timeout=10), "the watchdog did not exit"
        assert bystander.poll() is None, "a process the killed one did not start was stopped"
    finally:
        for pid in with_marker(mark):
            os.kill(pid, signal.SIGKILL)
        bystander.wait()


def test_children_left_by_a_normal_exit_are_stopped(tmp_path):
    mark = unique_seconds()
    proc, watchdog = start_parent(tmp_path, mark, "exit")
    watchdog_start = _stat(watchdog)[1] if _stat(watchdog) else None
    try:
        assert proc.wait(timeout=30) == 0
        assert wait_until(lambda: not with_marker(mark), timeout=20), [_cmdline(p) for p in with_marker(mark)]
        assert watchdog_start is None or wait_until(lambda: not running(watchdog, watchdog_start), timeout=10)
    finally:
        for pid in with_marker(mark):
            os.kill(pid, signal.SIGKILL)


POOL_PARENT = """\
import time
from nasflow.plugins.devices.litert import _conversion_pool

if __name__ == "__main__":  # the pool's workers are spawned: they import this file too
    pool = _conversion_pool(2)
    for future in [pool.submit(time.sleep, 0.5) for _ in range(2)]:
        future.result()
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
"""


def test_converter_pool_workers_exit_with_their_process(tmp_path):
    """No watchdog here: the pool's workers end by themselves when the process that owns them dies."""
    script = tmp_path / "pool_parent.py"
    script.write_text(POOL_PARENT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=python_env())
    workers = {}
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        workers = {pid: _stat(pid)[1] for pid in pids}
        assert all(running(pid, start) for pid, start in workers.items())
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not any(running(p, s) for p, s in workers.items()), timeout=15)
    finally:
        proc.kill()
        proc.wait()
        kill_all(workers)


# ------------------------------------------------------------------------------- a real `nasflow run`


def start_run(tmp_path: Path, runner: str, **stages: bool) -> tuple[subprocess.Popen, Path]:
    spec = tmp_path / "run.yaml"
    spec.write_text(tiny_spec_text(tmp_path, name=f"reap-{runner}", runner=runner, **stages))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasflow.cli", "run", str(spec)], stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp_path, env=python_env(), start_new_session=True,
        )
    return proc, log


def is_api_server(pid: int) -> bool:
    return bool(re.search(r"\buvicorn\b.*prefect\.server", _cmdline(pid)))


def is_spawned_worker(pid: int) -> bool:
    return "multiprocessing.spawn" in _cmdline(pid)


@pytest.mark.parametrize("runner", ["thread", "process", "dask"])
def test_sigkill_of_nasflow_run_leaves_no_process(tmp_path, runner):
    if runner == "dask":
        pytest.importorskip("prefect_dask")
    pooled = runner in ("process", "dask")  # worker processes: wait until they are there too
    proc, log = start_run(tmp_path, runner, train=False, morph=False, deploy=False)
    noted: dict[int, int] = {}
    try:

        def has_children() -> bool:
            now = descendants(proc.pid)
            noted.update(now)
            server = any(is_api_server(p) for p in now)
            workers = sum(is_spawned_worker(p) for p in now)  # the runner's worker processes
            return proc.poll() is not None or (server and (not pooled or workers >= 2))

        assert wait_until(has_children, timeout=240, interval=0.2), log.read_text()[-3000:]
        assert proc.poll() is None, f"the run ended before its children could be seen:\n{log.read_text()[-3000:]}"
        noted.update(descendants(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = lambda: {p: _cmdline(p) for p, s in noted.items() if running(p, s)}  # noqa: E731
        assert wait_until(lambda: not left(), timeout=30), left()
    finally:
        proc.kill()
        proc.wait()
        kill_all(noted)


def test_a_finished_run_leaves_no_process(tmp_path):
    proc, log = start_run(tmp_path, "thread", train=False, morph=False, deploy=False)
    noted: dict[int, int] = {}
    saw_server = False
    try:
        while proc.poll() is None:  # note every process the run starts, while it runs
            now = descendants(proc.pid)
            noted.update(now)
            saw_server = saw_server or any(is_api_server(p) for p in now)
            time.sleep(0.1)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert saw_server, "no Prefect API server was seen: nothing was checked"
        left = lambda: {p: _cmdline(p) for p, s in noted.items() if running(p, s)}  # noqa: E731
        assert wait_until(lambda: not left(), timeout=30), left()
    finally:
        proc.kill()
        proc.wait()
        kill_all(noted)
