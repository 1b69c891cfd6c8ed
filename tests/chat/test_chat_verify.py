"""Inbound chat request authentication: Slack v0, Discord Ed25519, Teams HMAC, replay, size."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict
from redis.asyncio import Redis
from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier

from bot.chat.verify import (
    DEFAULT_MAX_BODY,
    ChatAuthError,
    MemorySeenBefore,
    Verified,
    check_content_length,
    check_replay,
    check_size,
    load_discord_public_key,
    sign_slack,
    sign_teams,
    verify_discord,
    verify_slack,
    verify_teams,
)

# Slack's worked example (docs.slack.dev/authentication/verifying-requests-from-slack).
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TS = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
FULLWIDTH_TS = "".join(chr(0xFF10 + int(d)) for d in str(SLACK_TS))  # str.isdigit() says yes


def slack_headers(sig: str = SLACK_SIG, ts: int | str = SLACK_TS) -> dict[str, str]:
    return {"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": str(ts)}


def reason(exc: pytest.ExceptionInfo[ChatAuthError]) -> str:
    return exc.value.reason


# ---------------------------------------------------------------------- Slack
def test_slack_published_example_signs_and_verifies_with_injected_clock() -> None:
    assert sign_slack(SLACK_SECRET, SLACK_TS, SLACK_BODY) == SLACK_SIG
    result = verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=SLACK_TS + 42)
    assert result == Verified("slack", SLACK_TS)
    # A clock callable works as well as a number.
    assert verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=lambda: SLACK_TS - 299.0)


def test_slack_scheme_matches_slack_sdk_verifier() -> None:
    """The independent implementation in slack_sdk agrees on fresh requests too."""

    class Clock(SlackClock):
        def now(self) -> float:
            return 1_800_000_000.0

    sdk = SignatureVerifier("another-secret", clock=Clock())
    body = b"payload=%7B%22type%22%3A%22block_actions%22%7D"
    headers = slack_headers(sign_slack("another-secret", 1_800_000_000, body), 1_800_000_000)
    assert sdk.is_valid_request(body, headers)
    assert verify_slack("another-secret", headers, body, now=1_800_000_000)


def test_slack_headers_are_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in slack_headers().items()}
    assert verify_slack(SLACK_SECRET, lower, SLACK_BODY, now=SLACK_TS)
    multi = CIMultiDict(slack_headers())
    assert verify_slack(SLACK_SECRET, multi, SLACK_BODY, now=SLACK_TS)


@pytest.mark.parametrize(
    ("secret", "headers", "body"),
    [
        pytest.param(SLACK_SECRET, slack_headers(SLACK_SIG[:-1] + "4"), SLACK_BODY, id="digit"),
        pytest.param("wrong-secret", slack_headers(), SLACK_BODY, id="secret"),
        pytest.param(SLACK_SECRET, slack_headers(), SLACK_BODY + b"&x=1", id="body"),
        pytest.param(SLACK_SECRET, slack_headers("v1" + SLACK_SIG[2:]), SLACK_BODY, id="version"),
        pytest.param(SLACK_SECRET, slack_headers("v0=zz\u00e9"), SLACK_BODY, id="non-ascii"),
        pytest.param(SLACK_SECRET, slack_headers(SLACK_SIG.upper()), SLACK_BODY, id="case"),
    ],
)
def test_slack_wrong_signature_is_rejected(
    secret: str, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(ChatAuthError) as exc:
        verify_slack(secret, headers, body, now=SLACK_TS)
    assert reason(exc) == "bad_signature"
    assert exc.value.http_status == 401


@pytest.mark.parametrize("offset", [301, -301, 86_400 * 365 * 8])
def test_slack_stale_timestamp_is_rejected(offset: int) -> None:
    with pytest.raises(ChatAuthError) as exc:
        verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=SLACK_TS + offset)
    assert reason(exc) == "stale"


def test_slack_window_edges_and_custom_window() -> None:
    assert verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=SLACK_TS + 300)
    assert verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=SLACK_TS - 300)
    with pytest.raises(ChatAuthError, match="stale"):
        verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY, now=SLACK_TS + 61, max_age=60)


def test_slack_stale_check_uses_the_real_clock_by_default() -> None:
    with pytest.raises(ChatAuthError, match="stale"):
        verify_slack(SLACK_SECRET, slack_headers(), SLACK_BODY)  # the example is from 2018


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Slack-Request-Timestamp": str(SLACK_TS)}, id="no-signature"),
        pytest.param({"X-Slack-Signature": SLACK_SIG}, id="no-timestamp"),
        pytest.param({}, id="none"),
        pytest.param(slack_headers(ts=""), id="empty-timestamp"),
        pytest.param(slack_headers(sig="  "), id="blank-signature"),
        pytest.param(slack_headers(ts="1531420618.5"), id="fractional-timestamp"),
        pytest.param(slack_headers(ts="-1531420618"), id="negative-timestamp"),
        pytest.param(slack_headers(ts=FULLWIDTH_TS), id="non-ascii-digits"),
    ],
)
def test_slack_missing_or_unusable_headers_are_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(ChatAuthError) as exc:
        verify_slack(SLACK_SECRET, headers, SLACK_BODY, now=SLACK_TS)
    assert reason(exc) == "missing_header"


def test_slack_oversized_body_is_rejected_before_any_crypto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_crypto(*_: Any, **__: Any) -> Any:
        raise AssertionError("HMAC computed for an oversized body")

    monkeypatch.setattr("bot.chat.verify.hmac.new", no_crypto)
    big = b"x" * (DEFAULT_MAX_BODY + 1)
    with pytest.raises(ChatAuthError) as exc:
        verify_slack(SLACK_SECRET, slack_headers(), big, now=SLACK_TS)
    assert reason(exc) == "too_large"
    assert exc.value.http_status == 413
    with pytest.raises(ChatAuthError, match="too_large"):
        verify_slack(SLACK_SECRET, {}, SLACK_BODY, now=SLACK_TS, max_body=100)


def test_slack_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_slack("  ", slack_headers(), SLACK_BODY, now=SLACK_TS)
    with pytest.raises(ValueError):
        sign_slack("", SLACK_TS, SLACK_BODY)


def test_errors_carry_no_secret_or_request_data() -> None:
    with pytest.raises(ChatAuthError) as exc:
        verify_slack(SLACK_SECRET, slack_headers(SLACK_SIG[:-1] + "0"), SLACK_BODY, now=SLACK_TS)
    rendered = f"{exc.value} {exc.value!r} {exc.value.args}"
    assert rendered == "bad_signature ChatAuthError('bad_signature') ('bad_signature',)"
    assert SLACK_SECRET not in rendered and SLACK_SIG not in rendered


def test_chat_auth_error_only_knows_its_reasons() -> None:
    with pytest.raises(ValueError):
        ChatAuthError("nope")  # type: ignore[arg-type]
    assert {ChatAuthError(r).http_status for r in ("stale", "replay", "missing_header")} == {401}


# ---------------------------------------------------------------------- size helpers
def test_size_helpers() -> None:
    check_size(b"x" * 10, 10)
    with pytest.raises(ChatAuthError, match="too_large"):
        check_size(b"x" * 11, 10)
    assert check_content_length({}, 10) is None
    assert check_content_length({"content-length": "10"}, 10) == 10
    with pytest.raises(ChatAuthError, match="too_large"):
        check_content_length({"Content-Length": "11"}, 10)
    with pytest.raises(ChatAuthError, match="missing_header"):
        check_content_length({"Content-Length": "ten"}, 10)


# ---------------------------------------------------------------------- Discord
@pytest.fixture(scope="module")
def discord_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def discord_headers(key: Ed25519PrivateKey, ts: int, body: bytes) -> dict[str, str]:
    signature = key.sign(str(ts).encode() + body)
    return {"X-Signature-Ed25519": signature.hex(), "X-Signature-Timestamp": str(ts)}


DISCORD_TS = 1_800_000_000
DISCORD_BODY = b'{"type":1,"id":"1234","application_id":"5678"}'


def test_discord_valid_signature(discord_key: Ed25519PrivateKey) -> None:
    headers = discord_headers(discord_key, DISCORD_TS, DISCORD_BODY)
    result = verify_discord(public_hex(discord_key), headers, DISCORD_BODY, now=DISCORD_TS + 5)
    assert result == Verified("discord", DISCORD_TS)
    loaded = load_discord_public_key(public_hex(discord_key).upper())
    assert verify_discord(loaded, headers, DISCORD_BODY, now=lambda: DISCORD_TS)


def test_discord_tampered_body_wrong_key_and_bad_encodings(
    discord_key: Ed25519PrivateKey,
) -> None:
    headers = discord_headers(discord_key, DISCORD_TS, DISCORD_BODY)
    other = public_hex(Ed25519PrivateKey.generate())
    cases: list[tuple[str, dict[str, str], bytes]] = [
        (public_hex(discord_key), headers, DISCORD_BODY.replace(b"1234", b"1235")),
        (other, headers, DISCORD_BODY),
        (public_hex(discord_key), {**headers, "X-Signature-Ed25519": "zz" * 64}, DISCORD_BODY),
        (public_hex(discord_key), {**headers, "X-Signature-Ed25519": "ab" * 63}, DISCORD_BODY),
        # The timestamp is signed: another (fresh) timestamp does not verify.
        (public_hex(discord_key), {**headers, "X-Signature-Timestamp": "1800000001"}, DISCORD_BODY),
    ]
    for key, hdrs, body in cases:
        with pytest.raises(ChatAuthError) as exc:
            verify_discord(key, hdrs, body, now=DISCORD_TS)
        assert reason(exc) == "bad_signature"
        assert exc.value.http_status == 401  # what Discord's probes expect


def test_discord_stale_timestamp_with_configurable_window(discord_key: Ed25519PrivateKey) -> None:
    headers = discord_headers(discord_key, DISCORD_TS, DISCORD_BODY)
    key = public_hex(discord_key)
    with pytest.raises(ChatAuthError, match="stale"):
        verify_discord(key, headers, DISCORD_BODY, now=DISCORD_TS + 301)
    with pytest.raises(ChatAuthError, match="stale"):
        verify_discord(key, headers, DISCORD_BODY, now=DISCORD_TS - 301)
    with pytest.raises(ChatAuthError, match="stale"):
        verify_discord(key, headers, DISCORD_BODY, now=DISCORD_TS + 11, max_age=10)
    assert verify_discord(key, headers, DISCORD_BODY, now=DISCORD_TS + 900, max_age=900)


def test_discord_missing_headers_oversized_and_bad_key(discord_key: Ed25519PrivateKey) -> None:
    key = public_hex(discord_key)
    headers = discord_headers(discord_key, DISCORD_TS, DISCORD_BODY)
    for name in headers:
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(ChatAuthError, match="missing_header"):
            verify_discord(key, partial, DISCORD_BODY, now=DISCORD_TS)
    with pytest.raises(ChatAuthError, match="too_large"):
        verify_discord(key, headers, DISCORD_BODY, now=DISCORD_TS, max_body=10)
    for bad in ("not-hex", "ab" * 31, ""):
        with pytest.raises(ValueError):
            verify_discord(bad, headers, DISCORD_BODY, now=DISCORD_TS)


# ---------------------------------------------------------------------- Teams
# Self-computed vector (no published one exists): key and body from the wave-2 research.
TEAMS_TOKEN = "vqF0En+Z0ucuRTM/01o2GuhMH3hKKk/N2bOmlM31zaA="
TEAMS_BODY = b'{"type":"message"}'
TEAMS_AUTH = "HMAC j+dI9anrE9YRqUcFI9N5ednHoZEXfwn7T6gESXpi3Kk="


def test_teams_hmac_valid() -> None:
    independent = base64.b64encode(
        hmac.new(base64.b64decode(TEAMS_TOKEN), TEAMS_BODY, hashlib.sha256).digest()
    ).decode()
    assert TEAMS_AUTH == f"HMAC {independent}" == sign_teams(TEAMS_TOKEN, TEAMS_BODY)
    assert verify_teams(TEAMS_TOKEN, {"authorization": TEAMS_AUTH}, TEAMS_BODY) == Verified("teams")
    assert verify_teams(TEAMS_TOKEN, {"Authorization": "hmac " + TEAMS_AUTH[5:]}, TEAMS_BODY)


@pytest.mark.parametrize(
    ("token", "auth", "body"),
    [
        pytest.param(TEAMS_TOKEN, TEAMS_AUTH, b'{"type":"message "}', id="body"),
        pytest.param(base64.b64encode(b"k" * 32).decode(), TEAMS_AUTH, TEAMS_BODY, id="token"),
        pytest.param(TEAMS_TOKEN, "Bearer " + TEAMS_AUTH[5:], TEAMS_BODY, id="scheme"),
        pytest.param(TEAMS_TOKEN, "HMAC", TEAMS_BODY, id="empty"),
        pytest.param(TEAMS_TOKEN, TEAMS_AUTH[:-2] + "A=", TEAMS_BODY, id="digest"),
    ],
)
def test_teams_hmac_invalid(token: str, auth: str, body: bytes) -> None:
    with pytest.raises(ChatAuthError) as exc:
        verify_teams(token, {"Authorization": auth}, body)
    assert reason(exc) == "bad_signature"


def test_teams_missing_header_oversized_and_bad_token() -> None:
    with pytest.raises(ChatAuthError, match="missing_header"):
        verify_teams(TEAMS_TOKEN, {}, TEAMS_BODY)
    with pytest.raises(ChatAuthError, match="too_large"):
        verify_teams(TEAMS_TOKEN, {"Authorization": TEAMS_AUTH}, TEAMS_BODY, max_body=4)
    for bad in ("not base64!", ""):
        with pytest.raises(ValueError):
            verify_teams(bad, {"Authorization": TEAMS_AUTH}, TEAMS_BODY)


# ---------------------------------------------------------------------- replay guard
async def test_replay_guard_with_memory_store_and_injected_clock() -> None:
    clock = [1000.0]
    seen = MemorySeenBefore(ttl=60, clock=lambda: clock[0])
    await check_replay("activity-1", seen)
    with pytest.raises(ChatAuthError) as exc:
        await check_replay("activity-1", seen)
    assert reason(exc) == "replay"
    await check_replay("activity-2", seen)
    await check_replay("activity-1", seen, namespace="discord")  # separate namespace
    clock[0] += 61
    await check_replay("activity-1", seen)  # forgotten after the ttl
    assert len(seen) == 1  # expired entries were dropped


async def test_replay_guard_refuses_messages_without_an_id() -> None:
    seen = MemorySeenBefore()
    for missing in (None, "", "   "):
        with pytest.raises(ChatAuthError, match="replay"):
            await check_replay(missing, seen)
    assert len(seen) == 0


async def test_replay_guard_passes_one_of_concurrent_duplicates() -> None:
    seen = MemorySeenBefore()
    results = await asyncio.gather(
        *(check_replay("same", seen) for _ in range(5)), return_exceptions=True
    )
    assert results.count(None) == 1
    assert all(isinstance(r, ChatAuthError) and r.reason == "replay" for r in results if r)


async def test_memory_store_is_bounded() -> None:
    seen = MemorySeenBefore(max_entries=3)
    for i in range(10):
        assert not await seen(f"k{i}")
    assert len(seen) <= 3
    assert await seen("k9")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_replay_guard_backed_by_redis(redis_client: Redis, prefix: str) -> None:
    """The production shape: SET key 1 NX EX ttl is the atomic test-and-record."""
    keys: list[str] = []

    async def seen_before(key: str) -> bool:
        keys.append(key)
        return not await redis_client.set(f"{prefix}:seen:{key}", 1, nx=True, ex=60)

    await check_replay("19:abc@thread.skype;messageid=1", seen_before)
    with pytest.raises(ChatAuthError, match="replay"):
        await check_replay("19:abc@thread.skype;messageid=1", seen_before)
    assert keys == ["teams:19:abc@thread.skype;messageid=1"] * 2
    assert await redis_client.ttl(f"{prefix}:seen:{keys[0]}") > 0
