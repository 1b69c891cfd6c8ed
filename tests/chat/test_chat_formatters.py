"""Formatter output against the platforms' documented payload structure and limits."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block, HeaderBlock, PlainTextObject

from bot.chat import ChannelKind, Notification, Severity, format_payload
from bot.chat.formatters.discord import embed_length
from bot.chat.formatters.slack import build_slack_blocks
from tests.chat.chat_validators import VALIDATORS, validate_discord, validate_slack, validate_teams

ELLIPSIS = "…"
# Kinds whose payload is a platform's JSON body (apprise's is apprise's own arguments).
NATIVE = [k for k in ChannelKind if k is not ChannelKind.APPRISE]
WHEN = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)


def make(**overrides: Any) -> Notification:
    base: dict[str, Any] = {
        "severity": Severity.ERROR,
        "title": "Public IP changed at site hq",
        "site": "hq",
        "summary": "The on-prem gateway moved to a new public IP; LNG updated.",
        "facts": {"Old IP": "198.51.100.7", "New IP": "203.0.113.9", "Downtime": "42 s"},
        "run_url": "https://ci.example.com/runs/42",
        "next_step": "Confirm the tunnel is Connected in the portal.",
        "event_id": "evt-123",
        "occurred_at": WHEN,
    }
    base.update(overrides)
    return Notification.model_validate(base)


def huge() -> Notification:
    """Every text far beyond every platform's limit."""
    return make(
        title="T" * 1000,
        summary="S" * 20_000,
        facts=[(f"name-{i}-" + "n" * 400, "v" * 5000) for i in range(120)],
        next_step="N" * 9000,
    )


SAMPLES = pytest.mark.parametrize(
    "notification",
    [
        make(),
        make(severity=Severity.INFO, summary="", facts={}, run_url=None, next_step=None),
        huge(),
        make(title="<!channel> & <https://evil.example|click>", summary="a < b && c > d"),
    ],
    ids=["typical", "minimal", "huge", "hostile-markup"],
)


@pytest.mark.parametrize("kind", NATIVE)
@SAMPLES
def test_payload_validates_against_documented_format(
    kind: ChannelKind, notification: Notification
) -> None:
    payload = format_payload(kind, notification)
    json.dumps(payload)  # must be JSON-serialisable as-is
    assert VALIDATORS[kind.value](payload) == []


# --- the validators themselves must be able to fail --------------------------------


def test_validators_reject_documented_violations() -> None:
    slack = format_payload(ChannelKind.SLACK, make())
    bad = copy.deepcopy(slack)
    bad["blocks"][0]["text"]["text"] = "x" * 151
    assert any("150" in e for e in validate_slack(bad))
    bad = copy.deepcopy(slack)
    bad["blocks"][1]["text"]["text"] = "<!channel> hi"
    assert any("unescaped" in e for e in validate_slack(bad))
    bad = copy.deepcopy(slack)
    bad["blocks"] = bad["blocks"] * 10
    assert validate_slack(bad)

    teams = format_payload(ChannelKind.TEAMS, make())
    bad = copy.deepcopy(teams)
    bad["attachments"][0]["contentUrl"] = "https://x"
    assert validate_teams(bad)
    bad = copy.deepcopy(teams)
    bad["attachments"][0]["content"]["body"][0]["color"] = "red"
    assert validate_teams(bad)

    discord = format_payload(ChannelKind.DISCORD, make())
    bad = copy.deepcopy(discord)
    bad["embeds"][0]["fields"][0]["value"] = ""
    assert validate_discord(bad)
    bad = copy.deepcopy(discord)
    bad["embeds"][0]["color"] = "#ff0000"
    assert validate_discord(bad)
    bad = copy.deepcopy(discord)
    bad["embeds"][0]["description"] = "d" * 4000
    bad["embeds"][0]["fields"] = [{"name": "n", "value": "v" * 1000}] * 3
    assert any("6000" in e for e in validate_discord(bad))


# --- Slack -------------------------------------------------------------------------


def _blocks(payload: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in payload["blocks"] if b["type"] == kind]


def test_slack_layout_and_content() -> None:
    payload = format_payload(ChannelKind.SLACK, make())
    types = [b["type"] for b in payload["blocks"]]
    assert types == ["header", "section", "section", "section", "context", "actions"]
    assert "Public IP changed at site hq" in payload["blocks"][0]["text"]["text"]
    fields = payload["blocks"][2]["fields"]
    assert [f["text"] for f in fields] == [
        "*Old IP*\n198.51.100.7",
        "*New IP*\n203.0.113.9",
        "*Downtime*\n42 s",
    ]
    assert "Next step" in payload["blocks"][3]["text"]["text"]
    button = payload["blocks"][-1]["elements"][0]
    assert button["url"] == "https://ci.example.com/runs/42"
    context = payload["blocks"][4]["elements"][0]["text"]
    assert "<!date^1772368205^" in context and "2026-03-01T12:30:05Z" in context
    assert "ERROR" in payload["text"] and "hq" in payload["text"]


