"""Faults in a request's own bookkeeping (metrics, access log, settling its limits): counted,
logged without flooding."""

import logging
import time

from aethergate.lib import metrics

log = logging.getLogger(__name__)

# A fault hit by every request would otherwise log a traceback per request.
REPORT_INTERVAL_SECONDS = 60.0


class FaultReporter:
    """`report(request_id)` from an `except` block: counts the fault, logs it now and then.

    The first fault is logged with its traceback; later ones only once per
    `interval` seconds, saying how many came in between. `clock` is the
    time seam for tests.
    """

    def __init__(self, interval: float = REPORT_INTERVAL_SECONDS, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self.count = 0
        self._unreported = 0
        self._last_report: float | None = None

    def report(self, request_id: str) -> None:
        self.count += 1
        self._unreported += 1
        metrics.ACCOUNTING_FAULTS.inc()
        now = self.clock()
        if self._last_report is not None and now - self._last_report < self.interval:
            return
        log.error(
            "Counting request %s in the metrics, the access log or its limits failed "
            "(%d such failures since the last report; their log records were kept)",
            request_id,
            self._unreported,
            exc_info=True,
        )
        self._last_report, self._unreported = now, 0
