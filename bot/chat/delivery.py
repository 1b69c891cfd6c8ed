"""Deliver one pre-rendered payload to one channel, with bounded retries.

Chat platforms rate-limit (429 + ``Retry-After``) and have transient outages
(5xx), so those are retried with exponential backoff and jitter; other 4xx mean
the payload or URL is wrong and retrying cannot help.  Every delivery is capped
by the channel's ``deadline`` so a slow platform never holds up the bot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from bot.chat.models import ChannelConfig, ChannelKind
from bot.chat.text import truncate
from bot.retry import backoff, parse_retry_after

__all__ = ["DeliveryResult", "RetryPolicy", "deliver"]

log = logging.getLogger(__name__)

_DETAIL_BYTES = 512  # enough for Slack's "invalid_blocks" style error bodies
_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts when the server gave no ``Retry-After``.

    Attempt count and the overall deadline are per channel (``ChannelConfig``).
    """

    initial_backoff: float = 0.5
    max_backoff: float = 30.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of delivering one notification to one channel; never contains the URL."""

    channel: str
    kind: ChannelKind
    delivered: bool
    status: int | None
    attempts: int
    error: str | None = None
    elapsed: float = 0.0


class _HTTPStatusError(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.retry_after = retry_after


class _RetryableStatus(_HTTPStatusError):
    """429 or 5xx: the platform may accept the same request later."""


class _PermanentStatus(_HTTPStatusError):
    """Any other non-2xx: the request itself is wrong, so fail fast."""


_RETRYABLE = (
    _RetryableStatus,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
)


def _is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


class _Wait:
    """Honour ``Retry-After`` when the server sent one, else the one backoff
    (``bot.retry.backoff``: exponential, jittered)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
            return exc.retry_after
        p = self._policy
        return backoff(state.attempt_number, p.initial_backoff, p.max_backoff)


def _describe(exc: BaseException, scrub: Callable[[str], str]) -> str:
    if isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, _HTTPStatusError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # Exception text can contain request URLs; scrub before it reaches logs/results.
    return truncate(scrub(text), 300)


async def _read_detail(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await resp.content.read(_DETAIL_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return truncate(" ".join(raw.decode("utf-8", "replace").split()), _DETAIL_CHARS)


async def deliver(
    session: aiohttp.ClientSession,
    channel: ChannelConfig,
    body: bytes,
    headers: Mapping[str, str],
    *,
    policy: RetryPolicy,
    scrub: Callable[[str], str],
) -> DeliveryResult:
    """POST ``body`` to ``channel`` with retries; always returns, never raises (except cancel).

    ``scrub`` removes secrets from error text (which may quote URLs or response bodies).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline_at = started + channel.deadline
    attempts = 0
    url = channel.url.get_secret_value()

    async def attempt() -> int:
        nonlocal attempts
        attempts += 1
        remaining = max(deadline_at - loop.time(), 0.001)
        timeout = aiohttp.ClientTimeout(total=min(channel.timeout, remaining))
        async with session.post(
            url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
        ) as resp:
            if 200 <= resp.status < 300:
                return resp.status
            detail = scrub(await _read_detail(resp))
            if _is_retryable(resp.status):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                raise _RetryableStatus(resp.status, detail, retry_after)
            raise _PermanentStatus(resp.status, detail)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "chat delivery retry: channel=%s kind=%s host=%s attempt=%d error=%s sleep=%.2fs",
            channel.label,
            channel.kind.value,
            channel.host,
            state.attempt_number,
            _describe(exc, scrub) if exc is not None else "?",
            state.upcoming_sleep,
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(channel.max_attempts) | stop_before_delay(channel.deadline),
        wait=_Wait(policy),
        retry=retry_if_exception_type(_RETRYABLE),
        before_sleep=before_sleep,
        reraise=True,
    )

    def result(delivered: bool, status: int | None, error: str | None) -> DeliveryResult:
        return DeliveryResult(
            channel=channel.label,
            kind=channel.kind,
            delivered=delivered,
            status=status,
            attempts=attempts,
            error=error,
            elapsed=round(loop.time() - started, 3),
        )

    try:
        async with asyncio.timeout(channel.deadline):
            status: int = await retrying(attempt)
    except _HTTPStatusError as exc:
        error = _describe(exc, scrub)
        if exc.retry_after is not None and attempts < channel.max_attempts:
            error += (
                f" (Retry-After {exc.retry_after:g}s is beyond the {channel.deadline:g}s deadline)"
            )
        return result(False, exc.status, error)
    except TimeoutError as exc:
        waited = loop.time() - started
        reason = "deadline exceeded" if waited >= channel.deadline else _describe(exc, scrub)
        return result(False, None, f"{reason} after {waited:.1f}s")
    except Exception as exc:  # connection errors and anything unexpected: report, don't raise
        return result(False, None, _describe(exc, scrub))
    return result(True, status, None)
