"""Loopback Slack simulator (aiohttp): the Web API methods the bot calls, and Socket Mode.

The real ``slack_sdk`` ``AsyncWebClient(base_url=handle.api_url)`` and slack-bolt's
``AsyncApp`` + ``AsyncSocketModeHandler`` work against it unmodified. Everything stays on
127.0.0.1 / ::1: the server refuses other bind addresses, and the HTTP-mode helper only
posts to loopback URLs.

Web API (``/api/{method}``; token as ``Authorization: Bearer`` or a ``token`` parameter;
JSON, form or query parameters; Slack's envelope ``{"ok": true, ...}`` /
``{"ok": false, "error": "..."}`` with HTTP 200, like Slack):

- ``auth.test`` - the bot identity (``X-OAuth-Scopes`` header, which bolt reads)
- ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``
- ``views.open`` - accepted for a ``trigger_id`` the simulator issued < 3 s ago
- ``apps.connections.open`` - app-level token only; returns ``ws://HOST:PORT/link/?ticket=..``

Errors: ``not_authed`` (no token), ``invalid_auth`` (unknown token),
``not_allowed_token_type`` (bot token for Socket Mode or app token for the rest),
``channel_not_found``, ``no_text``, ``invalid_blocks``, ``msg_too_long``,
``message_not_found``, ``user_not_found``, ``invalid_arguments``, ``invalid_trigger_id``,
``expired_trigger_id``, ``invalid_json``; ``unknown_method`` with 404. Armed faults answer
with their own status/error/``Retry-After`` (e.g. ``429 ratelimited``).

``response_url`` (``/commands/...`` for slash commands, ``/actions/...`` for buttons):
JSON ``{"text", "blocks", "response_type", "replace_original", "delete_original",
"thread_ts"}``; at most 5 posts within 30 minutes per URL, then 404 ``used_url`` /
``expired_url``.

Socket Mode (``GET /link/?ticket=...``): sends ``{"type": "hello", ...}`` on connect, then
envelopes ``{"envelope_id", "type": "slash_commands"|"interactive", "payload",
"accepts_response_payload"}``; records each ack ``{"envelope_id"[, "payload"]}`` with the
time it took. Tickets stay valid while the simulator runs (real ones are short-lived).

Control API (no authentication; loopback only), JSON in and out::

    GET    /_sim/messages[?channel=&via=]   everything posted (chat.*, response_url)
    GET    /_sim/views                      views opened
    GET    /_sim/calls                      Web API calls (method, ok, error)
    POST   /_sim/reset                      forget messages, views, calls, envelopes, faults
    GET    /_sim/config | PATCH /_sim/config
    GET    /_sim/faults | POST /_sim/faults | DELETE /_sim/faults
           {"method": "chat.postMessage"|"*", "error": "ratelimited", "status": 429,
            "retry_after": 1, "times": 1}
    GET    /_sim/socket                     connection count, hellos sent
    POST   /_sim/socket/slash               {"text", "user", "command"?, "team"?, "channel"?,
                                             "user_name"?, "channel_name"?, "wait_ack"?}
    POST   /_sim/socket/interactive         {"action_id", "value"?, "user", "channel"?,
                                             "message_ts"?, "block_id"?, "wait_ack"?}
    POST   /_sim/socket/disconnect          {"reason"?} -> a disconnect frame to every client
    GET    /_sim/socket/envelopes           sent envelopes with their acks
    GET    /_sim/socket/acks[/{id}?wait=3]  acks (one: wait up to ``wait`` s for it)
    POST   /_sim/http/slash                 {"url", ...slash fields} -> signed POST to the bot
    POST   /_sim/http/interactive           {"url", ...interactive fields} -> same

An injected button click without ``message_ts`` targets the newest recorded message with a
button of that ``action_id`` (in ``channel`` when given), so a demo can "click Approve" by
action id, value and user alone. Errors from the control API: ``{"error": "..."}`` with
400 (bad input), 404 (unknown thing) or 409 (no Socket Mode client connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.chat.verify import SLACK_SIGNATURE_HEADER, SLACK_TIMESTAMP_HEADER, sign_slack

__all__ = [
    "SIM_KEY",
    "Ack",
    "Envelope",
    "FaultRule",
    "PostedMessage",
    "SignedRequest",
    "SlackSim",
    "SlackSimError",
    "SlackSimHandle",
    "SlackSimSettings",
    "block_actions_payload",
    "create_app",
    "main",
    "signed_interactive",
    "signed_slash_command",
    "slash_command_payload",
    "start_slack_sim",
]

log = logging.getLogger(__name__)

VERIFICATION_TOKEN = "sim-verification-token"  # the legacy ``token`` field; never checked
MAX_TEXT = 40_000
MAX_BLOCKS = 50
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})

Via = Literal["chat.postMessage", "chat.update", "chat.postEphemeral", "response_url"]


class SlackSimSettings(BaseModel):
    """Identity and limits of the simulated workspace (``/_sim/config``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    bot_token: str = Field(default="xoxb-sim-bot-token", min_length=1)
    app_token: str = Field(default="xapp-1-sim-app-token", min_length=1)
    signing_secret: str | None = Field(default=None, description="for the HTTP-mode helper")
    team_id: str = "T0SIMTEAM1"
    team_domain: str = "tunnelwarden-sim"
    team_name: str = "tunnelwarden sim"
    app_id: str = "A0SIMAPP01"
    bot_id: str = "B0SIMBOT01"
    bot_user_id: str = "U0SIMBOT01"
    bot_user_name: str = "tunnelwarden"
    scopes: list[str] = Field(default_factory=lambda: ["chat:write", "commands"])
    channels: list[str] = Field(
        default_factory=list, description="known channel ids; empty accepts any channel"
    )
    default_channel: str = "C0SIMCHAN1"
    default_channel_name: str = "tunnelwarden"
    slash_command: str = "/tunnelwarden"
    trigger_ttl: float = Field(default=3.0, ge=0, description="views.open trigger_id lifetime")
    response_url_uses: int = Field(default=5, ge=1)
    response_url_ttl: float = Field(default=1800.0, gt=0)


class FaultRule(BaseModel):
    """Answer the next ``times`` calls of ``method`` (``*``: any) with an error."""

    model_config = ConfigDict(extra="forbid")

    method: str = "*"
    error: str = "ratelimited"
    status: int = Field(default=429, ge=200, le=599)
    retry_after: int | None = Field(default=1, ge=0)
    times: int = Field(default=1, ge=1)


class SlackSimError(Exception):
    """A Web API error as Slack sends it: ``{"ok": false, "error": code}``."""

    def __init__(self, error: str, status: int = 200, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})


