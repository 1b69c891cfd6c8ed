"""Structural validators for chat payloads, written from each platform's documentation.

``jsonschema`` is not installed, so these are hand-written checks.  Each
returns a list of human-readable problems (empty = valid) so a failing test
shows every violation at once.  Sources:

* Slack Block Kit reference (docs.slack.dev/reference/block-kit): header text
  plain_text <= 150; section text <= 3000, fields <= 10 items of <= 2000;
  context <= 10 elements; actions <= 25 elements; button text plain_text <= 75,
  url <= 3000, action_id <= 255; <= 50 blocks per message; mrkdwn control
  characters ``& < >`` must be escaped unless used for links/dates.
* Teams Workflows webhook + Adaptive Card schema (adaptivecards.io / Microsoft
  Learn): ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content":
  AdaptiveCard}]}``; TextBlock/FactSet/Action.OpenUrl properties and enums;
  Teams message size limit of about 28 KB.
* Discord execute-webhook and embed limits (discord.com/developers/docs):
  content <= 2000, <= 10 embeds, title 256, description 4096, <= 25 fields
  with name 256 / value 1024 (non-empty), footer 2048, 6000 chars per message
  across embeds, color integer, timestamp ISO 8601; webhook embeds may not set
  type/provider/video; allowed_mentions.parse in {roles, users, everyone}.
* Generic webhook: the version-1 schema documented in ``bot/chat/formatters/webhook.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

Problems = list[str]


def _str(problems: Problems, where: str, value: Any, *, max_len: int, min_len: int = 0) -> None:
    if not isinstance(value, str):
        problems.append(f"{where}: expected string, got {type(value).__name__}")
        return
    if len(value) > max_len:
        problems.append(f"{where}: length {len(value)} > {max_len}")
    if len(value) < min_len:
        problems.append(f"{where}: length {len(value)} < {min_len}")


def _keys(problems: Problems, where: str, obj: Any, allowed: set[str], required: set[str]) -> bool:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected object, got {type(obj).__name__}")
        return False
    if missing := required - obj.keys():
        problems.append(f"{where}: missing {sorted(missing)}")
    if extra := obj.keys() - allowed:
        problems.append(f"{where}: unexpected {sorted(extra)}")
    return True


def _iso8601(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None


# ---------------------------------------------------------------- Slack

_SLACK_LINK_OR_DATE = re.compile(
    r"<(?:!date\^\d+\^[^|>]*\|[^<>]*|https?://[^|<>\s]+(?:\|[^<>]*)?)>"
)
_SLACK_ENTITY = re.compile(r"&(?:amp|lt|gt);")


def _slack_text(
    problems: Problems, where: str, obj: Any, *, max_len: int, plain_only: bool = False
) -> None:
    if not _keys(problems, where, obj, {"type", "text", "emoji", "verbatim"}, {"type", "text"}):
        return
    allowed = {"plain_text"} if plain_only else {"plain_text", "mrkdwn"}
    if obj["type"] not in allowed:
        problems.append(f"{where}.type: {obj['type']!r} not in {sorted(allowed)}")
    _str(problems, f"{where}.text", obj["text"], max_len=max_len, min_len=1)
    if obj["type"] == "mrkdwn" and isinstance(obj["text"], str):
        rest = _SLACK_ENTITY.sub("", _SLACK_LINK_OR_DATE.sub("", obj["text"]))
        for ch in "&<>":
            if ch in rest:
                problems.append(f"{where}.text: unescaped control character {ch!r}")


def validate_slack(payload: Any) -> Problems:
    p: Problems = []
    if not _keys(p, "$", payload, {"text", "blocks"}, {"text", "blocks"}):
        return p
    _str(p, "$.text", payload["text"], max_len=40_000, min_len=1)
    blocks = payload["blocks"]
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return [*p, "$.blocks: must be a list of 1..50 blocks"]
    for i, block in enumerate(blocks):
        w = f"$.blocks[{i}]"
        if not isinstance(block, dict):
            p.append(f"{w}: expected object")
            continue
        if "block_id" in block:
            _str(p, f"{w}.block_id", block["block_id"], max_len=255)
        kind = block.get("type")
        if kind == "header":
            _keys(p, w, block, {"type", "text", "block_id"}, {"type", "text"})
            _slack_text(p, f"{w}.text", block.get("text"), max_len=150, plain_only=True)
        elif kind == "section":
            _keys(p, w, block, {"type", "text", "fields", "accessory", "block_id"}, {"type"})
            if "text" not in block and "fields" not in block:
                p.append(f"{w}: section needs text or fields")
            if "text" in block:
                _slack_text(p, f"{w}.text", block["text"], max_len=3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    p.append(f"{w}.fields: must be a list of 1..10 text objects")
                else:
                    for j, f in enumerate(fields):
                        _slack_text(p, f"{w}.fields[{j}]", f, max_len=2000)
        elif kind == "context":
            _keys(p, w, block, {"type", "elements", "block_id"}, {"type", "elements"})
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                p.append(f"{w}.elements: must be a list of 1..10 elements")
            else:
                for j, e in enumerate(elements):
                    _slack_text(p, f"{w}.elements[{j}]", e, max_len=3000)
        elif kind == "actions":
            _keys(p, w, block, {"type", "elements", "block_id"}, {"type", "elements"})
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                p.append(f"{w}.elements: must be a list of 1..25 elements")
                continue
            for j, e in enumerate(elements):
                ew = f"{w}.elements[{j}]"
                allowed = {"type", "text", "url", "action_id", "value", "style", "confirm"}
                if not _keys(p, ew, e, allowed, {"type", "text"}):
                    continue
                if e["type"] != "button":
                    p.append(f"{ew}.type: expected 'button'")
                _slack_text(p, f"{ew}.text", e["text"], max_len=75, plain_only=True)
                if "url" in e:
                    _str(p, f"{ew}.url", e["url"], max_len=3000, min_len=1)
                if "action_id" in e:
                    _str(p, f"{ew}.action_id", e["action_id"], max_len=255)
                if "style" in e and e["style"] not in {"primary", "danger"}:
                    p.append(f"{ew}.style: must be primary or danger")
        elif kind == "divider":
            _keys(p, w, block, {"type", "block_id"}, {"type"})
        else:
            p.append(f"{w}.type: unsupported block type {kind!r}")
    return p


# ---------------------------------------------------------------- Teams

ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
_AC_VERSIONS = {"1.0", "1.1", "1.2", "1.3", "1.4", "1.5"}
_AC_SIZE = {"Default", "Small", "Medium", "Large", "ExtraLarge"}
_AC_WEIGHT = {"Default", "Lighter", "Bolder"}
_AC_COLOR = {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"}
_AC_SPACING = {"None", "Small", "Default", "Medium", "Large", "ExtraLarge", "Padding"}
_AC_TEXTBLOCK = {
    "type",
    "text",
    "wrap",
    "size",
    "weight",
    "color",
    "isSubtle",
    "spacing",
    "maxLines",
    "horizontalAlignment",
    "fontType",
    "separator",
    "id",
    "style",
}
TEAMS_MAX_BYTES = 28 * 1024


def _teams_element(p: Problems, w: str, el: Any) -> None:
    if not isinstance(el, dict):
        p.append(f"{w}: expected object")
        return
    kind = el.get("type")
    if kind == "TextBlock":
        _keys(p, w, el, _AC_TEXTBLOCK, {"type", "text"})
        _str(p, f"{w}.text", el.get("text"), max_len=10_000, min_len=1)
        for prop, allowed in (
            ("size", _AC_SIZE),
            ("weight", _AC_WEIGHT),
            ("color", _AC_COLOR),
            ("spacing", _AC_SPACING),
        ):
            if prop in el and el[prop] not in allowed:
                p.append(f"{w}.{prop}: {el[prop]!r} not in {sorted(allowed)}")
        for prop in ("wrap", "isSubtle"):
            if prop in el and not isinstance(el[prop], bool):
                p.append(f"{w}.{prop}: expected boolean")
    elif kind == "FactSet":
        _keys(p, w, el, {"type", "facts", "spacing", "separator", "id"}, {"type", "facts"})
        facts = el.get("facts")
        if not isinstance(facts, list) or not facts:
            p.append(f"{w}.facts: must be a non-empty list")
            return
        for j, fact in enumerate(facts):
            if _keys(p, f"{w}.facts[{j}]", fact, {"title", "value"}, {"title", "value"}):
                _str(p, f"{w}.facts[{j}].title", fact["title"], max_len=10_000)
                _str(p, f"{w}.facts[{j}].value", fact["value"], max_len=10_000)
    else:
        p.append(f"{w}.type: unsupported element {kind!r}")


def validate_teams(payload: Any) -> Problems:
    p: Problems = []
    if not _keys(p, "$", payload, {"type", "attachments"}, {"type", "attachments"}):
        return p
    if payload["type"] != "message":
        p.append("$.type: must be 'message'")
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    if size > TEAMS_MAX_BYTES:
        p.append(f"$: {size} bytes > Teams limit {TEAMS_MAX_BYTES}")
    atts = payload["attachments"]
    if not isinstance(atts, list) or len(atts) != 1:
        return [*p, "$.attachments: must hold exactly one card"]
    att = atts[0]
    required = {"contentType", "contentUrl", "content"}
    if not _keys(p, "$.attachments[0]", att, required, required):
        return p
    if att["contentType"] != "application/vnd.microsoft.card.adaptive":
        p.append("$.attachments[0].contentType: wrong content type")
    if att["contentUrl"] is not None:
        p.append("$.attachments[0].contentUrl: must be null")
    card = att["content"]
    w = "$.attachments[0].content"
    allowed = {"$schema", "type", "version", "body", "actions", "msteams", "fallbackText", "speak"}
    if not _keys(p, w, card, allowed, {"$schema", "type", "version", "body"}):
        return p
    if card["$schema"] != ADAPTIVE_CARD_SCHEMA:
        p.append(f"{w}.$schema: must be {ADAPTIVE_CARD_SCHEMA}")
    if card["type"] != "AdaptiveCard":
        p.append(f"{w}.type: must be 'AdaptiveCard'")
    if card["version"] not in _AC_VERSIONS:
        p.append(f"{w}.version: {card['version']!r} not supported by Teams")
    body = card["body"]
    if not isinstance(body, list) or not body:
        p.append(f"{w}.body: must be a non-empty list")
    else:
        for i, el in enumerate(body):
            _teams_element(p, f"{w}.body[{i}]", el)
    for i, action in enumerate(card.get("actions", [])):
        aw = f"{w}.actions[{i}]"
        if not _keys(
            p, aw, action, {"type", "title", "url", "id", "iconUrl", "style"}, {"type", "url"}
        ):
            continue
        if action["type"] != "Action.OpenUrl":
            p.append(f"{aw}.type: expected Action.OpenUrl")
        if not (isinstance(action["url"], str) and re.match(r"https?://", action["url"])):
            p.append(f"{aw}.url: must be an http(s) URL")
        if "title" in action:
            _str(p, f"{aw}.title", action["title"], max_len=1000, min_len=1)
    return p


# ---------------------------------------------------------------- Discord


def _embed_chars(embed: dict[str, Any]) -> int:
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += sum(len(f.get("name", "")) + len(f.get("value", "")) for f in embed.get("fields", []))
    total += len(embed.get("footer", {}).get("text", ""))
    total += len(embed.get("author", {}).get("name", ""))
    return total


def validate_discord(payload: Any) -> Problems:
    p: Problems = []
    allowed = {
        "content",
        "username",
        "avatar_url",
        "tts",
        "embeds",
        "allowed_mentions",
        "components",
        "flags",
        "thread_name",
    }
    if not _keys(p, "$", payload, allowed, set()):
        return p
    if "content" not in payload and "embeds" not in payload:
        p.append("$: needs content or embeds")
    if "content" in payload:
        _str(p, "$.content", payload["content"], max_len=2000)
    am = payload.get("allowed_mentions")
    am_keys = {"parse", "roles", "users", "replied_user"}
    if am is not None and _keys(p, "$.allowed_mentions", am, am_keys, set()):
        parse = am.get("parse", [])
        if not isinstance(parse, list) or set(parse) - {"roles", "users", "everyone"}:
            p.append("$.allowed_mentions.parse: invalid")
    embeds = payload.get("embeds", [])
    if not isinstance(embeds, list) or len(embeds) > 10:
        return [*p, "$.embeds: must be a list of at most 10 embeds"]
    total = 0
    for i, e in enumerate(embeds):
        w = f"$.embeds[{i}]"
        allowed_e = {
            "title",
            "description",
            "url",
            "timestamp",
            "color",
            "footer",
            "image",
            "thumbnail",
            "author",
            "fields",
        }
        if not _keys(p, w, e, allowed_e, set()):
            continue
        for forbidden in ("type", "provider", "video"):
            if forbidden in e:
                p.append(f"{w}.{forbidden}: not allowed in webhook embeds")
        if "title" in e:
            _str(p, f"{w}.title", e["title"], max_len=256, min_len=1)
        if "description" in e:
            _str(p, f"{w}.description", e["description"], max_len=4096, min_len=1)
        if "url" in e and not (isinstance(e["url"], str) and re.match(r"https?://", e["url"])):
            p.append(f"{w}.url: must be an http(s) URL")
        if "timestamp" in e and not _iso8601(e["timestamp"]):
            p.append(f"{w}.timestamp: not ISO 8601 with offset")
        if "color" in e:
            c = e["color"]
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 0xFFFFFF:
                p.append(f"{w}.color: must be an integer 0..0xFFFFFF")
        if "footer" in e and _keys(p, f"{w}.footer", e["footer"], {"text", "icon_url"}, {"text"}):
            _str(p, f"{w}.footer.text", e["footer"]["text"], max_len=2048, min_len=1)
        fields = e.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            p.append(f"{w}.fields: must be a list of at most 25 fields")
            continue
        for j, f in enumerate(fields):
            fw = f"{w}.fields[{j}]"
            if _keys(p, fw, f, {"name", "value", "inline"}, {"name", "value"}):
                _str(p, f"{fw}.name", f["name"], max_len=256, min_len=1)
                _str(p, f"{fw}.value", f["value"], max_len=1024, min_len=1)
                if "inline" in f and not isinstance(f["inline"], bool):
                    p.append(f"{fw}.inline: expected boolean")
        total += _embed_chars(e)
    if total > 6000:
        p.append(f"$.embeds: {total} characters > 6000")
    return p


# ---------------------------------------------------------------- generic webhook

_WEBHOOK_KEYS = {
    "version",
    "severity",
    "title",
    "site",
    "summary",
    "facts",
    "run_url",
    "next_step",
    "event_id",
    "occurred_at",
}


def validate_webhook(payload: Any) -> Problems:
    p: Problems = []
    if not _keys(p, "$", payload, _WEBHOOK_KEYS, _WEBHOOK_KEYS):
        return p
    if payload["version"] != 1 or isinstance(payload["version"], bool):
        p.append("$.version: must be 1")
    if payload["severity"] not in {"info", "warning", "error", "critical"}:
        p.append("$.severity: invalid")
    for key in ("title", "site", "event_id"):
        _str(p, f"$.{key}", payload[key], max_len=10**9, min_len=1)
    _str(p, "$.summary", payload["summary"], max_len=10**9)
    facts = payload["facts"]
    if not isinstance(facts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in facts.items()
    ):
        p.append("$.facts: must be an object of string values")
    for key in ("run_url", "next_step"):
        if payload[key] is not None and not isinstance(payload[key], str):
            p.append(f"$.{key}: must be string or null")
    if not (_iso8601(payload["occurred_at"]) and payload["occurred_at"].endswith("Z")):
        p.append("$.occurred_at: must be ISO 8601 UTC with Z")
    return p


VALIDATORS = {
    "slack": validate_slack,
    "teams": validate_teams,
    "discord": validate_discord,
    "webhook": validate_webhook,
}
