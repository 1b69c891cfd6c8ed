"""The loopback Slack simulator, driven by the real slack_sdk / slack_bolt clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.verify import ChatAuthError, verify_slack
from bot.sim.slack import (
    SlackSimHandle,
    SlackSimSettings,
    signed_interactive,
    signed_slash_command,
    start_slack_sim,
)

SIGNING_SECRET = "sim-signing-secret-0123456789"
ACK_WINDOW = 3.0  # Slack shows the user an error when the ack takes longer
APPROVE_BLOCKS: list[dict[str, Any]] = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "Recreate *hq*?"}},
    {
        "type": "actions",
        "block_id": "approval",
        "elements": [
            {
                "type": "button",
                "action_id": "approve",
                "value": "req-7",
                "text": {"type": "plain_text", "text": "Approve"},
            },
            {
                "type": "button",
                "action_id": "deny",
                "value": "req-7",
                "text": {"type": "plain_text", "text": "Deny"},
            },
        ],
    },
]


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimHandle]:
    handle = await start_slack_sim(settings=SlackSimSettings(signing_secret=SIGNING_SECRET))
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
def web_client(slack: SlackSimHandle) -> AsyncWebClient:
    return AsyncWebClient(token=slack.settings.bot_token, base_url=slack.api_url)


async def sim_get(
    http: aiohttp.ClientSession, slack: SlackSimHandle, path: str, **params: str
) -> Any:
    async with http.get(slack.url + path, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def sim_post(
    http: aiohttp.ClientSession, slack: SlackSimHandle, path: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(slack.url + path, json=body) as response:
        return response.status, await response.json()


# ---------------------------------------------------------------------- Web API
async def test_web_api_through_the_real_async_web_client(
    slack: SlackSimHandle, web_client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    auth = await web_client.auth_test()
    assert auth["ok"] is True
    assert (auth["team_id"], auth["user_id"], auth["bot_id"]) == (
        "T0SIMTEAM1",
        "U0SIMBOT01",
        "B0SIMBOT01",
    )
    assert auth.headers["x-oauth-scopes"] == "chat:write,commands"

    posted = await web_client.chat_postMessage(
        channel="C0OPS", text="Recreate hq?", blocks=APPROVE_BLOCKS
    )
    assert posted["ok"] and posted["channel"] == "C0OPS"
    ts = posted["ts"]
    assert posted["message"]["ts"] == ts and posted["message"]["blocks"] == APPROVE_BLOCKS
    reply = await web_client.chat_postMessage(channel="C0OPS", text="details", thread_ts=ts)
    updated = await web_client.chat_update(channel="C0OPS", ts=ts, text="Approved by <@U2>")
    assert (updated["ts"], updated["text"]) == (ts, "Approved by <@U2>")
    assert updated["message"]["blocks"] == APPROVE_BLOCKS  # chat.update keeps omitted blocks
    cleared = await web_client.chat_update(channel="C0OPS", ts=ts, text="done", blocks=[])
    assert "blocks" not in cleared["message"]
    eph = await web_client.chat_postEphemeral(channel="C0OPS", user="U9", text="only you")
    assert eph["message_ts"]

    messages = await sim_get(http, slack, "/_sim/messages", channel="C0OPS")
    summary = [
        (m["via"], m["ts"] == ts, m["text"], m["thread_ts"], m["replaced"], m["ephemeral"])
        for m in messages
    ]
    assert summary == [
        ("chat.postMessage", True, "Recreate hq?", None, False, False),
        ("chat.postMessage", False, "details", ts, False, False),
        ("chat.update", True, "Approved by <@U2>", None, True, False),
        ("chat.update", True, "done", None, True, False),
        ("chat.postEphemeral", False, "only you", None, False, True),
    ]
    assert messages[0]["blocks"] == APPROVE_BLOCKS and messages[4]["user"] == "U9"
    assert reply["ts"] != ts
    assert await sim_get(http, slack, "/_sim/messages", via="chat.update") == messages[2:4]

    await sim_post(http, slack, "/_sim/reset", {})
    assert await sim_get(http, slack, "/_sim/messages") == []


@pytest.mark.parametrize(
    ("token", "method", "error"),
    [
        ("xoxb-wrong", "auth_test", "invalid_auth"),
        ("xoxb-wrong", "chat_postMessage", "invalid_auth"),
        (None, "auth_test", "not_authed"),
        ("app", "chat_postMessage", "not_allowed_token_type"),
    ],
)
async def test_bad_tokens_answer_ok_false(
    slack: SlackSimHandle, token: str | None, method: str, error: str
) -> None:
    token = slack.settings.app_token if token == "app" else token
    client = AsyncWebClient(token=token, base_url=slack.api_url)
    kwargs: dict[str, Any] = {"channel": "C1", "text": "x"} if method == "chat_postMessage" else {}
    with pytest.raises(SlackApiError) as exc:
        await getattr(client, method)(**kwargs)
    assert exc.value.response.status_code == 200  # Slack reports errors in the envelope
    assert exc.value.response.data == {"ok": False, "error": error}
    assert slack.sim.messages() == []


@pytest.mark.filterwarnings("ignore:The top-level `text` argument:UserWarning")
async def test_method_errors(slack: SlackSimHandle, web_client: AsyncWebClient) -> None:
    async def error_of(call: Any) -> str:
        with pytest.raises(SlackApiError) as exc:
            await call
        return str(exc.value.response["error"])

    assert await error_of(web_client.chat_postMessage(channel="C1")) == "no_text"
    assert await error_of(web_client.chat_postMessage(channel="", text="x")) == "channel_not_found"
    assert (
        await error_of(web_client.chat_postMessage(channel="C1", blocks=[{"text": "no type"}]))
        == "invalid_blocks"
    )
    assert (
        await error_of(web_client.chat_update(channel="C1", ts="1.000001", text="x"))
        == "message_not_found"
    )
    assert (
        await error_of(web_client.views_open(trigger_id="made.up", view={"type": "modal"}))
        == "invalid_trigger_id"
    )
    with pytest.raises(SlackApiError) as exc:
        await web_client.api_call("chat.delete", json={"channel": "C1", "ts": "1.1"})
    assert exc.value.response.status_code == 404
    assert exc.value.response["error"] == "unknown_method"


async def test_views_open_accepts_a_fresh_trigger_id(
    slack: SlackSimHandle, web_client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    trigger = slack.sim.slash_payload("playbook recreate-connection hq")["trigger_id"]
    view = {"type": "modal", "title": {"type": "plain_text", "text": "Confirm"}, "blocks": []}
    opened = await web_client.views_open(trigger_id=trigger, view=view)
    assert opened["view"]["type"] == "modal" and opened["view"]["id"].startswith("V")
    (recorded,) = await sim_get(http, slack, "/_sim/views")
    assert recorded["trigger_id"] == trigger
    slack.sim._triggers[trigger] -= 10  # make it older than Slack's 3 s lifetime
    with pytest.raises(SlackApiError) as exc:
        await web_client.views_open(trigger_id=trigger, view=view)
    assert exc.value.response["error"] == "expired_trigger_id"


async def test_injected_rate_limit_fault(
    slack: SlackSimHandle, web_client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    status, rule = await sim_post(
        http, slack, "/_sim/faults", {"method": "chat.postMessage", "retry_after": 7}
    )
    assert status == 201 and rule["times"] == 1
    with pytest.raises(SlackApiError) as exc:
        await web_client.chat_postMessage(channel="C1", text="x")
    assert exc.value.response.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "7"
    assert exc.value.response["error"] == "ratelimited"
    assert (await web_client.chat_postMessage(channel="C1", text="x"))["ok"]  # used up


async def test_refuses_non_loopback_binds() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "localhost", "example.com"):
        with pytest.raises(ValueError, match="only binds"):
            await start_slack_sim(host)


async def test_ipv6_loopback(http: aiohttp.ClientSession) -> None:
    try:
        handle = await start_slack_sim("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with handle:
        assert handle.url.startswith("http://[::1]:")
        client = AsyncWebClient(token=handle.settings.bot_token, base_url=handle.api_url)
        assert (await client.auth_test())["ok"]


# ---------------------------------------------------------------------- Socket Mode
async def test_socket_mode_with_the_sdk_client(
    slack: SlackSimHandle, http: aiohttp.ClientSession
) -> None:
    frames: list[dict[str, Any]] = []
    requests: asyncio.Queue[SocketModeRequest] = asyncio.Queue()

    async def on_message(_: AsyncBaseSocketModeClient, message: dict[str, Any], __: Any) -> None:
        frames.append(message)

    async def on_request(client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        await requests.put(req)
        await client.send_socket_mode_response(
            SocketModeResponse(req.envelope_id, payload={"text": "on it"})
        )

    client = SocketModeClient(
        app_token=slack.settings.app_token,
        web_client=AsyncWebClient(base_url=slack.api_url),
    )
    client.message_listeners.append(on_message)
    client.socket_mode_request_listeners.append(on_request)
    try:
        await client.connect()  # type: ignore[no-untyped-call]
        await slack.sim.wait_connected()
        for _ in range(100):
            if frames:
                break
            await asyncio.sleep(0.01)
        hello = frames[0]
        assert hello["type"] == "hello"
        assert hello["connection_info"] == {"app_id": "A0SIMAPP01"}
        assert hello["num_connections"] == 1
        calls = await sim_get(http, slack, "/_sim/calls")
        assert [c["method"] for c in calls] == ["apps.connections.open"]

        status, sent = await sim_post(
            http,
            slack,
            "/_sim/socket/slash",
            {"text": "status hq", "user": "U0ALICE", "channel": "C0OPS"},
        )
        assert status == 200 and sent["type"] == "slash_commands"
        req = await asyncio.wait_for(requests.get(), 5)
        assert req.type == "slash_commands" and req.accepts_response_payload is True
        assert req.envelope_id == sent["envelope_id"]
        payload = req.payload
        assert (payload["command"], payload["text"]) == ("/tunnelwarden", "status hq")
        assert (payload["user_id"], payload["channel_id"], payload["team_id"]) == (
            "U0ALICE",
            "C0OPS",
            "T0SIMTEAM1",
        )
        assert payload["response_url"].startswith(slack.url + "/commands/")

        ack = await sim_get(
            http, slack, f"/_sim/socket/acks/{req.envelope_id}", wait=str(ACK_WINDOW)
        )
        assert ack["payload"] == {"text": "on it"}
        assert 0 <= ack["latency"] < ACK_WINDOW

        status, sent = await sim_post(
            http,
            slack,
            "/_sim/socket/interactive",
            {"action_id": "approve", "value": "req-1", "user": "U0BOB", "wait_ack": 3},
        )
        assert status == 200 and sent["ack"] is not None
        req = await asyncio.wait_for(requests.get(), 5)
        assert req.type == "interactive" and req.accepts_response_payload is False
        assert req.payload["type"] == "block_actions"
        assert req.payload["user"]["id"] == "U0BOB"
        assert req.payload["actions"][0]["action_id"] == "approve"
        assert req.payload["actions"][0]["value"] == "req-1"

        # Slack asks for a reconnect before it refreshes a connection: the SDK obeys.
        status, sent = await sim_post(http, slack, "/_sim/socket/disconnect", {})
        assert sent == {"sent": 1}
        for _ in range(300):
            if slack.sim.hellos >= 2 and slack.sim.connections == 1:
                break
            await asyncio.sleep(0.01)
        assert slack.sim.hellos == 2 and slack.sim.connections == 1
    finally:
        await client.close()  # type: ignore[no-untyped-call]


async def test_no_socket_client_means_409(
    slack: SlackSimHandle, http: aiohttp.ClientSession
) -> None:
    status, body = await sim_post(http, slack, "/_sim/socket/slash", {"text": "help"})
    assert status == 409 and "no Socket Mode client" in body["error"]


async def test_socket_mode_rejects_unknown_tickets(
    slack: SlackSimHandle, http: aiohttp.ClientSession
) -> None:
    ws_url = slack.url.replace("http://", "ws://") + "/link/?ticket=forged"
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(ws_url)
    assert exc.value.status == 401


@pytest.fixture
async def bolt(slack: SlackSimHandle) -> AsyncIterator[tuple[AsyncApp, dict[str, Any]]]:
    """A bolt app with a slash command that asks for approval and an Approve button."""
    app = AsyncApp(
        client=AsyncWebClient(token=slack.settings.bot_token, base_url=slack.api_url),
        signing_secret=SIGNING_SECRET,
    )
    seen: dict[str, Any] = {}

    @app.command("/tunnelwarden")
    async def command(ack: Any, command: dict[str, Any], respond: Any, say: Any) -> None:
        await ack(f"Working on `{command['text']}`...")
        seen["command"] = command
        await respond("Dry-run: 1 change planned.")
        await say(text="Recreate hq?", blocks=APPROVE_BLOCKS)

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        seen["approve"] = body
        await respond(replace_original=True, text=f"Approved by <@{body['user']['id']}>")

    yield app, seen


async def test_bolt_socket_mode_round_trip(
    slack: SlackSimHandle,
    bolt: tuple[AsyncApp, dict[str, Any]],
    http: aiohttp.ClientSession,
) -> None:
    app, seen = bolt
    handler = AsyncSocketModeHandler(app, slack.settings.app_token)
    try:
        await handler.connect_async()  # type: ignore[no-untyped-call]
        await slack.sim.wait_connected()

        started = time.monotonic()
        envelope = await slack.sim.inject_slash(
            "playbook recreate-connection hq", user="U0ALICE", channel="C0OPS"
        )
        ack = await slack.sim.wait_ack(envelope.envelope_id, ACK_WINDOW)
        assert time.monotonic() - started < ACK_WINDOW
        assert ack.latency is not None and ack.latency < ACK_WINDOW
        assert ack.payload == {"text": "Working on `playbook recreate-connection hq`..."}
        assert seen["command"]["user_id"] == "U0ALICE"

        for _ in range(300):
            if len(slack.sim.messages()) >= 2:
                break
            await asyncio.sleep(0.01)
        respond, say = slack.sim.messages()
        assert (respond.via, respond.ephemeral, respond.user) == ("response_url", True, "U0ALICE")
        assert respond.text == "Dry-run: 1 change planned."
        assert (say.via, say.channel, say.blocks) == ("chat.postMessage", "C0OPS", APPROVE_BLOCKS)

        # Click Approve by action id alone: the sim finds the button on the posted message.
        click = await slack.sim.inject_interactive("approve", user="U0BOB")
        assert (await slack.sim.wait_ack(click.envelope_id, ACK_WINDOW)).payload is None
        for _ in range(300):
            if len(slack.sim.messages()) >= 3:
                break
            await asyncio.sleep(0.01)
        action = seen["approve"]["actions"][0]
        assert (action["value"], action["block_id"]) == ("req-7", "approval")
        assert seen["approve"]["container"]["message_ts"] == say.ts
        replaced = slack.sim.messages()[-1]
        assert (replaced.via, replaced.ts, replaced.replaced) == ("response_url", say.ts, True)
        assert replaced.text == "Approved by <@U0BOB>"
        assert slack.sim._store[("C0OPS", say.ts or "")].get("blocks") is None  # buttons gone

        envelopes = await sim_get(http, slack, "/_sim/socket/envelopes")
        assert [(e["type"], e["ack"] is not None) for e in envelopes] == [
            ("slash_commands", True),
            ("interactive", True),
        ]
        methods = [c["method"] for c in await sim_get(http, slack, "/_sim/calls")]
        assert methods[0] == "apps.connections.open" and "auth.test" in methods
    finally:
        await handler.close_async()  # type: ignore[no-untyped-call]


async def test_response_url_limits(slack: SlackSimHandle, http: aiohttp.ClientSession) -> None:
    url = slack.sim.slash_payload("status")["response_url"]
    for i in range(5):
        async with http.post(url, json={"text": f"update {i}"}) as response:
            assert response.status == 200
    async with http.post(url, json={"text": "sixth"}) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "used_url"
    async with http.post(slack.url + "/commands/T0SIMTEAM1/1/forged", json={"text": "x"}) as r:
        assert r.status == 404
    other = slack.sim.slash_payload("status")["response_url"]
    async with http.post(other, json={"response_type": "in_channel"}) as response:
        assert response.status == 400 and (await response.json())["error"] == "no_text"
    async with http.post(other, json={"response_type": "in_channel", "text": "all"}) as r:
        assert r.status == 200
    last = slack.sim.messages()[-1]
    assert (last.ephemeral, last.response_type, last.text) == (False, "in_channel", "all")


async def test_click_payload_for_a_given_message(
    slack: SlackSimHandle, web_client: AsyncWebClient
) -> None:
    first = await web_client.chat_postMessage(channel="C1", text="a", blocks=APPROVE_BLOCKS)
    await web_client.chat_postMessage(channel="C2", text="b", blocks=APPROVE_BLOCKS)
    payload = slack.sim.interactive_payload("deny", message_ts=first["ts"], user="U1")
    assert payload["channel"]["id"] == "C1"
    assert payload["message"]["ts"] == payload["container"]["message_ts"] == first["ts"]
    (action,) = payload["actions"]
    assert (action["value"], action["block_id"], action["text"]["text"]) == (
        "req-7",
        "approval",
        "Deny",
    )
    newest = slack.sim.interactive_payload("deny", user="U1")  # no ts: the newest message
    assert newest["channel"]["id"] == "C2"
    with pytest.raises(KeyError):
        slack.sim.interactive_payload("deny", message_ts=first["ts"], channel="C2")


# ---------------------------------------------------------------------- HTTP mode
def test_signed_requests_verify_with_the_bot_verifier(slack: SlackSimHandle) -> None:
    slash = slack.sim.signed_slash("status hq", user="U0ALICE")
    assert verify_slack(SIGNING_SECRET, slash.headers, slash.body)
    fields = {k: v[0] for k, v in parse_qs(slash.body.decode(), keep_blank_values=True).items()}
    assert fields == slash.payload and fields["command"] == "/tunnelwarden"

    click = slack.sim.signed_click("approve", "req-7", user="U0BOB")
    assert verify_slack(SIGNING_SECRET, click.headers, click.body)
    (payload_json,) = parse_qs(click.body.decode())["payload"]
    assert json.loads(payload_json) == click.payload

    with pytest.raises(ChatAuthError, match="bad_signature"):
        verify_slack("another-secret", slash.headers, slash.body)
    old = signed_slash_command(SIGNING_SECRET, slash.payload, timestamp=int(time.time()) - 301)
    with pytest.raises(ChatAuthError, match="stale"):
        verify_slack(SIGNING_SECRET, old.headers, old.body)
    forged = signed_interactive("not-the-secret", click.payload)
    with pytest.raises(ChatAuthError, match="bad_signature"):
        verify_slack(SIGNING_SECRET, forged.headers, forged.body)


async def test_http_mode_delivery_to_a_bolt_route(
    slack: SlackSimHandle, bolt: tuple[AsyncApp, dict[str, Any]], http: aiohttp.ClientSession
) -> None:
    """Slack's side of HTTP mode: signed POSTs at a bolt app behind an aiohttp route."""
    app, seen = bolt

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    bot_app = web.Application()
    bot_app.router.add_post("/chat/slack/events", events)
    runner = web.AppRunner(bot_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(iter(runner.addresses))[1]
    url = f"http://127.0.0.1:{port}/chat/slack/events"
    try:
        status, result = await sim_post(
            http, slack, "/_sim/http/slash", {"url": url, "text": "status hq", "user": "U0ALICE"}
        )
        assert status == 200
        assert result["status"] == 200 and result["elapsed"] < ACK_WINDOW
        assert result["body"] == "Working on `status hq`..."
        assert seen["command"]["user_id"] == "U0ALICE"

        for _ in range(300):
            if slack.sim.messages(via="chat.postMessage"):
                break
            await asyncio.sleep(0.01)
        status, result = await sim_post(
            http,
            slack,
            "/_sim/http/interactive",
            {"url": url, "action_id": "approve", "user": "U2"},
        )
        assert status == 200 and result["status"] == 200
        assert seen["approve"]["actions"][0]["value"] == "req-7"

        # Wrong secret: bolt refuses with 401, as the bot's own route must.
        status, result = await sim_post(
            http,
            slack,
            "/_sim/http/slash",
            {"url": url, "text": "status", "signing_secret": "not-the-secret"},
        )
        assert status == 200 and result["status"] == 401

        status, result = await sim_post(
            http, slack, "/_sim/http/slash", {"url": "http://192.0.2.1/chat/slack/events"}
        )
        assert status == 400 and "127.0.0.1" in result["error"]
    finally:
        await runner.cleanup()
