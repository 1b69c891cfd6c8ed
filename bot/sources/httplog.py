"""Quiet logging of bad requests from the internet: one INFO line per client address per
minute, never a traceback, never the request's bytes.

aiohttp logs every request it cannot parse as an ERROR with a traceback on the
``aiohttp.server`` logger (~1.2 kB each, and the exception text quotes the raw request line,
query-string passwords included), plus an access-log line ``"UNKNOWN / HTTP/1.0" 400``.
`BadRequestLogFilter` turns the first into a throttled one-liner and drops the second;
`quiet_bad_requests(app)` installs it for the lifetime of an application.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.sources.ratelimit import Clock, address_key

SERVER_LOGGER = "aiohttp.server"
ACCESS_LOGGER = "aiohttp.access"
_SAFE_REASON = re.compile(r"[A-Za-z0-9 ,.()_-]*")
_ERROR_REQUEST_LINE = "UNKNOWN / HTTP/1.0"  # what aiohttp's access log shows for parse errors


@dataclass(slots=True)
class _Seen:
    logged: float
    suppressed: int = 0


class LogThrottle:
    """At most one log line per key per `interval`; pure logic with an injected clock.

    `hit(key)` returns None when the caller should stay quiet, else how many hits were
    swallowed since the last line (to append to it). Memory is bounded by `max_keys` (the
    stalest keys are forgotten, which at worst lets one more line through).
    """

    def __init__(
        self, interval: float = 60.0, *, max_keys: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def hit(self, key: str) -> int | None:
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.logged < self._interval:
            seen.suppressed += 1
            return None
        suppressed = seen.suppressed if seen is not None else 0
        self._seen[key] = _Seen(logged=now)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return suppressed


def suppressed_note(count: int) -> str:
    """Suffix for a throttled log line."""
    return f" ({count} more since the last line)" if count else ""


def safe_reason(exc: BaseException) -> str:
    """A short description of an aiohttp parse error without any of the request's bytes.

    The messages quote the offending input after a colon or in quotes (`Invalid char in url
    query:\\n b'GET /...'`, `Bad status line 'GET ...'`), so only the leading run of plain
    words is kept.
    """
    message = exc.message if isinstance(exc, HttpProcessingError) else ""
    first = message.splitlines()[0] if message else ""
    match = _SAFE_REASON.match(first)
    reason = (match.group(0) if match else "").strip()[:80]
    return reason or type(exc).__name__


class BadRequestLogFilter(logging.Filter):
    """Install on the aiohttp server logger and on the access logger (see `install`).

    - Server-logger records carrying an aiohttp `HttpProcessingError` (requests it could not
      parse) become one INFO line per client address (IPv6: per /64) per `interval`, without
      traceback or request bytes; the rest of that minute's records from the address are
      dropped. Other records (handler bugs) pass untouched.
    - Access-log records of such requests (`"UNKNOWN / HTTP/1.0" 400`, recognised by the
      default access-log format's fields) are dropped: the server line already says it.
    """

    def __init__(
        self, interval: float = 60.0, *, max_keys: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        super().__init__()
        self.throttle = LogThrottle(interval, max_keys=max_keys, clock=clock)
        self._installed: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            return self._bad_request(record, exc)
        first_line = getattr(record, "first_request_line", None)
        status = getattr(record, "response_status", None)
        return not (first_line == _ERROR_REQUEST_LINE and str(status) == "400")

    def _bad_request(self, record: logging.LogRecord, exc: HttpProcessingError) -> bool:
        args = record.args
        remote = str(args[0]) if isinstance(args, tuple) and args else "unknown"
        suppressed = self.throttle.hit(address_key(remote))
        if suppressed is None:
            return False
        record.msg = "bad HTTP request from %s: %s %s%s"
        record.args = (remote, exc.code, safe_reason(exc), suppressed_note(suppressed))
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True

    def install(self, *loggers: logging.Logger | str) -> BadRequestLogFilter:
        """Add the filter to `loggers` (default: aiohttp's server and access loggers)."""
        for target in loggers or (SERVER_LOGGER, ACCESS_LOGGER):
            logger = logging.getLogger(target) if isinstance(target, str) else target
            if self not in logger.filters:
                logger.addFilter(self)
                self._installed.append(logger)
        return self

    def uninstall(self) -> None:
        for logger in self._installed:
            logger.removeFilter(self)
        self._installed.clear()


def quiet_bad_requests(
    app: web.Application,
    *loggers: logging.Logger | str,
    interval: float = 60.0,
    clock: Clock = time.monotonic,
) -> BadRequestLogFilter:
    """Filter aiohttp's bad-request logging while `app` runs (installed on start-up, removed
    on clean-up). `loggers` defaults to ``aiohttp.server`` and ``aiohttp.access``; pass the
    loggers given to `AppRunner(logger=..., access_log=...)` if those are customised.
    Call before the application starts.
    """
    quiet = BadRequestLogFilter(interval, clock=clock)

    async def installed(_: web.Application) -> AsyncIterator[None]:
        quiet.install(*loggers)
        try:
            yield
        finally:
            quiet.uninstall()

    app.cleanup_ctx.append(installed)
    return quiet
