"""A vendor's rate found, kept to and remembered: the controller's every decision on a fake
clock, then against sandbox vendors that enforce a limit they do not publish."""

from __future__ import annotations

import itertools
import math

import pytest

from connectors.registry import CONNECTORS
from connectors.sending.adaptive import (
    BACKOFF,
    COOL_DOWN,
    PROBE_AFTER,
    REGROWTH,
    WINDOW,
    RateController,
    read_limit_headers,
)
from connectors.sending.client import VendorClient
from connectors.sending.ratelimit import HEADROOM, RateLimiter, limiter_for
from connectors.vocabulary import Decision, Outcome
from tests.helpers import FakeTime, invoice_id_for, max_in_window, record_grants
from tests.test_ledger import postgres_url  # noqa: F401 - a fixture, used by name

RETRY_AFTER = {"Retry-After": "1"}


def burst(
    controller: RateController, t: FakeTime, n: int, gap: float = 0.001, answered: int | None = None
) -> list[float]:
    """`n` grants `gap` apart, the first `answered` of them (all by default) answered 200; returns their times."""
    times = []
    for _ in range(n):
        controller.granted(t.now)
        times.append(t.now)
        t.sleep(gap)
    for at in times[: n if answered is None else answered]:
        controller.answered(at, 200, {})
    return times


# -- the controller, decision by decision ------------------------------------------------------


def test_no_limit_known_means_no_pacing_and_nothing_changes_while_all_is_well():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    assert controller.rate is None
    for at in burst(controller, t, 2000):
        assert controller.answered(at, 200, {"Content-Type": "application/json"}) is None
    assert controller.rate is None and controller.throttles == 0


def test_a_throttle_sets_the_rate_to_what_the_vendor_let_through():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    grants = burst(controller, t, 30, answered=25)  # a vendor allowing 25 in a window refuses the 26th on
    first = controller.answered(grants[25], 429, {})
    assert first is not None and first.rate == 25 and first.pause == COOL_DOWN
    for at in grants[26:]:  # the same throttle: neither a new rate nor a second pause
        assert controller.answered(at, 429, {}) is None
    assert controller.throttles == 1 and controller.rate == 25


def test_with_retry_after_the_vendor_says_how_long_and_the_controller_adds_no_pause():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    grants = burst(controller, t, 26, answered=25)
    change = controller.answered(grants[25], 429, RETRY_AFTER)
    assert change is not None and change.rate == 25 and change.pause == 0


def test_the_count_is_settled_a_window_later_when_requests_overtook_each_other():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    grants = burst(controller, t, 30, answered=0)
    # The vendor let 25 through, but the 20th request arrived after the 26th: it was refused.
    refused = [grants[19], *grants[26:]]
    for at in grants[:19]:
        controller.answered(at, 200, {})
    change = controller.answered(grants[19], 429, {})
    assert change is not None and change.rate == 19  # first guess: what was answered before it
    for at in [*grants[20:26], *refused[1:]]:
        controller.answered(at, 200 if at not in refused else 429, {})
    t.sleep(WINDOW + COOL_DOWN)
    settled = controller.granted(t.now)
    assert settled is not None and settled.rate == 25 and settled.pause == 0


def test_a_refusal_with_nothing_let_through_before_it_pauses_but_learns_no_rate():
    t = FakeTime()
    controller = RateController(ceiling=50, clock=t.clock)
    grants = burst(controller, t, 3, gap=1 / 50, answered=0)
    change = controller.answered(grants[0], 429, {})  # the very first request: the vendor's own reasons
    assert change is not None and change.rate == 50 and change.pause == COOL_DOWN
    assert controller.answered(grants[1], 429, RETRY_AFTER) is None  # told how long: the client waits
    assert controller.rate == 50 and controller.throttles == 0


def test_a_set_limit_higher_than_the_vendor_allows_is_corrected_down_and_said_once():
    t = FakeTime()
    controller = RateController(ceiling=50, clock=t.clock)
    assert controller.rate == 50
    grants = burst(controller, t, 40, gap=1 / 48.5, answered=30)
    controller.answered(grants[30], 429, {})  # 30 in the window before it got through
    assert controller.rate == 30
    assert controller.corrected is not None and "50/s is more than the vendor allows" in controller.corrected


