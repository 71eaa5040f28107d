"""How a run uses Prefect: a configured server as it is, its own otherwise, and no Prefect chatter."""

import json
import os
import pty
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, tiny_spec_text
from nasflow.flows.prefect_server import ApiServer

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

PREFECT_CHATTER = ("anonymous usage", "telemetry", "docs.prefect.io", "Starting temporary server", "DO_NOT_TRACK")


def run_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "PREFECT_API_URL", "NASFLOW_REGISTRY")}
    env.update(
        PREFECT_HOME=str(prefect_home), NASFLOW_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def profile_only_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "profile.yaml"
    spec.write_text(tiny_spec_text(tmp_path, name="prefect", search=False, train=False, morph=False, deploy=False))
    return spec


def run_on_a_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr, as a user at a shell would."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: every process holding it has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    try:
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    text = b"".join(chunks).decode(errors="replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_run_on_a_terminal_with_a_fresh_prefect_home_prints_nothing_of_prefect(tmp_path):
    """Prefect prints a telemetry notice on the first import in a terminal; a run must not show it."""
    spec = profile_only_spec(tmp_path)
    code, output = run_on_a_terminal(
        [sys.executable, "-m", "nasflow.cli", "run", str(spec)], run_env(tmp_path / "prefect-home"), tmp_path
    )
    assert code == 0, output[-3000:]
    assert "nasflow" in output and "profile" in output, output[-3000:]
    for phrase in PREFECT_CHATTER:
        assert phrase not in output, output[:3000]


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except OSError:
                pass
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_configured_prefect_server_is_used_and_none_is_started(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "server-home"))  # an empty database: only this test's runs
    server = ApiServer()
    try:
        server.wait_until_up(timeout=180)
        spec = profile_only_spec(tmp_path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasflow.cli", "run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=run_env(tmp_path / "client-home", PREFECT_API_URL=server.url), cwd=tmp_path,
        )
        children = set()
        while proc.poll() is None:
            children |= {_cmdline(pid) for pid in _descendants(proc.pid)}
            time.sleep(0.1)
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-3000:]
        assert not [c for c in children if "uvicorn" in c], children
        request = urllib.request.Request(
            f"{server.url}/flows/filter", data=json.dumps({}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
            flows = {flow["name"] for flow in json.load(response)}
        assert {"nasflow-run", "profile"} <= flows, flows
    finally:
        server.stop()
    assert server.process.poll() is not None
