"""Notifier end to end over real HTTP against a local receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
from typing import Any

import aiohttp
import pytest

from bot.chat import (
    REDACTED,
    SIGNATURE_HEADER,
    ChannelConfig,
    DeliveryResult,
    Notification,
    Notifier,
    RetryPolicy,
    Severity,
    verify,
)
from tests.chat.chat_receiver import HOST, Receiver, Reply
from tests.chat.chat_validators import VALIDATORS

# Tiny backoff keeps the suite fast; Retry-After tests use server-sent delays
# far larger than this, so honouring them is observable.
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


def channel(rx: Receiver, kind: str, path: str, **extra: Any) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {"kind": kind, "url": rx.url(path), "name": path.strip("/"), **extra}
    )


def event(severity: Severity = Severity.ERROR, site: str = "hq", **extra: Any) -> Notification:
    data: dict[str, Any] = {
        "severity": severity,
        "title": f"Tunnel to {site} reset",
        "site": site,
        "summary": "IPsec SA renegotiated after public IP change.",
        "facts": {"Old IP": "198.51.100.7", "New IP": "203.0.113.9"},
        "run_url": "https://ci.example.com/runs/7",
        "next_step": "Check BGP peers.",
        **extra,
    }
    return Notification.model_validate(data)


def by_channel(results: list[DeliveryResult]) -> dict[str, DeliveryResult]:
    return {r.channel: r for r in results}


def closed_port() -> int:
    """A local port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


