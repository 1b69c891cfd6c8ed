"""Chat redaction (through the process's one redactor), Retry-After parsing and signing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp

from bot.chat import REDACTED, ChannelConfig, Notification, Notifier, url_secrets
from bot.chat.notifier import scrub_notification
from bot.chat.signing import sign, verify
from bot.redact import MASK, Redactor
from bot.retry import parse_retry_after

PSK = "psk-Very-Secret/Value+42"


def note(**fields: object) -> Notification:
    return Notification.model_validate(
        {"severity": "error", "title": "Tunnel reset", "site": "hq", **fields}
    )


def test_scrub_notification_masks_every_field_and_fact_label() -> None:
    dirty = note(
        title=f"Reset with {PSK}",
        summary=f"url?x={quote(PSK, safe='')} header={base64.b64encode(PSK.encode()).decode()}",
        facts={"Pre-shared key": PSK, PSK: "as a label"},
        next_step=f"rotate {json.dumps(PSK)}",
    )
    clean = scrub_notification(dirty, Redactor([PSK]))
    text = clean.model_dump_json()
    assert "Very-Secret" not in text and "VmVyeS1TZWNyZXQ" not in text
    assert clean.title == f"Reset with {REDACTED}"
    assert clean.summary == f"url?x={REDACTED} header={REDACTED}"
    assert [(f.name, f.value) for f in clean.facts] == [
        ("Pre-shared key", REDACTED),
        (REDACTED, "as a label"),
    ]
    # Values alone (no redactor) still work, for callers outside a running bot.
    assert scrub_notification(note(title=f"x {PSK}"), [PSK]).title == f"x {REDACTED}"


def test_scrub_notification_masks_secret_shapes_too() -> None:
    clean = scrub_notification(
        note(summary="login token=abcd1234efgh, Authorization: Bearer eyJhbGciOi.x.y"), []
    )
    assert clean.summary == f"login token={REDACTED}, Authorization: Bearer {REDACTED}"


async def test_notifier_shares_the_process_redactor() -> None:
    """Channel credentials join the process's secrets; run-time secrets reach chat masking."""
    token = "tokenAAAABBBBCCCCDDDD"
    hook = f"https://hooks.slack.com/services/T1/B2/{token}"
    channel = ChannelConfig.model_validate({"kind": "slack", "url": hook})
    redact = Redactor(["configured-secret"])
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(session, [channel], secrets=["extra-secret"], redactor=redact)
        # The process's logs now mask the webhook URL, its token and the extra secret...
        assert redact(f"posting to {hook} / {token} / extra-secret") == (
            f"posting to {MASK} / {MASK} / {MASK}"
        )
        # ...and a secret learnt later (a shared key read from Azure) is masked in chat.
        redact.add("shared-key-read-at-run-time")
        payload = notifier.render(
            channel, note(summary="key shared-key-read-at-run-time and configured-secret")
        )
    body = json.dumps(payload)
    assert "shared-key-read-at-run-time" not in body and "configured-secret" not in body
    assert body.count(REDACTED) >= 2


def test_url_secrets_extract_tokens() -> None:
    slack = "https://hooks.slack.com/services/T0000/B0000/abcdefghijklmnopqrstuvwx"
    assert "abcdefghijklmnopqrstuvwx" in url_secrets(slack)
    assert "services" not in url_secrets(slack)
    teams = "https://prod.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?api-version=2016-06-01&sig=Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4"
    assert "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4" in url_secrets(teams)
    assert "pw-is-long-enough" in url_secrets("https://user:pw-is-long-enough@example.com/")


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now=now) == 30.0


def test_sign_and_verify() -> None:
    sig = sign("k", b"body")
    # Known answer: HMAC-SHA256(key=b"k", msg=b"body").
    assert sig == "sha256=c6d811ef3aeb02437cd423f1abe13209041864630bdc4e2c04def5c7b0031a23"
    assert verify("k", b"body", sig)
    assert not verify("k", b"body!", sig)
    assert not verify("other", b"body", sig)
    assert not verify("k", b"body", sig.removeprefix("sha256="))