@dataclass
class PostedMessage:
    """One thing the bot posted (or replaced, or deleted)."""

    seq: int
    via: Via
    channel: str | None
    ts: str | None
    text: str | None
    blocks: list[Any] | None
    thread_ts: str | None = None
    user: str | None = None  # recipient of an ephemeral message
    ephemeral: bool = False
    replaced: bool = False  # chat.update, or response_url with replace_original
    deleted: bool = False  # response_url with delete_original
    response_type: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Ack:
    """What a Socket Mode client answered to an envelope."""

    envelope_id: str
    payload: dict[str, Any] | None
    received_at: float  # wall clock
    latency: float | None  # seconds since the envelope was sent; None if unknown envelope

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    connection: int
    sent_at: float  # wall clock
    sent_mono: float
    ack: Ack | None = None

    def frame(self) -> dict[str, Any]:
        return {
            "envelope_id": self.envelope_id,
            "type": self.type,
            "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.frame(),
            "connection": self.connection,
            "sent_at": self.sent_at,
            "ack": self.ack.to_dict() if self.ack else None,
        }


@dataclass
class _ResponseUrl:
    kind: str  # "commands" | "actions"
    channel: str
    user: str
    message_ts: str | None
    created: float
    uses: int = 0


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A form-encoded request signed like Slack's, ready to POST at the bot's events URL."""

    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any]


# ---------------------------------------------------------------------- payload builders
def slash_command_payload(
    *,
    command: str,
    text: str,
    user_id: str,
    user_name: str,
    team_id: str,
    team_domain: str,
    channel_id: str,
    channel_name: str,
    api_app_id: str,
    response_url: str,
    trigger_id: str,
) -> dict[str, str]:
    """The fields of a slash-command invocation (form fields in HTTP mode, the Socket Mode
    ``payload`` object otherwise)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


