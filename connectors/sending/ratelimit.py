"""Pacing: limiters that space requests evenly instead of bursting a second's worth at once.

Two limiters share one interface (`acquire()` waits for a send slot, `pause(seconds)` holds
every slot back after a 429); `limiter_for(settings)` picks one:

* `RateLimiter` paces one worker process: at most `<VENDOR>_RATE_LIMIT` requests in any
  1-second window, evenly spaced (no bursts), with 3% headroom. Given a `MachineSchedule`, the
  processes on one machine that send to the same vendor share that one rate: each still spaces
  its own requests and pauses on its own 429s, and a slot is only used once it is also free
  in the schedule they share (a small file under an exclusive lock).
* `GlobalRateLimiter` shares a vendor's limit between several workers, on several machines,
  through a Prefect global concurrency limit (GCL) in rate-limit mode, which the orchestration
  side hands in as a `SharedLimit` (`flows.orchestration.shared_limits`; nothing here imports
  Prefect). It takes slots in batches (one API round trip per batch, not per request) and still
  spaces its own requests with a `RateLimiter`, so a batch never goes out as a burst. Turn it on with `<VENDOR>_GLOBAL_LIMIT=<gcl name>`
  and create the GCL once, on the Prefect server every worker uses:

      prefect gcl create vendor-alfred --limit 50 --slot-decay-per-second 50

  `--slot-decay-per-second` is the rate shared by all workers together (requests/s) and
  `--limit` the burst size, which is also the batch a worker takes at once. A batch of about
  one second of the rate keeps the API round trips to a remote server down
  to a small share of the time; smaller batches waste fewer slots at the end of a run but pay
  the round trip more often. `<VENDOR>_RATE_LIMIT`, if also set, caps each worker on its own;
  unset, each worker spaces its requests at the shared rate.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from connectors.errors import GlobalLimitError
from connectors.sending.adaptive import RateChange, RateController

try:
    import fcntl
except ImportError:  # not a POSIX system: no machine-wide schedule, each process paces itself
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from connectors.settings import VendorSettings

# Aim a little under the vendor's limit: thread wake-up jitter must never push a 1-second
# window over it, and 97% of the limit is still "using it fully".
HEADROOM = 0.97
# A caller may wake up this late for its slot before the schedule moves back with it. Of the
# ~31 ms the headroom leaves in every 1-second window, 10 ms go to this; the rest covers the
# trip from our thread to the vendor's clock.
LATE_TOLERANCE = 0.010
# Processes sharing one rate through a MachineSchedule aim lower still (see there).
SHARED_HEADROOM = 0.93


def spacing(rate: float | None) -> float:
    """Seconds between slots for `rate` requests/s (0 without a rate).

    A limit counts whole requests in any 1-second window, so a fractional rate above 1 is
    paced as its whole part (7.5/s: never 8 in one second); below 1 it is the gap itself.
    """
    if not rate:
        return 0.0
    whole = math.floor(rate) if rate >= 1 else rate
    return 1.0 / (whole * HEADROOM)


class MachineSchedule:
    """One vendor's next free send slot, shared by every process on this machine.

    A file of 24 bytes (the slot, in seconds of the machine-wide monotonic clock; the PID that
    set it; until when the schedule is shared) that a process locks (`flock`) only while it
    reads and moves it: a few microseconds, never while it sleeps, so a stopped or killed
    process holds nothing up (the kernel drops a dead process's lock). A slot is taken only
    when it is due, and the next one is due an interval after it, by a process's own rule (late
    by more than `LATE_TOLERANCE` moves the schedule with the caller).

    From a slot taken by another process on, and for the second after the last such slot, the
    schedule is shared: every interval is widened to `SHARED_HEADROOM` of the rate, from the
    later of due and taken (no catch-up), whoever takes it, including a process that takes
    several slots in a row. The trips from different processes to the vendor vary
    independently (on a busy machine one waits tens of ms for a core after its slot), and a
    late arrival at the start of a second must not let one more in at its end. A process that
    has been alone for a second keeps its own spacing.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._pid = os.getpid()

    @classmethod
    def for_vendor(cls, folder: Path, vendor: str, base_url: str) -> MachineSchedule:
        """The schedule of one vendor API (its base URL: another account or sandbox has its own)."""
        digest = hashlib.sha256(base_url.encode()).hexdigest()[:16]
        return cls(folder / f"{vendor}-{digest}.slot")

    def take(self, clock: Callable[[], float], interval: float) -> tuple[float, float]:
        """Take the slot if it is due now: (0.0, the time it was taken); otherwise (seconds until it is, 0.0)."""
        assert fcntl is not None  # limiter_for builds none without it
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = clock()  # read under the lock: never older than the slot another process just wrote
            raw = os.pread(self._fd, 24, 0)
            due, pid, shared_until = struct.unpack("dqd", raw) if len(raw) == 24 else (0.0, 0, 0.0)
            if pid != self._pid and now - due < 1.0:  # another process sent within the last second
                shared_until = max(shared_until, now + 1.0)
            shared = now < shared_until
            wide = interval * HEADROOM / SHARED_HEADROOM
            gap = wide if shared else interval
            # The widest gap any process of this rate writes bounds a real slot: further away it
            # was written before a reboot (the clock restarted), or is garbage.
            if due - now > wide + 1e-6:
                due, shared_until = 0.0, 0.0
            if due > now:
                return due - now, 0.0
            # Alone, a late caller catches up within LATE_TOLERANCE, exactly as its own RateLimiter does.
            taken = max(due, now) if shared else max(due, now - LATE_TOLERANCE)
            os.pwrite(self._fd, struct.pack("dqd", taken + gap, self._pid, shared_until), 0)
            return 0.0, now
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RateLimiter:
    """Hands out send slots at most `rate` per second, evenly apart (GCRA with no burst).

    The gap is `spacing(rate)`: `1/rate` with 3% headroom, so no 1-second window ever holds
    more than `rate` requests, even with a little thread wake-up jitter. Callers wait for
    their slot one at a time, and a caller that wakes up more than `LATE_TOLERANCE` after its
    slot pushes the next slot back by the excess: on a busy machine a late thread is never
    followed by an on-time one a moment later (late slots do not bunch up).

    Every attempt takes a slot (retries and token fetches included). `pause(seconds)` holds
    every slot back, which is how a 429 slows the whole vendor down before it recovers.
    With `rate=None` there is no spacing, but pauses still apply.

    `machine`: the schedule this vendor's rate is shared through with the other processes on
    this machine. `stop`: once set, `acquire()` returns at once (the caller sends nothing).
    `controller`: learns the rate from the vendor's answers (`observe`), from `rate` as its
    ceiling (connectors.sending.adaptive); `log` hears once when it corrects a set limit down.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        machine: MachineSchedule | None = None,
        stop: threading.Event | None = None,
        controller: RateController | None = None,
        name: str = "",
        log: Callable[[str], object] | None = None,
    ) -> None:
        self.controller = controller
        if controller is not None:
            rate = controller.rate
        self.rate = rate
        self.interval = spacing(rate)
        self.name = name
        self.log = log
        self._logged_correction = False
        self._thread = threading.local()  # each sending thread's last grant time
        self.machine = machine
        self._stop = stop
        self._clock = clock
        self._sleep = sleep or (stop.wait if stop is not None else time.sleep)  # a stop ends the wait
        self._turn = threading.Lock()  # callers wait for their slot one at a time
        self._lock = threading.Lock()  # guards the fields below; never held while sleeping
        self._next_slot = 0.0
        self._last_grant = float("-inf")
        self._pauses = 0  # bumped by every pause that moved the next slot
        # Called with each grant's time (the clock read under the lock that hands the slot out,
        # the machine schedule's when there is one): what the limit is kept on, for tests and
        # the benchmark.
        self.on_grant: Callable[[float], None] | None = None

    def acquire(self) -> float:
        """Wait for this caller's slot; returns how long it waited."""
        if not self.interval:  # no spacing: only a pause can hold the caller back
            with self._lock:
                now = self._clock()
                if self._next_slot <= now:
                    self._granted(now)
                    return 0.0
        waited = 0.0
        with self._turn:
            while self._stop is None or not self._stop.is_set():
                with self._lock:
                    now = self._clock()
                    slot = max(now, self._next_slot)
                    pauses = self._pauses
                if slot > now:
                    self._sleep(slot - now)
                    waited += slot - now
                granted = 0.0
                if self.machine is not None and self.interval:
                    due_in, granted = self.machine.take(self._clock, self.interval)
                    if due_in > 0:  # another process on this machine has the slot: wait for the next
                        self._sleep(due_in)
                        waited += due_in
                        continue
                # One lock from the pause check to the next slot: a pause that comes in while
                # this caller waited or took the machine's slot is never overwritten.
                with self._lock:
                    if self._pauses != pauses:
                        continue  # a 429 came in while we waited: wait for the pause too (a machine slot taken is left unused)
                    now = granted or self._clock()
                    late = now - slot
                    self._next_slot = slot + self.interval + max(0.0, late - LATE_TOLERANCE)
                    self._granted(now)
                    return waited
        return waited  # stopped: the caller sends nothing

    def _granted(self, at: float) -> None:
        """Called with the lock held, once per grant."""
        self._thread.granted = self._last_grant = at
        if self.on_grant is not None:
            self.on_grant(at)
        if self.controller is not None:
            change = self.controller.granted(at)
            if change is not None:
                self._apply(change)

    @property
    def granted_at(self) -> float:
        """When this thread's last slot was granted (by this limiter's clock)."""
        return getattr(self._thread, "granted", 0.0)

    def observe(self, granted_at: float, status: int, headers: Mapping[str, str]) -> None:
        """The vendor's answer to a request granted at `granted_at`: the controller, if any, learns from it."""
        if self.controller is None:
            return
        with self._lock:
            change = self.controller.answered(granted_at, status, headers)
            if change is not None:
                self._apply(change)
            correction = self.controller.corrected if not self._logged_correction else None
            self._logged_correction = self._logged_correction or correction is not None
        if correction and self.log is not None:
            self.log(f"{self.name}: {correction}; kept for the next run (docs/rates.md)")

    def _apply(self, change: RateChange) -> None:
        """Take the controller's decision (the lock is held)."""
        if change.rate != self.rate:
            self.rate = change.rate
            self.interval = spacing(change.rate)
            # The next slot is a new interval after the last grant: a vendor paced from now on
            # (or slower) gets no request early, whatever the old spacing had scheduled.
            self._next_slot = max(self._next_slot, self._last_grant + self.interval)
        if change.pause > 0:
            until = self._clock() + change.pause
            if until > self._next_slot:
                self._next_slot = until
                self._pauses += 1

    def pause(self, seconds: float) -> None:
        """No slot is handed out for the next `seconds` (the vendor asked us to back off).

        A pause of 0 (`Retry-After: 0`: retry at once) holds nothing back, so it changes nothing:
        a caller waiting for its slot keeps it."""
        if seconds <= 0:
            return
        with self._lock:
            until = self._clock() + seconds
            if until > self._next_slot:
                self._next_slot = until
                self._pauses += 1

    def set_rate(self, rate: float | None) -> None:
        """Change the spacing from the next slot on (pauses already set are kept)."""
        with self._lock:
            self.rate = rate
            self.interval = spacing(rate)

    def close(self) -> None:
        if self.machine is not None:
            self.machine.close()


