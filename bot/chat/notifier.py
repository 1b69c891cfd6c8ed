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
from typing import Any

import aiohttp
from pydantic import ValidationError

from bot.chat.delivery import DeliveryResult, RetryPolicy, deliver
from bot.chat.formatters import format_payload
from bot.chat.models import ChannelConfig, ChannelKind, Notification
from bot.chat.redact import Scrubber, url_secrets
from bot.chat.signing import SIGNATURE_HEADER, sign

__all__ = ["Notifier", "scrub_notification"]

log = logging.getLogger(__name__)

USER_AGENT = "tunnelwarden-chat/1"


def scrub_notification(
    notification: Notification, secrets: Iterable[str] | Scrubber
) -> Notification:
    """Copy of ``notification`` with secrets removed from every text field.

    Done *before* formatting because formatters truncate, and a secret cut in
    half by truncation would no longer match when the payload is scrubbed.
    """
    scrub = secrets if isinstance(secrets, Scrubber) else Scrubber(secrets, shapes=True)
    data = scrub.payload(notification.model_dump(mode="json"))
    try:
        return Notification.model_validate(data)
    except ValidationError:
        # Only the run URL can stop validating after redaction (e.g. a secret host).
        data["run_url"] = None
        return Notification.model_validate(data)


class Notifier:
    """Routes notifications to channels by site and severity and delivers them.

    The caller owns ``session`` (one shared ``aiohttp.ClientSession`` for the
    bot).  ``secrets`` are values that must never appear in a message; channel
    URLs, their embedded tokens and signing secrets are added automatically.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        channels: Iterable[ChannelConfig],
        *,
        secrets: Iterable[str] = (),
        retry: RetryPolicy | None = None,
    ) -> None:
        self._session = session
        self._channels = tuple(channels)
        self._retry = retry or RetryPolicy()
        collected = [s for s in secrets if s]
        for channel in self._channels:
            collected.extend(url_secrets(channel.url.get_secret_value()))
            if channel.signing_secret is not None:
                collected.append(channel.signing_secret.get_secret_value())
        self._secrets = tuple(dict.fromkeys(collected))
        self._scrub = Scrubber(self._secrets, shapes=True)

    @property
    def channels(self) -> tuple[ChannelConfig, ...]:
        return self._channels

    def routes(self, notification: Notification) -> list[ChannelConfig]:
        """Channels that accept ``notification`` (site and severity filters), in config order."""
        return [c for c in self._channels if c.accepts(notification)]

    def render(self, channel: ChannelConfig, notification: Notification) -> dict[str, Any]:
        """The exact, secret-free JSON payload ``channel`` would receive."""
        clean = scrub_notification(notification, self._scrub)
        return self._render_clean(channel, clean)

    def _render_clean(self, channel: ChannelConfig, clean: Notification) -> dict[str, Any]:
        payload = format_payload(channel.kind, clean)
        # Second pass: catches secrets formed by formatter-added text or concatenation.
        scrubbed: dict[str, Any] = self._scrub.payload(payload)
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
        clean = scrub_notification(notification, self._scrub)
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
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
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