def test_slack_truncates_with_ellipsis_at_documented_limits() -> None:
    payload = format_payload(ChannelKind.SLACK, huge())
    header = payload["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith(ELLIPSIS)
    summary = payload["blocks"][1]["text"]["text"]
    assert len(summary) == 3000 and summary.endswith(ELLIPSIS)
    for section in _blocks(payload, "section"):
        for f in section.get("fields", []):
            assert len(f["text"]) <= 2000
    assert len(payload["blocks"]) <= 50


def test_slack_spreads_facts_over_sections_of_ten_and_reports_overflow() -> None:
    thirty = format_payload(ChannelKind.SLACK, make(facts=[(f"k{i}", f"v{i}") for i in range(30)]))
    field_sections = [b for b in _blocks(thirty, "section") if "fields" in b]
    assert [len(b["fields"]) for b in field_sections] == [10, 10, 10]
    assert field_sections[2]["fields"][-1]["text"] == "*k29*\nv29"  # order kept

    many = format_payload(ChannelKind.SLACK, make(facts=[(f"k{i}", "v") for i in range(600)]))
    assert len(many["blocks"]) == 50
    texts = [f["text"] for b in _blocks(many, "section") if "fields" in b for f in b["fields"]]
    # 45 sections * 10 fields, the last one a marker for the remainder.
    assert len(texts) == 450
    assert texts[-1] == "_+151 more facts_"


def test_slack_escapes_control_characters_without_splitting_entities() -> None:
    payload = format_payload(ChannelKind.SLACK, make(summary="<!here> ping & <https://x|y>"))
    text = payload["blocks"][1]["text"]["text"]
    assert text == "&lt;!here&gt; ping &amp; &lt;https://x|y&gt;"

    long_amp = format_payload(ChannelKind.SLACK, make(summary="&" * 2000))
    text = long_amp["blocks"][1]["text"]["text"]
    assert len(text) <= 3000 and text.endswith(ELLIPSIS)
    assert re.fullmatch(r"(&amp;)+" + ELLIPSIS, text)


@SAMPLES
def test_slack_payload_round_trips_through_slack_sdk_models(notification: Notification) -> None:
    payload = format_payload(ChannelKind.SLACK, notification)
    models = Block.parse_all(payload["blocks"])
    assert [type(m).__name__ for m in models] == [
        {
            "header": "HeaderBlock",
            "section": "SectionBlock",
            "context": "ContextBlock",
            "actions": "ActionsBlock",
        }[b["type"]]
        for b in payload["blocks"]
    ]
    # to_dict() runs slack_sdk's validation (lengths, counts) and must give back the payload.
    assert [m.to_dict() for m in models] == payload["blocks"]
    assert [b.to_dict() for b in build_slack_blocks(notification)] == payload["blocks"]


def test_slack_sdk_validation_is_active_on_the_models() -> None:
    # The guard the formatter relies on: an over-long header cannot be serialised.
    with pytest.raises(SlackObjectFormationError):
        HeaderBlock(text=PlainTextObject(text="x" * 151)).to_dict()
    header = build_slack_blocks(huge())[0]
    assert isinstance(header, HeaderBlock)
    assert header.to_dict()["text"]["text"].endswith(ELLIPSIS)


def test_slack_omits_button_for_url_over_limit() -> None:
    url = "https://ci.example.com/" + "a" * 3100
    payload = format_payload(ChannelKind.SLACK, make(run_url=url))
    assert _blocks(payload, "actions") == []
    assert validate_slack(payload) == []


# --- Teams -------------------------------------------------------------------------


def test_teams_card_structure() -> None:
    payload = format_payload(ChannelKind.TEAMS, make())
    card = payload["attachments"][0]["content"]
    assert card["version"] in {"1.4", "1.5"}
    fact_set = next(el for el in card["body"] if el["type"] == "FactSet")
    assert fact_set["facts"] == [
        {"title": "Old IP", "value": "198.51.100.7"},
        {"title": "New IP", "value": "203.0.113.9"},
        {"title": "Downtime", "value": "42 s"},
    ]
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "View run", "url": "https://ci.example.com/runs/42"}
    ]
    assert card["body"][0]["color"] == "Attention"
    texts = [el["text"] for el in card["body"] if el["type"] == "TextBlock"]
    assert any("Confirm the tunnel" in t for t in texts)


def test_teams_without_run_url_has_no_actions() -> None:
    card = format_payload(ChannelKind.TEAMS, make(run_url=None))["attachments"][0]["content"]
    assert "actions" not in card


def test_teams_huge_input_is_truncated_under_size_limit() -> None:
    payload = format_payload(ChannelKind.TEAMS, huge())
    card = payload["attachments"][0]["content"]
    fact_set = next(el for el in card["body"] if el["type"] == "FactSet")
    assert len(fact_set["facts"]) == 25
    assert fact_set["facts"][-1]["value"] == "+96 more"
    assert fact_set["facts"][0]["value"].endswith(ELLIPSIS)
    assert card["body"][0]["text"].endswith(ELLIPSIS)