def block_actions_payload(
    *,
    action_id: str,
    value: str | None,
    user_id: str,
    user_name: str,
    team_id: str,
    team_domain: str,
    channel_id: str,
    channel_name: str,
    api_app_id: str,
    response_url: str,
    trigger_id: str,
    message: dict[str, Any] | None = None,
    block_id: str | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` interaction payload for one button click."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id or "actions",
        "text": {"type": "plain_text", "text": label or action_id, "emoji": True},
        "type": "button",
        "action_ts": f"{time.time():.6f}",
    }
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message["ts"] if message else None,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id,
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    if message is not None:
        payload["message"] = message
    return payload


def _signed(signing_secret: str, body: bytes, timestamp: int | None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        SLACK_TIMESTAMP_HEADER: ts,
        SLACK_SIGNATURE_HEADER: sign_slack(signing_secret, ts, body),
    }


def signed_slash_command(
    signing_secret: str, payload: Mapping[str, str], *, timestamp: int | None = None
) -> SignedRequest:
    """Form-encode a slash command and sign it (v0) with ``signing_secret``."""
    body = urlencode(dict(payload)).encode()
    return SignedRequest(body, _signed(signing_secret, body, timestamp), dict(payload))


def signed_interactive(
    signing_secret: str, payload: Mapping[str, Any], *, timestamp: int | None = None
) -> SignedRequest:
    """Encode an interaction as ``payload=<JSON>`` (as Slack does) and sign it."""
    body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()
    return SignedRequest(body, _signed(signing_secret, body, timestamp), dict(payload))


# ---------------------------------------------------------------------- state
def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _require_loopback_url(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError("the Slack simulator only posts to 127.0.0.1 or ::1")


def _json_field(value: Any, error: str) -> Any:
    """Blocks and views arrive as JSON text in form-encoded calls."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise SlackSimError(error) from None
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _iter_buttons(blocks: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    if not isinstance(blocks, list):
        return
    for block in blocks:
        if not isinstance(block, dict):
            continue
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        accessory = block.get("accessory")
        if isinstance(accessory, dict):
            elements.append(accessory)
        for element in elements:
            if isinstance(element, dict) and element.get("action_id"):
                yield block.get("block_id"), element


class SlackSim:
    """The simulated workspace: what was posted, Socket Mode clients, envelopes and acks.

    In-process counterparts of the control API exist for tests (``inject_slash``,
    ``wait_ack``, ``wait_connected``, ``messages``...).
    """

    def __init__(self, settings: SlackSimSettings | None = None) -> None:
        self.settings = settings or SlackSimSettings()
        self.base_url: str | None = None  # set by start_slack_sim
        self.posted: list[PostedMessage] = []
        self.views: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.envelopes: dict[str, Envelope] = {}
        self.acks: list[Ack] = []
        self.faults: list[FaultRule] = []
        self.hellos = 0
        self._seq = itertools.count(1)
        self._store: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts) -> message
        self._triggers: dict[str, float] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._tickets: set[str] = set()
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._socket_ids = itertools.count(1)
        self._rr = 0
        self._ack_events: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        """Forget recorded traffic and faults; Socket Mode connections stay up."""
        self.posted.clear()
        self.views.clear()
        self.calls.clear()
        self.envelopes.clear()
        self.acks.clear()
        self.faults.clear()
        self._store.clear()
        self._triggers.clear()
        self._response_urls.clear()
        self._ack_events.clear()

    def messages(self, channel: str | None = None, via: str | None = None) -> list[PostedMessage]:
        return [
            m
            for m in self.posted
            if (channel is None or m.channel == channel) and (via is None or m.via == via)
        ]

    @property
    def connections(self) -> int:
        return sum(1 for ws in self._sockets.values() if not ws.closed)

    def _base(self) -> str:
        if self.base_url is None:
            raise RuntimeError("the simulator's base URL is unknown (start it first)")
        return self.base_url

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._seq):06d}"

    def new_trigger_id(self) -> str:
        trigger = f"{next(self._seq)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        self._triggers[trigger] = time.monotonic()
        return trigger

    def new_response_url(
        self, kind: str, channel: str, user: str, message_ts: str | None = None
    ) -> str:
        key = f"{next(self._seq)}/{secrets.token_urlsafe(18)}"
        self._response_urls[key] = _ResponseUrl(kind, channel, user, message_ts, time.monotonic())
        return f"{self._base()}/{kind}/{self.settings.team_id}/{key}"

    def _record(self, **fields: Any) -> PostedMessage:
        message = PostedMessage(seq=next(self._seq), **fields)
        self.posted.append(message)
        return message

    def _message_object(
        self, ts: str, text: str | None, blocks: list[Any] | None, thread_ts: str | None
    ) -> dict[str, Any]:
        s = self.settings
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": text or "",
            "user": s.bot_user_id,
            "bot_id": s.bot_id,
            "app_id": s.app_id,
            "team": s.team_id,
            "ts": ts,
        }
        if blocks is not None:
            message["blocks"] = blocks
        if thread_ts:
            message["thread_ts"] = thread_ts
        return message

    # ------------------------------------------------------------ Web API
    def authenticate(self, method: str, token: str | None) -> None:
        if not token:
            raise SlackSimError("not_authed")
        s = self.settings
        if token not in (s.bot_token, s.app_token):
            raise SlackSimError("invalid_auth")
        wants_app = method == "apps.connections.open"
        if (token == s.app_token) != wants_app:
            raise SlackSimError("not_allowed_token_type")

    def take_fault(self, method: str) -> FaultRule | None:
        for rule in self.faults:
            if rule.method in ("*", method):
                rule.times -= 1
                if rule.times <= 0:
                    self.faults.remove(rule)
                return rule
        return None

    def _channel(self, params: Mapping[str, Any]) -> str:
        channel = str(params.get("channel") or "")
        if not channel or (self.settings.channels and channel not in self.settings.channels):
            raise SlackSimError("channel_not_found")
        return channel

    def _content(self, params: Mapping[str, Any]) -> tuple[str | None, list[Any] | None]:
        text = params.get("text")
        text = None if text is None else str(text)
        blocks = _json_field(params.get("blocks"), "invalid_blocks")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise SlackSimError("invalid_blocks")
        if blocks is not None and not all(isinstance(b, dict) and "type" in b for b in blocks):
            raise SlackSimError("invalid_blocks")
        if not text and not blocks and not params.get("attachments"):
            raise SlackSimError("no_text")
        if text and len(text) > MAX_TEXT:
            raise SlackSimError("msg_too_long")
        return text, blocks

    def auth_test(self) -> dict[str, Any]:
        s = self.settings
        return {
            "url": f"https://{s.team_domain}.slack.com/",
            "team": s.team_name,
            "user": s.bot_user_name,
            "team_id": s.team_id,
            "user_id": s.bot_user_id,
            "bot_id": s.bot_id,
            "is_enterprise_install": False,
        }

    def post_message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        text, blocks = self._content(params)
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        ts = self._next_ts()
        message = self._message_object(ts, text, blocks, thread_ts)
        self._store[(channel, ts)] = message
        self._record(
            via="chat.postMessage",
            channel=channel,
            ts=ts,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
        )
        return {"channel": channel, "ts": ts, "message": message}

    def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        ts = str(params.get("ts") or "")
        original = self._store.get((channel, ts))
        if original is None:
            raise SlackSimError("message_not_found")
        text, blocks = self._content(params)
        original["text"] = text or ""
        if blocks:  # chat.update keeps the previous blocks when none are given; [] removes them
            original["blocks"] = blocks
        elif blocks is not None:
            original.pop("blocks", None)
        original["edited"] = {"user": self.settings.bot_user_id, "ts": self._next_ts()}
        self._record(
            via="chat.update",
            channel=channel,
            ts=ts,
            text=text,
            blocks=blocks,
            thread_ts=original.get("thread_ts"),
            replaced=True,
        )
        return {"channel": channel, "ts": ts, "text": text or "", "message": dict(original)}

    def post_ephemeral(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        user = str(params.get("user") or "")
        if not user:
            raise SlackSimError("user_not_found")
        text, blocks = self._content(params)
        ts = self._next_ts()
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        self._record(
            via="chat.postEphemeral",
            channel=channel,
            ts=ts,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            user=user,
            ephemeral=True,
        )
        return {"message_ts": ts}

    def open_view(self, params: Mapping[str, Any]) -> dict[str, Any]:
        trigger = str(params.get("trigger_id") or "")
        view = _json_field(params.get("view"), "invalid_arguments")
        if not trigger or not isinstance(view, dict) or "type" not in view:
            raise SlackSimError("invalid_arguments")
        issued = self._triggers.get(trigger)
        if issued is None:
            raise SlackSimError("invalid_trigger_id")
        if time.monotonic() - issued > self.settings.trigger_ttl:
            raise SlackSimError("expired_trigger_id")
        s = self.settings
        opened = {
            "id": f"V{next(self._seq):010d}",
            "team_id": s.team_id,
            "app_id": s.app_id,
            "bot_id": s.bot_id,
            "state": {"values": {}},
            "hash": secrets.token_hex(8),
            **view,
        }
        self.views.append({"trigger_id": trigger, "view": opened, "at": time.time()})
        return {"view": opened}

    def connections_open(self, base_ws: str) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"{base_ws}/link/?ticket={ticket}&app_id={self.settings.app_id}"}

    def call(self, method: str, params: Mapping[str, Any], base: str) -> dict[str, Any]:
        """Run one Web API method (already authenticated); returns the ``ok`` body."""
        handlers: dict[str, Callable[[], dict[str, Any]]] = {
            "auth.test": self.auth_test,
            "chat.postMessage": lambda: self.post_message(params),
            "chat.update": lambda: self.update(params),
            "chat.postEphemeral": lambda: self.post_ephemeral(params),
            "views.open": lambda: self.open_view(params),
            "apps.connections.open": lambda: self.connections_open(
                base.replace("http://", "ws://", 1)
            ),
        }
        return {"ok": True, **handlers[method]()}

    # ------------------------------------------------------------ response_url
    def response_url_post(self, key: str, body: Any) -> None:
        entry = self._response_urls.get(key)
        if entry is None:
            raise SlackSimError("expired_url", 404)
        if time.monotonic() - entry.created > self.settings.response_url_ttl:
            raise SlackSimError("expired_url", 404)
        if entry.uses >= self.settings.response_url_uses:
            raise SlackSimError("used_url", 404)
        if not isinstance(body, dict):
            raise SlackSimError("invalid_payload", 400)
        entry.uses += 1
        original = self._store.get((entry.channel, entry.message_ts)) if entry.message_ts else None
        thread_ts = str(body["thread_ts"]) if body.get("thread_ts") else None
        if _flag(body.get("delete_original")):
            if entry.message_ts:
                self._store.pop((entry.channel, entry.message_ts), None)
            self._record(
                via="response_url",
                channel=entry.channel,
                ts=entry.message_ts,
                text=None,
                blocks=None,
                deleted=True,
            )
            return
        try:
            text, blocks = self._content(body)
        except SlackSimError as exc:
            raise SlackSimError(exc.error, 400) from None
        if _flag(body.get("replace_original")) and original is not None:
            original["text"] = text or ""  # the whole message is replaced, buttons included
            if blocks:
                original["blocks"] = blocks
            else:
                original.pop("blocks", None)
            self._record(
                via="response_url",
                channel=entry.channel,
                ts=entry.message_ts,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                replaced=True,
                response_type=body.get("response_type"),
            )
            return
        in_channel = body.get("response_type") == "in_channel"
        ts = self._next_ts()
        if in_channel:
            self._store[(entry.channel, ts)] = self._message_object(ts, text, blocks, thread_ts)
        self._record(
            via="response_url",
            channel=entry.channel,
            ts=ts,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            user=None if in_channel else entry.user,
            ephemeral=not in_channel,
            replaced=_flag(body.get("replace_original")),
            response_type=body.get("response_type") or "ephemeral",
        )

    # ------------------------------------------------------------ payloads
    def slash_payload(
        self,
        text: str = "",
        *,
        user: str = "U0SIMUSER1",
        user_name: str | None = None,
        command: str | None = None,
        team: str | None = None,
        channel: str | None = None,
        channel_name: str | None = None,
    ) -> dict[str, str]:
        """A slash-command payload whose ``response_url`` and ``trigger_id`` this sim honours."""
        s = self.settings
        channel = channel or s.default_channel
        return slash_command_payload(
            command=command or s.slash_command,
            text=text,
            user_id=user,
            user_name=user_name or user.lower(),
            team_id=team or s.team_id,
            team_domain=s.team_domain,
            channel_id=channel,
            channel_name=channel_name or s.default_channel_name,
            api_app_id=s.app_id,
            response_url=self.new_response_url("commands", channel, user),
            trigger_id=self.new_trigger_id(),
        )

    def find_button(
        self, action_id: str, value: str | None = None, channel: str | None = None
    ) -> tuple[str, dict[str, Any], str | None, dict[str, Any]] | None:
        """Newest stored message with a button ``action_id`` (and ``value``, when given)."""
        candidates = sorted(self._store.items(), key=lambda kv: kv[1]["ts"], reverse=True)
        for (chan, _), message in candidates:
            if channel is not None and chan != channel:
                continue
            for block_id, element in _iter_buttons(message.get("blocks")):
                if element.get("action_id") != action_id:
                    continue
                if value is not None and element.get("value") not in (None, value):
                    continue
                return chan, message, block_id, element
        return None

    def interactive_payload(
        self,
        action_id: str,
        value: str | None = None,
        *,
        user: str = "U0SIMUSER1",
        user_name: str | None = None,
        team: str | None = None,
        channel: str | None = None,
        channel_name: str | None = None,
        message_ts: str | None = None,
        block_id: str | None = None,
    ) -> dict[str, Any]:
        """A ``block_actions`` payload for clicking ``action_id`` on a recorded message."""
        s = self.settings
        message: dict[str, Any] | None = None
        label: str | None = None
        button: tuple[str | None, dict[str, Any]] | None
        if message_ts is not None:
            matches = [
                (chan, stored)
                for (chan, ts), stored in self._store.items()
                if ts == message_ts and channel in (None, chan)
            ]
            if not matches:
                raise KeyError(f"no message {message_ts} in {channel or 'any channel'}")
            channel, message = matches[0]
            button = next(
                (
                    (bid, element)
                    for bid, element in _iter_buttons(message.get("blocks"))
                    if element.get("action_id") == action_id
                ),
                None,
            )
        else:
            found = self.find_button(action_id, value, channel)
            if found is not None:
                channel, message, found_block, found_element = found
                button = (found_block, found_element)
            else:
                button = None
        if button is not None:
            block_id = block_id or button[0]
            if value is None and isinstance(button[1].get("value"), str):
                value = button[1]["value"]
            text = button[1].get("text")
            label = text.get("text") if isinstance(text, dict) else None
        channel = channel or s.default_channel
        return block_actions_payload(
            action_id=action_id,
            value=value,
            user_id=user,
            user_name=user_name or user.lower(),
            team_id=team or s.team_id,
            team_domain=s.team_domain,
            channel_id=channel,
            channel_name=channel_name or s.default_channel_name,
            api_app_id=s.app_id,
            response_url=self.new_response_url(
                "actions", channel, user, message["ts"] if message else None
            ),
            trigger_id=self.new_trigger_id(),
            message=dict(message) if message else None,
            block_id=block_id,
            label=label,
        )

    # ------------------------------------------------------------ Socket Mode
    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "num_connections": self.connections,
            "debug_info": {
                "host": "applink-sim",
                "build_number": 1,
                "approximate_connection_time": 3600,
            },
            "connection_info": {"app_id": self.settings.app_id},
        }

    def check_ticket(self, ticket: str) -> bool:
        return ticket in self._tickets

    def add_socket(self, ws: web.WebSocketResponse) -> int:
        socket_id = next(self._socket_ids)
        self._sockets[socket_id] = ws
        return socket_id

    def remove_socket(self, socket_id: int) -> None:
        self._sockets.pop(socket_id, None)

    def record_ack(self, frame: dict[str, Any]) -> Ack:
        envelope_id = str(frame["envelope_id"])
        envelope = self.envelopes.get(envelope_id)
        payload = frame.get("payload")
        ack = Ack(
            envelope_id=envelope_id,
            payload=payload if isinstance(payload, dict) else None,
            received_at=time.time(),
            latency=(time.monotonic() - envelope.sent_mono) if envelope else None,
        )
        self.acks.append(ack)
        if envelope is not None and envelope.ack is None:
            envelope.ack = ack
        event = self._ack_events.get(envelope_id)
        if event is not None:
            event.set()
        return ack

    def _pick_socket(self) -> tuple[int, web.WebSocketResponse]:
        live = [(i, ws) for i, ws in sorted(self._sockets.items()) if not ws.closed]
        if not live:
            raise LookupError("no Socket Mode client is connected")
        self._rr = (self._rr + 1) % len(live)
        return live[self._rr]

    async def send_envelope(
        self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool
    ) -> Envelope:
        """Send one envelope to a connected client (round robin); LookupError if none."""
        socket_id, ws = self._pick_socket()
        envelope = Envelope(
            envelope_id=str(uuid.uuid4()),
            type=kind,
            payload=payload,
            accepts_response_payload=accepts_response_payload,
            connection=socket_id,
            sent_at=time.time(),
            sent_mono=time.monotonic(),
        )
        self.envelopes[envelope.envelope_id] = envelope
        self._ack_events[envelope.envelope_id] = asyncio.Event()
        await ws.send_str(json.dumps(envelope.frame()))
        return envelope

    async def inject_slash(self, text: str = "", **fields: Any) -> Envelope:
        """Send a ``slash_commands`` envelope (fields as :meth:`slash_payload`)."""
        payload = self.slash_payload(text, **fields)
        return await self.send_envelope("slash_commands", payload, accepts_response_payload=True)

    async def inject_interactive(
        self, action_id: str, value: str | None = None, **fields: Any
    ) -> Envelope:
        """Send an ``interactive`` (block_actions) envelope; see :meth:`interactive_payload`."""
        payload = self.interactive_payload(action_id, value, **fields)
        return await self.send_envelope("interactive", payload, accepts_response_payload=False)

    async def wait_ack(self, envelope_id: str, within: float = 3.0) -> Ack:
        """The client's ack of ``envelope_id``; TimeoutError unless it comes ``within`` s."""
        envelope = self.envelopes.get(envelope_id)
        if envelope is None:
            raise KeyError(f"no envelope {envelope_id}")
        if envelope.ack is None:
            await asyncio.wait_for(self._ack_events[envelope_id].wait(), within)
        assert envelope.ack is not None
        return envelope.ack

    async def wait_connected(self, count: int = 1, within: float = 5.0) -> None:
        """Wait until ``count`` Socket Mode clients are connected (and greeted)."""
        deadline = time.monotonic() + within
        while self.connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections} Socket Mode client(s) connected")
            await asyncio.sleep(0.01)

    async def disconnect_sockets(self, reason: str = "refresh_requested") -> int:
        """Ask every client to reconnect, as Slack does before it refreshes a connection."""
        frame = json.dumps(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-sim"}}
        )
        sent = 0
        for ws in list(self._sockets.values()):
            if not ws.closed:
                await ws.send_str(frame)
                sent += 1
        return sent

    async def close_sockets(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"simulator shutdown")
        self._sockets.clear()

    # ------------------------------------------------------------ HTTP mode
    def _secret(self, override: str | None) -> str:
        secret = override or self.settings.signing_secret
        if not secret:
            raise ValueError("no signing secret: set signing_secret in the simulator settings")
        return secret

    def signed_slash(
        self, text: str = "", *, signing_secret: str | None = None, **fields: Any
    ) -> SignedRequest:
        """A signed HTTP-mode slash command whose response_url points at this simulator."""
        return signed_slash_command(
            self._secret(signing_secret), self.slash_payload(text, **fields)
        )

    def signed_click(
        self,
        action_id: str,
        value: str | None = None,
        *,
        signing_secret: str | None = None,
        **fields: Any,
    ) -> SignedRequest:
        """A signed HTTP-mode button click (``payload=`` JSON) on a recorded message."""
        return signed_interactive(
            self._secret(signing_secret), self.interactive_payload(action_id, value, **fields)
        )

    async def deliver(
        self, url: str, request: SignedRequest, *, time_limit: float = 10.0
    ) -> dict[str, Any]:
        """POST a signed request at the bot (loopback URLs only), as Slack would."""
        _require_loopback_url(url)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit)) as session,
            session.post(url, data=request.body, headers=request.headers) as response,
        ):
            text = await response.text()
        return {
            "status": response.status,
            "body": text,
            "content_type": response.content_type,
            "elapsed": time.monotonic() - started,
            "payload": request.payload,
        }


# ---------------------------------------------------------------------- HTTP layer
SIM_KEY = web.AppKey("slack_sim", SlackSim)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_METHODS = frozenset(
    {
        "auth.test",
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
        "views.open",
        "apps.connections.open",
    }
)


def _base_url(sim: SlackSim, request: web.Request) -> str:
    return sim.base_url or f"{request.scheme}://{request.host}"


async def _api_params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            raise SlackSimError("invalid_json") from None
        if not isinstance(body, dict):
            raise SlackSimError("invalid_json")
        params.update(body)
    else:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _bearer(request: web.Request, params: dict[str, Any]) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    form_token = params.pop("token", None)
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return str(form_token) if form_token else None


async def _api(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    method = request.match_info["method"]
    if method not in API_METHODS:
        sim.calls.append(
            {"method": method, "ok": False, "error": "unknown_method", "at": time.time()}
        )
        return web.json_response(
            {"ok": False, "error": "unknown_method", "req_method": method}, status=404
        )
    headers: dict[str, str] = {}
    try:
        params = await _api_params(request)
        token = _bearer(request, params)
        sim.authenticate(method, token)
        if token == sim.settings.bot_token:
            headers["X-OAuth-Scopes"] = ",".join(sim.settings.scopes)
        rule = sim.take_fault(method)
        if rule is not None:
            extra = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
            raise SlackSimError(rule.error, rule.status, extra)
        body = sim.call(method, params, _base_url(sim, request))
    except SlackSimError as exc:
        sim.calls.append({"method": method, "ok": False, "error": exc.error, "at": time.time()})
        return web.json_response(
            {"ok": False, "error": exc.error}, status=exc.status, headers={**headers, **exc.headers}
        )
    except Exception:  # a simulator bug must still look like Slack to the SDK
        log.exception("Slack simulator failed on %s", method)
        sim.calls.append(
            {"method": method, "ok": False, "error": "internal_error", "at": time.time()}
        )
        return web.json_response({"ok": False, "error": "internal_error"}, status=500)
    sim.calls.append({"method": method, "ok": True, "at": time.time()})
    return web.json_response(body, headers=headers)


async def _response_url(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    key = f"{request.match_info['id']}/{request.match_info['secret']}"
    try:
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise SlackSimError("invalid_payload", 400) from None
        sim.response_url_post(key, body)
    except SlackSimError as exc:
        return web.json_response({"ok": False, "error": exc.error}, status=exc.status)
    return web.json_response({"ok": True})


async def _socket(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    if not sim.check_ticket(request.query.get("ticket", "")):
        return web.Response(status=401, text="invalid ticket")
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    socket_id = sim.add_socket(ws)
    try:
        await ws.send_str(json.dumps(sim.hello()))
        sim.hellos += 1
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                log.warning("Slack simulator: a Socket Mode client sent non-JSON text")
                continue
            if isinstance(frame, dict) and isinstance(frame.get("envelope_id"), str):
                sim.record_ack(frame)
    finally:
        sim.remove_socket(socket_id)
    return ws


# ---------------------------------------------------------------------- control API
def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except (ValueError, TypeError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


async def _json_body(request: web.Request) -> dict[str, Any]:
    data = await request.json() if request.can_read_body else {}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


def _wait(value: Any) -> float | None:
    if value is None:
        return None
    wait = float(value)
    if not 0 <= wait <= 30:
        raise ValueError("wait must be between 0 and 30 seconds")
    return wait


_SLASH_FIELDS = ("user", "user_name", "command", "team", "channel", "channel_name")
_CLICK_FIELDS = (
    "user",
    "user_name",
    "team",
    "channel",
    "channel_name",
    "message_ts",
    "block_id",
)


def _fields(body: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    return {n: str(body[n]) for n in names if body.get(n) is not None}


def add_control_routes(app: web.Application, sim: SlackSim) -> None:
    """Register the ``/_sim/`` routes operating on ``sim``."""

    async def messages(request: web.Request) -> web.StreamResponse:
        found = sim.messages(request.query.get("channel"), request.query.get("via"))
        return web.json_response([m.to_dict() for m in found])

    async def views(_: web.Request) -> web.StreamResponse:
        return web.json_response(sim.views)

    async def calls(_: web.Request) -> web.StreamResponse:
        return web.json_response(sim.calls)

    async def reset(_: web.Request) -> web.StreamResponse:
        sim.reset()
        return web.json_response({})

    def public_config() -> dict[str, Any]:
        data = sim.settings.model_dump(exclude={"signing_secret"})
        data["signing_secret_set"] = bool(sim.settings.signing_secret)
        return data

    async def get_config(_: web.Request) -> web.StreamResponse:
        return web.json_response(public_config())

    async def patch_config(request: web.Request) -> web.StreamResponse:
        sim.settings = sim.settings.model_validate(
            {**sim.settings.model_dump(), **await _json_body(request)}
        )
        return web.json_response(public_config())

    async def list_faults(_: web.Request) -> web.StreamResponse:
        return web.json_response([r.model_dump() for r in sim.faults])

    async def add_fault(request: web.Request) -> web.StreamResponse:
        rule = FaultRule.model_validate(await _json_body(request))
        sim.faults.append(rule)
        return web.json_response(rule.model_dump(), status=201)

    async def clear_faults(_: web.Request) -> web.StreamResponse:
        sim.faults.clear()
        return web.json_response([])

    async def socket_state(_: web.Request) -> web.StreamResponse:
        return web.json_response({"connections": sim.connections, "hellos": sim.hellos})

    async def injected(envelope: Envelope, wait: float | None) -> web.StreamResponse:
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                await sim.wait_ack(envelope.envelope_id, wait)
        return web.json_response(envelope.to_dict())

    async def socket_slash(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        envelope = await sim.inject_slash(str(body.get("text", "")), **_fields(body, _SLASH_FIELDS))
        return await injected(envelope, _wait(body.get("wait_ack")))

    async def socket_interactive(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not body.get("action_id"):
            raise ValueError("missing field 'action_id'")
        envelope = await sim.inject_interactive(
            str(body["action_id"]), _opt_str(body, "value"), **_fields(body, _CLICK_FIELDS)
        )
        return await injected(envelope, _wait(body.get("wait_ack")))

    async def socket_disconnect(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        sent = await sim.disconnect_sockets(str(body.get("reason", "refresh_requested")))
        return web.json_response({"sent": sent})

    async def envelopes(_: web.Request) -> web.StreamResponse:
        return web.json_response([e.to_dict() for e in sim.envelopes.values()])

    async def acks(_: web.Request) -> web.StreamResponse:
        return web.json_response([a.to_dict() for a in sim.acks])

    async def one_ack(request: web.Request) -> web.StreamResponse:
        envelope_id = request.match_info["envelope_id"]
        try:
            ack = await sim.wait_ack(envelope_id, _wait(request.query.get("wait")) or 0.0)
        except TimeoutError:
            raise KeyError(f"no ack for {envelope_id} yet") from None
        return web.json_response(ack.to_dict())

    async def http_slash(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        url = str(body.get("url") or "")
        _require_loopback_url(url)
        signed = sim.signed_slash(
            str(body.get("text", "")),
            signing_secret=_opt_str(body, "signing_secret"),
            **_fields(body, _SLASH_FIELDS),
        )
        return web.json_response(await sim.deliver(url, signed))

    async def http_interactive(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        url = str(body.get("url") or "")
        _require_loopback_url(url)
        if not body.get("action_id"):
            raise ValueError("missing field 'action_id'")
        signed = sim.signed_click(
            str(body["action_id"]),
            _opt_str(body, "value"),
            signing_secret=_opt_str(body, "signing_secret"),
            **_fields(body, _CLICK_FIELDS),
        )
        return web.json_response(await sim.deliver(url, signed))

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_sim/messages", messages),
        ("GET", "/_sim/views", views),
        ("GET", "/_sim/calls", calls),
        ("POST", "/_sim/reset", reset),
        ("GET", "/_sim/config", get_config),
        ("PATCH", "/_sim/config", patch_config),
        ("GET", "/_sim/faults", list_faults),
        ("POST", "/_sim/faults", add_fault),
        ("DELETE", "/_sim/faults", clear_faults),
        ("GET", "/_sim/socket", socket_state),
        ("POST", "/_sim/socket/slash", socket_slash),
        ("POST", "/_sim/socket/interactive", socket_interactive),
        ("POST", "/_sim/socket/disconnect", socket_disconnect),
        ("GET", "/_sim/socket/envelopes", envelopes),
        ("GET", "/_sim/socket/acks", acks),
        ("GET", "/_sim/socket/acks/{envelope_id}", one_ack),
        ("POST", "/_sim/http/slash", http_slash),
        ("POST", "/_sim/http/interactive", http_interactive),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))


def create_app(sim: SlackSim) -> web.Application:
    """Build the aiohttp application: Web API, response URLs, Socket Mode, ``/_sim/``."""
    app = web.Application()
    app[SIM_KEY] = sim
    add_control_routes(app, sim)
    app.router.add_route("*", "/api/{method}", _api)
    app.router.add_post("/{kind:commands|actions}/{team}/{id}/{secret}", _response_url)
    app.router.add_get("/link/", _socket)

    async def on_shutdown(_: web.Application) -> None:
        await sim.close_sockets()

    app.on_shutdown.append(on_shutdown)
    return app


# ---------------------------------------------------------------------- running it
def _require_loopback(host: str) -> None:
    # A Slack that accepts fixed tokens must never be reachable off-box.
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        address = host
    if address not in LOOPBACK_HOSTS:
        raise ValueError(f"the Slack simulator only binds to 127.0.0.1 or ::1, not {host!r}")


@dataclass
class SlackSimHandle:
    """A running simulator. ``api_url`` is the ``base_url`` for ``AsyncWebClient``."""

    sim: SlackSim
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{_host_for_url(self.host)}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def settings(self) -> SlackSimSettings:
        return self.sim.settings

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> SlackSimHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_slack_sim(
    host: str = "127.0.0.1",
    port: int = 0,
    settings: SlackSimSettings | None = None,
    *,
    sim: SlackSim | None = None,
) -> SlackSimHandle:
    """Start the simulator on ``host:port`` (0: any free port); ``await handle.close()``."""
    _require_loopback(host)
    sim = sim or SlackSim(settings)
    runner = web.AppRunner(create_app(sim), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses: list[Any] = list(runner.addresses)
    handle = SlackSimHandle(sim, runner, host, int(addresses[0][1]))
    sim.base_url = handle.url
    return handle


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    bot_token: str | None = None,
    app_token: str | None = None,
    signing_secret: str | None = None,
) -> None:
    """Run the simulator until cancelled (entry point for ``tunnelwarden sim slack``)."""
    overrides = {
        k: v
        for k, v in {
            "bot_token": bot_token,
            "app_token": app_token,
            "signing_secret": signing_secret,
        }.items()
        if v is not None
    }
    handle = await start_slack_sim(host, port, SlackSimSettings(**overrides))
    print(
        f"Slack simulator listening on {handle.url} (Web API: {handle.api_url}, "
        f"control API: /_sim/messages)",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await handle.close()
