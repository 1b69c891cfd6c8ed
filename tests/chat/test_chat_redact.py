"""Secret scrubbing helpers."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.chat.delivery import parse_retry_after
from bot.chat.redact import REDACTED, Scrubber, redact, redact_payload, url_secrets
from bot.chat.signing import sign, verify


def test_redact_replaces_every_occurrence() -> None:
    assert redact("a hunter2 b hunter2", ["hunter2"]) == f"a {REDACTED} b {REDACTED}"
    assert redact("nothing here", ["hunter2"]) == "nothing here"


def test_redact_prefers_longest_secret_so_no_remainder_leaks() -> None:
    text = "token=abcdef123456"
    assert redact(text, ["abc", "abcdef123456"]) == f"token={REDACTED}"


def test_redact_ignores_empty_and_blank_secrets() -> None:
    assert redact("keep me", ["", "   "]) == "keep me"


def test_redact_catches_percent_encoded_form() -> None:
    assert redact("url?x=p%40ss%2Fw0rd", ["p@ss/w0rd"]) == f"url?x={REDACTED}"


def test_redact_escapes_regex_metacharacters() -> None:
    assert redact("x a.b*c y axbbc", ["a.b*c"]) == f"x {REDACTED} y axbbc"


def test_redact_payload_walks_nested_keys_and_values() -> None:
    payload = {"s3cret": ["x s3cret", {"k": ("s3cret",)}], "n": 5, "none": None}
    assert redact_payload(payload, ["s3cret"]) == {
        REDACTED: [f"x {REDACTED}", {"k": [REDACTED]}],
        "n": 5,
        "none": None,
    }


def test_scrubber_also_masks_secret_shapes_when_asked() -> None:
    text = "login token=abcd1234efgh with Authorization: Bearer eyJhbGciOi.x.y and k3y"
    exact_only = Scrubber(["k3y"])
    assert exact_only(text) == text.replace("k3y", REDACTED)
    both = Scrubber(["k3y"], shapes=True)
    out = both(text)
    assert "abcd1234efgh" not in out and "eyJhbGciOi" not in out and "k3y" not in out
    assert "token=***" in out and REDACTED in out
    assert both.payload({"a": ["token=abcd1234efgh"]}) == {"a": ["token=***"]}


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
