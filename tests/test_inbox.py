"""The inbox: readiness, claiming (also between processes), moving on, secrets, the flow end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from flows.cli.main import SAMPLE_FILE, SAMPLE_SANDBOX_SEED
from flows.orchestration import inbox as ib
from flows.orchestration.secrets import (
    block_name,
    credential_saver,
    push_secrets,
    read_secret_blocks,
    setting_names,
    settings_environ,
)
from flows.state import inbox_folder
from tests.helpers import artifacts_of

REPO_ROOT = Path(__file__).resolve().parents[1]
VENDOR_PREFIXES = ("ALFRED_", "ACCOUNTEER_", "APPZEN_", "MODULUS_")


def old(path: Path, seconds: float = 3600) -> Path:
    """Backdate a file's mtime: it has been sitting there, untouched, for a while."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def drop(
    folder: Path, name: str, content: bytes | str = b"invoice_id,vendor,decision\n1,alfred,approve\n", age: float = 3600
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return old(path, age) if age else path


# -- which files are taken ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, temporary",
    [
        ("decisions.csv", False),
        ("Decisions 2026-11.PARQUET", False),
        ("~$decisions.xlsx", True),
        (".decisions.csv.swp", True),
        (".hidden", True),
        ("decisions.csv.part", True),
        ("decisions.CSV.TMP", True),
        ("decisions.csv.crdownload", True),
        ("decisions.csv~", True),
    ],
)
def test_temporary_names_are_never_taken(name, temporary):
    assert inbox_folder.is_temporary(name) is temporary


def test_snapshot_lists_finished_looking_regular_files_only(tmp_path):
    box = tmp_path / "inbox"
    drop(box, "a.csv")
    drop(box, "b.csv.part")
    drop(box, "~$b.csv")
    drop(box, ".c.csv")
    (box / "sub").mkdir()
    (box / "link.csv").symlink_to(box / "a.csv")
    assert set(inbox_folder.snapshot(box)) == {"a.csv"}
    assert inbox_folder.snapshot(tmp_path / "missing") == {}


class FakeTime:
    def __init__(self):
        self.now = time.time()
        self.slept: list[float] = []
        self.during_sleep = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.during_sleep:
            self.during_sleep()
        self.now += seconds


def test_half_written_files_are_left_for_later(tmp_path):
    box = tmp_path / "inbox"
    done = drop(box, "done.csv")
    growing = drop(box, "growing.csv")  # old mtime (a copy that keeps the source's mtime) but growing
    young = drop(box, "young.csv", age=0)  # written a moment ago
    fake = FakeTime()

    def writer_keeps_writing():
        with open(growing, "ab") as handle:
            handle.write(b"2,alfred,approve\n")
        old(growing)  # mtime kept old: only the size gives it away
        young.write_bytes(young.read_bytes() + b"2,alfred,approve\n")

    fake.during_sleep = writer_keeps_writing
    ready, settling = inbox_folder.ready_files(box, settle_seconds=5, clock=fake.clock, sleep=fake.sleep)
    assert ready == ["done.csv"]
    assert settling == ["growing.csv", "young.csv"]
    assert 4.0 <= fake.slept[0] <= 5.0  # waited for the young file to come of age, not longer
    assert done.exists()


def test_a_young_file_is_taken_once_it_has_settled(tmp_path):
    box = tmp_path / "inbox"
    drop(box, "young.csv", age=2)
    fake = FakeTime()
    ready, settling = inbox_folder.ready_files(box, settle_seconds=5, clock=fake.clock, sleep=fake.sleep)
    assert (ready, settling) == (["young.csv"], [])
    assert fake.slept and 2.9 <= fake.slept[0] <= 3.1  # the rest of its 5 seconds
    fake = FakeTime()
    assert inbox_folder.ready_files(box, settle_seconds=0, clock=fake.clock, sleep=fake.sleep) == (["young.csv"], [])
    assert fake.slept == []  # settle 0: no second look needed


