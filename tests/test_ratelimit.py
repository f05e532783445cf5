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
import threading
import time
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
from flows.orchestration.shared_limits import PrefectGlobalLimit
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
    return VendorClient(cls(settings), limiter=limiter_for(settings, PrefectGlobalLimit()))


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
        self.calls: list[tuple[str, int, float]] = []  # the grants
        self.refused: list[float] = []

    def describe(self, name: str):
        if not self.exists:
            raise GlobalLimitError(f"{name} does not exist")
        return self.limit, self.decay, self.active

    def left(self) -> float:
        """Slots still taken now: the server's decay counts whole slots since its last change."""
        return max(0.0, self.active_slots - math.floor(self.decay * (self.time.now - self.updated)))

    def take(self, name: str, occupy: int) -> float:
        """As `PrefectGlobalLimit.take` answers: a grant, or the wait its count of taken slots gives."""
        assert occupy <= self.limit
        left = self.left()
        if left + occupy <= self.limit:
            self.active_slots, self.updated = left + occupy, self.time.now
            self.calls.append((name, occupy, self.time.now))
            return 0.0
        self.refused.append(self.time.now)
        return max(left + occupy - self.limit, 1) / self.decay


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
    assert limiter.batches == len(gcl.calls) and limiter.slots_taken == sum(occupy for _, occupy, _ in gcl.calls)
    assert limiter.refusals == len(gcl.refused) == 0  # it never asks before its own batch has decayed
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


def test_global_limiter_asks_again_when_the_slots_another_worker_took_have_decayed():
    t = FakeTime()
    gcl = FakeGCL(t, limit=10, decay=20)
    gcl.take("other worker", 10)  # the whole burst, just now
    t.sleep(0.12)  # 2 of its 10 slots have decayed since
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    # Refused once, then granted as soon as the other's 10 slots were free (0.5 s after it took
    # them), not after a randomised wait: the slots do not sit idle between the workers' turns.
    assert limiter.refusals == len(gcl.refused) == 1
    assert gcl.calls[-1][0] == "g" and gcl.calls[-1][2] == pytest.approx(gcl.calls[0][2] + 10 / 20, abs=1 / 20)


def test_a_stop_ends_the_wait_for_shared_slots_and_nothing_is_taken():
    t = FakeTime()
    stop = threading.Event()
    gcl = FakeGCL(t, limit=10, decay=2)
    gcl.take("other worker", 10)  # free again in 5 s

    def sleep(seconds: float) -> None:
        t.sleep(min(seconds, 0.5))
        stop.set()  # the stop request comes in during the wait

    limiter = GlobalRateLimiter(
        "g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=sleep, stop=stop
    )
    limiter.acquire()
    assert [name for name, _, _ in gcl.calls] == ["other worker"] and limiter.slots_taken == 0
    assert t.now - gcl.calls[0][2] < 1.0


def test_global_limiter_pause_holds_this_worker_back():
    t = FakeTime()
    gcl = FakeGCL(t, limit=5, decay=10)
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    limiter.pause(3.0)
    before = t.now
    limiter.acquire()
    assert t.now - before >= 3.0
    # The slot it held through the pause was stale by its end (the GCL had freed the batch for
    # others after half a second), and so was the rest of the batch: the slot it held and two
    # more requests' worth were dropped, and it went out on a slot of a new batch.
    assert limiter.slots_dropped == pytest.approx(3 * GlobalRateLimiter.COST)
    assert [at for _, _, at in gcl.calls][-1] >= before + 3.0


def test_global_limiter_drops_slots_left_idle():
    t = FakeTime()
    gcl = FakeGCL(t, limit=5, decay=10)
    limiter = GlobalRateLimiter("g", None, describe=gcl.describe, take_slots=gcl.take, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    t.sleep(60)  # idle: the 4 slots left are stale by now
    limiter.acquire()
    left = 5 - GlobalRateLimiter.COST  # three requests' worth, and the headroom left over
    assert limiter.slots_dropped == pytest.approx(left - left % GlobalRateLimiter.COST)
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
                  "batches": client.limiter.batches, "slots": client.limiter.slots_taken}))
"""


@pytest.mark.usefixtures("prefect_server")
def test_the_prefect_limit_grants_or_says_when_the_slots_will_be_free():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"vendor-alfred-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=10, slot_decay_per_second=4)
        )
    shared = PrefectGlobalLimit()
    try:
        assert shared.describe(name) == (10, 4.0, True)
        assert shared.take(name, 10) == 0.0
        wait = shared.take(name, 10)  # all ten were taken a moment ago: free again 2.5 s after
        assert 0 < wait <= 10 / 4
        for _ in range(2):  # the server counts decay in whole slots: at most one more slot period
            time.sleep(wait)
            wait = shared.take(name, 10)
            if wait == 0.0:
                break
        assert wait == 0.0
        with pytest.raises(GlobalLimitError, match="no longer exists"):  # the server grants a missing limit
            shared.take(f"{name}-gone", 1)
        with pytest.raises(GlobalLimitError, match="does not exist"):
            shared.describe(f"{name}-gone")
    finally:
        shared.close()
    shared.close()  # twice is harmless


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
    assert all(o["batches"] <= math.ceil(PER_WORKER * GlobalRateLimiter.COST / BURST) for o in outputs)
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
    # again the moment its batch has decayed, a round trip before a refused worker that asks when
    # the slots are free, so the two may well take turns (docs/performance.md, "Shared between workers").
    # What is promised is the total, checked above, and that both got through the GCL at all:
    assert all(o["batches"] >= 1 for o in outputs)


def test_the_prefect_limit_asks_again_at_once_when_the_server_was_busy(monkeypatch):
    """A 503 (SQLite locked by another worker's ask) is answered within the limiter's own loop;
    the Prefect client's retry wrapper would sleep about 2 s after it, even with retries off."""
    import httpx
    import prefect.client.orchestration as orchestration
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.orchestration.shared_limits import BUSY_WAIT

    answers = iter(
        [
            httpx.Response(503),
            httpx.Response(423),
            httpx.Response(200, json=[{"id": str(uuid.uuid4()), "name": "g", "limit": 10}]),
        ]
    )
    asked: list[str] = []

    def vendor_api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v2/concurrency_limits/increment"):
            asked.append("increment")
            return next(answers)
        if request.url.path.endswith("/v2/concurrency_limits/g"):
            asked.append("read")
            now = "2026-12-01T00:00:00Z"
            return httpx.Response(
                200,
                json={
                    "id": str(uuid.uuid4()),
                    "created": now,
                    "updated": now,
                    "name": "g",
                    "limit": 10,
                    "active_slots": 7,
                    "slot_decay_per_second": 4.0,
                    "active": True,
                },
            )
        return httpx.Response(200, json="3.9.1")  # the client's version check on entering

    real_get_client = orchestration.get_client
    monkeypatch.setattr(
        orchestration,
        "get_client",
        lambda **kwargs: real_get_client(httpx_settings={"transport": httpx.MockTransport(vendor_api)}, **kwargs),
    )
    shared = PrefectGlobalLimit()
    # An API URL (never reached: the transport answers), or the client would start an ephemeral server.
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        try:
            assert shared.take("g", 10) == BUSY_WAIT and asked == ["increment"]  # one ask, no retry behind it
            assert shared.take("g", 10) == pytest.approx(7 / 4)  # refused: 7 taken, 7 more must decay at 4/s
            assert asked == ["increment", "increment", "read"]
            assert shared.take("g", 10) == 0.0
        finally:
            shared.close()
