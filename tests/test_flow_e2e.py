"""End-to-end: the flow (and the CLI) against the sandbox, CSV and Parquet, with faults."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from connectors.registry import VENDORS as ALL_VENDORS
from flows.cli.main import EXIT_OK, EXIT_ROWS_NOT_DONE, EXIT_UNUSABLE, SAMPLE_FILE, SAMPLE_SANDBOX_SEED, main
from flows.orchestration.dispatch import CHUNKS_IN_FLIGHT_PER_VENDOR, lanes
from flows.state import audit
from flows.state.ledger import Ledger, ledger_url
from tests.helpers import artifacts_of, seed_approvals

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]

# row_number -> (outcome, error_code) for data/sample/decisions.csv
SAMPLE_EXPECTED = {
    1: ("succeeded", None),
    2: ("succeeded", None),
    3: ("failed", "VENDOR_REJECTED"),  # alfred pay-in invoice
    4: ("failed", "NOT_FOUND"),
    5: ("succeeded", None),  # " Alfred ", " Approve "
    6: ("succeeded", None),
    7: ("succeeded", None),
    8: ("succeeded", "ALREADY_IN_STATE"),  # already approved at Accounteer: same state, success
    9: ("rejected", "INVALID_ROW"),  # Accounteer has no cancel
    10: ("succeeded", None),
    11: ("succeeded", None),
    12: ("rejected", "INVALID_ROW"),  # appzen without invoice_number
    13: ("succeeded", None),
    14: ("succeeded", None),
    15: ("rejected", "INVALID_ROW"),  # modulus without invoice_number
    16: ("rejected", "INVALID_ROW"),  # void_date in the future
    17: ("failed", "VENDOR_REJECTED"),  # modulus refuses VOID -> SENT
    18: ("rejected", "INVALID_ROW"),  # unknown vendor
    19: ("rejected", "INVALID_ROW"),  # unknown decision
    20: ("skipped", "DUPLICATE_ROW"),
    21: ("rejected", "CONFLICTING_ROWS"),
    22: ("rejected", "CONFLICTING_ROWS"),
}
SAMPLE_FINAL_STATES = {
    ("alfred", "000123"): "approved",
    ("alfred", "000124"): "cancelled",
    ("alfred", "000125"): "pending",
    ("alfred", "000126"): "approved",
    ("alfred", "000128"): "pending",
    ("accounteer", "ba775d2a3f9612ab288489f20ceab582f7f62fd5"): "approved",
    ("accounteer", "2417f43fb9ec75daa3abad35f0ab9a42eebc1910"): "approved",
    ("accounteer", "aefb526889e1059a61ecce700a3363c388a93335"): "approved",
    ("accounteer", "b92f3b4c8013d092acf7d8b56a8eef19bbea6613"): "draft",
    ("appzen", "75823296-4af2-4475-aafd-461c60c284e7"): "Approved",
    ("appzen", "1c7d6a0e-3b1f-4c55-9a0e-2f4b8d7e6a11"): "Cancelled",
    ("appzen", "5e0b1d2c-8f3a-4e7b-b1c9-0d2e3f4a5b6c"): "pending",
    ("modulus", "35"): "STATUS_SENT",
    ("modulus", "36"): "STATUS_VOID",
    ("modulus", "37"): "STATUS_DRAFT",
    ("modulus", "38"): "STATUS_SENT",
    ("modulus", "39"): "STATUS_VOID",
}


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def results_of(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "results.parquet")


def check_sample_results(results: pd.DataFrame, sandbox) -> None:
    assert results["row_number"].tolist() == list(range(1, 23))  # exactly one result per input row
    got = {
        int(r.row_number): (r.outcome, None if pd.isna(r.error_code) else r.error_code) for r in results.itertuples()
    }
    assert got == SAMPLE_EXPECTED
    assert results["invoice_id"].iloc[0] == "000123"  # leading zeros kept
    assert results["cost_center"].iloc[0] == "CC-100"  # extra columns pass through
    assert results["run_id"].nunique() == 1
    for (vendor, invoice_id), state in SAMPLE_FINAL_STATES.items():
        assert sandbox.state(vendor, invoice_id) == state, (vendor, invoice_id)
        assert sandbox.changes(vendor, invoice_id) <= 1
    rejected = results[results["outcome"] == "rejected"]
    assert (rejected["attempts"] == 0).all() and rejected["error_message"].str.len().gt(0).all()
    # a plain success carries no vendor chatter ("update Invoice"); ALREADY_IN_STATE says why it is one
    succeeded = results[results["outcome"] == "succeeded"]
    assert (succeeded["error_message"].fillna("") == "").sum() == len(succeeded) - 1
    assert results.loc[results["row_number"] == 8, "error_message"].item().startswith("already in that state")
    assert results.loc[results["row_number"] == 8, "http_status"].item() == 422


def test_sample_csv(sandbox, tmp_path, capsys):
    sandbox.seed_file(SAMPLE_SANDBOX_SEED)
    code, out, err = run(["run", str(SAMPLE_FILE), "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == EXIT_ROWS_NOT_DONE
    results = results_of(tmp_path)
    check_sample_results(results, sandbox)
    # the CSV copy has the same rows, ids still text
    csv = pd.read_csv(tmp_path / "results.csv", dtype=str)
    assert csv["invoice_id"].tolist() == results["invoice_id"].tolist()
    assert "results:" in out and "Traceback" not in out + err
    # rows that were never going to be sent made no request at all
    assert not any(
        path.endswith("b92f3b4c8013d092acf7d8b56a8eef19bbea6613") for _, _, path in sandbox.request_log("accounteer")
    )


def test_sample_parquet(sandbox, tmp_path, capsys):
    sandbox.seed_file(SAMPLE_SANDBOX_SEED)
    source = pd.read_csv(SAMPLE_FILE, dtype=str, keep_default_na=False)
    parquet = tmp_path / "decisions.parquet"
    source.to_parquet(parquet, index=False)
    code, _, _ = run(["run", str(parquet), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == EXIT_ROWS_NOT_DONE
    check_sample_results(results_of(tmp_path / "out"), sandbox)


def write_decisions(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def seeded_rows(sandbox, n: int, vendors=ALL_VENDORS) -> list[dict]:
    """n approvals per vendor, seeded in the sandbox in their initial state."""
    return [row for vendor in vendors for row in seed_approvals(sandbox, vendor, range(n))]


def test_all_succeed_exit_zero(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 30)
    path = write_decisions(tmp_path / "ok.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--chunk-size", "7", "--no-progress"], capsys)
    assert code == EXIT_OK
    results = results_of(tmp_path / "out")
    assert len(results) == 120 and (results["outcome"] == "succeeded").all()
    assert (results["attempts"] == 1).all()
    for row in rows:
        assert sandbox.changes(row["vendor"], row["invoice_id"]) == 1
    progress = [a for a in artifacts_of(results["run_id"].iloc[0]) if a.type == "progress"]
    assert [a.data for a in progress] == [100.0]  # one progress artifact, complete at the end


def test_lanes_keep_two_chunks_in_flight_per_vendor_and_tick_while_waiting():
    from concurrent.futures import Future

    submitted: list[tuple[str, list[int]]] = []
    running: dict[str, list[Future]] = {"alfred": [], "modulus": []}

    def submit(vendor, positions):
        assert len(running[vendor]) < CHUNKS_IN_FLIGHT_PER_VENDOR  # never a third chunk of one vendor
        submitted.append((vendor, positions.tolist()))
        future: Future = Future()
        running[vendor].append(future)
        future.add_done_callback(lambda f, v=vendor: running[v].remove(f))
        return future

    to_send = {"alfred": np.arange(5), "modulus": np.arange(10, 12)}
    ticks = finished = 0
    for item in lanes(to_send, 2, submit, tick=0.01):
        if item is None:  # nothing finished within a tick: finish the oldest chunk of a vendor
            ticks += 1
            vendor = "alfred" if running["alfred"] else "modulus"
            running[vendor][0].set_result([])
        else:
            finished += 1
    assert sorted(submitted) == [("alfred", [0, 1]), ("alfred", [2, 3]), ("alfred", [4]), ("modulus", [10, 11])]
    assert finished == 4 and ticks >= 4


SLOW_TIMEOUT = 3.0  # the vendor timeout for the "slow" fault, which must make the first attempt time out


@pytest.mark.parametrize(
    "fault, kwargs, attempts",
    [
        ("429", {"retry_after": 0.2}, 2),
        ("429", {}, 2),
        ("500", {}, 2),
        ("503", {}, 2),
        ("drop_before", {}, 2),
        ("drop_after", {}, 2),  # committed, then the answer was lost: the retry finds it done
        ("slow", {"delay": SLOW_TIMEOUT + 3.0}, 2),  # well past the timeout; the vendor commits late
    ],
)
@pytest.mark.parametrize("vendor", ALL_VENDORS)
def test_transient_faults_are_retried_once_and_nothing_changes_twice(
    sandbox, tmp_path, capsys, monkeypatch, vendor, fault, kwargs, attempts
):
    if fault == "slow":
        # Short enough to keep the test quick, long enough that the retry itself never times out.
        monkeypatch.setenv(f"{vendor.upper()}_TIMEOUT", str(SLOW_TIMEOUT))
    rows = seeded_rows(sandbox, 3, vendors=(vendor,))
    target = rows[1]["invoice_id"]
    sandbox.inject(vendor, fault, times=1, invoice_id=target, **kwargs)
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out").set_index("invoice_id")
    assert code == EXIT_OK, results[["outcome", "error_code", "error_message"]]
    assert (results["outcome"] == "succeeded").all()
    assert results.loc[target, "attempts"] == attempts
    for row in rows:
        assert sandbox.changes(vendor, row["invoice_id"]) == 1


@pytest.mark.parametrize("vendor", ALL_VENDORS)
def test_persistent_5xx_exhausts_retries(sandbox, tmp_path, capsys, monkeypatch, vendor):
    monkeypatch.setenv(f"{vendor.upper()}_MAX_ATTEMPTS", "3")
    rows = seeded_rows(sandbox, 2, vendors=(vendor,))
    sandbox.inject(vendor, "503", times=10, invoice_id=rows[0]["invoice_id"])
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out")
    assert code == EXIT_ROWS_NOT_DONE
    first = results.iloc[0]
    assert (first.outcome, first.error_code, first.attempts, first.http_status) == (
        "failed",
        "RETRIES_EXHAUSTED",
        3,
        503,
    )
    assert results.iloc[1].outcome == "succeeded"
    assert sandbox.changes(vendor, rows[0]["invoice_id"]) == 0


# AppZen's success has no body that could say otherwise; the other three can answer 2xx and mean no.
@pytest.mark.parametrize("vendor", ["alfred", "accounteer", "modulus"])
def test_false_success_is_a_failure(sandbox, tmp_path, capsys, vendor):
    rows = seeded_rows(sandbox, 1, vendors=(vendor,))
    sandbox.inject(vendor, "false_success", times=1)
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    result = results_of(tmp_path / "out").iloc[0]
    assert code == EXIT_ROWS_NOT_DONE
    assert (result.outcome, result.error_code) == ("failed", "VENDOR_REJECTED")
    assert sandbox.changes(vendor, rows[0]["invoice_id"]) == 0


def test_every_vendor_pointed_at_a_sign_in_portal_succeeds_nowhere(sandbox, tmp_path, capsys, monkeypatch):
    """Each base URL mistyped into a web portal that answers 200 with an HTML sign-in page."""
    rows = seeded_rows(sandbox, 5)
    for name, value in sandbox.env(portal=True).items():
        monkeypatch.setenv(name, value)
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out")
    assert code == EXIT_ROWS_NOT_DONE
    assert len(results) == 20 and set(results["vendor"]) == set(ALL_VENDORS)
    assert (results["outcome"] == "failed").all() and (results["error_code"] == "BAD_RESPONSE").all()
    assert sandbox.portal_requests()  # the portal answered, not the vendors' APIs
    assert not any(sandbox.request_log(vendor) for vendor in ALL_VENDORS)
    modulus = results[results["vendor"] == "modulus"]
    # Its token request read a sign-in page: the vendor stopped before any invoice was sent.
    assert [p for _, _, p in sandbox.portal_requests() if "/modulus/" in p] == ["/portal/modulus/api/cmn/Authenticate"]
    assert modulus["error_message"].str.contains("without modulus' JSON").all()


def test_modulus_500_with_an_invoicing_code_is_a_refusal_not_an_outage(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 2, vendors=("modulus",))
    refused, outage = rows[0]["invoice_id"], rows[1]["invoice_id"]
    sandbox.inject("modulus", "refusal_500", invoice_id=refused)  # 500 {"object": {"error_code": 5505}}
    sandbox.inject("modulus", "500", invoice_id=outage)  # 500 without an invoicing code
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out").set_index("invoice_id")
    assert code == EXIT_ROWS_NOT_DONE
    row = results.loc[refused]
    assert (row.outcome, row.error_code, row.vendor_error_code, row.attempts) == (
        "failed",
        "VENDOR_REJECTED",
        "5505",
        1,
    )
    assert (results.loc[outage, "outcome"], results.loc[outage, "attempts"]) == ("succeeded", 2)  # retried
    assert sandbox.changes("modulus", refused) == 0


def use_refresh_grant(sandbox, monkeypatch) -> None:
    """Accounteer through the OAuth refresh grant instead of its long-lived access token."""
    monkeypatch.delenv("ACCOUNTEER_ACCESS_TOKEN")
    for name, value in sandbox.env(refresh_grant=True).items():
        monkeypatch.setenv(name, value)


def grants(sandbox) -> int:
    return len([p for _, _, p in sandbox.request_log("accounteer") if p.endswith("/oauth/token")])


def test_an_accounteer_token_refused_mid_run_is_renewed_by_the_refresh_grant(sandbox, tmp_path, capsys, monkeypatch):
    use_refresh_grant(sandbox, monkeypatch)
    rows = seeded_rows(sandbox, 8, vendors=("accounteer",))
    sandbox.inject("accounteer", "expire_token", invoice_id=rows[4]["invoice_id"])  # its access token expires now
    code, _, _ = run(
        ["run", str(write_decisions(tmp_path / "f.csv", rows)), "--out", str(tmp_path / "out"), "--no-progress"], capsys
    )
    results = results_of(tmp_path / "out").set_index("invoice_id")
    assert code == EXIT_OK and (results["outcome"] == "succeeded").all()
    assert results.loc[rows[4]["invoice_id"], "attempts"] == 2  # refused once (401), renewed, sent again
    assert grants(sandbox) == 2  # one at the start, one after the refusal
    assert all(sandbox.changes("accounteer", r["invoice_id"]) == 1 for r in rows)


def test_an_accounteer_token_is_renewed_when_it_expires(sandbox, tmp_path, capsys, monkeypatch):
    use_refresh_grant(sandbox, monkeypatch)
    monkeypatch.setattr(sandbox, "oauth_token_lifetime", 1.0)  # expires_in: 1 s
    monkeypatch.setenv("ACCOUNTEER_RATE_LIMIT", "10")  # 25 rows: 2.5 s, longer than two token lifetimes
    rows = seeded_rows(sandbox, 25, vendors=("accounteer",))
    code, _, _ = run(
        ["run", str(write_decisions(tmp_path / "f.csv", rows)), "--out", str(tmp_path / "out"), "--no-progress"], capsys
    )
    assert code == EXIT_OK and (results_of(tmp_path / "out")["outcome"] == "succeeded").all()
    assert grants(sandbox) >= 3  # renewed ahead of expires_in, again and again


def test_a_refused_refresh_token_stops_accounteer(sandbox, tmp_path, capsys, monkeypatch):
    use_refresh_grant(sandbox, monkeypatch)
    monkeypatch.setenv("ACCOUNTEER_REFRESH_TOKEN", "sandbox-accounteer-refresh-revoked-0000")
    rows = seeded_rows(sandbox, 10, vendors=("accounteer", "alfred"))
    code, _, _ = run(
        ["run", str(write_decisions(tmp_path / "f.csv", rows)), "--out", str(tmp_path / "out"), "--no-progress"], capsys
    )
    results = results_of(tmp_path / "out")
    accounteer = results[results["vendor"] == "accounteer"]
    assert code == EXIT_ROWS_NOT_DONE
    assert (accounteer["outcome"] == "failed").all() and (accounteer["error_code"] == "AUTH_FAILED").all()
    assert accounteer["error_message"].str.contains("invalid_grant").all()
    assert not [p for _, _, p in sandbox.request_log("accounteer") if "/invoices/" in p]  # no invoice was sent
    assert grants(sandbox) == 1  # refused once: the vendor stopped, no sender asked again
    assert (results[results["vendor"] == "alfred"]["outcome"] == "succeeded").all()  # the others go on


def test_expired_modulus_token_is_renewed(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 6, vendors=("modulus",))
    sandbox.inject("modulus", "expire_token", times=1, invoice_id=rows[3]["invoice_id"])
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == EXIT_OK
    auths = [p for _, _, p in sandbox.request_log("modulus") if p.endswith("/Authenticate")]
    assert len(auths) == 2


@pytest.mark.parametrize(
    "vendor, variable",
    [
        ("alfred", "ALFRED_API_SECRET"),
        ("accounteer", "ACCOUNTEER_ACCESS_TOKEN"),
        ("appzen", "APPZEN_CUSTOMER_KEY"),
        ("modulus", "MODULUS_SECRET"),
    ],
)
def test_wrong_credentials_stop_the_vendor_early(sandbox, tmp_path, capsys, monkeypatch, vendor, variable):
    rows = seeded_rows(sandbox, 40)
    monkeypatch.setenv(variable, "wrong-value-0000")
    monkeypatch.setenv(f"{vendor.upper()}_MAX_CONCURRENCY", "1")
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out")
    assert code == EXIT_ROWS_NOT_DONE and len(results) == 160
    mine = results[results["vendor"] == vendor]
    assert (mine["error_code"] == "AUTH_FAILED").all()
    assert len(sandbox.request_log(vendor)) == 1  # refused once, then nothing more was sent
    assert (results[results["vendor"] != vendor]["outcome"] == "succeeded").all()


def test_missing_settings_fail_rows_without_sending(sandbox, tmp_path, capsys, monkeypatch):
    rows = seeded_rows(sandbox, 3)
    monkeypatch.delenv("APPZEN_API_KEY")
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    results = results_of(tmp_path / "out")
    appzen = results[results["vendor"] == "appzen"]
    assert code == EXIT_ROWS_NOT_DONE
    assert (appzen["error_code"] == "CONFIG_MISSING").all()
    assert appzen["error_message"].str.contains("APPZEN_API_KEY is not set").all()
    assert sandbox.request_log("appzen") == []


def test_dry_run_sends_nothing(sandbox, tmp_path, capsys):
    sandbox.seed_file(SAMPLE_SANDBOX_SEED)
    code, out, _ = run(["run", str(SAMPLE_FILE), "--out", str(tmp_path), "--dry-run", "--no-progress"], capsys)
    results = results_of(tmp_path)
    assert code == EXIT_ROWS_NOT_DONE  # the sample has rejected rows
    assert all(sandbox.request_log(v) == [] for v in ALL_VENDORS)
    first = results.loc[results["row_number"] == 1].iloc[0]
    assert (first.outcome, first.error_message) == ("would_send", "dry run: would be sent")
    # its own outcome, apart from the duplicates: 13 would be sent, 1 skipped (row 20 repeats row 1)
    assert results["outcome"].value_counts().to_dict() == {"would_send": 13, "rejected": 8, "skipped": 1}
    header = next(line for line in out.splitlines() if "would send" in line)
    assert header.split("┃")[1:-1][-1].strip() == "would send" and "dry run" in out


def test_a_preview_asks_the_vendors_and_changes_nothing(sandbox, tmp_path, capsys, state_dir, monkeypatch):
    """`--dry-run --check-vendors` the day before month end: what would change, what is done, what is unknown."""
    use_refresh_grant(sandbox, monkeypatch)  # reads go through the same auth: Accounteer's token fetched too
    rows = seeded_rows(sandbox, 2, vendors=("alfred", "accounteer", "appzen"))  # pending/draft: would change
    done = seed_approvals(sandbox, "alfred", [7], status="approved") + seed_approvals(
        sandbox, "accounteer", [7], status="approved"
    )
    done += seed_approvals(sandbox, "appzen", [7], status="Approved")
    missing = [{"invoice_id": "A99999", "vendor": "alfred", "decision": "approve"}]  # alfred does not know it
    modulus = seeded_rows(sandbox, 1, vendors=("modulus",))  # modulus documents no read
    path = write_decisions(tmp_path / "f.csv", rows + done + missing + modulus)
    code, out, _ = run(
        ["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--check-vendors", "--no-progress"], capsys
    )
    results = results_of(tmp_path / "out").set_index("invoice_id")

    assert code == EXIT_OK and (results["outcome"] == "would_send").all() and (results["attempts"] == 0).all()
    assert results.loc[[r["invoice_id"] for r in rows], "would_change"].eq("yes").all()
    assert results.loc[[r["invoice_id"] for r in done], "would_change"].eq("no").all()
    assert results.loc["A99999", "would_change"] == "not_found" and results.loc["A99999", "http_status"] == 404
    assert results.loc[modulus[0]["invoice_id"], "would_change"] == "unknown"
    assert results.loc[rows[0]["invoice_id"], "vendor_state"] == "pending"
    assert results.loc[done[1]["invoice_id"], "vendor_state"] == "approved"
    assert results.loc["A99999", "error_message"].startswith("dry run: would be sent; HTTP 404")
    appzen = results[results["vendor"] == "appzen"]
    assert appzen["vendor_reference"].notna().all()  # the reads' x-correlation-id
    line = "would change 6, already done 3, not found 1, unknown 1"
    assert f"the vendors say: {line}" in out
    # Nothing was written anywhere: no change at any vendor, reads only, and the ledger holds nothing.
    seeded = rows + done + modulus
    assert all(sandbox.changes(r["vendor"], r["invoice_id"]) == 0 for r in seeded)
    for vendor in ALL_VENDORS:
        assert {m for _, m, p in sandbox.request_log(vendor) if not p.endswith("/oauth/token")} <= {"GET"}
    assert sandbox.request_log("modulus") == []
    ledger = Ledger(ledger_url({"INVOICE_SYNC_STATE_DIR": str(state_dir)}))
    try:
        assert ledger.lookup(ALL_VENDORS).empty
        with ledger.engine.connect() as conn:
            audited = pd.DataFrame(conn.execute(sa.select(audit.attempts_table)).mappings().all())
    finally:
        ledger.close()
    # But every request the vendors saw is in the audit trail, marked as a preview's read (or its token).
    for vendor in ALL_VENDORS:
        mine = audited[audited["vendor"] == vendor]
        log = sandbox.request_log(vendor)
        assert len(mine) == len(log)
        assert (mine["kind"] == "token").sum() == sum(p.endswith("/oauth/token") for _, _, p in log)
    reads = audited[audited["kind"] == "read"]
    read_ids = {r["invoice_id"] for r in rows + done + missing}  # modulus documents no read: none made
    assert set(reads["invoice_id"]) == read_ids and set(audited["kind"]) <= {"read", "token"}
    assert reads.set_index("invoice_id").loc["A99999", "http_status"] == 404
    assert main(["audit", "verify"]) == EXIT_OK and "entries: intact" in capsys.readouterr().out
    assert main(["history", rows[0]["invoice_id"], "--vendor", rows[0]["vendor"]]) == EXIT_OK
    assert "preview read 1" in capsys.readouterr().out
    artifacts = artifacts_of(results["run_id"].iloc[0])
    markdown = next(a for a in artifacts if a.key == "invoice-sync-run")
    assert f"the vendors say: {line}" in markdown.data
    table = next(a for a in artifacts if a.key == "invoice-sync-outcomes")
    assert "would change 2, already done 1, not found 1, unknown 0" in str(table.data)  # alfred's row


def test_check_vendors_is_only_a_preview(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 1, vendors=("alfred",))
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, err = run(["run", str(path), "--out", str(tmp_path / "out"), "--check-vendors"], capsys)
    assert code == EXIT_UNUSABLE and "--dry-run" in err
    assert sandbox.request_log("alfred") == [] and not (tmp_path / "out").exists()


def test_vendor_filter(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 2)
    rows.append({"invoice_id": "not-hex", "vendor": "accounteer", "decision": "cancel"})  # invalid, left out
    rows.append({"invoice_id": "A1", "vendor": "appzen", "decision": "approve"})  # invalid, left out
    rows.append({"invoice_id": "A00000", "vendor": "alfred", "decision": "approve"})  # a duplicate, left out
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(
        ["run", str(path), "--out", str(tmp_path / "out"), "--vendors", "modulus", "--no-progress"], capsys
    )
    results = results_of(tmp_path / "out")
    assert code == EXIT_OK  # every modulus row succeeded: the others' problems are their own runs'
    assert set(results[results["outcome"] == "succeeded"]["vendor"]) == {"modulus"}
    others = results[results["vendor"] != "modulus"]
    assert (others["outcome"] == "skipped").all() and (others["error_code"] == "VENDOR_NOT_INCLUDED").all()
    assert others["error_message"].eq("vendor not included in this run (only modulus)").all()
    assert all(sandbox.request_log(v) == [] for v in ("alfred", "appzen", "accounteer"))


def test_vendor_filter_still_rejects_rows_of_no_known_vendor(sandbox, tmp_path, capsys):
    rows = seeded_rows(sandbox, 1, vendors=("modulus",))
    rows.append({"invoice_id": "7", "vendor": "modulos", "decision": "approve", "invoice_number": "N-7"})  # a typo
    path = write_decisions(tmp_path / "f.csv", rows)
    code, _, _ = run(
        ["run", str(path), "--out", str(tmp_path / "out"), "--vendors", "modulus", "--no-progress"], capsys
    )
    typo = results_of(tmp_path / "out").iloc[1]
    assert code == EXIT_ROWS_NOT_DONE  # it may be meant for this run: a person must look
    assert (typo.outcome, typo.error_code) == ("rejected", "INVALID_ROW")
    assert "found 'modulos': did you mean 'modulus'?" in typo.error_message


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.csv", None, "no such file"),
        ("garbage.csv", b"\x00\x01\x02\xff\xfe" * 200, "not a text csv file (it contains nul bytes"),
        ("cols.csv", b"invoice,vendor\n1,alfred\n", "invoice_id"),
        ("notes.txt", b"invoice_id,vendor,decision\n1,alfred,approve\n", "unsupported file type ('.txt')"),
    ],
)
def test_unusable_file_sends_nothing(sandbox, tmp_path, capsys, name, content, problem):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == EXIT_UNUSABLE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert problem, "every case names the problem its message must state"
    assert str(path) in lines[0] and problem in lines[0].lower(), lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "out" / "results.parquet").exists()
    assert all(sandbox.request_log(v) == [] for v in ALL_VENDORS)


def test_validate_command(tmp_path, capsys):
    code, out, _ = run(["validate", str(SAMPLE_FILE)], capsys)
    assert code == EXIT_ROWS_NOT_DONE
    assert "22 rows" in out and "row 21 (invoice 000128): conflicting decisions" in out
    # the value that was there, with the invoice it belongs to
    assert "row 18 (invoice 41): vendor must be one of alfred, accounteer, appzen, modulus (found 'sage')" in out
    assert "row 19 (invoice 000127): decision must be approve or cancel (found 'hold')" in out
    assert "row 1 is the first row under the header" in out
    good = tmp_path / "good.csv"
    shutil.copy(SAMPLE_FILE, good)
    pd.read_csv(SAMPLE_FILE, dtype=str).iloc[[0, 1]].to_csv(good, index=False)
    assert run(["validate", str(good)], capsys)[0] == EXIT_OK
    assert run(["validate", str(tmp_path / "nope.csv")], capsys)[0] == EXIT_UNUSABLE
