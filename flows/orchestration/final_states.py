"""The failed final states our flows end in on purpose (RowsNotDone, FilesRejected, UnusableFile, ...).

Such a state is an answer, not a crash: it carries the counts in its message and, for a caller in
the same process, what it needs (the run's summary) in its data. At the end of a flow run Prefect
resolves a failed state's data into an exception and raises it; in a worker the engine then logs
"Engine execution exited with unexpected exception" with a traceback, for every failed run. Data
Prefect cannot resolve (a list, a summary) makes that a `TypeError` instead. So the data here is a
`ReportedFailure`, an exception holding the detail, and the first `failed()` in a process adds a
filter to Prefect's flow-run logger that drops the engine's line for a `ReportedFailure`, and only
for it: a real crash keeps its traceback, and the state's own "Finished in state ..." line stays.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.states import Failed, State

FLOW_RUN_LOGGER = "prefect.flow_runs"  # the logger of the engine's end-of-run lines (flow_run_logger)


class ReportedFailure(Exception):
    """A failed final state the flow chose; `detail` is what a caller in this process reads from it."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class _DropReportedFailures(logging.Filter):
    """Drops log records whose exception is a ReportedFailure (the state already says it all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ReportedFailure)


_FILTER = _DropReportedFailures()


def failed(name: str, message: str, detail: Any = None) -> State:
    """A Failed state named `name` that Prefect resolves into a ReportedFailure, without a traceback."""
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return Failed(name=name, message=message, data=ReportedFailure(message, detail))


def detail_of(result: Any) -> Any:
    """What a flow's state carries for its caller: the detail of a ReportedFailure, or the result itself."""
    return result.detail if isinstance(result, ReportedFailure) else result
