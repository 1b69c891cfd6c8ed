"""Fan a notification out to every chat channel that wants it.

The notifier is deliberately forgiving: a chat outage must never break the
remediation that triggered the message, so :meth:`Notifier.send` reports
per-channel outcomes instead of raising, and delivers to all channels
concurrently so one slow platform only costs its own deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from pydantic import ValidationError

from bot.chat.apprise import AppriseChannel, apprise_url_secrets
from bot.chat.delivery import DeliveryResult, RetryPolicy, deliver
from bot.chat.formatters import format_payload
from bot.chat.models import ChannelConfig, ChannelKind, Notification
from bot.chat.signing import SIGNATURE_HEADER, sign
from bot.redact import Redactor

__all__ = ["REDACTED", "Notifier", "channel_secrets", "scrub_notification", "url_secrets"]

log = logging.getLogger(__name__)

USER_AGENT = "tunnelwarden-chat/1"
# What a secret becomes in a chat message (logs and history say ``***``).
REDACTED = "[REDACTED]"

# URL path segments / query values at least this long are treated as tokens.
# Short ones ("services", "api", "v1") are routing, not credentials.
_MIN_TOKEN_LEN = 16


def url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that act as credentials.

    Besides the full URL this returns the password, long path segments (Slack
    and Discord tokens) and long query values (the Teams Workflows ``sig``), so
    a token that leaks on its own is still scrubbed.
    """
    found = [url]
    parts = urlsplit(url)
    if parts.password:
        found.append(parts.password)
    found.extend(seg for seg in parts.path.split("/") if len(seg) >= _MIN_TOKEN_LEN)
    found.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_TOKEN_LEN)
    return found


def channel_secrets(channel: ChannelConfig) -> list[str]:
    """Everything of ``channel`` that must never be shown: its URL (for ``apprise``, each
    of its URLs) with the tokens inside, and its signing secret."""
    if channel.kind is ChannelKind.APPRISE:
        found = [channel.url.get_secret_value()]
        for url in channel.apprise_urls:
            found.extend(apprise_url_secrets(url))
    else:
        found = url_secrets(channel.url.get_secret_value())
    if channel.signing_secret is not None:
        found.append(channel.signing_secret.get_secret_value())
    return found


def scrub_notification(
    notification: Notification, secrets: Iterable[str] | Redactor
) -> Notification:
    """Copy of ``notification`` with secrets removed from every text field.

    Done *before* formatting because formatters truncate, and a secret cut in
    half by truncation would no longer match when the payload is scrubbed.
    ``secrets`` is the process's :class:`~bot.redact.Redactor` (or values to
    build a one-off one from).
    """
    redact = secrets if isinstance(secrets, Redactor) else Redactor(secrets)
    data = redact.tree(notification.model_dump(mode="json"), mask=REDACTED)
    try:
        return Notification.model_validate(data)
    except ValidationError:
        # Only the run URL can stop validating after redaction (e.g. a secret host).
        data["run_url"] = None
        return Notification.model_validate(data)


class Notifier:
    """Routes notifications to channels by site and severity and delivers them.

    The caller owns ``session`` (one shared ``aiohttp.ClientSession`` for the
    bot) and should pass ``redactor``, the process's one
    :class:`~bot.redact.Redactor`, so that secrets learnt at run time are
    masked in messages too (without one the notifier makes its own).
    ``secrets`` are values that must never appear in a message; they, channel
    URLs, their embedded tokens and signing secrets are added to the redactor,
    which then masks them in logs and history as well (apprise's own log lines
    included). ``apprise`` channels are delivered by apprise
    (:mod:`bot.chat.apprise`), the others by ``session``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        channels: Iterable[ChannelConfig],
        *,
        secrets: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._session = session
        self._channels = tuple(channels)
        self._retry = retry or RetryPolicy()
        self._redact = redactor if redactor is not None else Redactor()
        for secret in secrets:
            self._redact.add(secret)
        for channel in self._channels:
            for secret in channel_secrets(channel):
                self._redact.add(secret)
        self._scrub = partial(self._redact, mask=REDACTED)
        # apprise channels deliver through apprise, not our HTTP client (loaded on first use)
        self._apprise = {
            id(c): AppriseChannel(c, policy=self._retry, scrub=self._scrub)
            for c in self._channels
            if c.kind is ChannelKind.APPRISE
        }

    @property
    def channels(self) -> tuple[ChannelConfig, ...]:
        return self._channels

    def routes(self, notification: Notification) -> list[ChannelConfig]:
        """Channels that accept ``notification`` (site and severity filters), in config order."""
        return [c for c in self._channels if c.accepts(notification)]

    def render(self, channel: ChannelConfig, notification: Notification) -> dict[str, Any]:
        """The exact, secret-free JSON payload ``channel`` would receive."""
        clean = scrub_notification(notification, self._redact)
        return self._render_clean(channel, clean)

    def _render_clean(self, channel: ChannelConfig, clean: Notification) -> dict[str, Any]:
        payload = format_payload(channel.kind, clean)
        # Second pass: catches secrets formed by formatter-added text or concatenation.
        scrubbed: dict[str, Any] = self._redact.tree(payload, mask=REDACTED)
        return scrubbed

    async def send(self, notification: Notification) -> list[DeliveryResult]:
        """Deliver to all matching channels concurrently; one result per channel, never raises."""
        targets = self.routes(notification)
        if not targets:
            log.debug(
                "chat: no channel wants event=%s site=%s severity=%s",
                notification.event_id,
                notification.site,
                notification.severity.value,
            )
            return []
        clean = scrub_notification(notification, self._redact)
        outcomes = await asyncio.gather(
            *(self._send_one(c, clean) for c in targets), return_exceptions=True
        )
        results: list[DeliveryResult] = []
        for channel, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, DeliveryResult):
                results.append(outcome)
            elif isinstance(outcome, asyncio.CancelledError):
                raise outcome
            else:  # a bug in our own code; still don't take other channels down with it
                log.error(
                    "chat delivery crashed: channel=%s kind=%s error=%s",
                    channel.label,
                    channel.kind.value,
                    type(outcome).__name__,
                )
                results.append(
                    DeliveryResult(
                        channel=channel.label,
                        kind=channel.kind,
                        delivered=False,
                        status=None,
                        attempts=0,
                        error=f"internal error: {type(outcome).__name__}",
                    )
                )
        return results

    async def _send_one(self, channel: ChannelConfig, clean: Notification) -> DeliveryResult:
        payload = self._render_clean(channel, clean)
        target = self._apprise.get(id(channel))
        if target is not None:
            result = await target.send(payload)
        else:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": USER_AGENT,
            }
            if channel.kind is ChannelKind.WEBHOOK and channel.signing_secret is not None:
                headers[SIGNATURE_HEADER] = sign(channel.signing_secret.get_secret_value(), body)
            result = await deliver(
                self._session, channel, body, headers, policy=self._retry, scrub=self._scrub
            )
        level = logging.INFO if result.delivered else logging.WARNING
        log.log(
            level,
            "chat delivery %s: channel=%s kind=%s host=%s event=%s status=%s attempts=%d%s",
            "ok" if result.delivered else "failed",
            channel.label,
            channel.kind.value,
            channel.host,
            clean.event_id,
            result.status,
            result.attempts,
            f" error={result.error}" if result.error else "",
        )
        return result
