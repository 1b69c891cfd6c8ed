"""Presentation details shared by all formatters (labels, emoji, timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.chat.models import Severity

__all__ = ["RUN_BUTTON_LABEL", "SEVERITY_EMOJI", "SEVERITY_LABEL", "iso_utc"]

SEVERITY_LABEL: dict[Severity, str] = {
    Severity.INFO: "INFO",
    Severity.WARNING: "WARNING",
    Severity.ERROR: "ERROR",
    Severity.CRITICAL: "CRITICAL",
}

# Emoji give the severity a visual cue in notification previews, where colour is lost.
SEVERITY_EMOJI: dict[Severity, str] = {
    Severity.INFO: "\N{INFORMATION SOURCE}\N{VARIATION SELECTOR-16}",
    Severity.WARNING: "\N{WARNING SIGN}\N{VARIATION SELECTOR-16}",
    Severity.ERROR: "\N{LARGE RED CIRCLE}",
    Severity.CRITICAL: "\N{POLICE CARS REVOLVING LIGHT}",
}

RUN_BUTTON_LABEL = "View run"


def iso_utc(moment: datetime, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, the form every platform parses."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
