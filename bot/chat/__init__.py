"""Outbound chat notifications (Slack, Teams, Discord, generic JSON webhook).

Typical use::

    notifier = Notifier(session, [ChannelConfig(kind="slack", url=...)], redactor=redact)
    results = await notifier.send(Notification(severity="warning", title=..., site=...))

``redact`` is the process's :class:`bot.redact.Redactor`: messages are masked with the same
secrets as logs and history (secrets show as ``[REDACTED]`` in chat).

Names are resolved lazily, so importing ``bot.chat.models`` (as the config does) does not
pull in aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeliveryResult": "bot.chat.delivery",
    "RetryPolicy": "bot.chat.delivery",
    "format_payload": "bot.chat.formatters",
    "ChannelConfig": "bot.chat.models",
    "ChannelKind": "bot.chat.models",
    "Fact": "bot.chat.models",
    "Notification": "bot.chat.models",
    "Severity": "bot.chat.models",
    "Notifier": "bot.chat.notifier",
    "REDACTED": "bot.chat.notifier",
    "scrub_notification": "bot.chat.notifier",
    "url_secrets": "bot.chat.notifier",
    "SIGNATURE_HEADER": "bot.chat.signing",
    "sign": "bot.chat.signing",
    "verify": "bot.chat.signing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.chat' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
