"""The Prefect API server of a run: a private one started in the background unless one is configured.

Prefect's clients start an ephemeral server themselves at the first flow, and the run waits for it
(seconds: imports, database migrations) before doing anything. nasflow starts the same server
(Prefect's app factory under uvicorn, with the services Prefect's ephemeral server runs) as soon as
a run begins, without importing Prefect's server modules in the run's process, lets the run load
its data meanwhile, and points Prefect at it once it answers. When PREFECT_API_URL is configured,
that server is used as it is and nothing is started.

The server runs in its own session, so the terminal's Ctrl-C, which interrupts the run, does not
kill the API that Prefect's crash handling still talks to. It is stopped at exit; when the run ends
without clean-up (SIGKILL), the run's watchdog (nasflow.reaper) stops it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from ..errors import NasflowError

STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL when stopping the server
_STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start, e.g. its port was taken meanwhile
_PORT_ATTEMPTS = 3


def _startup_timeout() -> float:
    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]


def _server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server serves the API; it is no client of another one
    env.update({
        "PREFECT_UI_ENABLED": "false",
        # Prefect's switches for its own ephemeral server (prefect==3.8.8, pinned): only the
        # services a local run needs, and the app built once.
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    })
    return env


class ApiServer:
    """A Prefect API server this process started: a uvicorn child process on a free local port."""

    def __init__(self) -> None:
        self._output = tempfile.TemporaryFile()  # what the server says, quoted if it fails to start
        self._lock = threading.Lock()
        self._up = False
        self._launch()
        atexit.register(self.stop)

    def _launch(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen(
            _server_command(self.port), env=_server_environment(),
            stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT,
            start_new_session=True,  # out of the terminal's process group: Ctrl-C is the run's
        )

    def _output_tail(self, limit: int = 2000) -> str:
        self._output.seek(0)
        return self._output.read().decode(errors="replace")[-limit:].strip()

    def answers(self) -> bool:
        """Whether the server answers its health check now."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local address: no proxy
        try:
            with opener.open(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_until_up(self, timeout: float | None = None) -> None:
        """Block until the server answers its health check; NasflowError when it cannot start."""
        with self._lock:
            if self._up:
                return
            limit = timeout if timeout is not None else _startup_timeout()
            deadline = time.monotonic() + limit
            attempts = 1
            while not self.answers():
                status = self.process.poll()
                if status == _STARTUP_FAILURE and attempts < _PORT_ATTEMPTS:
                    attempts += 1
                    self._launch()  # its port was taken between choosing and binding it
                    continue
                if status is not None:
                    raise NasflowError(
                        f"Prefect's API server exited with status {status} while starting: "
                        f"{self._output_tail() or 'no output'}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise NasflowError(
                        f"Prefect's API server did not answer within {limit:.0f} s "
                        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); set PREFECT_API_URL to use a running server"
                    )
                time.sleep(0.05)
            self._up = True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_server: ApiServer | None = None
_server_lock = threading.Lock()


def configured_api_url() -> str | None:
    """The API URL Prefect is configured with (environment or profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def start_api_server() -> ApiServer | None:
    """Start this process's Prefect API server in the background, once; None when a server is configured.

    Call `use_api_server` before the first Prefect flow: it waits for the server and points Prefect at it.
    """
    global _server
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED

    with _server_lock:
        if _server is not None:
            if _server.process.poll() is None:
                return _server
            if os.environ.get("PREFECT_API_URL") == _server.url:  # ours, and it has died: start another
                from prefect.context import refresh_global_settings_context

                del os.environ["PREFECT_API_URL"]
                refresh_global_settings_context()
        if configured_api_url() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return None  # a configured server is used as it is; without one Prefect reports the problem
        if importlib.util.find_spec("uvicorn") is None:
            return None  # let Prefect start (or explain) its own server
        _server = ApiServer()
        return _server


def start_run_helpers() -> ApiServer | None:
    """Start the processes a run needs besides itself: its watchdog first (so that every child is
    marked as this run's), then Prefect's API server in the background. Idempotent: the CLI calls it
    as soon as the spec is read, so the server's start overlaps the run's imports and data loading."""
    from ..reaper import start_watchdog

    start_watchdog()
    return start_api_server()


def use_api_server(server: ApiServer | None) -> None:
    """Wait until `server` answers, then make this process's Prefect clients (and its children) use it.

    PREFECT_API_URL stays set in this process's environment while the server lives, so later runs
    in the process, and processes it starts, use the same server.
    """
    if server is None:
        return
    server.wait_until_up()
    if os.environ.get("PREFECT_API_URL") != server.url:
        from prefect.context import refresh_global_settings_context

        os.environ["PREFECT_API_URL"] = server.url  # inherited by worker processes started from now on
        refresh_global_settings_context()  # Prefect read its settings from the environment at import
