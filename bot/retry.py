"""Which failures are worth another try, and how long to wait before it.

Only transient faults are retried: timeouts, refused or reset connections, HTTP 408/429/5xx.
A permanent error (400, 403, 404, a validation error) fails at once, so a human hears about
it in seconds rather than after a minute of pointless backoff. A ``Retry-After`` given by the
far side is honoured as the minimum wait.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_after_delay, stop_base
from tenacity.wait import wait_exponential_jitter

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
        value = headers.get("Retry-After") or headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None
    return None


class _WaitHonouringRetryAfter:
    def __init__(self, max_delay: float) -> None:
        self.backoff = wait_exponential_jitter(multiplier=0.5, max=max_delay, jitter=0.5)
        self.max_delay = max_delay

    def __call__(self, state: RetryCallState) -> float:
        computed = float(self.backoff(state))
        outcome = state.outcome
        asked = retry_after(outcome.exception() if outcome else None)
        return min(max(computed, asked or 0.0), self.max_delay)


def retrying(attempts: int, max_delay: float, deadline: float | None = None) -> AsyncRetrying:
    """A tenacity policy: transient errors only, backoff with jitter, Retry-After honoured."""
    stop: stop_base = stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop | stop_after_delay(deadline)
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=_WaitHonouringRetryAfter(max_delay),
        stop=stop,
        reraise=True,
    )


async def call_with_retries(
    action: Callable[[], Awaitable[T]], attempts: int, max_delay: float
) -> T:
    """``await action()``; on a transient fault, try again (``retrying``) up to ``attempts``.

    The first call goes straight through: the common case pays nothing for the policy.
    """
    try:
        return await action()
    except Exception as exc:
        if attempts <= 1 or not is_transient(exc):
            raise
        await asyncio.sleep(min(max(retry_after(exc) or 0.0, 0.5), max_delay))
    async for attempt in retrying(attempts - 1, max_delay):
        with attempt:
            return await action()
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) for a result: ARM-style code when the error carries one."""
    code = getattr(exc, "code", None) or getattr(getattr(exc, "error", None), "code", None)
    message = str(exc) or type(exc).__name__
    return (str(code) if code else type(exc).__name__), message
