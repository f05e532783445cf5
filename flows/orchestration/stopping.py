"""Stopping a run: SIGINT and SIGTERM set the run's stop; a second one leaves at once.

The first signal sets a `RunStop` (a `threading.Event`) that every vendor client checks before
each request, that dispatch checks before each chunk, and that the flow reads at the end to
finish `Cancelled` with its counts. Nothing is interrupted mid-call: requests in flight get
their answer (or a short grace, see `connectors.sending.client.STOP_GRACE`), the ledger holds
every answer, the results are written. A second signal exits the process at once: the ledger
commits each answer before its sender sends again, so it is consistent anyway.

Prefect's flow engine installs its own SIGTERM handler (which raises `TerminationSignal`, a
crash) while a flow runs; the flow re-arms these handlers for its own body. Handlers can only
be installed from the main thread; elsewhere `stop_on_signals` yields a stop nothing sets.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; a worker's cancel, systemd, Docker, Kubernetes


class RunStop(threading.Event):
    """Set once the run must stop; remembers the signal that asked."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: signal.Signals | None = None

    def request(self, signum: int) -> None:
        if not self.is_set():
            self.signal = signal.Signals(signum)
            self.set()

    @property
    def reason(self) -> str:
        return f"stopped by {self.signal.name}" if self.signal is not None else "stopped"

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 128 + its number (130, 143)."""
        return 128 + int(self.signal or signal.SIGTERM)


_current: RunStop | None = None  # the outermost stop_on_signals' stop, shared by nested ones


@contextmanager
def stop_on_signals() -> Iterator[RunStop]:
    """SIGINT and SIGTERM set the run's stop while inside; the previous handlers come back after.

    The outermost call (the command, or the deployment's flow) owns the stop; nested calls (the
    flow inside the command, a subflow inside the inbox flow) share it and only re-arm the
    handlers, which Prefect's engine replaced for SIGTERM when the (sub)flow started.
    """
    global _current
    outermost = _current is None
    stop = RunStop() if _current is None else _current
    _current = stop

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # the second one: leave now
            os.write(2, f"invoice-sync: {signal.Signals(signum).name} again: leaving at once\n".encode())
            os._exit(128 + signum)
        stop.request(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if outermost:
            _current = None