def test_one_throttle_at_most_halves_the_rate():
    t = FakeTime()
    controller = RateController(ceiling=50, clock=t.clock)
    grants = burst(controller, t, 40, gap=1 / 48.5, answered=10)
    controller.answered(grants[10], 429, {})  # 10 let through: a blip, or the limit; never below half
    assert controller.rate == 25


def test_a_throttle_at_the_last_throttles_rate_lowers_it_further():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    grants = burst(controller, t, 26, answered=25)
    controller.answered(grants[25], 429, {})
    assert controller.rate == 25
    t.sleep(COOL_DOWN + WINDOW)
    grants = burst(controller, t, 60, gap=1 / (25 * HEADROOM), answered=59)  # at 25 and still refused
    controller.answered(grants[-1], 429, {})
    assert controller.rate == pytest.approx(25 * BACKOFF)


def test_it_probes_upward_only_after_a_calm_busy_stretch_and_never_above_the_set_limit():
    t = FakeTime()
    controller = RateController(ceiling=26, remembered=20, clock=t.clock)
    assert controller.rate == 20
    burst(controller, t, int(PROBE_AFTER * 10) + 100, gap=0.1)  # 40 s at 10/s: half the rate is not using it
    assert controller.rate == 20
    rates = set()
    for _ in range(int(4 * PROBE_AFTER * 20)):
        controller.granted(t.now)
        rates.add(controller.rate)
        t.sleep(1 / (math.floor(controller.rate) * HEADROOM))
    assert sorted(rates) == [20, 21, 22.05, 23.1525, 24.310125, 26][: len(rates)]
    assert max(rates) <= 26


def test_a_stale_remembered_rate_starts_at_half_and_grows_back():
    t = FakeTime()
    controller = RateController(remembered=40, stale=True, clock=t.clock)
    assert controller.rate == 20
    seen = []
    for _ in range(400):
        controller.granted(t.now)
        seen.append(controller.rate)
        t.sleep(1 / (math.floor(controller.rate) * HEADROOM))
    assert [r for r, _ in itertools.groupby(seen)] == [20, 20 * REGROWTH, 20 * REGROWTH**2, 20 * REGROWTH**3, 40]


def test_a_fresh_remembered_rate_starts_there_and_a_lower_set_limit_wins():
    assert RateController(remembered=40).rate == 40
    assert RateController(remembered=40, ceiling=30).rate == 30


