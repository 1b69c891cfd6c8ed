"""Outbound chat notifications (Slack, Teams, Discord, generic JSON webhook).

Typical use::

    notifier = Notifier(session, [ChannelConfig(kind="slack", url=...)], secrets=[...])
    results = await notifier.send(Notification(severity="warning", title=..., site=...))
"""

from bot.chat.delivery import DeliveryResult, RetryPolicy
from bot.chat.formatters import format_payload
from bot.chat.models import ChannelConfig, ChannelKind, Fact, Notification, Severity
from bot.chat.notifier import Notifier, scrub_notification
from bot.chat.redact import Scrubber, redact, redact_payload
from bot.chat.signing import SIGNATURE_HEADER, sign, verify

__all__ = [
    "SIGNATURE_HEADER",
    "ChannelConfig",
    "ChannelKind",
    "DeliveryResult",
    "Fact",
    "Notification",
    "Notifier",
    "RetryPolicy",
    "Scrubber",
    "Severity",
    "format_payload",
    "redact",
    "redact_payload",
    "scrub_notification",
    "sign",
    "verify",
]
