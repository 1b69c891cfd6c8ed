"""Which failures are worth another try, and what the far side asked us to wait.

Transient: timeouts, refused or reset connections, HTTP 408/429/5xx, ARM's busy codes. A
permanent error (400, 403, 404, a validation error) fails at once, so a human hears about it
in seconds rather than after pointless backoff. Who retries: azure-core for HTTP, the
reconciler (re-plan) and the scheduler (backoff, ``bot.scheduler.backoff``) for the rest.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# ARM error codes that mean "later", whatever the status (409 for a resource that is busy).
TRANSIENT_CODES = frozenset({"AnotherOperationInProgress", "RetryableError"})


class TransientError(Exception):
    """Raised by our own code for a fault that may pass (e.g. a device busy)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """A failure another try will not fix; ``code`` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "Failed") -> None:
        super().__init__(message)
        self.code = code


def status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, PermanentError):
        return False
    # Only look at library exceptions if that library is loaded (keeps imports lazy).
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ServerTimeoutError):
            return True
        if isinstance(exc, aiohttp.ClientResponseError):
            return exc.status in TRANSIENT_STATUS
    azure = sys.modules.get("azure.core.exceptions")
    if azure is not None:
        if isinstance(exc, azure.ServiceRequestError | azure.ServiceResponseError):
            return True
        if isinstance(exc, azure.HttpResponseError):
            code = getattr(getattr(exc, "error", None), "code", None)
            return status_of(exc) in TRANSIENT_STATUS or code in TRANSIENT_CODES
    return False


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None when
    absent or unreadable, so the caller falls back to its backoff. The one parser."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the far side asked us to wait, from the exception or its HTTP response."""
    if exc is None:
        return None
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, int | float):
        return float(explicit)
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    if headers:
        return parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    return None


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): exponential from ``base``,
    jittered by ±20 %, never longer than ``cap`` (jittered below it there, so sites that
    reached the cap do not come back in step), and never shorter than what the far side
    asked for, however long. The one backoff (the scheduler's retries, chat delivery)."""
    exponent = min(max(0, attempt - 1), 32)  # no float overflow
    delay = base * 2.0**exponent * random.uniform(0.8, 1.2)
    if delay > cap:
        delay = cap * random.uniform(0.8, 1.0)
    return float(max(delay, retry_after or 0.0))


@dataclass(frozen=True)
class Waited(Generic[T]):
    """How a domain-level wait ended: ``done``, with the last value read (or, if the last
    read failed with a tolerated error, that error)."""

    done: bool
    value: T | None = None
    error: BaseException | None = None


async def sample_until(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    every: float,
    tolerate: Callable[[BaseException], bool] = lambda exc: False,
) -> Waited[T]:
    """Read until ``done(value)`` or ``within`` seconds pass, every ``every`` seconds.

    The one mechanism for domain-level waits (a tunnel to come up, a resource to leave
    ``Updating``), on tenacity; HTTP retries are the client's. Errors ``tolerate`` accepts are
    missed samples; any other error ends the wait at once.
    """

    def gave_up(state: RetryCallState) -> Waited[T]:
        outcome = state.outcome
        if outcome is None:
            return Waited(False)
        if outcome.failed:
            return Waited(False, error=outcome.exception())
        last: Waited[T] = outcome.result()  # the last sample's own Waited (not done)
        return last

    async def sample() -> Waited[T]:
        value = await read()
        return Waited(done(value), value)

    retrying = AsyncRetrying(
        retry=retry_if_result(lambda w: not w.done) | retry_if_exception(tolerate),
        stop=stop_after_delay(within),
        wait=wait_fixed(every),
        retry_error_callback=gave_up,
    )
    result: Waited[T] = await retrying(sample)
    return result


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) for a result: ARM-style code when the error carries one."""
    code = getattr(exc, "code", None) or getattr(getattr(exc, "error", None), "code", None)
    message = str(exc) or type(exc).__name__
    return (str(code) if code else type(exc).__name__), message