# -- rate-limit headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, rate, remaining, reset",
    [
        ({"RateLimit-Limit": "20", "RateLimit-Remaining": "5", "RateLimit-Reset": "1"}, 20, 5, 1),
        ({"RateLimit-Limit": "100, 100;w=60", "RateLimit-Remaining": "0", "RateLimit-Reset": "30"}, 100 / 60, 0, 30),
        ({"RateLimit-Policy": "10;w=2", "RateLimit": "limit=10, remaining=3, reset=1"}, 5, 3, 1),
        ({"X-RateLimit-Limit": "40", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1000000002"}, 40, 0, 2),
    ],
    ids=["ietf", "ietf-policy", "ietf-combined", "x-unix-reset"],
)
def test_rate_limit_headers_are_read(headers, rate, remaining, reset):
    read = read_limit_headers(headers, now_epoch=1_000_000_000)
    assert read is not None
    assert read.rate == pytest.approx(rate) and read.remaining == remaining and read.reset == pytest.approx(reset)


def test_no_rate_limit_headers_read_as_none():
    assert read_limit_headers({"Content-Type": "application/json"}) is None


def test_announced_limits_cap_the_rate_and_an_empty_allowance_pauses():
    t = FakeTime()
    controller = RateController(ceiling=50, clock=t.clock)
    change = controller.answered(t.now, 200, {"RateLimit-Limit": "20", "RateLimit-Remaining": "19"})
    assert change is not None and change.rate == 20 and change.pause == 0
    assert controller.corrected is not None and "announces 20/s" in controller.corrected
    unlimited = RateController(clock=t.clock)  # only a count left and a reset: wait for it
    change = unlimited.answered(t.now, 200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"})
    assert change is not None and change.pause == 2
    for _ in range(int(3 * PROBE_AFTER * 20)):  # probes never go past what the vendor announced
        controller.granted(t.now)
        t.sleep(1 / (20 * HEADROOM))
    assert controller.rate == 20


# -- the limiter applies it ------------------------------------------------------------------


def test_the_limiter_paces_at_the_learned_rate_and_pauses_after_a_throttle():
    t = FakeTime()
    limiter = RateLimiter(None, clock=t.clock, sleep=t.sleep, controller=RateController(clock=t.clock), name="alfred")
    grants = record_grants(limiter)
    for _ in range(26):
        limiter.acquire()
        t.sleep(0.001)
    for at in grants[:25]:
        limiter.observe(at, 200, {})
    limiter.observe(grants[25], 429, {})
    assert limiter.rate == 25
    before = len(grants)
    thrown = t.now
    for _ in range(60):
        limiter.acquire()
    paced = grants[before:]
    assert paced[0] >= thrown + COOL_DOWN  # a window of silence first
    assert min(b - a for a, b in itertools.pairwise(paced)) >= 1 / (25 * HEADROOM) - 1e-9
    assert max_in_window(paced) <= 25


def test_the_first_paced_request_is_a_whole_interval_after_the_last_unpaced_one():
    t = FakeTime()
    limiter = RateLimiter(None, clock=t.clock, sleep=t.sleep, controller=RateController(clock=t.clock))
    grants = record_grants(limiter)
    limiter.acquire()  # unpaced: nothing known yet
    t.sleep(0.001)
    limiter.observe(grants[0], 200, {"RateLimit-Limit": "20", "RateLimit-Remaining": "19"})
    for _ in range(21):
        limiter.acquire()
    assert grants[1] - grants[0] >= 1 / (20 * HEADROOM) - 1e-9
    assert max_in_window(grants) <= 20


def test_the_limiter_logs_a_corrected_set_limit_once():
    t = FakeTime()
    said: list[str] = []
    limiter = RateLimiter(
        50,
        clock=t.clock,
        sleep=t.sleep,
        controller=RateController(ceiling=50, clock=t.clock),
        name="alfred",
        log=said.append,
    )
    grants = record_grants(limiter)
    for _ in range(80):
        limiter.acquire()
    for at in grants[:40]:
        limiter.observe(at, 200, {})
    limiter.observe(grants[40], 429, {})
    t.sleep(5)
    for _ in range(80):
        limiter.acquire()
    for at in grants[-80:-1]:
        limiter.observe(at, 200, {})
    limiter.observe(grants[-1], 429, {})
    assert len(said) == 1 and said[0].startswith("alfred: the set limit of 50/s is more than the vendor allows")


# -- against sandbox vendors that do not publish their limit ----------------------------------


@pytest.fixture(scope="module")
def sandbox_server():
    from sandbox import Sandbox

    with Sandbox(auto_create=True) as sandbox:
        yield sandbox


def send(vendor: str, n: int, env: dict[str, str]):
    cls = CONNECTORS[vendor]
    settings = cls.settings_from_env(env)
    limiter = limiter_for(settings)
    grants = record_grants(limiter)
    client = VendorClient(cls(settings), limiter=limiter)
    decisions = [
        Decision(i + 1, invoice_id_for(vendor, i), vendor, "approve", invoice_number=f"N-{i}") for i in range(n)
    ]
    try:
        return client.send_many(decisions), limiter, grants
    finally:
        client.close()


@pytest.mark.parametrize(
    "vendor, limit, retry_after",
    [("alfred", 25, 1), ("modulus", 25, None), ("appzen", 40, None)],
    ids=["alfred-retry-after", "modulus-no-retry-after", "appzen-no-retry-after"],
)
def test_an_unpublished_limit_is_found_and_kept_to(sandbox, monkeypatch, vendor, limit, retry_after):
    monkeypatch.setenv(f"{vendor.upper()}_MAX_ATTEMPTS", "10")
    monkeypatch.setenv(f"{vendor.upper()}_BACKOFF_INITIAL", "0.5")
    monkeypatch.setenv(f"{vendor.upper()}_BACKOFF_MAX", "5")
    sandbox.enforce_limit(vendor, limit, retry_after=retry_after)
    results, limiter, grants = send(vendor, 8 * limit, dict(__import__("os").environ))
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}  # no row failed for it
    assert limiter.controller is not None and limiter.controller.learned
    assert 0.8 * limit <= limiter.rate <= limit  # it found the limit, and stays under it
    refused = sandbox.refused_by_limit(vendor)
    assert refused <= 0.05 * len(grants)  # a burst at the start, then (nearly) none
    # From a window after the first throttle on, the grants keep to the limit in every window.
    first_refusal = min(t for t, _, _ in sandbox.request_log(vendor)) if refused else grants[0]
    settled = [g for g in grants if g > first_refusal + 2 * WINDOW]
    assert len(settled) > 3 * limit and max_in_window(settled) <= limit


def test_an_announced_limit_is_kept_to_from_the_first_answer(sandbox, monkeypatch):
    sandbox.enforce_limit("alfred", 20, headers="ietf")
    monkeypatch.setenv("ALFRED_MAX_CONCURRENCY", "1")  # the first answer is in before the second request
    results, limiter, grants = send("alfred", 60, dict(__import__("os").environ))
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    assert limiter.rate == 20
    assert max_in_window(grants) <= 20  # from the first answer on, exactly within what it announced
    # At the vendor: none, but for the in-process sandbox's clock jitter (tests.helpers.SANDBOX_JITTER),
    # which can stamp 21 of our evenly spaced requests into one of its seconds now and then.
    assert sandbox.refused_by_limit("alfred") <= 1


# -- remembered rates --------------------------------------------------------------------------


def test_a_kept_rate_is_recalled_per_vendor_api_and_trusted_less_once_old(tmp_path):
    from datetime import UTC, datetime, timedelta

    from flows.state.rates import RememberedRates

    now = [datetime(2026, 11, 30, 18, 0, tzinfo=UTC)]
    rates = RememberedRates(tmp_path / "rates.json", timedelta(days=7), now=lambda: now[0])
    assert rates.recall("alfred", "https://a.test") is None
    rates.keep("alfred", "https://a.test", 24.25)
    rates.keep("alfred", "https://other-account.test", 50)
    assert rates.recall("alfred", "https://a.test") == (24.25, False)
    assert rates.recall("alfred", "https://other-account.test") == (50, False)
    assert rates.recall("modulus", "https://a.test") is None
    now[0] += timedelta(days=8)
    assert rates.recall("alfred", "https://a.test") == (24.25, True)
    (tmp_path / "rates.json").write_text("{not json")
    assert rates.recall("alfred", "https://a.test") is None  # unreadable: learned afresh, never a crash


def test_limiter_for_starts_from_a_remembered_rate():
    from connectors.settings import VendorSettings
    from tests.helpers import FAKE_ENV

    settings = VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), FAKE_ENV)
    assert limiter_for(settings, remembered=(24.0, False)).rate == 24
    assert limiter_for(settings, remembered=(24.0, True)).rate == 12  # stale: half, growing back
    assert limiter_for(settings).rate is None


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_the_next_run_starts_from_the_rate_the_last_one_held(sandbox, tmp_path, state_dir, capsys, monkeypatch):
    import json

    import pandas as pd

    from flows.cli.main import EXIT_OK, main
    from tests.helpers import seed_approvals

    monkeypatch.setenv("ALFRED_MAX_ATTEMPTS", "10")
    rows = seed_approvals(sandbox, "alfred", range(200))
    for k, part in enumerate((rows[:100], rows[100:])):
        pd.DataFrame(part).to_csv(tmp_path / f"d{k}.csv", index=False)
    sandbox.enforce_limit("alfred", 20, retry_after=1)
    assert main(["run", str(tmp_path / "d0.csv"), "--out", str(tmp_path / "r0"), "--no-progress"]) == EXIT_OK
    first = sandbox.refused_by_limit("alfred")
    assert first > 0  # the first run found the limit the hard way
    kept = json.loads((state_dir / "rates.json").read_text())
    (entry,) = kept.values()
    assert entry["vendor"] == "alfred" and 16 <= entry["rate"] <= 20

    sandbox.enforce_limit("alfred", 20, retry_after=1)  # the same vendor, its count afresh
    assert main(["run", str(tmp_path / "d1.csv"), "--out", str(tmp_path / "r1"), "--no-progress"]) == EXIT_OK
    capsys.readouterr()
    assert sandbox.refused_by_limit("alfred") == 0  # the second started at the kept rate: not one 429
    results = pd.read_parquet(tmp_path / "r1" / "results.parquet")
    assert (results["outcome"] == "succeeded").all()


