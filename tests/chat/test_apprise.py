"""The ``apprise`` channel kind, for real: apprise's json://, form:// and ntfy:// targets
pointed at a local receiver on 127.0.0.1 (no other traffic), through the notifier."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from pydantic import ValidationError

from bot.chat import ChannelConfig, DeliveryResult, Notification, Notifier, RetryPolicy, Severity
from bot.chat.apprise import apprise_url_secrets
from bot.chat.models import split_apprise_urls
from bot.config import NotifyChannel
from bot.logs import TextFormatter
from bot.redact import Redactor
from tests.chat.chat_receiver import HOST, Receiver, Reply

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
TOKEN = "tok3nAAAAbbbbCCCCdddd"  # the secret part of the target URLs below


def apprise_channel(url: str, **extra: Any) -> ChannelConfig:
    return ChannelConfig.model_validate({"kind": "apprise", "url": url, **extra})


def event(severity: Severity = Severity.ERROR, **extra: Any) -> Notification:
    data: dict[str, Any] = {
        "severity": severity,
        "title": "Tunnel to hq reset",
        "site": "hq",
        "summary": "IPsec SA renegotiated after public IP change.",
        "facts": {"Old IP": "198.51.100.7", "New IP": "203.0.113.9"},
        "run_url": "https://ci.example.com/runs/7",
        "next_step": "Check BGP peers.",
        "event_id": "evt-7",
        **extra,
    }
    return Notification.model_validate(data)


def closed_port() -> int:
    """A local port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


def json_url(rx: Receiver, path: str = f"/hook/{TOKEN}") -> str:
    return f"json://{HOST}:{rx.port}{path}"


async def send_one(channel: ChannelConfig, http: aiohttp.ClientSession) -> DeliveryResult:
    (result,) = await Notifier(http, [channel], retry=FAST).send(event())
    return result


# --- what arrives ------------------------------------------------------------------


