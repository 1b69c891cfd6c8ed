"""Apprise message: a title and a plain-text body, with the severity as apprise's type.

Apprise forwards to e-mail, PagerDuty, Opsgenie, ntfy, Telegram, Matrix and many more, each
with its own limits, which apprise applies per service; so this keeps to what every one of
them can show: a one-line title and plain text (``body_format = "text"``: nothing a user
wrote is read as Markdown or HTML, so text from a device cannot form links or mentions).

The payload is the keyword arguments of ``apprise.Apprise.async_notify``::

    {
      "title": "[ERROR] hq: Public IP changed at site hq",
      "body": "summary\\n\\nOld IP: ...\\n...\\nNext step: ...\\nRun: https://...\\n"
              "Site hq · ERROR · 2026-03-01T12:30:05Z · event evt-123",
      "notify_type": "info" | "warning" | "failure",
      "body_format": "text"
    }
"""

from __future__ import annotations

from typing import Any

from bot.chat.formatters.common import SEVERITY_LABEL, iso_utc
from bot.chat.models import Notification, Severity
from bot.chat.text import truncate

__all__ = ["BODY_FORMAT", "NOTIFY_TYPE", "format_apprise"]

# apprise.NotifyType values (apprise's own severities: info, success, warning, failure).
# ERROR and CRITICAL are both "failure", the most urgent type apprise has; the title's
# [CRITICAL] keeps them apart for people.
NOTIFY_TYPE: dict[Severity, str] = {
    Severity.INFO: "info",
    Severity.WARNING: "warning",
    Severity.ERROR: "failure",
    Severity.CRITICAL: "failure",
}
BODY_FORMAT = "text"  # apprise.NotifyFormat.TEXT

TITLE_MAX = 250
SUMMARY_MAX = 4000
FACT_MAX = 500  # one "name: value" line
MAX_FACTS = 50
NEXT_STEP_MAX = 1000


def _fact_lines(n: Notification) -> list[str]:
    lines = [truncate(f"{f.name}: {f.value}", FACT_MAX) for f in n.facts[:MAX_FACTS]]
    if len(n.facts) > MAX_FACTS:
        lines[-1] = f"\N{HORIZONTAL ELLIPSIS} +{len(n.facts) - MAX_FACTS + 1} more facts"
    return lines


def format_apprise(notification: Notification) -> dict[str, Any]:
    """Build the title, body and notify type handed to apprise."""
    n = notification
    label = SEVERITY_LABEL[n.severity]
    sections: list[str] = []
    if n.summary:
        sections.append(truncate(n.summary, SUMMARY_MAX))
    facts = _fact_lines(n)
    if facts:
        sections.append("\n".join(facts))
    tail: list[str] = []
    if n.next_step:
        tail.append(f"Next step: {truncate(n.next_step, NEXT_STEP_MAX)}")
    if n.run_link:
        tail.append(f"Run: {n.run_link}")
    tail.append(
        f"Site {n.site} \N{MIDDLE DOT} {label} \N{MIDDLE DOT} "
        f"{iso_utc(n.occurred_at, 'seconds')} \N{MIDDLE DOT} event {n.event_id}"
    )
    sections.append("\n".join(tail))
    return {
        "title": truncate(f"[{label}] {n.site}: {n.title}", TITLE_MAX),
        "body": "\n\n".join(sections),
        "notify_type": NOTIFY_TYPE[n.severity],
        "body_format": BODY_FORMAT,
    }