# (limit, slot_decay_per_second, active) of a GCL, read once per limiter.
Describe = Callable[[str], "tuple[int, float, bool]"]
# Takes `occupy` slots of the GCL if they are free now: 0.0 when taken, else the seconds until they will be.
TakeSlots = Callable[[str, int], float]


class SharedLimit(Protocol):
    """Where a shared rate lives (a Prefect GCL in rate-limit mode: `flows.orchestration.shared_limits`)."""

    def describe(self, name: str) -> tuple[int, float, bool]:
        """(limit, slot decay per second, active); raises GlobalLimitError if it cannot be used."""
        ...

    def take(self, name: str, occupy: int) -> float:
        """Take `occupy` slots if they are free now: 0.0 when taken, else the seconds until they will be."""
        ...

    def close(self) -> None:
        """Let go of the connection to where the limit lives (the next `take` opens another)."""
        ...


class NoSharedLimit:
    """No place to read a shared limit from: never send without it."""

    def describe(self, name: str) -> tuple[int, float, bool]:
        raise GlobalLimitError(f"shared limit {name!r} is set, but no Prefect API was given to read it from")

    def take(self, name: str, occupy: int) -> float:
        raise GlobalLimitError(f"shared limit {name!r}: no Prefect API to take slots from")

    def close(self) -> None:
        pass


