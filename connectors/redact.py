"""Keep credentials out of every message: known secret values and URL tokens become `***`."""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
# The modulus token travels in the query string; any `token=`/`secret=` style value is masked.
_QUERY_SECRET = re.compile(r"(?i)\b(token|secret|api[-_]?key|access_token)=([^&\s'\"]+)")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Remember a credential or token so that `redact` masks it wherever it appears."""
    global _pattern
    if not value or len(value) < 4:  # masking tiny strings would mangle ordinary text
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """The text with every known secret and URL credential masked."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are formatted later from exc_info; pre-render them redacted.
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Attach the redacting filter to every handler of every logger configured so far.

    Handler filters see every record a handler emits, propagated ones included (a logger's own
    filters do not), and Prefect's flow- and task-run loggers have API handlers of their own.
    """
    flt = RedactingFilter()
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