def test_a_file_dropped_while_looking_waits_for_the_next_look(tmp_path):
    box = tmp_path / "inbox"
    drop(box, "a.csv")
    fake = FakeTime()
    fake.during_sleep = lambda: drop(box, "late.csv", age=0)
    ready, settling = inbox_folder.ready_files(box, settle_seconds=1, clock=fake.clock, sleep=fake.sleep)
    assert ready == ["a.csv"] and settling == ["late.csv"]


# -- claiming -----------------------------------------------------------------------------------


def test_claim_moves_the_file_into_the_run_folder_and_the_loser_gets_nothing(tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    layout.create()
    drop(layout.inbox, "a.csv")
    mine = inbox_folder.claim(layout, "a.csv", "run-1")
    assert mine == layout.claimed / "run-1" / "a.csv" and mine.exists()
    assert inbox_folder.claim(layout, "a.csv", "run-2") is None
    assert not (layout.inbox / "a.csv").exists()


CLAIMER = """
import json, sys, time
from pathlib import Path
from flows.state.inbox_folder import InboxLayout, claim_ready
layout = InboxLayout.of(sys.argv[1])
go = Path(sys.argv[3])
Path(sys.argv[3] + "-" + sys.argv[2]).touch()  # imported, waiting
while not go.exists():
    time.sleep(0.005)
names = sorted(p.name for p in layout.inbox.iterdir() if p.is_file())
print(json.dumps([p.name for p in claim_ready(layout, names, sys.argv[2])]))
"""


def test_concurrent_claimers_in_separate_processes_never_share_a_file(tmp_path):
    import json

    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    layout.create()
    names = [f"f{i:03d}.csv" for i in range(300)]
    for name in names:
        drop(layout.inbox, name)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(layout.inbox), f"run-{i}", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for i in range(3)
    ]
    deadline = time.time() + 90
    while time.time() < deadline and not all(Path(f"{go}-run-{i}").exists() for i in range(3)):
        assert all(c.poll() is None for c in claimers), "a claimer died before the start"
        time.sleep(0.05)
    go.touch()  # all three start at once
    got = []
    for claimer in claimers:
        out, err = claimer.communicate(timeout=120)
        assert claimer.returncode == 0, err[-2000:]
        got.append(json.loads(out.strip().splitlines()[-1]))
    everything = [name for part in got for name in part]
    assert sorted(everything) == names  # every file claimed, none twice
    for i, part in enumerate(got):
        assert all((layout.claimed / f"run-{i}" / name).exists() for name in part)