# -- daily quotas ------------------------------------------------------------------------------


class MemoryQuota:
    """A QuotaStore in memory that records every call (the ledger's are checked below)."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, str], int] = {}
        self.calls: list[tuple] = []

    def take_quota(self, vendor, day, wanted, limit):
        used = self.used.get((vendor, day), 0)
        granted = max(0, min(wanted, limit - used))
        self.used[(vendor, day)] = used + granted
        self.calls.append(("take", day, wanted, granted))
        return granted

    def return_quota(self, vendor, day, unused):
        self.used[(vendor, day)] -= unused
        self.calls.append(("return", day, unused))


def test_a_daily_quota_is_taken_in_blocks_and_its_rest_given_back():
    from datetime import date

    from connectors.sending.quota import DailyQuota

    store, day = MemoryQuota(), [date(2026, 11, 30)]
    quota = DailyQuota("appzen", 250, store, block=100, today=lambda: day[0])
    assert all(quota.take() for _ in range(120))
    assert [c[0] for c in store.calls] == ["take", "take"]  # two transactions for 120 requests, not 120
    quota.close()
    assert store.used[("appzen", "2026-11-30")] == 120  # the 80 counted but not sent went back
    other_run = DailyQuota("appzen", 250, store, block=100, today=lambda: day[0])
    assert sum(other_run.take() for _ in range(200)) == 130  # across runs: 250 in all that day
    assert other_run.exhausted_on == date(2026, 11, 30)
    assert f"{other_run.resets_at():%Y-%m-%d %H:%M %Z}" == "2026-12-01 00:00 UTC"
    day[0] = date(2026, 12, 1)  # past midnight UTC: a new day's quota
    assert other_run.take() and other_run.exhausted_on is None


def test_a_big_run_takes_its_quota_in_growing_blocks_and_holds_back_at_most_a_hundredth():
    from datetime import date

    from connectors.sending.quota import DailyQuota

    store = MemoryQuota()
    quota = DailyQuota("appzen", 300_000, store, block=100, today=lambda: date(2026, 11, 30))
    assert all(quota.take() for _ in range(20_000))
    asked = [wanted for kind, _, wanted, _ in store.calls if kind == "take"]
    assert asked == [100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000, 3000, 3000]  # 11 transactions, not 200
    quota.close()
    assert store.used[("appzen", "2026-11-30")] == 20_000  # what was taken and not sent went back


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    from flows.state.ledger import Ledger

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM vendor_daily_requests")
    yield ledger
    ledger.close()


def test_the_ledger_counts_a_quota_once_across_workers_at_once(ledger):
    import threading

    from flows.state.ledger import Ledger

    ledgers = [Ledger(ledger.url) for _ in range(4)]  # four workers' own connections
    granted: list[int] = []
    barrier = threading.Barrier(4)

    def worker(mine: Ledger) -> None:
        barrier.wait()
        for _ in range(20):
            granted.append(mine.take_quota("appzen", "2026-11-30", 7, 300))

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 300 == ledger.quota_used("appzen", "2026-11-30")  # 560 asked, exactly 300 counted
    ledgers[0].return_quota("appzen", "2026-11-30", 5)
    assert ledger.quota_used("appzen", "2026-11-30") == 295
    assert ledger.quota_used("appzen", "2026-12-01") == 0  # by UTC day
    for mine in ledgers:
        mine.close()


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_daily_limit_is_counted_across_two_runs_and_what_is_left_waits_for_the_next_day(
    sandbox, tmp_path, state_dir, capsys, monkeypatch
):
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from flows.cli.main import EXIT_OK, EXIT_ROWS_NOT_DONE, main
    from flows.state.ledger import Ledger
    from tests.helpers import seed_approvals

    monkeypatch.setenv("APPZEN_DAILY_LIMIT", "30")
    rows = seed_approvals(sandbox, "appzen", range(40))
    pd.DataFrame(rows[:20]).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows[20:]).to_csv(tmp_path / "b.csv", index=False)
    assert main(["run", str(tmp_path / "a.csv"), "--out", str(tmp_path / "ra"), "--no-progress"]) == EXIT_OK
    assert main(["run", str(tmp_path / "b.csv"), "--out", str(tmp_path / "rb"), "--no-progress"]) == EXIT_ROWS_NOT_DONE
    out, _ = capsys.readouterr()

    second = pd.read_parquet(tmp_path / "rb" / "results.parquet")
    assert second["outcome"].value_counts().to_dict() == {"succeeded": 10, "failed": 10}
    failed = second[second["outcome"] == "failed"]
    assert (failed["error_code"] == "QUOTA_EXHAUSTED").all() and (failed["attempts"] == 0).all()
    midnight = f"{datetime.now(UTC).date() + timedelta(days=1):%Y-%m-%d} 00:00 UTC"
    assert failed["error_message"].str.contains(f"resets at {midnight}").all()
    assert f"appzen: daily limit used up, 10 rows not sent (QUOTA_EXHAUSTED); it resets at {midnight}" in " ".join(
        out.split()
    )
    assert len(sandbox.request_log("appzen")) == 30  # not one request past the day's limit
    ledger = Ledger.open()
    assert ledger.quota_used("appzen", f"{datetime.now(UTC).date():%Y-%m-%d}") == 30  # the rest was given back
    ledger.close()

    # Transient: the next run with quota left (here: a higher limit, as after midnight) sends them.
    monkeypatch.setenv("APPZEN_DAILY_LIMIT", "40")
    assert main(["run", str(tmp_path / "b.csv"), "--out", str(tmp_path / "rc"), "--no-progress"]) == EXIT_OK
    capsys.readouterr()
    third = pd.read_parquet(tmp_path / "rc" / "results.parquet")
    assert third["error_code"].fillna("").value_counts().to_dict() == {"ALREADY_DONE": 10, "": 10}
    assert len(sandbox.request_log("appzen")) == 40


def test_a_probe_not_yet_confirmed_is_not_what_is_remembered():
    t = FakeTime()
    controller = RateController(remembered=20, clock=t.clock)
    while controller.rate == 20:  # calm and busy at 20/s until it probes
        controller.granted(t.now)
        t.sleep(1 / (20 * HEADROOM))
    assert controller.rate == 21 and controller.held == 20
    while controller.rate == 21:  # 21 held a calm stretch too: confirmed, and the next probe
        controller.granted(t.now)
        t.sleep(1 / (21 * HEADROOM))
    assert controller.held == 21


def test_an_empty_allowance_does_not_pause_a_vendor_already_paced_at_its_announced_rate():
    t = FakeTime()
    controller = RateController(clock=t.clock)
    controller.answered(t.now, 200, {"RateLimit-Limit": "25", "RateLimit-Remaining": "3"})
    assert controller.rate == 25
    assert (
        controller.answered(t.now, 200, {"RateLimit-Limit": "25", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"})
        is None
    )


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_previews_reads_count_against_the_daily_limit(sandbox, tmp_path, state_dir, capsys, monkeypatch):
    from datetime import UTC, datetime

    import pandas as pd

    from flows.cli.main import main
    from flows.state.ledger import Ledger
    from tests.helpers import seed_approvals

    monkeypatch.setenv("APPZEN_DAILY_LIMIT", "5")
    pd.DataFrame(seed_approvals(sandbox, "appzen", range(8))).to_csv(tmp_path / "a.csv", index=False)
    args = ["run", str(tmp_path / "a.csv"), "--out", str(tmp_path / "out"), "--dry-run", "--check-vendors"]
    main([*args, "--no-progress"])
    capsys.readouterr()
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert results["would_change"].value_counts().to_dict() == {"yes": 5, "unknown": 3}
    unread = results[results["would_change"] == "unknown"]
    assert unread["error_message"].str.contains("daily limit of 5 requests is used up").all()
    assert len(sandbox.request_log("appzen")) == 5  # reads are requests: not one past the day's limit
    ledger = Ledger.open()
    assert ledger.quota_used("appzen", f"{datetime.now(UTC).date():%Y-%m-%d}") == 5
    ledger.close()
