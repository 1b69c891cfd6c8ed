"""Telling people: the configured chat channels, with one HTTP session for the process.

Delivery never blocks or fails a run: the notifier retries each channel within its own
deadline and reports per channel; a failing channel is logged and counted, nothing more.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.chat.models import Notification
from bot.config import Settings
from bot.redact import Redactor

if TYPE_CHECKING:
    import aiohttp

    from bot.chat.delivery import DeliveryResult
    from bot.chat.notifier import Notifier

log = logging.getLogger("tunnelwarden.notify")


class Notifications:
    def __init__(self, settings: Settings, redact: Redactor | None = None) -> None:
        self.settings = settings
        self.redact = redact  # the process's redactor, shared with the chat notifier
        self._session: aiohttp.ClientSession | None = None
        self._notifier: Notifier | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.chat.enabled and bool(self.settings.notify)

    def run_url(self, site: str, run_id: str) -> str | None:
        base = self.settings.admin.public_url
        return f"{base.rstrip('/')}/runs/{site}/{run_id}" if base else None

    async def send(self, notification: Notification) -> list[DeliveryResult]:
        if not self.enabled:
            return []
        if self._notifier is None:
            import aiohttp

            from bot.chat.notifier import Notifier

            self._session = aiohttp.ClientSession()
            self._notifier = Notifier(
                self._session,
                self.settings.notify,
                secrets=self.settings.secret_values(),
                redactor=self.redact,
            )
        results = await self._notifier.send(notification)
        for r in results:
            if not r.delivered:
                log.warning(
                    "notification to %s failed after %d attempt(s): %s",
                    r.channel,
                    r.attempts,
                    r.error,
                )
        return results

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._notifier = None
