"""The `invoice-sync` command as a person runs it: in its own process, with a clean environment.

* every command stops what it starts: once it exited, no process of its process group is left
  (Prefect's temporary API server included, which `secrets list` used to leave running);
* `run` prints our lines only (Prefect's log lines need `-v`), the file name as the table's
  title, and every path on one line whatever the terminal's width;
* `secrets push` refuses to write Secret blocks without a Prefect server to write them to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flows.cli.main import EXIT_OK, EXIT_ROWS_NOT_DONE, EXIT_UNUSABLE, SAMPLE_FILE

INVOICE_SYNC = str(Path(sys.executable).with_name("invoice-sync"))
VENDOR_PREFIXES = ("ALFRED_", "ACCOUNTEER_", "APPZEN_", "MODULUS_")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: no Prefect settings (so no API URL, default logging), no vendor settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "INVOICE_SYNC_", *VENDOR_PREFIXES))}
    env.update(PREFECT_HOME=str(home / "prefect"), INVOICE_SYNC_STATE_DIR=str(home / "state"), COLUMNS="60")
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def group_members(group: int) -> list[int]:
    """The live processes of a process group (zombies waiting for init do not count)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def command(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `invoice-sync ARGS` in a process group of its own; fail if anything of it outlives it.

    Its output goes to files, not pipes: a process left behind would hold a pipe open.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [INVOICE_SYNC, *args],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its group id is its pid: every process it starts stays in it
        )
        try:
            process.wait(timeout=timeout)
        finally:
            left = group_members(process.pid)
            if left:  # ours to clean up: the group this test started
                os.killpg(process.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
    assert not left, f"`invoice-sync {' '.join(args)}` left processes running: {left}\n{done.stderr[-2000:]}"
    return done


def test_run_prints_our_lines_only_and_stops_its_prefect_server(tmp_path):
    out_dir = tmp_path / "a-rather-long-folder-name-for-the-results" / "of-the-month-end-run-2026-11"
    done = command(["run", str(SAMPLE_FILE), "--dry-run", "--out", str(out_dir)], clean_env(tmp_path))
    assert done.returncode == EXIT_ROWS_NOT_DONE, done.stderr  # the sample holds rejected rows
    lines = done.stdout.splitlines()
    assert lines[0].strip() == "decisions.csv (dry run: nothing sent)"  # the file, not the run's UUID
    # no Prefect log line ("12:00:00.000 | WARNING | Task run 'validate-1' - ..."), on either stream
    assert " | " not in done.stdout + done.stderr and "Task run" not in done.stdout + done.stderr
    assert done.stderr == ""
    # paths whole on one line each, though the terminal is 60 columns wide
    assert f"results:            {out_dir / 'results.parquet'}" in lines
    assert f"validation report:  {out_dir / 'validation.html'}" in lines
    assert "8 rows need attention (8 rejected):" in lines  # nothing sent, nothing failed: a dry run
    assert (
        "  row 18: sage invoice 41 (approve): INVALID_ROW: vendor must be one of alfred, accounteer, appzen, modulus (found 'sage')"
        in lines
    )


def test_run_with_v_shows_prefects_lines_too(tmp_path):
    done = command(["-v", "run", str(SAMPLE_FILE), "--dry-run", "--out", str(tmp_path / "out")], clean_env(tmp_path))
    assert done.returncode == EXIT_ROWS_NOT_DONE
    assert "| WARNING | Task run 'validate-" in done.stdout + done.stderr
    assert "8 rows need attention (8 rejected):" in done.stdout


def test_secrets_list_without_a_server_reads_no_blocks_and_leaves_nothing_running(tmp_path):
    done = command(["secrets", "list"], clean_env(tmp_path, ALFRED_API_KEY="set-here"))
    assert done.returncode == EXIT_OK, done.stderr
    assert "no PREFECT_API_URL set: Secret blocks not read" in done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("ALFRED_API_KEY"))
    assert row.split() == ["ALFRED_API_KEY", "set", "?"]


def test_secrets_push_refuses_without_a_server(tmp_path):
    done = command(["secrets", "push"], clean_env(tmp_path, ALFRED_API_KEY="set-here"))
    assert done.returncode == EXIT_UNUSABLE
    assert "no PREFECT_API_URL is set: nothing saved" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("action", ["list", "push"])
def test_secrets_with_an_unreachable_server_say_so(tmp_path, action):
    from flows.orchestration.temporary_server import free_port

    url = f"http://127.0.0.1:{free_port()}/api"  # nobody listens there
    done = command(["secrets", action], clean_env(tmp_path, PREFECT_API_URL=url, ALFRED_API_KEY="set-here"))
    assert done.returncode == EXIT_UNUSABLE
    assert f"cannot reach the Prefect API at {url}" in done.stderr and "Traceback" not in done.stderr
