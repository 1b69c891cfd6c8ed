"""Typed models for chat notifications and the channels they are delivered to.

The models are the contract between the bot's handlers (which describe *what*
happened) and the platform formatters (which decide *how* it looks), so every
formatter renders the same facts in the same order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ChannelConfig",
    "ChannelKind",
    "Fact",
    "Notification",
    "Severity",
    "split_apprise_urls",
]


class Severity(StrEnum):
    """How urgent a notification is; channels filter on it via ``min_severity``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Numeric order; plain string comparison would sort "critical" < "error"."""
        return _SEVERITY_RANK[self]

    def at_least(self, other: Severity) -> bool:
        """True when this severity is as urgent as ``other`` or more."""
        return self.rank >= other.rank


_SEVERITY_RANK: dict[Severity, int] = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.ERROR: 2,
    Severity.CRITICAL: 3,
}


class ChannelKind(StrEnum):
    """Supported chat platforms; each has its own formatter module."""

    SLACK = "slack"
    TEAMS = "teams"
    DISCORD = "discord"
    WEBHOOK = "webhook"
    # Anything apprise reaches (e-mail, PagerDuty, Opsgenie, ntfy, Telegram, Matrix...):
    # ``url`` holds one or more apprise URLs, not an http(s) webhook.
    APPRISE = "apprise"


NonEmptyStr = Annotated[str, Field(min_length=1)]


class Fact(BaseModel):
    """One labelled value ("Old IP" -> "203.0.113.7"), rendered as a table row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: NonEmptyStr
    value: str


def _now_utc() -> datetime:
    return datetime.now(UTC)


def _new_event_id() -> str:
    return uuid.uuid4().hex