async def test_json_target_receives_title_body_and_type(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    result = await send_one(apprise_channel(json_url(receiver), name="pager"), http)
    assert (result.channel, result.delivered, result.attempts, result.error) == (
        "pager",
        True,
        1,
        None,
    )
    (req,) = receiver.at(f"/hook/{TOKEN}")
    sent = req.json()
    assert sent["title"] == "[ERROR] hq: Tunnel to hq reset"
    assert sent["type"] == "failure"
    body = sent["message"]
    assert body.startswith("IPsec SA renegotiated after public IP change.\n\n")
    assert "Old IP: 198.51.100.7\nNew IP: 203.0.113.9" in body
    assert "Next step: Check BGP peers.\nRun: https://ci.example.com/runs/7" in body
    assert body.endswith("event evt-7")


@pytest.mark.parametrize(
    ("severity", "notify_type"),
    [
        (Severity.INFO, "info"),
        (Severity.WARNING, "warning"),
        (Severity.ERROR, "failure"),
        (Severity.CRITICAL, "failure"),
    ],
)
async def test_severity_maps_to_apprise_notify_type(
    receiver: Receiver, http: aiohttp.ClientSession, severity: Severity, notify_type: str
) -> None:
    notifier = Notifier(http, [apprise_channel(json_url(receiver))], retry=FAST)
    (result,) = await notifier.send(event(severity))
    assert result.delivered
    (req,) = receiver.requests
    assert req.json()["type"] == notify_type
    assert req.json()["title"].startswith(f"[{severity.value.upper()}] hq: ")


async def test_form_target_receives_form_fields(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    url = f"form://{HOST}:{receiver.port}/form/{TOKEN}"
    result = await send_one(apprise_channel(url), http)
    assert result.delivered
    (req,) = receiver.at(f"/form/{TOKEN}")
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    fields = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
    assert fields["title"] == "[ERROR] hq: Tunnel to hq reset"
    assert fields["type"] == "failure"
    assert "New IP: 203.0.113.9" in fields["message"]


async def test_ntfy_target_on_a_local_host(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    topic = "tunnelwarden-alerts"
    result = await send_one(apprise_channel(f"ntfy://{HOST}:{receiver.port}/{topic}"), http)
    assert result.delivered
    (req,) = receiver.requests
    sent = req.json()
    assert (sent["topic"], sent["title"]) == (topic, "[ERROR] hq: Tunnel to hq reset")
    assert "Check BGP peers." in sent["message"]


async def test_one_channel_fans_out_to_several_urls_from_url_file(
    receiver: Receiver, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret_file = tmp_path / "apprise-urls"
    secret_file.write_text(
        f"{json_url(receiver, '/a/' + TOKEN)},\n"
        f"form://{HOST}:{receiver.port}/b/{TOKEN}?to=x@example.com,y@example.com\n"
    )
    channel = NotifyChannel.model_validate({"kind": "apprise", "url_file": str(secret_file)})
    assert len(channel.apprise_urls) == 2
    assert channel.label == "apprise@json,form"
    result = await send_one(channel, http)
    assert result.delivered and result.attempts == 1
    assert sorted(r.path for r in receiver.requests) == [f"/a/{TOKEN}", f"/b/{TOKEN}"]


async def test_url_env_twin_and_literal_url_refused_in_config_file(
    receiver: Receiver,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TW_TEST_APPRISE", json_url(receiver))
    channel = NotifyChannel.model_validate({"kind": "apprise", "url_env": "TW_TEST_APPRISE"})
    assert (await send_one(channel, http)).delivered

    from bot.config import ConfigError, load_config

    config = tmp_path / "tw.toml"
    config.write_text(f'[[notify]]\nkind = "apprise"\nurl = "{json_url(receiver)}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert any("notify.0.url: secrets must not be written" in p for p in info.value.problems)
    assert TOKEN not in str(info.value)


# --- failures ----------------------------------------------------------------------


async def test_receiver_answering_500_is_a_failed_delivery_with_a_clean_reason(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    path = f"/hook/{TOKEN}"
    receiver.script(path, *[Reply(500, body=f"boom {json_url(receiver)} {TOKEN}")] * 5)
    result = await send_one(apprise_channel(json_url(receiver), max_attempts=2), http)
    assert (result.delivered, result.status, result.attempts) == (False, None, 2)
    assert len(receiver.at(path)) == 2  # retried once (max_attempts = 2), then gave up
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("JSON: ") and "500" in result.error
    assert TOKEN not in repr(result) and "/hook/" not in repr(result)


async def test_receiver_down_is_a_failed_delivery_with_a_clean_reason(
    http: aiohttp.ClientSession,
) -> None:
    url = f"json://{HOST}:{closed_port()}/hook/{TOKEN}"
    result = await send_one(apprise_channel(url, max_attempts=1), http)
    assert (result.delivered, result.attempts) == (False, 1)
    assert result.error is not None and "\n" not in result.error
    assert "connection error" in result.error.lower()
    assert TOKEN not in repr(result)


async def test_partial_failure_names_the_failed_service_only(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script("/bad", Reply(503))
    url = f"{json_url(receiver, '/ok')} json://{HOST}:{receiver.port}/bad"
    result = await send_one(apprise_channel(url, max_attempts=1), http)
    assert not result.delivered
    assert result.error is not None
    assert result.error.startswith("1 of 2 apprise services failed: JSON: ")
    assert "503" in result.error
    assert [r.path for r in receiver.at("/ok")] == ["/ok"]  # the good one still got it


async def test_url_apprise_cannot_load_fails_without_sending(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    # A known scheme (passes config validation) with a bot token Telegram would never issue.
    channel = apprise_channel(f"{json_url(receiver)} tgram://{TOKEN}")
    result = await send_one(channel, http)
    assert (result.delivered, result.attempts) == (False, 0)
    assert (
        result.error
        == "apprise url 2 of 2 (tgram://) could not be loaded (invalid for its service)"
    )
    assert receiver.requests == []


async def test_hanging_receiver_is_bounded_by_the_channel_timeout(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script(f"/hook/{TOKEN}", Reply(hang=True))
    channel = apprise_channel(json_url(receiver), timeout=0.3, deadline=5, max_attempts=1)
    result = await send_one(channel, http)
    assert not result.delivered
    assert result.error is not None and result.error.startswith("JSON: ")
    assert TOKEN not in result.error
    assert len(receiver.requests) == 1


# --- secrets: config errors, labels, logs ------------------------------------------


def test_config_errors_name_no_url() -> None:
    errors: list[str] = []
    for data, expected in [
        ({"kind": "apprise", "url": f"tgramm://{TOKEN}/123"}, "tgramm not supported"),
        (
            {"kind": "apprise", "url": f"json://{HOST}/ok just-a-{TOKEN}"},
            "apprise url 2 of 2 must look like scheme://",
        ),
        ({"kind": "apprise", "url": " , "}, "at least one apprise URL"),
        ({"kind": "webhook", "url": f"json://{HOST}/{TOKEN}"}, "absolute http(s) URL"),
    ]:
        with pytest.raises(ValidationError) as info:
            ChannelConfig.model_validate(data)
        assert expected in str(info.value)
        errors.append(str(info.value))
    assert not any(TOKEN in text for text in errors)


def test_label_and_host_show_schemes_not_tokens() -> None:
    bot_token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    channel = apprise_channel(f"tgram://{bot_token}/-1001234567890, mailto://u:pw@example.com")
    assert channel.host == "tgram,mailto"
    assert channel.label == "apprise@tgram,mailto"
    assert bot_token not in repr(channel) and "AAHdq" not in str(channel.model_dump())


def test_url_secrets_cover_tokens_in_every_position() -> None:
    tg = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567890"
    assert {"AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "123456789", "-1001234567890"} <= set(
        apprise_url_secrets(tg)
    )
    pd = "pagerduty://0123456789abcdef0123456789abcdef@fedcba9876543210fedcba9876543210"
    assert {"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"} <= set(
        apprise_url_secrets(pd)
    )
    mail = apprise_url_secrets("mailto://ops:p%40ss-word@smtp.example.com?to=noc@example.com")
    assert {"p%40ss-word", "p@ss-word"} <= set(mail)
    assert "smtp.example.com" not in mail  # an address, not a token
    ntfy = apprise_url_secrets(f"ntfys://ntfy.example.net/{TOKEN}?priority=high")
    assert TOKEN in ntfy and "high" not in ntfy
    assert "localhost" not in apprise_url_secrets(f"json://localhost:8080/{TOKEN}")
    assert split_apprise_urls(f"{tg}, {pd}\n{tg}") == [tg, pd, tg]


async def test_url_and_token_are_masked_in_logs_and_results(
    receiver: Receiver, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/hook/{TOKEN}"
    receiver.script(path, Reply(500, body=f"echo {TOKEN}"))
    redactor = Redactor()  # the process's one redactor, shared with the log formatter
    channel = apprise_channel(json_url(receiver), max_attempts=1)
    caplog.set_level(logging.DEBUG, logger="apprise")
    caplog.set_level(logging.DEBUG, logger="bot.chat")
    (result,) = await Notifier(http, [channel], retry=FAST, redactor=redactor).send(event())
    assert not result.delivered
    # apprise itself logs the target URL and the response (at DEBUG)...
    assert TOKEN in caplog.text
    # ...and the process log formatter masks it with the secrets the notifier registered.
    formatted = "\n".join(TextFormatter(redactor).format(r) for r in caplog.records)
    assert "JSON POST URL: http://127.0.0.1" in formatted
    assert TOKEN not in formatted and "***" in formatted
    # Our own log lines and the result never carry it in the first place.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("bot.")]
    assert any("chat delivery failed" in line for line in ours)
    assert not any(TOKEN in line or "/hook/" in line for line in ours)
    assert TOKEN not in repr(result)
