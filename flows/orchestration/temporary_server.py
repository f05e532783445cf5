"""Start Prefect's temporary API server early, so that it boots while this process imports.

With no API URL configured, Prefect starts a temporary server itself, late and in series: the flow
engine's first `get_client()` imports `prefect.server.api.server` (needed only to launch the
server), then waits for the server subprocess to boot, while the validate task later spends more
seconds importing Great Expectations. Here the same server (same command, environment and health
check as Prefect's `SubprocessASGIServer`) is launched with the stdlib before the flow module is
imported, so its boot (in its own process) overlaps our imports (in ours) on the two cores.
docs/performance.md has the figures.
"""

from __future__ import annotations

import atexit
import collections
import http.client
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
# What Prefect's SubprocessASGIServer adds to the environment: no UI, and the server knows it is temporary.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
UVICORN_STARTUP_FAILURE = 3  # uvicorn's exit code for any failed start-up, a port already taken included
PORT_ATTEMPTS = 5
HEALTH_POLL_SECONDS = 0.1
HEALTH_REQUEST_TIMEOUT = 2.0
STOP_GRACE_SECONDS = 5.0  # as Prefect's: then the server is killed
DRAIN_TIMEOUT = 5.0
OUTPUT_TAIL_LINES = 20
STDERR_FD = 2  # a file descriptor, not sys.stderr: the relay thread may outlive a replaced sys.stderr

# Under "prefect" so that Prefect's console handler shows these lines (with -v), as it shows its own.
logger = logging.getLogger("prefect.invoice_sync.server")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def prefect_app_dir() -> Path:
    """The folder holding the `prefect` package, found without importing it."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise RuntimeError("the prefect package is not installed")
    return Path(spec.origin).parent.parent


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick); it can still be taken before uvicorn binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def end_process(process: subprocess.Popen, grace: float) -> None:
    """Terminate `process`; kill it if it is still there after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ended_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec step asking the kernel to SIGTERM the child when we die (kill -9
    included): outside our process group it would otherwise outlive us. Elsewhere: none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the child only calls it
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def request() -> None:
        prctl(set_parent_death_signal, signal.SIGTERM)

    return request


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


class PrefectServerError(RuntimeError):
    """The temporary server did not come up: it exited, or did not answer in time."""


