"""Test-only: records every rate-limiter grant of this process (see tests.helpers.grant_log_env).

On PYTHONPATH of a process the tests start (an `invoice-sync run`, a flow run of a worker),
it makes each limiter `limiter_for` builds write its grant times (the machine-wide monotonic
clock, read under the limiter's lock) to the file named by INVOICE_SYNC_TEST_GRANT_LOG, one
line each ("<vendor> <time>"), so a test can check the limit where it is kept, across processes.
"""

from __future__ import annotations

import os

_PATH = os.environ.get("INVOICE_SYNC_TEST_GRANT_LOG")

if _PATH:
    from connectors.sending import ratelimit

    _fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _limiter_for = ratelimit.limiter_for

    def _recording_limiter_for(settings, *args, **kwargs):
        limiter = _limiter_for(settings, *args, **kwargs)
        tag = settings.vendor.encode()
        # O_APPEND: each line is one write, whole, whichever process or thread wrote it.
        getattr(limiter, "local", limiter).on_grant = lambda at: os.write(_fd, b"%s %.6f\n" % (tag, at))
        return limiter

    ratelimit.limiter_for = _recording_limiter_for