class Notification(BaseModel):
    """Platform-neutral description of something the bot did or noticed.

    ``facts`` keeps insertion order because readers scan them top to bottom
    ("Old IP" before "New IP"); a mapping is accepted for convenience.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity
    title: NonEmptyStr
    site: NonEmptyStr
    summary: str = ""
    facts: tuple[Fact, ...] = ()
    run_url: AnyHttpUrl | None = None
    next_step: str | None = None
    event_id: NonEmptyStr = Field(default_factory=_new_event_id)
    occurred_at: AwareDatetime = Field(default_factory=_now_utc)

    @field_validator("facts", mode="before")
    @classmethod
    def _facts_from_mapping(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple({"name": str(k), "value": str(v)} for k, v in value.items())
        if isinstance(value, list | tuple):
            return tuple(
                {"name": str(item[0]), "value": str(item[1])}
                if isinstance(item, list | tuple) and len(item) == 2
                else item
                for item in value
            )
        return value

    @property
    def run_link(self) -> str | None:
        """The run URL as a plain string (formatters need text, not ``AnyHttpUrl``)."""
        return None if self.run_url is None else str(self.run_url)


_HTTP_SCHEMES = frozenset({"http", "https"})
# Apprise URLs are separated by whitespace or commas (apprise's own rule); a comma inside a
# URL's query (``?to=a@x,b@y``) is not a separator, since no ``scheme://`` follows it.
_APPRISE_COMMA = re.compile(r",+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_APPRISE_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31})://\S+")


def split_apprise_urls(value: str) -> list[str]:
    """The apprise URLs in ``value`` (separated by whitespace, commas or new lines)."""
    return [
        piece.strip(",")
        for word in value.split()
        for piece in _APPRISE_COMMA.split(word)
        if piece.strip(",")
    ]


def _unknown_apprise_schemes(schemes: list[str]) -> list[str]:
    """Those of ``schemes`` no installed apprise plugin handles (apprise imported lazily)."""
    try:
        from apprise import NotificationManager
    except ImportError:
        raise ValueError("kind 'apprise' needs the apprise package (pip install apprise)") from None

    # a singleton: the plugin registry apprise itself uses (its __init__ is untyped)
    plugins = NotificationManager()  # type: ignore[no-untyped-call]
    return [s for s in schemes if s not in plugins]


def _check_apprise_urls(value: str) -> None:
    urls = split_apprise_urls(value)
    if not urls:
        raise ValueError("apprise channel url must hold at least one apprise URL")
    schemes: list[str] = []
    for i, url in enumerate(urls, 1):
        match = _APPRISE_URL.fullmatch(url)
        if match is None:
            raise ValueError(f"apprise url {i} of {len(urls)} must look like scheme://...")
        schemes.append(match["scheme"].lower())
    unknown = _unknown_apprise_schemes(schemes)
    if unknown:
        # A scheme is no secret (the part before "://"), and naming it shows the typo.
        raise ValueError(
            f"apprise url scheme(s) {', '.join(sorted(set(unknown)))} not supported by "
            "the installed apprise (see its list of services)"
        )


class ChannelConfig(BaseModel):
    """Where and when to deliver notifications.

    ``url`` is a ``SecretStr`` because chat webhook URLs embed their bearer
    token; only the host is ever shown (see :pyattr:`host`).  For kind ``apprise``
    it holds one or more apprise URLs (``ntfy://host/topic``, ``mailto://...``,
    ``pagerduty://...``), separated by whitespace, commas or new lines.
    """

    # hide_input_in_errors: a ValidationError would otherwise echo the raw URL.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: ChannelKind
    url: SecretStr
    min_severity: Severity = Severity.INFO
    sites: tuple[NonEmptyStr, ...] = ()
    name: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=300, description="Per-attempt HTTP timeout (s)")
    deadline: float = Field(
        default=30.0, gt=0, le=900, description="Total time budget for all attempts (s)"
    )
    max_attempts: int = Field(default=5, ge=1, le=20)
    signing_secret: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url_fits_kind(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        # Messages name the URL by position only: it is a secret (hide_input_in_errors
        # keeps pydantic from echoing it; our own text must not either).
        kind = info.data.get("kind")
        if kind is None:  # kind itself is invalid; that error is reported
            return value
        if kind is not ChannelKind.APPRISE:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in _HTTP_SCHEMES or not parts.hostname:
                raise ValueError("channel url must be an absolute http(s) URL")
            return value
        _check_apprise_urls(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _signing_only_for_webhook(self) -> ChannelConfig:
        if self.signing_secret is not None:
            if self.kind is not ChannelKind.WEBHOOK:
                raise ValueError("signing_secret is only supported for kind 'webhook'")
            if not self.signing_secret.get_secret_value():
                raise ValueError("signing_secret must not be empty")
        return self

    @property
    def apprise_urls(self) -> list[str]:
        """The channel's apprise URLs (secrets); empty for the other kinds."""
        if self.kind is not ChannelKind.APPRISE:
            return []
        return split_apprise_urls(self.url.get_secret_value())

    @property
    def host(self) -> str:
        """Host part of the URL: safe to log, unlike the full URL.

        For apprise the URL schemes instead (``tgram,mailto``): in many apprise URLs the
        host position holds a token (``tgram://BOT_TOKEN/CHAT``, ``opsgenie://API_KEY``).
        """
        if self.kind is ChannelKind.APPRISE:
            schemes = (u.split("://", 1)[0].lower() for u in self.apprise_urls)
            return ",".join(dict.fromkeys(schemes)) or "?"
        return urlsplit(self.url.get_secret_value()).hostname or "?"

    @property
    def label(self) -> str:
        """Human-readable, secret-free identifier used in logs and results."""
        return self.name or f"{self.kind.value}@{self.host}"

    def accepts(self, notification: Notification) -> bool:
        """Routing rule: severity at or above the threshold and a matching site."""
        if not notification.severity.at_least(self.min_severity):
            return False
        if not self.sites:
            return True
        site = notification.site.casefold()
        return any(site == s.casefold() for s in self.sites)