class TemporaryPrefectServer:
    """Prefect's temporary API server (uvicorn running `prefect.server.api.server:create_app`) on 127.0.0.1.

    `start()` launches it and returns at once; `wait_until_healthy()` waits for `/api/health`,
    launching it again on another port if the port was taken meanwhile; `stop()` ends it (also at
    exit). Its output during start-up is held back: on failure it goes into the error; once the
    server is healthy it passes through to stderr, as the output of Prefect's own server does.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
        app_dir: Path | None = None,
    ) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})  # on top of os.environ and SERVER_ENV (Prefect adds its settings here)
        self.app_dir = app_dir or prefect_app_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._output_lock = threading.Lock()
        self._startup_output: collections.deque[bytes] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self._healthy = False
        self._launched_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Launch the server; do not wait for it."""
        if self._process is not None:
            return
        if self.port is None:
            self.port = free_port()
        logger.info("Starting temporary server on http://%s:%s", HOST, self.port)
        self._launch()
        atexit.register(self.stop)

    def _launch(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(self.app_dir),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self._startup_output.clear()
        self._launched_at = time.monotonic()
        # A process group of its own: a Ctrl-C (or a signal to our group) stops the run, which
        # still talks to this server until its results are written; we stop the server after.
        self._process = subprocess.Popen(
            command,
            env={**os.environ, **SERVER_ENV, **self.env},
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=_ended_with_parent(),
        )
        self._relay = threading.Thread(
            target=self._relay_output, args=(self._process.stderr,), name="prefect-server-output", daemon=True
        )
        self._relay.start()

    def _relay_output(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                with self._output_lock:
                    if self._healthy:
                        os.write(STDERR_FD, line)
                    else:
                        self._startup_output.append(line)

    def _failure(self, what: str) -> PrefectServerError:
        if self._relay is not None and self._process is not None and self._process.poll() is not None:
            self._relay.join(timeout=1)  # the dead process's last words are its most useful ones
        with self._output_lock:
            tail = b"".join(self._startup_output).decode(errors="replace").strip()
        said = f"; its last output:\n{tail}" if tail else "; it printed nothing"
        return PrefectServerError(f"temporary Prefect server on {HOST}:{self.port} {what}{said}")

    def wait_until_healthy(self) -> None:
        """Return once `/api/health` answers 200; raise PrefectServerError if it exits or takes too long."""
        if self._process is None:
            raise PrefectServerError("temporary Prefect server not started")
        assert self.port is not None  # start() picked one before the launch
        if self._healthy:
            return
        deadline = time.monotonic() + self.startup_timeout
        attempts = 1
        while True:
            code = self._process.poll()
            if code is not None:
                # Another process took the port between our pick and uvicorn's bind: as Prefect, try another.
                if code == UVICORN_STARTUP_FAILURE and _port_taken(self.port) and attempts < PORT_ATTEMPTS:
                    attempts += 1
                    self.port = free_port()
                    logger.info("Port taken; starting temporary server on http://%s:%s", HOST, self.port)
                    self._launch()
                    deadline = time.monotonic() + self.startup_timeout
                    continue
                raise self._failure(f"exited with code {code} before answering")
            if self._answers_health():
                break
            if time.monotonic() > deadline:
                raise self._failure(f"did not answer {self.api_url}/health within {self.startup_timeout:g} s")
            time.sleep(HEALTH_POLL_SECONDS)
        with self._output_lock:
            self._healthy = True
            for line in self._startup_output:
                os.write(STDERR_FD, line)
        # Prefect's console logging is set up later than the launch: this line tells when that was.
        logger.info(
            "Temporary server on http://%s:%s is up, %.1f s after its launch",
            HOST,
            self.port,
            time.monotonic() - self._launched_at,
        )

    def _answers_health(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.api_url}/health", timeout=HEALTH_REQUEST_TIMEOUT) as answer:
                return answer.status == 200
        except (OSError, http.client.HTTPException):  # not listening yet, or not answering well yet
            return False

    def stop(self) -> None:
        """Terminate the server, kill it if it is still there after STOP_GRACE_SECONDS; safe to repeat."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        logger.info("Stopping temporary server on http://%s:%s", HOST, self.port)
        end_process(process, STOP_GRACE_SECONDS)
        if self._relay is not None:
            self._relay.join(timeout=1)  # its last lines reach stderr before we go on
        self._healthy = False

    def __enter__(self) -> TemporaryPrefectServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def prefect_api() -> Iterator[Callable[[], None] | None]:
    """Launch Prefect's temporary server now if Prefect would start one for this process later.

    Yields None when Prefect is configured with an API URL (a real server, a worker running a
    deployment) or forbids a temporary server: then nothing here changes anything. Otherwise
    yields `wait_for_api`: do the slow imports first, then call it; it waits for the server and
    points this process's Prefect at it. At the end, queued logs and events are sent and the
    server is stopped.
    """
    # Prefect's settings, not only os.environ: profiles, .env, prefect.toml and pyproject.toml count too.
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    server = TemporaryPrefectServer(
        startup_timeout=settings.server.ephemeral.startup_timeout_seconds,
        env=settings.to_environment_variables(exclude_unset=True),
    )  # as Prefect's
    with server, ExitStack() as pointed_at_server:

        def wait_for_api() -> None:
            server.wait_until_healthy()
            pointed_at_server.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))

        try:
            yield wait_for_api
        finally:
            send_queued_logs_and_events()


def stop_prefects_own_servers() -> None:
    """Stop the temporary servers Prefect's client launched itself (`SubprocessASGIServer`), if any.

    Prefect stops them in an atexit hook, which a process leaving with `os._exit` never runs:
    a command that reached Prefect's client outside `prefect_api()` would leave one behind.
    """
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # only that module launches them: none was started
        return
    for server in list(server_module.SubprocessASGIServer._instances.values()):
        server.stop()


def send_queued_logs_and_events() -> None:
    """Send the logs and events Prefect still holds; it would at exit, when the server may be gone."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=DRAIN_TIMEOUT)
    EventsWorker.drain_all(timeout=DRAIN_TIMEOUT)
