"""Rate limits and concurrency, checked where it counts: arrival times at the (real) sandbox.

These are correctness properties, not speed targets: no 1-second window ever holds more
requests than the limit, a long enough run uses at least 90% of it, a 429 slows the vendor
down and it recovers, retries take slots like any request, and no more requests are in flight
than `<VENDOR>_MAX_CONCURRENCY`. The shared (Prefect GCL) limiter is checked against a real
local Prefect server with two worker processes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from connectors.registry import CONNECTORS
from connectors.sending.client import VendorClient
from connectors.sending.ratelimit import (
    HEADROOM,
    SHARED_HEADROOM,
    GlobalLimitError,
    GlobalRateLimiter,
    MachineSchedule,
    RateLimiter,
    limiter_for,
)
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, Outcome
from flows.orchestration.shared_limits import PREFECT_GLOBAL_LIMIT
from sandbox import Sandbox
from tests.helpers import (
    FAKE_ENV,
    NOT_STUCK,
    FakeTime,
    grant_log_env,
    max_arrivals_in_window,
    max_in_window,
    read_grants,
    record_grants,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_server():
    """This module's sandbox creates invoices on first sight: any id can be sent."""
    with Sandbox(auto_create=True) as sandbox:
        yield sandbox


def make_client(vendor: str = "alfred") -> VendorClient:
    """A client as the flow builds it: a shared limit, if set, is read from the Prefect API."""
    cls = CONNECTORS[vendor]
    settings = cls.settings_from_env()
    return VendorClient(cls(settings), limiter=limiter_for(settings, PREFECT_GLOBAL_LIMIT))


def decisions(n: int, prefix: str = "INV", vendor: str = "alfred") -> list[Decision]:
    return [Decision(i + 1, f"{prefix}-{i:05d}", vendor, "approve") for i in range(n)]


def send(n: int, prefix: str = "INV", grants: list[float] | None = None) -> list:
    """Send `n` decisions; `grants`, if given, receives the limiter's grant times."""
    client = make_client()
    if grants is not None:
        record_grants(client.limiter, grants)
    try:
        return client.send_many(decisions(n, prefix))
    finally:
        client.close()


def arrivals(sandbox: Sandbox, vendor: str = "alfred") -> list[float]:
    return sorted(entry[0] for entry in sandbox.request_log(vendor))