def test_max_files_limits_one_run(tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    layout.create()
    for name in ("a.csv", "b.csv", "c.csv"):
        drop(layout.inbox, name)
    first = inbox_folder.claim_ready(layout, ["a.csv", "b.csv", "c.csv"], "run-1", max_files=1)
    second = inbox_folder.claim_ready(
        layout, ["a.csv", "b.csv", "c.csv"], "run-2", max_files=1
    )  # a.csv is gone: takes b
    assert [p.name for p in first] == ["a.csv"] and [p.name for p in second] == ["b.csv"]
    assert inbox_folder.claim_ready(layout, ["zzz.csv"], "run-3") == [] and not (layout.claimed / "run-3").exists()


# -- moving on ----------------------------------------------------------------------------------


def test_finish_moves_to_processed_or_rejected_with_the_reason_beside_it(tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "data" / "inbox")
    layout.create()
    assert layout.processed == tmp_path / "data" / "processed"
    for name in ("a.csv", "b.txt", "c.csv"):
        drop(layout.inbox, name)
    a = inbox_folder.finish(layout, inbox_folder.claim(layout, "a.csv", "r1"), when="20261130T180000Z")
    assert a == layout.processed / "a-20261130T180000Z.csv" and a.exists()
    b = inbox_folder.finish(
        layout,
        inbox_folder.claim(layout, "b.txt", "r1"),
        rejected_because="unusable file: not CSV",
        when="20261130T180000Z",
    )
    assert b == layout.rejected / "b-20261130T180000Z.txt" and b.exists()
    reason = (layout.rejected / "b-20261130T180000Z.txt.reason.txt").read_text()
    assert "b.txt was not processed" in reason and "unusable file: not CSV" in reason
    assert not (layout.claimed / "r1").exists()  # the claim folder goes once empty
    # the same name again (next month's decisions.csv, same second): never overwritten
    drop(layout.inbox, "a.csv", content="other")
    again = inbox_folder.finish(layout, inbox_folder.claim(layout, "a.csv", "r2"), when="20261130T180000Z")
    assert again == layout.processed / "a-20261130T180000Z-2.csv" and a.exists()


def test_claims_of_ended_runs_go_back_to_the_inbox(tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    layout.create()
    for name in ("a.csv", "b.csv", "c.csv"):
        drop(layout.inbox, name)
    inbox_folder.claim(layout, "a.csv", "dead-run")
    inbox_folder.claim(layout, "b.csv", "live-run")
    inbox_folder.claim(layout, "c.csv", "dead-run")
    drop(layout.inbox, "c.csv", content="a newer c.csv")  # its name is taken again meanwhile
    released = inbox_folder.release_orphans(layout, lambda token: token == "dead-run")
    assert sorted(p.name for p in released) == ["a.csv", "c-requeued-dead-run.csv"]
    assert (layout.inbox / "c.csv").read_text() == "a newer c.csv"
    assert (layout.claimed / "live-run" / "b.csv").exists() and not (layout.claimed / "dead-run").exists()
    assert inbox_folder.release_orphans(layout, lambda token: 1 / 0) == []  # cannot tell: left alone


# -- Data Docs ----------------------------------------------------------------------------------


def test_validation_report_is_standalone_html(tmp_path):
    from flows.pipeline.datadocs import write_data_docs
    from flows.pipeline.reader import read_decisions
    from flows.pipeline.validation import validate_decisions

    report = validate_decisions(read_decisions(SAMPLE_FILE))
    started = time.monotonic()
    path = write_data_docs(report, tmp_path / "out", source="decisions.csv")
    took = time.monotonic() - started
    html = path.read_text(encoding="utf-8")
    assert path == tmp_path / "out" / "validation.html"
    assert "Expectation Validation Result" in html and "decisions.csv" in html
    assert "unexpected" in html.lower()  # the failing rules are listed with their values
    assert "http://" not in html and "https://" not in html  # opens offline, fetches nothing
    assert "<script" not in html.lower() and '="../' not in html
    assert took < 2.0, took
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["validation.html"]  # no temp file left


# -- Secret blocks ------------------------------------------------------------------------------


def test_setting_and_block_names():
    names = setting_names()
    assert names[:3] == ["ALFRED_BASE_URL", "ALFRED_API_KEY", "ALFRED_API_SECRET"]
    assert "MODULUS_SECRET" in names and "APPZEN_CUSTOMER_ID" in names and len(names) == 16
    assert block_name("ALFRED_API_KEY") == "alfred-api-key"
    assert setting_names(["accounteer"]) == [
        "ACCOUNTEER_BASE_URL",
        "ACCOUNTEER_TOKEN_URL",
        "ACCOUNTEER_ACCESS_TOKEN",
        "ACCOUNTEER_CLIENT_ID",
        "ACCOUNTEER_CLIENT_SECRET",
        "ACCOUNTEER_REFRESH_TOKEN",
    ]


class ListLog:
    """A logger stand-in that keeps (level, text) of every record."""

    def __init__(self):
        self.records: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda message, *args: self.records.append((level, message % args))


def test_a_replaced_credential_goes_back_where_it_came_from():
    saved: list[tuple[str, str]] = []
    log = ListLog()
    from_block = credential_saver(
        "accounteer", {"ACCOUNTEER_REFRESH_TOKEN"}, log=log, save_block=lambda n, v: saved.append((n, v))
    )
    from_block("REFRESH_TOKEN", "rotated-1-abcdef")
    from_block("REFRESH_TOKEN", "rotated-2-abcdef")
    assert saved == [("accounteer-refresh-token", "rotated-1-abcdef"), ("accounteer-refresh-token", "rotated-2-abcdef")]
    assert [level for level, _ in log.records] == ["info", "info"]

    log = ListLog()
    from_env = credential_saver("accounteer", set(), log=log, save_block=lambda n, v: pytest.fail("not a block"))
    for value in ("rotated-1-abcdef", "rotated-2-abcdef", "rotated-3-abcdef"):
        from_env("REFRESH_TOKEN", value)
    ((level, text),) = log.records  # said once, never the value
    assert level == "warning" and "ACCOUNTEER_REFRESH_TOKEN" in text and "must be updated" in text
    assert "rotated-" not in text

    log = ListLog()

    def broken(name, value):
        raise ConnectionError("Prefect API unreachable")

    credential_saver("accounteer", {"ACCOUNTEER_REFRESH_TOKEN"}, log=log, save_block=broken)(
        "REFRESH_TOKEN", "rotated-9-abcdef"
    )
    ((level, text),) = log.records
    assert level == "error" and "accounteer-refresh-token" in text and "rotated-" not in text


def test_environment_wins_and_blocks_fill_the_gaps_without_an_api():
    asked = []

    def blocks(names):
        asked.append(list(names))
        return {"ALFRED_API_SECRET": "from-block", "ALFRED_API_KEY": "never-used"}

    env = settings_environ(
        ["alfred"], {"ALFRED_API_KEY": "from-env", "ALFRED_BASE_URL": "https://a"}, read_blocks=blocks
    )
    assert env["ALFRED_API_KEY"] == "from-env" and env["ALFRED_API_SECRET"] == "from-block"
    assert asked == [["ALFRED_API_SECRET"]]  # only what the environment lacks is looked up
    full = {"ALFRED_API_KEY": "k", "ALFRED_BASE_URL": "https://a", "ALFRED_API_SECRET": "s"}
    assert settings_environ(["alfred"], full, read_blocks=lambda names: pytest.fail("no API call")) == full


def test_an_unreachable_api_leaves_the_environment_alone(caplog):
    def broken(names):
        raise ConnectionError("connection refused")

    with caplog.at_level("WARNING"):
        env = settings_environ(["alfred"], {"X": "1"}, read_blocks=broken)
    assert env == {"X": "1"}
    assert "could not read Secret blocks" in caplog.text


@pytest.fixture
def secret_blocks(prefect_server):
    """Deletes the vendor Secret blocks a test saved on the session's Prefect server."""
    yield
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in setting_names():
            try:
                document = client.read_block_document_by_name(block_name(name), "secret")
            except ObjectNotFound:
                continue
            client.delete_block_document(document.id)


def test_push_and_read_secret_blocks(secret_blocks, capsys, monkeypatch):
    from prefect.blocks.system import Secret

    from flows.cli.main import main

    env = {"ALFRED_BASE_URL": "https://alfred.example/api", "ALFRED_API_KEY": "key-1", "ALFRED_API_SECRET": " "}
    saved, skipped = push_secrets(["alfred"], env)
    assert saved == ["alfred-base-url", "alfred-api-key"] and skipped == ["ALFRED_API_SECRET"]
    assert Secret.load("alfred-api-key").get() == "key-1"
    assert read_secret_blocks(setting_names()) == {
        "ALFRED_BASE_URL": "https://alfred.example/api",
        "ALFRED_API_KEY": "key-1",
    }
    # the flow's mapping: environment first, blocks for the rest
    filled = settings_environ(["alfred", "modulus"], {"ALFRED_API_KEY": "key-from-env"})
    assert filled["ALFRED_API_KEY"] == "key-from-env" and filled["ALFRED_BASE_URL"] == "https://alfred.example/api"
    assert "MODULUS_APP" not in filled
    # the CLI: push from the process environment (values overwritten), then list
    for name in list(os.environ):
        if name.startswith(VENDOR_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ALFRED_API_KEY", "key-2")
    assert main(["secrets", "push", "--vendors", "alfred"]) == 0
    out = capsys.readouterr().out
    assert "saved Secret block alfred-api-key" in out and "ALFRED_API_SECRET" in out and "key-2" not in out
    assert Secret.load("alfred-api-key").get() == "key-2"
    assert main(["secrets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "alfred-api-key" in listing and "key-2" not in listing
    assert main(["secrets", "push", "--vendors", "nope"]) == 2


# -- the flow, end to end -------------------------------------------------------------------------


def flow_runs_under(parent_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        # A subflow's parent is a task run of the parent flow run.
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[parent_id]))
        )
        ids = [t.id for t in task_runs]
        if not ids:
            return []
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_task_run_id={"any_": ids}))


def read_flow_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def good_rows(sandbox, n: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(n):
        sandbox.seed("alfred", f"G{i:04d}")
        rows.append({"invoice_id": f"G{i:04d}", "vendor": "alfred", "decision": "approve"})
    return pd.DataFrame(rows)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_process_inbox_end_to_end(sandbox, tmp_path):
    sandbox.seed_file(SAMPLE_SANDBOX_SEED)
    layout = inbox_folder.InboxLayout.of(tmp_path / "data" / "inbox")
    drop(layout.inbox, "decisions.csv", SAMPLE_FILE.read_bytes())  # some rows fail: still processed
    good_rows(sandbox).to_csv(layout.inbox / "good.csv", index=False)
    old(layout.inbox / "good.csv")
    drop(layout.inbox, "garbage.csv", b"\x00\x01\x02\xff\xfe" * 100)  # unusable: rejected
    drop(layout.inbox, "notes.txt", b"not a decision file")  # unusable: rejected
    drop(layout.inbox, "half.csv.part")  # still being copied: untouched
    drop(layout.inbox, "~$good.csv")  # an office lock file: untouched

    state = ib.process_inbox(str(layout.inbox), settle_seconds=0.2, return_state=True)

    assert state.name == "RowsNotDone" and state.is_failed()
    assert "decisions.csv: processed (10 succeeded, 3 failed, 8 rejected, 1 skipped)" in state.message
    assert "good.csv: processed (3 succeeded)" in state.message
    assert "garbage.csv: rejected" in state.message and "notes.txt: rejected" in state.message
    # the inbox keeps only what was not ready; nothing is left claimed
    assert sorted(p.name for p in layout.inbox.iterdir()) == [".claimed", "half.csv.part", "~$good.csv"]
    assert list(layout.claimed.iterdir()) == []
    processed = sorted(p.name for p in layout.processed.iterdir())
    assert [n.split("-")[0] for n in processed] == ["decisions", "decisions", "good"]
    # the file with rows a person must fix has a reason file naming them; the good one none
    (attention,) = layout.processed.glob("decisions-*.csv.reason.txt")
    assert (
        "some of its rows need attention" in attention.read_text() and "needs_attention.xlsx" in attention.read_text()
    )
    rejected = sorted(p.name for p in layout.rejected.iterdir())
    assert len(rejected) == 4 and sum(n.endswith(".reason.txt") for n in rejected) == 2
    reason = next(layout.rejected.glob("notes-*.txt.reason.txt")).read_text()
    assert "unusable file" in reason and "notes.txt" in reason and ".claimed" not in reason.splitlines()[1]

    # one results folder per sent file: results + the GX Data Docs page + the audit chain's head
    folders = sorted(p.name for p in layout.results.iterdir())
    assert [f.split("-")[0] for f in folders] == ["decisions", "good"]
    decisions_out = layout.results / folders[0]
    assert {p.name for p in decisions_out.iterdir()} == {
        "results.parquet",
        "results.csv",
        "results.xlsx",
        "validation.html",
        "needs_attention.xlsx",
        "needs_attention.csv",
        "audit.json",
    }
    good_out = layout.results / folders[1]
    assert not list(good_out.glob("needs_attention.*"))  # nothing to attend to: no file
    results = pd.read_parquet(decisions_out / "results.parquet")
    assert results["row_number"].tolist() == list(range(1, 23))

    # what the API (and so the UI) shows: parent and subflow states and names, artifacts
    parent = read_flow_run(state.state_details.flow_run_id)
    assert parent.state.name == "RowsNotDone" and "good.csv: processed" in parent.state.message
    assert parent.name == f"inbox {layout.inbox}: 4 files"  # which inbox, how many files
    named = re.compile(r"invoice-sync (\S+) \d{4}-\d\d-\d\d \d\d:\d\d UTC")  # the file and the time
    children = {named.fullmatch(run.name).group(1): run for run in flow_runs_under(parent.id)}
    assert {name: run.state.name for name, run in children.items()} == {
        "decisions.csv": "RowsNotDone",
        "good.csv": "Completed",
        "garbage.csv": "UnusableFile",
        "notes.txt": "UnusableFile",
    }
    assert children["decisions.csv"].state.message == "10 succeeded, 3 failed, 8 rejected, 1 skipped"
    assert children["notes.txt"].state.message.startswith(f"{layout.inbox / 'notes.txt'}: unsupported file type")
    assert results["run_id"].iloc[0] == str(children["decisions.csv"].id)
    artifacts = artifacts_of(children["decisions.csv"].id)
    (markdown,) = [a.data for a in artifacts if a.type == "markdown"]
    assert "validation report" in markdown and str(decisions_out / "validation.html") in markdown
    # the file as the analyst dropped it, not the claim folder it was read from
    assert markdown.startswith("# decisions.csv\n") and f"file: `{layout.inbox / 'decisions.csv'}`" in markdown
    assert ".claimed" not in markdown and "**11 rows need attention**" in markdown
    (attention,) = [a for a in artifacts if a.key == "invoice-sync-needs-attention"]
    failed = {r["invoice_id"]: r["error_code"] for r in json.loads(attention.data) if r["outcome"] == "failed"}
    assert failed == {"000125": "VENDOR_REJECTED", "000999": "NOT_FOUND", "39": "VENDOR_REJECTED"}
    inbox_table = [a for a in artifacts_of(parent.id) if a.key == "invoice-sync-inbox"]
    assert inbox_table and "garbage.csv" in str(inbox_table[0].data)

    # a second run finds nothing new: nothing is processed twice
    again = ib.process_inbox(str(layout.inbox), settle_seconds=0, return_state=True)
    assert again.is_completed() and again.message.startswith("no file ready")
    assert sorted(p.name for p in layout.processed.iterdir()) == processed


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_process_inbox_all_good_is_completed_with_settings_from_secret_blocks(
    sandbox, tmp_path, monkeypatch, secret_blocks
):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    good_rows(sandbox, 4).to_csv(drop(layout.inbox, "good.csv", b""), index=False)
    old(layout.inbox / "good.csv")
    # credentials only in Secret blocks: the environment has none of the vendor settings
    push_secrets(["alfred"], sandbox.env())
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)

    state = ib.process_inbox(str(layout.inbox), settle_seconds=0, vendors=["alfred"], return_state=True)

    assert state.is_completed() and state.name == "Completed", state.message
    assert state.message == "good.csv: processed (4 succeeded)"
    results = pd.read_parquet(next(layout.results.iterdir()) / "results.parquet")
    assert (results["outcome"] == "succeeded").all() and (results["attempts"] == 1).all()
    assert len(sandbox.request_log("alfred")) == 4


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_rotated_refresh_token_is_saved_back_to_its_secret_block(sandbox, tmp_path, monkeypatch, secret_blocks):
    """Accounteer rotates the refresh token at every grant and the old one stops working: the
    second file of the run only goes through if the first file's rotation reached the block."""
    from prefect.blocks.system import Secret

    from tests.helpers import seed_approvals

    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    for name, indices in (("a.csv", range(3)), ("b.csv", range(3, 6))):
        pd.DataFrame(seed_approvals(sandbox, "accounteer", indices)).to_csv(drop(layout.inbox, name, b""), index=False)
        old(layout.inbox / name)
    push_secrets(["accounteer"], sandbox.env(refresh_grant=True))
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    initial = Secret.load("accounteer-refresh-token").get()

    state = ib.process_inbox(str(layout.inbox), settle_seconds=0, vendors=["accounteer"], return_state=True)

    assert state.is_completed(), state.message
    assert state.message == "a.csv: processed (3 succeeded); b.csv: processed (3 succeeded)"
    saved = Secret.load("accounteer-refresh-token").get()
    assert saved != initial and sandbox.refresh_token_valid(saved) and not sandbox.refresh_token_valid(initial)
    grants = [p for _, m, p in sandbox.request_log("accounteer") if p.endswith("/oauth/token")]
    assert len(grants) == 2  # one access token per file's run, each with the refresh token saved before it


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_process_inbox_refuses_bad_parameters_and_touches_nothing(tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    drop(layout.inbox, "a.csv")
    state = ib.process_inbox(str(layout.inbox), vendors=["nope"], return_state=True)
    assert state.name == "BadParameters" and "nope" in state.message
    assert (layout.inbox / "a.csv").exists()


@pytest.mark.usefixtures("prefect_server")
def test_a_claim_of_a_finished_run_is_released(tmp_path):
    from prefect import flow

    @flow
    def finished_quickly():
        return 1

    run_state = finished_quickly(return_state=True)
    token = str(run_state.state_details.flow_run_id)
    assert ib._run_is_finished(token) is True
    assert ib._run_is_finished(str(uuid.uuid4())) is True  # unknown to the API: nobody holds it
    assert ib._run_is_finished("local-abc") is False


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_run_that_cannot_finish_rejects_the_file_with_the_reason(tmp_path, monkeypatch):
    from prefect import flow

    @flow(name="invoice-sync")
    def broken_sync(path, **kwargs):
        raise RuntimeError("the ledger database is unreachable")

    monkeypatch.setattr(ib, "sync_decisions", broken_sync)
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    drop(layout.inbox, "a.csv")
    state = ib.process_inbox(str(layout.inbox), settle_seconds=0, return_state=True)
    assert state.name == "FilesRejected" and "a.csv: rejected" in state.message
    (reason,) = layout.rejected.glob("*.reason.txt")
    text = reason.read_text()
    assert "the run did not finish" in text and "the ledger database is unreachable" in text and "drop the file" in text
    assert list(layout.results.iterdir()) == [] and list(layout.claimed.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_dry_run_sends_nothing_and_leaves_the_file_to_be_sent(sandbox, tmp_path):
    layout = inbox_folder.InboxLayout.of(tmp_path / "inbox")
    good_rows(sandbox, 2).to_csv(drop(layout.inbox, "good.csv", b""), index=False)
    old(layout.inbox / "good.csv")
    state = ib.process_inbox(str(layout.inbox), settle_seconds=0, dry_run=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.message == "good.csv: previewed (dry run, left in the inbox) (2 would send)"
    assert read_flow_run(state.state_details.flow_run_id).name == f"inbox {layout.inbox} (dry run): 1 file"
    assert (layout.inbox / "good.csv").exists() and list(layout.claimed.iterdir()) == []
    assert not layout.processed.exists() or list(layout.processed.iterdir()) == []
    results = pd.read_parquet(next(layout.results.iterdir()) / "results.parquet")
    assert (results["outcome"] == "would_send").all() and (results["error_message"] == "dry run: would be sent").all()
    assert sandbox.request_log("alfred") == []
