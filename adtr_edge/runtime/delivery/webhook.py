"""Alarms as JSON POSTs to an HTTP(S) endpoint, one event per request, in order, from the spool.

An event leaves the spool when the receiver answers 2xx. Anything else (a refused connection, a
timeout, a 5xx, also a 4xx: dropping an alarm because a receiver is misconfigured would lose it)
is retried with exponential back-off (0.5 s doubling to 30 s, +-20 % jitter so many cameras do not
retry in step); the events behind it wait, which keeps the order. Redirects are not followed (a
POST turned into a GET would drop the body): a 3xx is a failure naming the new location. Each
request carries the event's id as ``Idempotency-Key`` too.
"""

from __future__ import annotations

import http.client
import logging
import random
import urllib.error
import urllib.request
from typing import List, Optional, Tuple
from urllib.parse import urlsplit

from ...errors import AdtrError
from ...version import __version__
from ..sources import ReconnectPolicy
from .base import SpoolingSink
from .spool import Row, Spool

log = logging.getLogger(__name__)


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise AdtrError(f"--webhook {url!r}: use an http:// or https:// URL")
    try:
        parts.port
    except ValueError:
        raise AdtrError(f"--webhook {url!r}: bad port") from None
    if not parts.hostname:
        raise AdtrError(f"--webhook {url!r}: no host")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx


class WebhookSink(SpoolingSink):
    name = "webhook"
    window = 1

    def __init__(self, url: str, spool: Spool, *, timeout_s: float = 10.0, backoff: Tuple[float, float] = (0.5, 30.0),
                 drain_s: float = 5.0, **kw):
        super().__init__(spool, frames=False, drain_s=drain_s, **kw)
        self.url = check_webhook_url(url)
        self.timeout_s = timeout_s
        self.backoff = backoff
        self._delays = self._backoff_delays()
        self._failing: Optional[str] = None
        self.retries = 0
        self._opener = urllib.request.build_opener(_NoRedirect)

    def _backoff_delays(self):
        return ReconnectPolicy(initial_delay=self.backoff[0], max_delay=self.backoff[1], factor=2.0, max_attempts=None).delays()

    def _open(self) -> None:
        pass  # one connection per request: nothing to hold open between alarms

    def _shut(self) -> None:
        pass

    def _post(self, row: Row) -> Optional[str]:
        """POST one event; None on 2xx, else why it failed."""
        req = urllib.request.Request(self.url, data=row.body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": row.event_id, "User-Agent": f"adtr-edge/{__version__}"})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            where = f" to {e.headers.get('Location')}" if 300 <= e.code < 400 else ""
            return f"HTTP {e.code} {e.reason}{where}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            return f"{type(reason).__name__}: {reason}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _deliver(self, rows: List[Row]) -> int:
        problem = self._post(rows[0])
        if problem is None:
            if self._failing:
                log.warning("webhook: %s answers again; delivering %d spooled events", self.url, self.backlog())
            self._failing = None
            self._delays = self._backoff_delays()
            return 1
        self.retries += 1
        if self._failing is None:
            log.warning("webhook: POST %s failed (%s); events are spooled in %s and retried with back-off",
                        self.url, problem, self.spool.path)
        self._failing = problem
        self._stopping.wait(next(self._delays) * random.uniform(0.8, 1.2))
        return 0

    def summary(self) -> dict:
        s = super().summary()
        s["delivery"][self.name]["retries"] = self.retries
        return s