def achieved_rate(times: list[float]) -> float:
    """Requests per second between the first and the last arrival."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def test_max_in_window_helper():
    assert max_in_window([0.0, 0.5, 0.999, 1.0, 1.5]) == 3  # (0, 1) excludes 1.0 - 0.0 == 1.0
    assert max_in_window([0.0, 0.1, 0.2, 1.05, 1.15]) == 3
    assert max_in_window([]) == 0


# -- the local limiter against the sandbox ---------------------------------------------------


def test_rate_limit_is_never_exceeded_and_nearly_reached(sandbox, monkeypatch):
    monkeypatch.setenv("ALFRED_RATE_LIMIT", "50")
    grants: list[float] = []
    results = send(150, grants=grants)
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    times = arrivals(sandbox)
    assert len(times) == 150 == len(grants)
    assert max_in_window(grants) <= 50  # exactly, where the limit is kept
    assert max_arrivals_in_window(times) <= 50  # and at the vendor, but for the sandbox's clock jitter
    assert achieved_rate(times) >= NOT_STUCK * 50


def test_a_fractional_rate_limit_counts_whole_requests(sandbox, monkeypatch):
    monkeypatch.setenv("ALFRED_RATE_LIMIT", "12.5")
    grants: list[float] = []
    send(40, grants=grants)
    times = arrivals(sandbox)
    assert max_in_window(grants) <= 12  # 12.5 per second: never 13 in one second
    assert max_arrivals_in_window(times) <= 12
    assert achieved_rate(times) >= NOT_STUCK * 12.5


@pytest.mark.parametrize(
    "retry_after, env, quiet",
    [
        (1, {}, 0.95),  # Retry-After: 1 -> one second of silence
        (None, {"ALFRED_BACKOFF_INITIAL": "1.0", "ALFRED_BACKOFF_MAX": "5"}, 0.95),  # backoff 1-2 s
    ],
    ids=["retry-after", "no-retry-after"],
)
def test_a_429_slows_the_whole_vendor_then_it_recovers(sandbox, monkeypatch, retry_after, env, quiet):
    monkeypatch.setenv("ALFRED_RATE_LIMIT", "50")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sandbox.inject("alfred", "429", retry_after=retry_after)  # the first request to arrive
    grants: list[float] = []
    results = send(100, grants=grants)

    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    assert sorted(r.attempts for r in results)[-2:] == [1, 2]  # one row retried once
    times = arrivals(sandbox)
    assert len(times) == 101  # the retry is a request too
    throttled = times[0]
    # Requests that already held a slot (one per sending thread, at most ~0.15 s of them) may
    # still go out; after that the vendor is quiet until the pause ends.
    assert not [t for t in times if throttled + 0.25 < t < throttled + quiet]
    assert max_in_window(grants) <= 50
    assert max_arrivals_in_window(times) <= 50
    resumed = [t for t in times if t >= throttled + quiet]
    assert len(resumed) > 50
    assert achieved_rate(resumed) >= NOT_STUCK * 50  # back to full speed, not stuck slow


def test_retries_take_slots_like_any_request(sandbox, monkeypatch):
    monkeypatch.setenv("ALFRED_RATE_LIMIT", "50")
    monkeypatch.setenv("ALFRED_MAX_ATTEMPTS", "10")
    sandbox.inject("alfred", "429", times=24, retry_after=0)  # retried at once: no pause
    grants: list[float] = []
    results = send(100, grants=grants)
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    assert sum(r.attempts for r in results) == 124
    times = arrivals(sandbox)
    assert len(times) == 124 == len(grants)  # every retry took a slot of its own
    assert max_in_window(grants) <= 50
    assert max_arrivals_in_window(times) <= 50
    assert achieved_rate(times) >= NOT_STUCK * 50


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_max_concurrency_caps_requests_in_flight(sandbox, monkeypatch, limit):
    monkeypatch.setenv("ALFRED_MAX_CONCURRENCY", str(limit))
    monkeypatch.setattr(sandbox, "latency", 0.1)  # every request is held 0.1 s by the vendor
    results = send(3 * limit + 2)
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    assert sandbox.max_in_flight("alfred") == limit


def test_slow_answers_do_not_raise_concurrency(sandbox, monkeypatch):
    monkeypatch.setenv("ALFRED_MAX_CONCURRENCY", "4")
    sandbox.inject("alfred", "slow", times=6, delay=0.5)
    send(30)
    assert sandbox.max_in_flight("alfred") == 4


# -- the local limiter and the machine schedule on a fake clock ----------------------------------


class PausedWhileTaking(MachineSchedule):
    """A machine schedule during whose `take` a 429 comes in on another thread (it pauses the limiter)."""

    limiter: RateLimiter
    pause_at: float | None = None

    def take(self, clock, interval):
        if self.pause_at is None:
            self.pause_at = clock()
            self.limiter.pause(1.0)
        return super().take(clock, interval)


@pytest.mark.parametrize("rate, per_second", [(50, 50 * HEADROOM), (12.5, 12 * HEADROOM), (0.5, 0.5 * HEADROOM)])
def test_the_spacing_uses_the_limit_less_its_headroom_and_recovers_after_a_pause(rate, per_second):
    """Callers on time get exactly HEADROOM of the limit (whole requests), before and after a pause."""
    t = FakeTime()
    limiter = RateLimiter(rate, clock=t.clock, sleep=t.sleep)
    granted = []
    for _ in range(60):
        limiter.acquire()
        granted.append(t.now)
    assert (len(granted) - 1) / (granted[-1] - granted[0]) == pytest.approx(per_second, rel=1e-9)
    limiter.pause(3.0)  # a 429 with Retry-After: 3
    paused_at = t.now
    resumed = []
    for _ in range(60):
        limiter.acquire()
        resumed.append(t.now)
    assert resumed[0] == pytest.approx(paused_at + 3.0)  # not one slot during the pause
    assert (len(resumed) - 1) / (resumed[-1] - resumed[0]) == pytest.approx(per_second, rel=1e-9)  # full rate again


def test_a_pause_while_a_caller_takes_the_machine_slot_holds_that_caller_back(tmp_path):
    t = FakeTime()
    schedule = PausedWhileTaking(tmp_path / "alfred.slot")
    limiter = RateLimiter(50, clock=t.clock, sleep=t.sleep, machine=schedule)
    schedule.limiter = limiter
    grants = record_grants(limiter)
    for _ in range(3):
        limiter.acquire()
    limiter.close()
    # The 429 came in before the first caller had its slot: nothing is handed out for a second.
    assert schedule.pause_at is not None and min(grants) >= schedule.pause_at + 1.0
    assert min(b - a for a, b in itertools.pairwise(grants)) >= 1 / (50 * HEADROOM) - 1e-9


def test_retry_after_zero_holds_no_caller_back_and_keeps_the_spacing():
    t = FakeTime()
    interval = 1 / (50 * HEADROOM)

    def late_sleep(seconds: float) -> None:  # every caller wakes 2 ms late, and meanwhile
        t.sleep(seconds + 0.002)
        limiter.pause(0)  # another sender's 429 said Retry-After: 0

    limiter = RateLimiter(50, clock=t.clock, sleep=late_sleep)
    grants = record_grants(limiter)
    for _ in range(6):
        limiter.acquire()
    # Late within LATE_TOLERANCE, the slots stay on their grid: "retry at once" is no pause.
    assert [b - a for a, b in itertools.pairwise(grants)][1:] == pytest.approx([interval] * 4)
    assert limiter._pauses == 0


def two_processes(tmp_path):
    """Two machine schedules on one file as two processes would hold them (their own PIDs)."""
    a, b = MachineSchedule(tmp_path / "v.slot"), MachineSchedule(tmp_path / "v.slot")
    a._pid, b._pid = 1001, 1002
    return a, b


def take_when_due(schedule: MachineSchedule, t: FakeTime, interval: float) -> float:
    while True:
        wait, granted = schedule.take(t.clock, interval)
        if not wait:
            return granted
        t.sleep(wait)


def test_the_machine_schedule_stays_widened_while_another_process_sends(tmp_path):
    t = FakeTime()
    a, b = two_processes(tmp_path)
    interval = 1 / (20 * HEADROOM)
    wide = 1 / (20 * SHARED_HEADROOM)
    taken = [take_when_due(b, t, interval)]  # the other process sent
    for _ in range(5):  # then this one takes several slots in a row, each the moment it is due
        taken.append(take_when_due(a, t, interval))
    gaps = [b_ - a_ for a_, b_ in itertools.pairwise(taken)]
    assert gaps[0] <= interval  # b was alone when it took its slot
    assert gaps[1:] == pytest.approx([wide] * 4)  # within a second of b's slot: still shared
    t.sleep(1.5)  # b has been silent for over a second: a is alone again
    again = [take_when_due(a, t, interval) for _ in range(4)]
    assert [y - x for x, y in itertools.pairwise(again)][1:] == pytest.approx([interval] * 2)
    a.close()
    b.close()


# -- the shared (GCL) limiter, unit level ------------------------------------------------------


class FakeGCL:
    """A GCL in rate-limit mode, on fake time: `limit` slots, decaying at `decay` per second."""

    def __init__(self, time_: FakeTime, limit: int, decay: float, *, exists=True, active=True):
        self.time, self.limit, self.decay = time_, limit, decay
        self.exists, self.active = exists, active
        self.active_slots, self.updated = 0.0, time_.now
        self.calls: list[tuple[str, int, float]] = []

    def describe(self, name: str):
        if not self.exists:
            raise GlobalLimitError(f"{name} does not exist")
        return self.limit, self.decay, self.active

    def take(self, name: str, occupy: int) -> None:
        assert occupy <= self.limit
        while True:
            now = self.time.now
            left = max(0.0, self.active_slots - math.floor(self.decay * (now - self.updated)))
            if left + occupy <= self.limit:
                self.active_slots, self.updated = left + occupy, now
                self.calls.append((name, occupy, now))
                return
            self.time.sleep(0.01)


def test_global_limiter_takes_slots_in_batches_and_spaces_them():
    t = FakeTime()
    gcl = FakeGCL(t, limit=10, decay=20)
    limiter = GlobalRateLimiter(
        "vendor-alfred", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep
    )
    granted = []
    for _ in range(100):
        limiter.acquire()
        granted.append(t.now)
    # one API call per ~10 requests (each request uses 1/HEADROOM slots: 3% headroom)
    assert [occupy for _, occupy, _ in gcl.calls] == [10] * math.ceil(100 * GlobalRateLimiter.COST / 10)
    # its counters say what the GCL saw, and no request went out on slots it did not take
    assert limiter.gcl_calls == len(gcl.calls) and limiter.slots_taken == sum(occupy for _, occupy, _ in gcl.calls)
    assert 100 * GlobalRateLimiter.COST <= limiter.slots_taken < 100 * GlobalRateLimiter.COST + 10
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 1 / 20 - 1e-9  # spaced at the GCL's rate: a batch is never a burst
    assert max_in_window(granted) <= 20
    assert 99 / (granted[-1] - granted[0]) >= 0.9 * 20


def test_global_limiter_honours_a_lower_local_rate_and_a_smaller_batch():
    t = FakeTime()
    gcl = FakeGCL(t, limit=10, decay=50)
    limiter = GlobalRateLimiter(
        "g", 5, batch=4, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep
    )
    granted = []
    for _ in range(12):
        limiter.acquire()
        granted.append(t.now)
    assert [occupy for _, occupy, _ in gcl.calls] == [4, 4, 4, 4]  # 12 requests * 1.03 slots
    assert min(b - a for a, b in itertools.pairwise(granted)) >= 1 / (5 * HEADROOM) - 1e-9


def test_global_limiter_pause_holds_this_worker_back():
    t = FakeTime()
    gcl = FakeGCL(t, limit=5, decay=10)
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    limiter.pause(3.0)
    before = t.now
    limiter.acquire()
    assert t.now - before >= 3.0


def test_global_limiter_drops_slots_left_idle():
    t = FakeTime()
    gcl = FakeGCL(t, limit=5, decay=10)
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    t.sleep(60)  # idle: the 4 slots left are stale by now
    limiter.acquire()
    assert limiter.slots_dropped == pytest.approx(5 - GlobalRateLimiter.COST)
    assert len(gcl.calls) == 2


@pytest.mark.parametrize(
    "kwargs, problem",
    [({"exists": False}, "does not exist"), ({"active": False}, "inactive"), ({"decay": 0.0}, "no slot decay")],
)
def test_global_limiter_never_sends_without_a_usable_limit(kwargs, problem):
    t = FakeTime()
    gcl = FakeGCL(t, **{"limit": 5, "decay": 10.0, **kwargs})
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    for _ in range(2):  # every time, not just the first
        with pytest.raises(GlobalLimitError, match=problem):
            limiter.acquire()
    assert gcl.calls == []


def test_limiter_for_follows_the_settings():
    env = {**FAKE_ENV, "ALFRED_RATE_LIMIT": "12"}
    plain = limiter_for(VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), env))
    assert type(plain) is RateLimiter and plain.rate == 12
    env["ALFRED_GLOBAL_LIMIT"] = " vendor-alfred "
    settings = VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), env)
    assert settings.global_limit == "vendor-alfred"
    shared = limiter_for(settings)
    assert isinstance(shared, GlobalRateLimiter) and (shared.name, shared.rate) == ("vendor-alfred", 12)
    cls = CONNECTORS["alfred"]
    assert isinstance(VendorClient(cls(settings)).limiter, GlobalRateLimiter)
    assert VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), FAKE_ENV).global_limit is None


# -- the shared limiter against a real Prefect server, two worker processes ------------------

SHARED_RATE = 20
BURST = 5
PER_WORKER = 60

WORKER = """
import json, sys
from tests.test_ratelimit import make_client, decisions
client = make_client()
batch = decisions(int(sys.argv[2]), prefix=sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # both workers start sending together
results = client.send_many(batch)
client.close()
print(json.dumps({"outcomes": sorted({r.outcome.value for r in results}),
                  "gcl_calls": client.limiter.gcl_calls, "slots": client.limiter.slots_taken}))
"""


@pytest.mark.usefixtures("prefect_server")
def test_two_workers_share_one_gcl_rate_limit(sandbox, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL

    name = f"vendor-alfred-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=BURST, slot_decay_per_second=SHARED_RATE)
        )
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": str(REPO_ROOT),
        "ALFRED_GLOBAL_LIMIT": name,  # no ALFRED_RATE_LIMIT: each worker spaces at the shared rate
        **grant_log_env(tmp_path / "grants.log", {"PYTHONPATH": str(REPO_ROOT)}),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, f"W{i}", str(PER_WORKER)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()[-3000:]
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    assert all(o["outcomes"] == ["succeeded"] for o in outputs)
    # batches, not one call per request
    assert all(o["gcl_calls"] <= math.ceil(PER_WORKER * GlobalRateLimiter.COST / BURST) for o in outputs)
    times = arrivals(sandbox)
    assert len(times) == 2 * PER_WORKER
    by_worker = [sorted(t for t, _, path in sandbox.request_log("alfred") if f"/W{i}-" in path) for i in range(2)]
    assert [len(w) for w in by_worker] == [PER_WORKER, PER_WORKER]
    overlap = min(w[-1] for w in by_worker) - max(w[0] for w in by_worker)
    print(
        f"shared limit {SHARED_RATE}/s: max {max_in_window(times)} in 1 s, achieved {achieved_rate(times):.1f}/s, "
        f"workers sending together for {overlap:.2f} s"
    )
    grants = read_grants(tmp_path / "grants.log")
    assert len(grants) == 2 * PER_WORKER
    assert max_in_window(grants) <= SHARED_RATE  # combined, never over the shared limit
    assert max_arrivals_in_window(times) <= SHARED_RATE
    # Both were released at the same moment and each, alone, would send at the full shared rate:
    # the two together stayed under it only because every request took a slot of the one GCL,
    # so the whole took at least as long as the shared rate allows for both workers' requests.
    assert times[-1] - times[0] >= (2 * PER_WORKER - 2 * BURST) / SHARED_RATE
    # The GCL shares the total rate; it does not split it evenly: a worker that is sending asks
    # again the moment its batch has decayed, while Prefect makes a refused worker wait longer at
    # each refusal, so the two may well take turns (docs/performance.md, "Shared between workers").
    # What is promised is the total, checked above, and that both got through the GCL at all:
    assert all(o["gcl_calls"] >= 1 for o in outputs)