async def test_each_platform_receives_a_documented_payload(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    kinds = ["slack", "teams", "discord", "webhook"]
    notifier = Notifier(http, [channel(receiver, k, f"/{k}") for k in kinds], retry=FAST)
    results = await notifier.send(event())
    assert [(r.channel, r.delivered, r.status, r.attempts) for r in results] == [
        (k, True, 200, 1) for k in kinds
    ]
    for k in kinds:
        (req,) = receiver.at(f"/{k}")
        assert req.headers["Content-Type"].startswith("application/json")
        payload = req.json()
        assert VALIDATORS[k](payload) == [], k
        assert "Tunnel to hq reset" in req.body.decode()
    assert SIGNATURE_HEADER not in receiver.at("/webhook")[0].headers


async def test_routes_by_site_and_severity(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    notifier = Notifier(
        http,
        [
            channel(receiver, "slack", "/hq-warn", sites=["hq"], min_severity="warning"),
            channel(receiver, "teams", "/all-errors", min_severity="error"),
            channel(receiver, "discord", "/branch", sites=["branch-1"]),
            channel(receiver, "webhook", "/pager", min_severity="critical"),
        ],
        retry=FAST,
    )
    assert await notifier.send(event(Severity.INFO, "hq")) == []
    warn = await notifier.send(event(Severity.WARNING, "hq"))
    err = await notifier.send(event(Severity.ERROR, "hq"))
    crit = await notifier.send(event(Severity.CRITICAL, "Branch-1"))
    assert [r.channel for r in warn] == ["hq-warn"]
    assert [r.channel for r in err] == ["hq-warn", "all-errors"]
    assert [r.channel for r in crit] == ["all-errors", "branch", "pager"]
    assert [len(receiver.at(p)) for p in ("/hq-warn", "/all-errors", "/branch", "/pager")] == [
        2,
        2,
        1,
        1,
    ]


async def test_retries_429_then_500_then_succeeds_honouring_retry_after(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script(
        "/slack",
        Reply(429, {"Retry-After": "0.3"}, "rate_limited"),
        Reply(500, body="oops"),
        Reply(200),
    )
    notifier = Notifier(http, [channel(receiver, "slack", "/slack")], retry=FAST)
    (result,) = await notifier.send(event())
    assert (result.delivered, result.status, result.attempts, result.error) == (True, 200, 3, None)
    reqs = receiver.at("/slack")
    assert len(reqs) == 3
    assert reqs[0].body == reqs[1].body == reqs[2].body  # same payload every attempt
    assert reqs[1].at - reqs[0].at >= 0.29  # waited for Retry-After, not the 10 ms backoff
    assert reqs[2].at - reqs[1].at < 0.25  # plain backoff after the 500


async def test_gives_up_after_max_attempts_on_5xx(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script("/discord", *[Reply(503)] * 10)
    cfg = channel(receiver, "discord", "/discord", max_attempts=3)
    (result,) = await Notifier(http, [cfg], retry=FAST).send(event())
    assert (result.delivered, result.status, result.attempts) == (False, 503, 3)
    assert result.error is not None and "503" in result.error
    assert len(receiver.at("/discord")) == 3


async def test_fails_fast_on_400(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script("/slack", Reply(400, body="invalid_blocks"), Reply(200))
    (result,) = await Notifier(http, [channel(receiver, "slack", "/slack")], retry=FAST).send(
        event()
    )
    assert (result.delivered, result.status, result.attempts) == (False, 400, 1)
    assert result.error is not None and "invalid_blocks" in result.error
    assert len(receiver.at("/slack")) == 1


async def test_retry_after_beyond_deadline_stops_without_waiting(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script("/teams", Reply(429, {"Retry-After": "30"}), Reply(200))
    cfg = channel(receiver, "teams", "/teams", deadline=2.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    (result,) = await Notifier(http, [cfg], retry=FAST).send(event())
    assert loop.time() - start < 1.0
    assert (result.delivered, result.status, result.attempts) == (False, 429, 1)
    assert result.error is not None and "Retry-After 30s" in result.error


async def test_connection_errors_are_retried_and_reported(http: aiohttp.ClientSession) -> None:
    cfg = ChannelConfig.model_validate(
        {"kind": "webhook", "url": f"http://{HOST}:{closed_port()}/hook", "max_attempts": 3}
    )
    (result,) = await Notifier(http, [cfg], retry=FAST).send(event())
    assert (result.delivered, result.status, result.attempts) == (False, None, 3)
    assert result.error


async def test_hanging_channel_does_not_block_others_beyond_its_deadline(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script("/hang", *[Reply(hang=True)] * 10)
    receiver.script("/slow-ok", Reply(500))
    hang = channel(receiver, "webhook", "/hang", timeout=0.2, deadline=0.6)
    ok = channel(receiver, "slack", "/ok")
    slow_ok = channel(receiver, "discord", "/slow-ok")
    loop = asyncio.get_running_loop()
    start = loop.time()
    results = by_channel(await Notifier(http, [hang, ok, slow_ok], retry=FAST).send(event()))
    elapsed = loop.time() - start
    assert elapsed < 1.0  # bounded by the hung channel's 0.6 s deadline, not its 30 s hang
    assert results["ok"].delivered and results["ok"].elapsed < 0.3
    # Concurrent, not after the hung channel gave up: /ok was hit right away.
    assert receiver.at("/ok")[0].at - start < 0.3
    assert results["slow-ok"].delivered and results["slow-ok"].attempts == 2
    hung = results["hang"]
    assert not hung.delivered and hung.status is None
    assert hung.error is not None and ("timed out" in hung.error or "deadline" in hung.error)
    assert 2 <= hung.attempts <= 4  # per-attempt timeout 0.2 s inside a 0.6 s budget


async def test_hmac_signature_verifies(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    secret = "whsec-0123456789abcdef"
    cfg = channel(receiver, "webhook", "/signed", signing_secret=secret)
    (result,) = await Notifier(http, [cfg], retry=FAST).send(event())
    assert result.delivered
    (req,) = receiver.at("/signed")
    header = req.headers[SIGNATURE_HEADER]
    expected = hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert verify(secret, req.body, header)
    assert not verify(secret, req.body + b" ", header)
    assert secret not in req.body.decode()


async def test_secrets_are_scrubbed_from_payloads(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    psk = "psk-Very-Secret-Value-42"
    leaked_url_token = "tokenAAAABBBBCCCCDDDD"  # path segment of the slack channel URL
    kinds = ["slack", "teams", "discord", "webhook"]
    channels = [channel(receiver, k, f"/{k}") for k in kinds]
    channels[0] = channel(receiver, "slack", f"/services/T1/B2/{leaked_url_token}")
    notifier = Notifier(http, channels, secrets=[psk, ""], retry=FAST)
    dirty = event(
        title=f"Reset with PSK {psk}",
        summary=(
            f"config dump: psk={psk} hook={receiver.url('/discord')} tok={leaked_url_token}"
            " api_key=unconfigured-but-secret-shaped"
        ),
        facts={"Pre-shared key": psk, psk: "as a key"},
        next_step=f"rotate {psk}",
    )
    results = await notifier.send(dirty)
    assert all(r.delivered for r in results)
    assert len(receiver.requests) == 4
    for req in receiver.requests:
        kind = "slack" if req.path.startswith("/services/") else req.path.strip("/")
        body = req.body.decode()
        assert psk not in body, kind
        assert leaked_url_token not in body, kind
        assert receiver.url("/discord") not in body, kind
        assert "unconfigured-but-secret-shaped" not in body, kind
        assert REDACTED in body, kind
        assert VALIDATORS[kind](req.json()) == [], kind


async def test_secret_at_truncation_boundary_is_not_partially_leaked(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    psk = "ZZsecretZZsecretZZsecretZZ"
    # Slack clips the header at 150 chars; put the secret across that boundary.
    title = "x" * 135 + psk
    notifier = Notifier(http, [channel(receiver, "slack", "/slack")], secrets=[psk], retry=FAST)
    (result,) = await notifier.send(event(title=title))
    assert result.delivered
    header = receiver.at("/slack")[0].json()["blocks"][0]["text"]["text"]
    assert "ZZsecret" not in header
    assert REDACTED in header


async def test_logs_and_results_never_contain_urls_or_secrets(
    receiver: Receiver, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    token = "TOKENzzzzYYYYxxxxWWWW"
    path = f"/api/webhooks/123/{token}"
    # A hostile/buggy endpoint echoing the URL back in its error body.
    receiver.script(
        path, Reply(500, body=f"bad {receiver.url(path)}"), Reply(400, body=f"no {token}")
    )
    bad = channel(receiver, "discord", path, name=None)
    refused = ChannelConfig.model_validate(
        {
            "kind": "slack",
            "url": f"http://{HOST}:{closed_port()}/services/{token}x",
            "max_attempts": 2,
        }
    )
    caplog.set_level(logging.DEBUG, logger="bot.chat")
    results = await Notifier(http, [bad, refused], retry=FAST).send(event())
    assert [r.delivered for r in results] == [False, False]
    assert results[0].status == 400 and results[0].attempts == 2
    assert results[0].channel == f"discord@{HOST}"
    text = caplog.text + repr(results)
    assert "chat delivery" in caplog.text  # something was logged...
    assert token not in text  # ...but never the token
    assert "/api/webhooks" not in text and "/services/" not in text
    assert REDACTED in (results[0].error or "")


async def test_send_with_no_channels_is_a_no_op(http: aiohttp.ClientSession) -> None:
    assert await Notifier(http, []).send(event()) == []


async def test_apprise_channel_delivers_beside_native_ones(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    token = "appriseTOKEN0123456789"
    pager = ChannelConfig.model_validate(
        {"kind": "apprise", "url": f"json://{HOST}:{receiver.port}/pager/{token}", "name": "pager"}
    )
    notifier = Notifier(http, [channel(receiver, "slack", "/slack"), pager], retry=FAST)
    dirty = event(summary=f"leaked {token}")
    assert notifier.render(pager, dirty)["notify_type"] == "failure"
    results = await notifier.send(dirty)
    assert [(r.channel, r.kind.value, r.delivered) for r in results] == [
        ("slack", "slack", True),
        ("pager", "apprise", True),
    ]
    (req,) = receiver.at(f"/pager/{token}")
    sent = req.json()
    assert sent["title"] == "[ERROR] hq: Tunnel to hq reset"
    # The channel's own token is scrubbed from what apprise sends, as for every channel.
    assert token not in sent["message"] and REDACTED in sent["message"]
    assert VALIDATORS["slack"](receiver.at("/slack")[0].json()) == []
