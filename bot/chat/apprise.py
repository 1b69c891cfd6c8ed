"""Deliver a notification through apprise (e-mail, PagerDuty, Opsgenie, ntfy, Telegram...).

A channel of kind ``apprise`` holds one or more apprise URLs in its ``url`` (a secret, set
with ``url_env``/``url_file`` like every channel URL). They are loaded once, with an
:class:`apprise.AppriseAsset` that keeps apprise's persistent store in memory (nothing
written to disk), follows no redirects (like the native channels) and retries each service
``max_attempts - 1`` times.

Apprise's ``async_notify`` is used: services that support it run concurrently (apprise runs
their blocking ``send()`` in its own worker threads), the call is bounded by the channel's
``deadline`` (apprise's ``timeout``, and an outer ``asyncio.timeout`` as a backstop), and the
event loop is never blocked. The :class:`~apprise.AppriseResult` becomes the
:class:`~bot.chat.delivery.DeliveryResult` the notifier reports: delivered only when every
service succeeded; otherwise a one-line reason per failed service, built from the warnings
apprise captured, scrubbed of secrets.

Secrets: :func:`apprise_url_secrets` lists the parts of an apprise URL that act as
credentials (the notifier registers them with the process redactor, which masks apprise's
own log lines too); errors and results name a URL by position and scheme only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from bot.chat.delivery import DeliveryResult, RetryPolicy
from bot.chat.models import ChannelConfig
from bot.chat.text import truncate

if TYPE_CHECKING:
    import apprise

__all__ = ["AppriseChannel", "apprise_url_secrets"]

# Parts of an apprise URL at least this long are treated as tokens. Shorter than for the
# native webhooks because in apprise URLs the host and path hold credentials and targets
# (``tgram://BOT_TOKEN/CHAT_ID``, ``ntfy://host/TOPIC``, ``opsgenie://API_KEY``).
_MIN_TOKEN_LEN = 8
# Query values: apprise's own options (``format=markdown``, ``priority=high``) are short;
# ``token=``/``key=``/``secret=`` values are masked by the redactor's shapes whatever their
# length.
_MIN_QUERY_TOKEN_LEN = 16
_REASON_MAX = 300
_PIECES = re.compile(r"[/@:?#&=,;]+")
# Beyond the deadline apprise itself keeps, how long to wait before giving up on it.
_BACKSTOP = 2.0


def apprise_url_secrets(url: str) -> list[str]:
    """The parts of one apprise URL that act as credentials (the URL itself first).

    The password; a user name, host or path segment of eight characters or more (a
    dotted host name such as ``smtp.example.com`` or ``127.0.0.1`` is an address, not a
    token, nor is ``localhost``); long query values. Each also percent-decoded, the way
    apprise logs them.
    """
    found = [url]
    _, sep, rest = url.partition("://")
    if not sep:
        return found
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, hostport = netloc.rpartition("@")
    pieces: list[str] = []
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found.append(password)
            found.append(unquote(password))
        pieces.append(user)
    pieces.extend(p for p in hostport.split(":") if "." not in p and p.lower() != "localhost")
    tail = rest[len(netloc) :]
    path = re.split(r"[?#]", tail, maxsplit=1)[0]
    pieces.extend(path.split("/"))
    for piece in pieces:
        for form in (piece, unquote(piece)):
            if len(form) >= _MIN_TOKEN_LEN:
                found.append(form)
                # a decoded piece may itself hold separators ("a%2Fb"): its parts too
                found.extend(p for p in _PIECES.split(form) if len(p) >= _MIN_TOKEN_LEN)
    query = tail.partition("?")[2].partition("#")[0]
    found.extend(v for _, v in parse_qsl(query) if len(v) >= _MIN_QUERY_TOKEN_LEN)
    return list(dict.fromkeys(found))


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() or "?"


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class _Loaded:
    apprise: apprise.Apprise | None
    error: str | None  # why the URLs could not all be loaded (secret-free)
    services: int


class AppriseChannel:
    """One ``apprise`` channel: its URLs loaded into an :class:`apprise.Apprise`, and sending.

    Loading happens on first use, in a thread (importing apprise and its plugins costs a
    few tenths of a second); a URL apprise cannot load makes every delivery fail with a
    reason naming its position and scheme, never its text.
    """

    def __init__(
        self, channel: ChannelConfig, *, policy: RetryPolicy, scrub: Callable[[str], str]
    ) -> None:
        self.channel = channel
        self._policy = policy
        self._scrub = scrub
        self._loaded: _Loaded | None = None
        self._loading = asyncio.Lock()

    def _load(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        import apprise

        c = self.channel
        asset = apprise.AppriseAsset(
            storage_mode="memory",
            default_service_retry=c.max_attempts - 1,
            default_service_wait=self._policy.initial_backoff,
            http_redirects=False,
        )
        apobj = apprise.Apprise(asset=asset)
        urls = c.apprise_urls
        error: str | None = None
        for i, url in enumerate(urls, 1):
            service = apprise.Apprise.instantiate(url, asset=asset)
            if service is None:
                error = (
                    f"apprise url {i} of {len(urls)} ({_scheme(url)}://) could not be loaded "
                    "(invalid for its service)"
                )
                break
            query = url.partition("?")[2].partition("#")[0]
            options = {k.lower() for k, _ in parse_qsl(query)}
            # The channel's per-attempt timeout, unless the URL sets apprise's own.
            if "cto" not in options:
                service.socket_connect_timeout = c.timeout
            if "rto" not in options:
                service.socket_read_timeout = c.timeout
            apobj.add(service)
        self._loaded = _Loaded(None if error else apobj, error, len(urls))
        return self._loaded

    async def send(self, payload: Mapping[str, Any]) -> DeliveryResult:
        """Notify every URL of the channel; always returns, never raises (except cancel)."""
        c = self.channel
        loop = asyncio.get_running_loop()
        started = loop.time()

        def result(delivered: bool, attempts: int, error: str | None) -> DeliveryResult:
            return DeliveryResult(
                channel=c.label,
                kind=c.kind,
                delivered=delivered,
                status=None,  # apprise reports per service, not one HTTP status
                attempts=attempts,
                error=None if error is None else truncate(self._scrub(error), _REASON_MAX),
                elapsed=round(loop.time() - started, 3),
            )

        try:
            async with self._loading:
                # In a thread: the first load imports apprise and its plugins (tenths of
                # a second), which must not stall the event loop.
                cached = self._loaded
                loaded = cached if cached is not None else await asyncio.to_thread(self._load)
        except Exception as exc:  # apprise refusing its asset or a URL outright
            return result(False, 0, f"apprise could not load the channel: {type(exc).__name__}")
        if loaded.apprise is None:
            return result(False, 0, loaded.error)
        import apprise  # loaded by now (by _load, in its thread): no import on the loop

        try:
            async with asyncio.timeout(c.deadline + _BACKSTOP):
                outcome = await loaded.apprise.async_notify(
                    body=payload["body"],
                    title=payload["title"],
                    notify_type=apprise.NotifyType(payload["notify_type"]),
                    body_format=apprise.NotifyFormat(payload["body_format"]),
                    timeout=c.deadline,
                )
        except TimeoutError:
            return result(False, 0, f"deadline exceeded after {loop.time() - started:.1f}s")
        except Exception as exc:  # a bug in apprise or a plugin: report, don't raise
            return result(False, 0, f"apprise failed: {type(exc).__name__}: {exc}")
        with outcome:
            attempts = max((len(r) for r in outcome), default=0)
            if outcome.status == apprise.AppriseResultStatus.SUCCESS:
                return result(True, attempts, None)
            return result(False, attempts, _describe(outcome, loaded.services))


def _reason(entries: Iterator[apprise.NotifyLogEntry]) -> str | None:
    """The last warning or error apprise captured, on one line."""
    last: str | None = None
    for entry in entries:
        if entry.level in {"WARNING", "ERROR", "CRITICAL"} and entry.message.strip():
            last = _one_line(entry.message)
    return last


def _describe(outcome: apprise.AppriseResult, services: int) -> str:
    import apprise

    status = outcome.status
    if status == apprise.AppriseResultStatus.NOMATCH:
        return "apprise had no service to notify"
    failed = [r for r in outcome if r.status != apprise.AppriseResultStatus.SUCCESS]
    reasons = []
    for r in failed:
        if r.status == apprise.AppriseResultStatus.TIMEOUT:
            reasons.append(f"{r.name}: timed out")
        else:
            reasons.append(f"{r.name}: {_reason(r.logs()) or 'failed'}")
    if not reasons:  # the call itself failed (e.g. a message apprise would not take)
        reasons.append(_reason(outcome.call_logs()) or status.name.lower())
    prefix = f"{len(failed)} of {services} apprise services failed: " if services > 1 else ""
    return prefix + "; ".join(reasons)