# --- Discord -----------------------------------------------------------------------


def test_discord_embed_content() -> None:
    payload = format_payload(ChannelKind.DISCORD, make())
    assert payload["allowed_mentions"] == {"parse": []}
    embed = payload["embeds"][0]
    assert embed["title"] == "Public IP changed at site hq"
    assert embed["timestamp"] == "2026-03-01T12:30:05Z"
    assert embed["color"] == 0xE74C3C
    assert embed["url"] == "https://ci.example.com/runs/42"
    assert "[View run](https://ci.example.com/runs/42)" in embed["description"]
    assert [(f["name"], f["value"]) for f in embed["fields"]] == [
        ("Old IP", "198.51.100.7"),
        ("New IP", "203.0.113.9"),
        ("Downtime", "42 s"),
        ("Next step", "Confirm the tunnel is Connected in the portal."),
    ]
    assert "evt-123" in embed["footer"]["text"]


def test_discord_limits_and_total_budget() -> None:
    payload = format_payload(ChannelKind.DISCORD, huge())
    embed = payload["embeds"][0]
    assert len(embed["title"]) == 256 and embed["title"].endswith(ELLIPSIS)
    assert len(embed["fields"]) <= 25
    assert embed_length(embed) <= 6000
    # The budget is spent on the summary floor + kept facts; dropped facts are announced.
    assert "facts omitted" in embed["footer"]["text"]
    assert embed["fields"][-1]["name"] == "Next step"  # the failure hint survives
    assert embed["description"].endswith("[View run](https://ci.example.com/runs/42)")


def test_discord_field_values_truncated_to_1024() -> None:
    payload = format_payload(ChannelKind.DISCORD, make(facts={"Log": "x" * 5000}, summary=""))
    field = payload["embeds"][0]["fields"][0]
    assert len(field["value"]) == 1024 and field["value"].endswith(ELLIPSIS)


def test_discord_empty_fact_value_is_not_sent_empty() -> None:
    payload = format_payload(ChannelKind.DISCORD, make(facts={"Note": ""}))
    assert payload["embeds"][0]["fields"][0]["value"] != ""
    assert validate_discord(payload) == []


# --- generic webhook ---------------------------------------------------------------


def test_webhook_payload_is_stable_and_complete() -> None:
    payload = format_payload(ChannelKind.WEBHOOK, make(facts=[("IP", "1"), ("IP", "2")]))
    assert payload == {
        "version": 1,
        "severity": "error",
        "title": "Public IP changed at site hq",
        "site": "hq",
        "summary": "The on-prem gateway moved to a new public IP; LNG updated.",
        "facts": {"IP": "1", "IP (2)": "2"},
        "run_url": "https://ci.example.com/runs/42",
        "next_step": "Confirm the tunnel is Connected in the portal.",
        "event_id": "evt-123",
        "occurred_at": "2026-03-01T12:30:05Z",
    }
    assert list(payload["facts"]) == ["IP", "IP (2)"]


def test_webhook_does_not_truncate() -> None:
    payload = format_payload(ChannelKind.WEBHOOK, make(summary="S" * 20_000))
    assert payload["summary"] == "S" * 20_000


# --- apprise -----------------------------------------------------------------------


def test_apprise_payload_is_title_plain_body_and_type() -> None:
    payload = format_payload(ChannelKind.APPRISE, make())
    assert payload == {
        "title": "[ERROR] hq: Public IP changed at site hq",
        "body": (
            "The on-prem gateway moved to a new public IP; LNG updated.\n\n"
            "Old IP: 198.51.100.7\nNew IP: 203.0.113.9\nDowntime: 42 s\n\n"
            "Next step: Confirm the tunnel is Connected in the portal.\n"
            "Run: https://ci.example.com/runs/42\n"
            "Site hq · ERROR · 2026-03-01T12:30:05Z · event evt-123"
        ),
        "notify_type": "failure",
        "body_format": "text",
    }
    minimal = format_payload(
        ChannelKind.APPRISE,
        make(severity=Severity.WARNING, summary="", facts={}, run_url=None, next_step=None),
    )
    assert minimal["body"] == "Site hq · WARNING · 2026-03-01T12:30:05Z · event evt-123"
    assert minimal["notify_type"] == "warning"


def test_apprise_payload_keeps_user_text_literal_and_bounded() -> None:
    hostile = format_payload(ChannelKind.APPRISE, make(summary="<b>x</b> & *y* <!here>"))
    assert hostile["body"].startswith("<b>x</b> & *y* <!here>\n\n")  # plain text, not markup
    payload = format_payload(ChannelKind.APPRISE, huge())
    assert len(payload["title"]) == 250 and payload["title"].endswith(ELLIPSIS)
    lines = payload["body"].split("\n")
    fact_lines = [line for line in lines if line.startswith("name-")]
    assert len(fact_lines) == 49 and all(len(line) <= 500 for line in fact_lines)
    assert "… +71 more facts" in lines
    assert len(payload["body"]) < 32_000