class GlobalRateLimiter:
    """A vendor's rate shared by many workers through a Prefect GCL in rate-limit mode.

    Slots are taken from the GCL `batch` at a time (default: the GCL's limit, its burst
    size) and kept in a local stock; each request then also waits for its slot in a local
    `RateLimiter` (the worker's own `rate`, or the GCL's decay rate when `rate` is None), so
    a batch is spread out, never sent as a burst.

    Each request uses `1/HEADROOM` slots (about 1.03): the workers together send at most 97%
    of the GCL's rate, the same headroom the local spacing keeps, so batches handed to
    different workers one after the other do not add up to more than the limit in a second.

    A batch is spent within the time its spacing needs for it (97% of one batch period of the
    GCL, or longer when this worker's own rate is lower), or not at all: then the GCL counts the
    slots free and may grant them to another worker, so slots a worker could not spend in time
    (it sat idle, or a 429 paused it) are dropped, and two workers do not send on the same
    slots' time at once. The GCL is never asked again
    sooner than one batch period after this worker's last batch arrived (no one can get
    slots before then). When another worker has the slots, the GCL says how many are taken
    and this worker asks again the moment enough have decayed, not after one of Prefect's
    randomised retry waits, which grow with every refusal and left slots idle between the
    workers' turns. A stop ends the wait.

    `pause()` holds back this worker only; other workers see a 429 themselves.
    A GCL that is missing, inactive or has no slot decay raises `GlobalLimitError` from
    `acquire()`, every time: requests are never sent without the shared limit.
    """

    COST = 1.0 / HEADROOM  # GCL slots per request

    def __init__(
        self,
        name: str,
        rate: float | None = None,
        *,
        batch: int | None = None,
        describe: Describe | None = None,
        take_slots: TakeSlots | None = None,
        shared: SharedLimit | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if batch is not None and batch < 1:
            raise ValueError("batch must be at least 1")
        sleep = sleep or (stop.wait if stop is not None else time.sleep)  # a stop ends the wait
        self.name = name
        self.rate = rate
        self.batch = batch
        self.local = RateLimiter(rate, clock=clock, sleep=sleep, stop=stop)
        self._stop = stop
        self._backend = shared or NoSharedLimit()
        self._describe = describe or self._backend.describe
        self._take_slots = take_slots or self._backend.take
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()  # one GCL call at a time; guards the stock below
        self._ready = False
        self._error: GlobalLimitError | None = None
        self._stock = 0.0  # GCL slots taken and not used yet
        self._stock_expires = 0.0  # when the last batch's slots are stale
        self._spend_seconds = 0.0  # what this worker's spacing needs for one batch
        self._last_grant = float("-inf")  # when the answer granting our last batch came back
        self.decay = 0.0
        # Counters for tests and the benchmark.
        self.batches = 0  # batches the GCL granted
        self.refusals = 0  # asks it refused (another worker had the slots)
        self.slots_taken = 0
        self.slots_dropped = 0.0

    def acquire(self) -> float:
        """Wait for slots from the shared limit, then for this worker's spacing; returns the wait."""
        started = self._clock()
        while True:
            with self._lock:
                if not self._ready:
                    self._setup()
                if self._stock >= self.COST and self._clock() >= self._stock_expires:
                    # Stale: keep less than a request's worth, the headroom left over from a batch.
                    stale = self._stock - self._stock % self.COST
                    self.slots_dropped += stale
                    self._stock -= stale
                while self._stock < self.COST - 1e-9:
                    if not self._refill():
                        return self._clock() - started  # stopped: the caller sends nothing
                self._stock -= self.COST
                expires = self._stock_expires
            self.local.acquire()
            if self._clock() < expires or self._stopped():
                return self._clock() - started
            # Its spacing (or a pause) outlasted the slot: the GCL may have handed it on. Take another.
            with self._lock:
                self.slots_dropped += self.COST

    def pause(self, seconds: float) -> None:
        self.local.pause(seconds)

    @property
    def granted_at(self) -> float:
        return self.local.granted_at

    def observe(self, granted_at: float, status: int, headers: Mapping[str, str]) -> None:
        """The shared rate is the GCL's: answers teach it nothing (a 429 still pauses this worker)."""

    def close(self) -> None:
        self.local.close()
        self._backend.close()

    # -- internals (called with self._lock held) -------------------------------------------
    def _setup(self) -> None:
        if self._error is not None:
            raise self._error
        try:
            limit, decay, active = self._describe(self.name)
            if not active:
                raise GlobalLimitError(f"Prefect global concurrency limit {self.name!r} is inactive")
            if decay <= 0:
                raise GlobalLimitError(
                    f"Prefect global concurrency limit {self.name!r} has no slot decay, so it is not a rate "
                    f"limit; set one: `prefect gcl update {self.name} --slot-decay-per-second <rate>`"
                )
            if limit < 1:
                raise GlobalLimitError(f"Prefect global concurrency limit {self.name!r} has a limit of 0")
        except GlobalLimitError as exc:
            self._error = exc
            raise
        self.batch = min(self.batch or limit, limit)
        self.decay = decay
        # A little sooner than the GCL frees the batch (the same headroom): the other worker's
        # first request, sent the moment it is granted the next batch, must not bunch up with
        # this worker's last ones in one second.
        self._spend_seconds = HEADROOM * self.batch / min(decay, self.rate or decay)
        if self.rate is None:
            self.local.set_rate(decay)
        self._ready = True

    def _refill(self) -> bool:
        """Take one batch from the GCL, waiting as long as it takes; False if a stop came first."""
        batch = cast(int, self.batch)  # an int from _setup() on, which runs before any refill
        wait = self._last_grant + batch / self.decay - self._clock()
        while not self._stopped():
            if wait > 0:
                self._sleep(wait)
                wait = 0.0
                continue  # look at the stop again before asking
            wait = self._take_slots(self.name, batch)
            if wait > 0:
                self.refusals += 1
                continue
            self._last_grant = self._clock()  # the answer is never earlier than the grant
            self.batches += 1
            self.slots_taken += batch
            self._stock += batch
            self._stock_expires = self._last_grant + self._spend_seconds
            return True
        return False

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()


def limiter_for(
    settings: VendorSettings,
    shared: SharedLimit | None = None,
    *,
    machine_dir: Path | None = None,
    stop: threading.Event | None = None,
    remembered: tuple[float, bool] | None = None,
    log: Callable[[str], object] | None = None,
) -> RateLimiter | GlobalRateLimiter:
    """The limiter the settings ask for: shared through `shared` (a Prefect GCL), or this worker's own,
    shared with this machine's other processes through a schedule in `machine_dir` when one is given.

    This worker's own learns the vendor's rate from its answers, from `remembered` (the rate an
    earlier run held, and whether it is stale) and under `<VENDOR>_RATE_LIMIT`."""
    name = settings.global_limit
    if name:
        return GlobalRateLimiter(name, settings.rate_limit, shared=shared, stop=stop)
    machine = None
    if machine_dir is not None and fcntl is not None:  # used while the rate is set or learned
        machine = MachineSchedule.for_vendor(machine_dir, settings.vendor, settings.base_url or "")
    rate, stale = remembered if remembered is not None else (None, False)
    controller = RateController(ceiling=settings.rate_limit, remembered=rate, stale=stale)
    return RateLimiter(
        settings.rate_limit, machine=machine, stop=stop, controller=controller, name=settings.vendor, log=log
    )
