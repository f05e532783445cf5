"""The temporary Prefect server the CLI starts early: it serves on 127.0.0.1, stops, fails clearly, stays out of the way.

The server class is tested directly, the CLI as a subprocess: nothing here touches the session's
Prefect test server or this process's Prefect settings for longer than one `with` block.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from flows.cli.main import EXIT_OK, EXIT_ROWS_NOT_DONE, SAMPLE_FILE
from flows.orchestration.temporary_server import PrefectServerError, TemporaryPrefectServer, free_port, prefect_api
from sandbox import Sandbox

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 120  # a safety net for a loaded machine, not a measure: no test asserts a duration
LOOPBACK_IN_PROC_NET_TCP = "0100007F"  # 127.0.0.1 as Linux's /proc/net/tcp spells it
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """A Prefect home (profiles, database) of this module's own: the user's ~/.prefect is never used."""
    return tmp_path_factory.mktemp("prefect-home")


def server_env(prefect_home: Path) -> dict[str, str]:
    return {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def health(api_url: str) -> tuple[int, bytes]:
    with NO_PROXY.open(f"{api_url}/health", timeout=10) as answer:
        return answer.status, answer.read()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, as /proc/net/tcp{,6} spell them."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def fake_prefect(app_dir: Path, create_app_body: str) -> Path:
    """A `prefect` package in `app_dir` whose `prefect.server.api.server.create_app` runs `create_app_body`."""
    package = app_dir / "prefect" / "server" / "api"
    package.mkdir(parents=True)
    for folder in (app_dir / "prefect", app_dir / "prefect" / "server", package):
        (folder / "__init__.py").write_text("")
    (package / "server.py").write_text("import time\n\ndef create_app():\n" + textwrap.indent(create_app_body, "    "))
    return app_dir


# -- the server ---------------------------------------------------------------------------------


def test_serves_health_on_loopback_only_and_stop_leaves_no_process(prefect_home):
    server = TemporaryPrefectServer(startup_timeout=STARTUP_TIMEOUT, env=server_env(prefect_home))
    with server:
        server.wait_until_healthy()
        pid = server.pid
        assert server.api_url == f"http://127.0.0.1:{server.port}/api"
        assert health(server.api_url) == (200, b"true")
        assert listening_addresses(server.port) == {LOOPBACK_IN_PROC_NET_TCP}
    assert not process_exists(pid)
    assert listening_addresses(server.port) == set()
    server.stop()  # a second stop is harmless


def test_port_taken_before_the_server_binds_it_is_retried_on_another(prefect_home):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with TemporaryPrefectServer(
            port=taken, startup_timeout=STARTUP_TIMEOUT, env=server_env(prefect_home)
        ) as server:
            server.wait_until_healthy()
            assert server.port != taken
            assert health(server.api_url)[0] == 200


def test_server_that_exits_is_a_clear_error_with_its_output(tmp_path, prefect_home):
    app_dir = fake_prefect(tmp_path, 'raise RuntimeError("database unreachable: prefect.db")\n')
    server = TemporaryPrefectServer(startup_timeout=STARTUP_TIMEOUT, env=server_env(prefect_home), app_dir=app_dir)
    with server, pytest.raises(PrefectServerError) as error:
        server.wait_until_healthy()
    message = str(error.value)
    assert re.search(rf"127\.0\.0\.1:{server.port} exited with code [1-9]\d* before answering", message), message
    assert "database unreachable: prefect.db" in message  # the process's own last words


def test_server_that_never_answers_is_a_clear_error_and_stop_ends_it(tmp_path, prefect_home):
    app_dir = fake_prefect(tmp_path, "time.sleep(3600)\n")
    server = TemporaryPrefectServer(startup_timeout=1, env=server_env(prefect_home), app_dir=app_dir)
    server.start()
    pid = server.pid
    try:
        with pytest.raises(PrefectServerError, match=r"did not answer http://127\.0\.0\.1:\d+/api/health within 1 s"):
            server.wait_until_healthy()
        assert process_exists(pid)  # still booting, as far as anyone can tell: stop must end it
    finally:
        server.stop()
    assert not process_exists(pid)


def test_waiting_for_a_server_never_started_is_an_error():
    with pytest.raises(PrefectServerError, match="not started"):
        TemporaryPrefectServer(port=free_port()).wait_until_healthy()


# -- when it is used -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "updates",
    [
        {"PREFECT_API_URL": "http://127.0.0.1:9/api"},  # a real server, or a worker running a deployment
        {"PREFECT_API_URL": None, "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": False},  # Prefect would refuse to run
    ],
    ids=["api-url-configured", "temporary-server-forbidden"],
)
def test_not_launched_when_prefect_would_not_start_one(updates, monkeypatch):
    import prefect.settings
    from prefect.settings import temporary_settings

    def no_server(*args, **kwargs):
        raise AssertionError("a temporary server was launched")

    monkeypatch.setattr(TemporaryPrefectServer, "start", no_server)
    settings = {getattr(prefect.settings, name): value for name, value in updates.items()}
    with (
        temporary_settings(
            updates={k: v for k, v in settings.items() if v is not None},
            restore_defaults={k for k, v in settings.items() if v is None},
        ),
        prefect_api() as wait_for_api,
    ):
        assert wait_for_api is None


def test_an_api_url_from_a_prefect_profile_counts_too(tmp_path):
    """Prefect's settings come from profiles, .env and toml files as well as os.environ: all count."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "remote"\n\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path), PREFECT_PROFILES_PATH=str(profiles), PYTHONPATH=str(REPO_ROOT))
    probe = (
        "import sys\nfrom flows.orchestration.temporary_server import prefect_api\n"
        "with prefect_api() as wait_for_api:\n"
        "    print(wait_for_api is None, 'prefect.server.api.server' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=STARTUP_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]  # no server, and not even Prefect's server code imported


# -- the CLI ------------------------------------------------------------------------------------


def run_cli(out: Path, env: dict[str, str]) -> tuple[int, str]:
    """`invoice-sync -v run` on the sample file; its stdout and stderr (with Prefect's INFO lines) together."""
    env = {k: v for k, v in env.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"}  # conftest's CRITICAL
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "-v", "run", str(SAMPLE_FILE), "--out", str(out), "--no-progress"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.e2e
def test_cli_run_starts_its_own_temporary_server_and_stops_it(sandbox, tmp_path, prefect_home):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(server_env(prefect_home))
    code, output = run_cli(tmp_path / "out", env)
    assert code in (EXIT_OK, EXIT_ROWS_NOT_DONE), output[-3000:]
    assert (tmp_path / "out" / "results.parquet").exists()
    assert "Temporary server on http://127.0.0.1:" in output  # ours, started before the flow
    assert "prefect - Starting temporary server" not in output  # Prefect's own was never needed
    port = int(output.split("Temporary server on http://127.0.0.1:")[1].split()[0])
    assert listening_addresses(port) == set()  # nothing left behind once the CLI is done
    leaked = [name for name, secret in Sandbox.CREDENTIALS.items() if secret in output]
    assert not leaked, f"credentials in the CLI's (or its server's) output: {leaked}"


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_cli_run_with_an_api_url_starts_no_server(sandbox, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's test server
    code, output = run_cli(tmp_path / "out", env)
    assert code in (EXIT_OK, EXIT_ROWS_NOT_DONE), output[-3000:]
    assert "Beginning flow run" in output
    assert "emporary server" not in output  # neither ours nor Prefect's
