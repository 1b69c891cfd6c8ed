"""Notification / ChannelConfig validation and routing rules."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import SecretStr, ValidationError

from bot.chat import ChannelConfig, ChannelKind, Fact, Notification, Severity

SLACK_URL = "https://hooks.slack.com/services/T0000/B0000/XXXXsecretTOKENxxxx1234"


def note(severity: Severity = Severity.WARNING, site: str = "hq") -> Notification:
    return Notification(severity=severity, title="t", site=site)


def test_severity_orders_by_urgency_not_alphabet() -> None:
    assert [s.rank for s in Severity] == [0, 1, 2, 3]
    assert Severity.CRITICAL.at_least(Severity.ERROR)
    assert not Severity.ERROR.at_least(Severity.CRITICAL)
    assert Severity.INFO.at_least(Severity.INFO)


def test_facts_keep_order_from_mapping_pairs_and_models() -> None:
    from_map = Notification.model_validate(
        {"severity": "info", "title": "t", "site": "s", "facts": {"B": 1, "A": "2"}}
    )
    assert from_map.facts == (Fact(name="B", value="1"), Fact(name="A", value="2"))
    from_pairs = Notification.model_validate(
        {"severity": "info", "title": "t", "site": "s", "facts": [("Z", "1"), ("Y", "2")]}
    )
    assert [f.name for f in from_pairs.facts] == ["Z", "Y"]


def test_notification_defaults_and_strictness() -> None:
    n = note()
    assert n.event_id and n.occurred_at.tzinfo is not None
    assert note().event_id != n.event_id
    with pytest.raises(ValidationError):
        Notification(severity=Severity.INFO, title="t", site="s", occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        Notification.model_validate({"severity": "fatal", "title": "t", "site": "s"})
    with pytest.raises(ValidationError):
        Notification.model_validate({"severity": "info", "title": "", "site": "s"})
    with pytest.raises(ValidationError):
        Notification.model_validate(
            {"severity": "info", "title": "t", "site": "s", "run_url": "ftp://x"}
        )


def test_channel_url_is_secret_in_repr_and_errors() -> None:
    cfg = ChannelConfig(kind=ChannelKind.SLACK, url=SecretStr(SLACK_URL))
    assert "XXXXsecretTOKEN" not in repr(cfg) and "XXXXsecretTOKEN" not in str(cfg.model_dump())
    assert cfg.host == "hooks.slack.com"
    assert cfg.label == "slack@hooks.slack.com"
    with pytest.raises(ValidationError) as info:
        ChannelConfig.model_validate({"kind": "slack", "url": "file:///etc/XXXXsecretTOKEN"})
    assert "XXXXsecretTOKEN" not in str(info.value)


def test_signing_secret_only_for_generic_webhook() -> None:
    ok = ChannelConfig.model_validate(
        {"kind": "webhook", "url": "https://example.net/hook", "signing_secret": "s3cr3t"}
    )
    assert ok.signing_secret is not None and "s3cr3t" not in repr(ok)
    with pytest.raises(ValidationError):
        ChannelConfig.model_validate(
            {"kind": "slack", "url": SLACK_URL, "signing_secret": "s3cr3t"}
        )
    with pytest.raises(ValidationError):
        ChannelConfig.model_validate(
            {"kind": "webhook", "url": "https://e.net/h", "signing_secret": ""}
        )


def test_channel_limits_validated() -> None:
    with pytest.raises(ValidationError):
        ChannelConfig.model_validate({"kind": "slack", "url": SLACK_URL, "timeout": 0})
    with pytest.raises(ValidationError):
        ChannelConfig.model_validate({"kind": "irc", "url": SLACK_URL})
    with pytest.raises(ValidationError):
        ChannelConfig.model_validate({"kind": "slack", "url": SLACK_URL, "max_attempts": 0})


@pytest.mark.parametrize(
    ("min_severity", "sites", "severity", "site", "expected"),
    [
        (Severity.INFO, [], Severity.INFO, "hq", True),
        (Severity.ERROR, [], Severity.WARNING, "hq", False),
        (Severity.ERROR, [], Severity.CRITICAL, "hq", True),
        (Severity.INFO, ["hq", "dr"], Severity.INFO, "branch-1", False),
        (Severity.INFO, ["hq", "dr"], Severity.INFO, "DR", True),
        (Severity.WARNING, ["hq"], Severity.INFO, "hq", False),
    ],
)
def test_accepts_routes_by_site_and_severity(
    min_severity: Severity, sites: list[str], severity: Severity, site: str, expected: bool
) -> None:
    cfg = ChannelConfig.model_validate(
        {
            "kind": "discord",
            "url": "https://discord.example/api/webhooks/1/abc",
            "min_severity": min_severity,
            "sites": sites,
        }
    )
    assert cfg.accepts(note(severity, site)) is expected
