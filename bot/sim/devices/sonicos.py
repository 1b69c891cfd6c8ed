"""A SonicOS 7 REST API simulator: one site-to-site policy world, one API session at a time.

Device API (``/api/sonicos``, JSON; what the SonicOS 7 API reference and the 7.0.1 OpenAPI
document show):

    POST   /api/sonicos/auth          log in: HTTP Basic (RFC 7617) or Digest (RFC 7616,
                                      SHA-256 or MD5, qop=auth); body ``{"override": true}``
                                      preempts whoever holds the session
    DELETE /api/sonicos/auth          log out (pending changes are dropped)
    GET    /api/sonicos/vpn/policies/ipv4/site-to-site              all policies
    GET|PUT|PATCH /api/sonicos/vpn/policies/ipv4/site-to-site/name/{NAME}
    GET    /api/sonicos/config/pending   what is pending
    POST   /api/sonicos/config/pending   commit
    DELETE /api/sonicos/config/pending   discard

Bodies use the API's own shape ``{"vpn": {"policy": [{"ipv4": {"site_to_site": {...}}}]}}``
with its field names (``name``, ``enable``, ``gateway.primary``/``secondary``,
``keep_alive``, ``preempt_secondary_gateway.interval``, ...). Replies are the API status
object ``{"status": {"success": ..., "info": [{"level", "code", "message"}]}}``.

Sessions. "A single SonicOS API session is currently allowed" and one administrator manages
at a time, wherever they logged in. Without session security the API recognises its session
by the client's address, so the simulator does too: a login from another address while a
session is held (or while an administrator holds the appliance, ``PUT /_sim/session``) is
refused with 503, the status the reference gives for "maximum number of sessions was
exceeded", unless the login sends ``override``, which ends the other session. A session
idle longer than ``session_idle_timeout`` expires. Writes go to a pending configuration
that takes effect only on commit; logging out, expiring or being preempted drops it.

World model. Each policy has a primary and a secondary gateway; the simulator knows which
gateway addresses are reachable (``PUT /_sim/gateways/{address}``) and which one carries
the tunnel. A disabled policy has no tunnel. While the active gateway is reachable the
tunnel stays on it; if it becomes unreachable the policy fails over (dead peer detection) to
the other one if that is reachable. With ``preempt_secondary_gateway`` set, a tunnel on the
secondary moves back to the primary once the primary is reachable and the preempt interval
(or the ``preempt_delay`` setting, when set) has passed since the switch; without it the
tunnel stays on the secondary until it is re-initiated (disable, commit, enable, commit).
A tunnel comes up when there is traffic (``POST /_sim/traffic``; there is at start) or
keep-alive is on; ``POST /_sim/idle`` lets it idle out, which only sticks without keep-alive.
Dead peer detection on a reachable but half-up gateway (``peer_dead``) fails over too; the
ARM world tells it which tunnel carries nothing (:mod:`bot.sim.devices.link`, which also
makes the tunnel the appliance uses the one that is Connected in Azure).

Control API (``/_sim/``, no authentication; loopback only)::

    GET    /_sim/state | /_sim/counters | /_sim/events       DELETE /_sim/counters
    GET    /_sim/tunnels                 {policy: {"active": role, "gateway": address}}
    GET    /_sim/gateways                {address: reachable}
    PUT    /_sim/gateways/{address}      {"reachable": false}
    POST   /_sim/traffic | /_sim/idle    {"policy": NAME}
    GET    /_sim/session                 who holds the session
    PUT    /_sim/session                 {"holder": "admin"}   an administrator logs in
    DELETE /_sim/session                 end whatever session is held
    PATCH  /_sim/config                  {"preempt_delay": 0, "session_idle_timeout": 300, ...}
    GET|POST|DELETE /_sim/faults[/{id}]  see :mod:`bot.sim.devices.common`

What could not be verified from documentation (the simulator's choices are marked so):

- the exact reply to a refused second login: the reference only lists 503 "No resources -
  maximum number of sessions was exceeded"; the ``E_BUSY`` code and message are ours;
- whether reads return the running or the pending configuration (here: running) and the
  shape of ``GET /config/pending`` (here: ``status`` with ``cli.pending_config`` plus the
  pending objects);
- whether logging out drops uncommitted changes (here: yes);
- error codes other than ``E_OK`` (``E_UNAUTHORIZED``, ``E_NOT_FOUND``, ``E_INVALID`` here);
- how an unconfigured ``preempt_secondary_gateway`` reads back (here ``null``; ``null`` and
  ``{}`` are both accepted to clear it) and its allowed interval range (here 1..2^31-1 s);
- the session-security (per-request Digest), CHAP, public-key and bearer-token schemes are
  not modelled; ``POST /api/sonicos/renegotiate/tunnel/...`` is not modelled either.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.sim.devices.common import (
    Handler,
    SimDevice,
    add_sim_routes,
    fault_middleware,
    json_body,
    serve,
    url_for,
)

__all__ = [
    "SonicOSDevice",
    "SonicOSSettings",
    "create_app",
    "default_policy",
    "main",
    "start_sonicos_sim",
]

API = "/api/sonicos"
POLICY_PATH = f"{API}/vpn/policies/ipv4/site-to-site"
REALM = "SonicOS API"

# Field names of a site-to-site policy in the 7.0.1 OpenAPI document.
POLICY_KEYS = frozenset(
    {
        "name",
        "enable",
        "auth_method",
        "gateway",
        "proposal",
        "network",
        "keep_alive",
        "suppress_auto_add_rule",
        "require_xauth",
        "anti_replay",
        "netbios",
        "multicast",
        "apply_nat",
        "translated_network",
        "ocsp_checking",
        "responder_url",
        "management",
        "user_login",
        "default_lan_gateway",
        "bound_to",
        "preempt_secondary_gateway",
        "suppress_trigger_packet",
        "accept_hash",
        "send_hash",
    }
)
BOOL_KEYS = frozenset(
    {
        "enable",
        "keep_alive",
        "suppress_auto_add_rule",
        "anti_replay",
        "netbios",
        "multicast",
        "apply_nat",
        "ocsp_checking",
        "suppress_trigger_packet",
        "accept_hash",
    }
)
NO_GATEWAY = ("", "0.0.0.0")
MAX_INTERVAL = 2**31 - 1


class SonicOSSettings(BaseModel):
    """Knobs of the simulated appliance (``PATCH /_sim/config``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    auth_methods: list[str] = Field(default_factory=lambda: ["basic", "digest"])
    digest_algorithm: str = Field(default="SHA-256", pattern="^(SHA-256|MD5)$")
    session_idle_timeout: float = Field(default=300.0, gt=0)
    preempt_delay: float | None = Field(
        default=None, ge=0, description="failback delay; null = the policy's interval"
    )
    nonce_lifetime: float = Field(default=300.0, gt=0)


class SimError(Exception):
    """A SonicOS-style error reply."""

    def __init__(self, status: int, code: str, message: str, headers: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.challenges = headers or []


@dataclass
class Session:
    client: str
    user: str
    via: str  # "api" or "admin"
    started: float
    last_seen: float
    scheme: str = ""


@dataclass
class Tunnel:
    active: str | None = None  # "primary" | "secondary" | None
    since: float = 0.0
    demand: bool = True  # traffic is flowing that would bring the tunnel up


@dataclass
class _Nonce:
    issued: float
    last_nc: int = 0


@dataclass
class SonicOSDevice(SimDevice):
    """The simulated appliance: configuration, session, gateways and tunnels."""

    username: str = "admin"
    password: str = field(default="password", repr=False)
    policies: list[dict[str, Any]] = field(default_factory=list)
    settings: SonicOSSettings = field(default_factory=SonicOSSettings)
    clock: Callable[[], float] = time.monotonic

    kind = "sonicos"

    def __post_init__(self) -> None:
        SimDevice.__init__(self)
        self.committed: dict[str, dict[str, Any]] = {}
        for policy in self.policies or [default_policy()]:
            checked = validate_policy(policy, require_name=True)
            self.committed[checked["name"]] = checked
        self.pending: dict[str, dict[str, Any]] = {}
        self.reachable: dict[str, bool] = {}
        self.tunnels: dict[str, Tunnel] = {name: Tunnel() for name in self.committed}
        self.session: Session | None = None
        self.events: list[dict[str, Any]] = []
        self.listeners: list[Callable[[str, str | None, str | None], None]] = []
        self._nonces: dict[str, _Nonce] = {}
        self._opaque = secrets.token_hex(16)
        self.evaluate()

    # ------------------------------------------------------------------ world model
    def subscribe(self, listener: Callable[[str, str | None, str | None], None]) -> None:
        """Call ``listener(policy, gateway_address, role)`` whenever a tunnel moves."""
        self.listeners.append(listener)

    def is_reachable(self, address: str) -> bool:
        return self.reachable.get(address, True)

    def set_reachable(self, address: str, reachable: bool) -> None:
        self.reachable[address] = reachable
        self.evaluate()

    def gateway(self, policy: str, role: str | None) -> str | None:
        if role is None:
            return None
        address = str((self.committed[policy].get("gateway") or {}).get(role) or "")
        return None if address in NO_GATEWAY else address

    def _usable(self, policy: str, role: str) -> bool:
        address = self.gateway(policy, role)
        return address is not None and self.is_reachable(address)

    def _move(self, name: str, role: str | None, event: str) -> None:
        tunnel = self.tunnels[name]
        if tunnel.active == role:
            return
        tunnel.active = role
        tunnel.since = self.clock()
        address = self.gateway(name, role)
        self.count(event)
        self.events.append(
            {
                "seq": len(self.events) + 1,
                "policy": name,
                "event": event,
                "role": role,
                "gateway": address,
                "at": tunnel.since,
            }
        )
        for listener in self.listeners:
            listener(name, address, role)

    def evaluate(self) -> None:
        """Bring every tunnel to where the configuration and reachability put it."""
        for name, policy in self.committed.items():
            tunnel = self.tunnels.setdefault(name, Tunnel())
            if not policy.get("enable", False):
                self._move(name, None, "tunnel_down")
                continue
            wanted = tunnel.demand or bool(policy.get("keep_alive"))
            if tunnel.active is None:
                if not wanted:
                    continue
                for role in ("primary", "secondary"):
                    if self._usable(name, role):
                        self._move(name, role, "tunnel_up")
                        break
                continue
            other = "secondary" if tunnel.active == "primary" else "primary"
            if not self._usable(name, tunnel.active):
                if self._usable(name, other) and wanted:
                    self._move(name, other, "failover" if other == "secondary" else "failback")
                else:
                    self._move(name, None, "tunnel_down")
                continue
            interval = preempt_interval(policy)
            if tunnel.active == "secondary" and interval is not None:
                delay = (
                    interval if self.settings.preempt_delay is None else self.settings.preempt_delay
                )
                if self._usable(name, "primary") and self.clock() - tunnel.since >= delay:
                    self._move(name, "primary", "failback")

    def peer_dead(self, name: str) -> bool:
        """Dead peer detection gave up on the gateway the tunnel uses (its IKE still answers,
        nothing passes inside the tunnel: a half-up peer). The policy fails over to its other
        gateway if that one is reachable, else the tunnel stays where it is (there is nothing
        better). Returns whether the tunnel moved."""
        tunnel = self.tunnels[self._known(name)]
        if tunnel.active is None:
            return False
        self.count("dpd_timeouts")
        other = "secondary" if tunnel.active == "primary" else "primary"
        if not self._usable(name, other):
            return False
        self._move(name, other, "failover" if other == "secondary" else "failback")
        return True

    def traffic(self, name: str) -> None:
        self.tunnels[self._known(name)].demand = True
        self.evaluate()

    def idle(self, name: str) -> None:
        """The tunnel saw no traffic past its lifetime: without keep-alive it goes down."""
        tunnel = self.tunnels[self._known(name)]
        tunnel.demand = False
        if not self.committed[name].get("keep_alive"):
            self._move(name, None, "tunnel_idle")
        self.evaluate()

    def _known(self, name: str) -> str:
        if name not in self.committed:
            raise KeyError(f"no policy {name!r}")
        return name

    # ------------------------------------------------------------------ sessions
    def _expire_session(self) -> None:
        session = self.session
        if session is None or session.via != "api":
            return
        if self.clock() - session.last_seen > self.settings.session_idle_timeout:
            self._end_session("session_expired")

    def _end_session(self, counter: str) -> None:
        if self.session is None:
            return
        self.session = None
        if self.pending:
            self.count("pending_discarded")
        self.pending.clear()
        self.count(counter)

    def admin_login(self) -> None:
        """An administrator logs in to the GUI/CLI: any API session is preempted."""
        if self.session is not None and self.session.via == "api":
            self._end_session("kicked")
        now = self.clock()
        self.session = Session("gui", "administrator", "admin", now, now)

    def session_info(self) -> dict[str, Any] | None:
        self._expire_session()
        s = self.session
        if s is None:
            return None
        return {"holder": s.via, "client": s.client, "user": s.user, "scheme": s.scheme}

    # ------------------------------------------------------------------ dumps
    def dump(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "settings": self.settings.model_dump(),
            "policies": copy.deepcopy(self.committed),
            "pending": copy.deepcopy(self.pending),
            "session": self.session_info(),
            "gateways": self.gateway_dump(),
            "tunnels": self.tunnel_dump(),
            "counters": self.counter_snapshot(),
            "events": list(self.events),
        }

    def gateway_dump(self) -> dict[str, bool]:
        addresses = {
            str(a)
            for p in self.committed.values()
            for a in (p.get("gateway") or {}).values()
            if a and a not in NO_GATEWAY
        }
        return {a: self.is_reachable(a) for a in sorted(addresses | set(self.reachable))}

    def tunnel_dump(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "active": t.active,
                "gateway": self.gateway(name, t.active),
                "since": t.since,
                "demand": t.demand,
            }
            for name, t in self.tunnels.items()
        }

    def render_error(self, status: int, message: str) -> web.StreamResponse:
        code = {500: "E_INTERNAL", 503: "E_BUSY"}.get(status, "E_ERROR")
        return _status_reply(False, code, message, status)

    # ------------------------------------------------------------------ authentication
    def _challenges(self) -> list[str]:
        out: list[str] = []
        if "digest" in self.settings.auth_methods:
            nonce = secrets.token_hex(16)
            self._nonces[nonce] = _Nonce(self.clock())
            out.append(
                f'Digest realm="{REALM}", qop="auth", algorithm={self.settings.digest_algorithm}, '
                f'nonce="{nonce}", opaque="{self._opaque}", domain="{API}/auth"'
            )
        if "basic" in self.settings.auth_methods:
            out.append(f'Basic realm="{REALM}"')
        return out

    def _unauthorized(self, message: str) -> SimError:
        return SimError(401, "E_UNAUTHORIZED", message, self._challenges())

    def authenticate(self, request: web.Request) -> str:
        """Check the login's credentials; returns the scheme used (or raises 401)."""
        header = request.headers.get("Authorization", "")
        scheme, _, rest = header.partition(" ")
        scheme = scheme.lower()
        if not header:
            self.count("auth_challenges")
            raise self._unauthorized("Authentication required.")
        if scheme not in self.settings.auth_methods:
            self.count("login_failures")
            raise self._unauthorized(f"Authentication scheme {scheme!r} is not enabled.")
        ok = (
            self._check_basic(rest)
            if scheme == "basic"
            else self._check_digest(request.method, request.raw_path, rest)
        )
        if not ok:
            self.count("login_failures")
            raise self._unauthorized("Invalid credentials.")
        return scheme

    def _check_basic(self, encoded: str) -> bool:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and _same(user, self.username) and _same(password, self.password)

    def _check_digest(self, method: str, path_qs: str, params: str) -> bool:
        fields = parse_digest(params)
        nonce = fields.get("nonce", "")
        state = self._nonces.get(nonce)
        if state is None or self.clock() - state.issued > self.settings.nonce_lifetime:
            return False
        try:
            nc = int(fields.get("nc", "0"), 16)
        except ValueError:
            return False
        if nc <= state.last_nc:
            return False  # replayed
        algorithm = fields.get("algorithm", "MD5").upper()
        if algorithm != self.settings.digest_algorithm.upper():
            return False
        if fields.get("realm") != REALM or fields.get("uri") != path_qs:
            return False
        if fields.get("qop") != "auth" or fields.get("opaque") != self._opaque:
            return False
        if not _same(fields.get("username", ""), self.username):
            return False
        h = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5

        def digest(text: str) -> str:
            return h(text.encode()).hexdigest()

        ha1 = digest(f"{self.username}:{REALM}:{self.password}")
        ha2 = digest(f"{method.upper()}:{path_qs}")
        expected = digest(f"{ha1}:{nonce}:{fields.get('nc')}:{fields.get('cnonce', '')}:auth:{ha2}")
        if not hmac.compare_digest(expected, fields.get("response", "")):
            return False
        state.last_nc = nc
        return True

    def login(self, client: str, scheme: str, override: bool) -> None:
        self._expire_session()
        held = self.session
        if held is not None and not (held.via == "api" and held.client == client):
            if not override:
                self.count("login_refused")
                who = "an administrator" if held.via == "admin" else f"API client {held.client}"
                raise SimError(
                    503,
                    "E_BUSY",
                    f"Maximum number of sessions was exceeded: {who} is logged in "
                    "(use override to preempt).",
                )
            self._end_session("kicked")
        elif held is not None:
            self._end_session("relogins")
        now = self.clock()
        self.session = Session(client, self.username, "api", now, now, scheme)
        self.count("logins")

    def require_session(self, client: str) -> Session:
        self._expire_session()
        s = self.session
        if s is None or s.via != "api" or s.client != client:
            self.count("unauthenticated")
            raise SimError(401, "E_UNAUTHORIZED", "Not authenticated: log in first.")
        s.last_seen = self.clock()
        return s

    # ------------------------------------------------------------------ configuration
    def current(self, name: str) -> dict[str, Any]:
        """The policy as the next commit would make it (pending, else running)."""
        if name in self.pending:
            return self.pending[name]
        if name not in self.committed:
            raise SimError(404, "E_NOT_FOUND", f"Site-to-site VPN policy '{name}' not found.")
        return self.committed[name]

    def stage(self, name: str, policy: dict[str, Any]) -> None:
        self.pending[name] = policy
        self.count("changes")

    def commit(self) -> int:
        changed = len(self.pending)
        for name, policy in self.pending.items():
            old = self.committed.get(name, {})
            self.committed[name] = policy
            tunnel = self.tunnels.setdefault(name, Tunnel())
            if old.get("gateway") != policy.get("gateway") and tunnel.active is not None:
                self._move(name, None, "tunnel_reset")  # new peers: renegotiate
        self.pending.clear()
        self.count("commits")
        self.evaluate()
        return changed


def default_policy() -> dict[str, Any]:
    """The policy a fresh simulator starts with (Azure as primary, a second path as backup)."""
    return {
        "name": "Azure",
        "enable": True,
        "gateway": {"primary": "203.0.113.10", "secondary": "198.51.100.20"},
        "keep_alive": False,
        "preempt_secondary_gateway": None,
        "suppress_trigger_packet": False,
        "proposal": {
            "ike": {
                "exchange": "ikev2",
                "dh_group": "14",
                "encryption": "aes-256",
                "authentication": "sha-256",
                "lifetime": 28800,
            }
        },
        "network": {"local": {"name": "LAN Subnets"}, "remote": {"destination_network": {}}},
    }


def preempt_interval(policy: dict[str, Any]) -> float | None:
    preempt = policy.get("preempt_secondary_gateway")
    if isinstance(preempt, dict) and preempt.get("interval") is not None:
        return float(preempt["interval"])
    return None


def validate_policy(policy: Any, *, require_name: bool) -> dict[str, Any]:
    """Check a site-to-site object against the fields and types the API defines."""
    if not isinstance(policy, dict):
        raise SimError(400, "E_INVALID", "site_to_site must be an object.")
    unknown = sorted(set(policy) - POLICY_KEYS)
    if unknown:
        raise SimError(400, "E_INVALID", f"Unknown attribute(s): {', '.join(unknown)}.")
    if require_name and not isinstance(policy.get("name"), str):
        raise SimError(400, "E_INVALID", "Attribute 'name' is required.")
    for key in BOOL_KEYS & set(policy):
        if not isinstance(policy[key], bool):
            raise SimError(400, "E_INVALID", f"Attribute '{key}' must be true or false.")
    gateway = policy.get("gateway")
    if gateway is not None:
        if not isinstance(gateway, dict) or set(gateway) - {"primary", "secondary"}:
            raise SimError(400, "E_INVALID", "Attribute 'gateway' takes primary/secondary.")
        if not all(isinstance(v, str) for v in gateway.values()):
            raise SimError(400, "E_INVALID", "Gateway addresses must be strings.")
    if "preempt_secondary_gateway" in policy:
        preempt = policy["preempt_secondary_gateway"]
        if preempt == {}:
            policy = {**policy, "preempt_secondary_gateway": None}
        elif preempt is not None:
            interval = preempt.get("interval") if isinstance(preempt, dict) else None
            if (
                not isinstance(preempt, dict)
                or set(preempt) != {"interval"}
                or isinstance(interval, bool)
                or not isinstance(interval, int | float)
                or not 1 <= interval <= MAX_INTERVAL
            ):
                raise SimError(
                    400,
                    "E_INVALID",
                    'preempt_secondary_gateway takes {"interval": seconds} or null.',
                )
    return copy.deepcopy(policy)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """PATCH semantics: objects merge key by key, anything else (incl. null) replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_DIGEST_PAIRS = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_digest(params: str) -> dict[str, str]:
    return {
        m[1].lower(): m[2] if m[2] is not None else m[3] for m in _DIGEST_PAIRS.finditer(params)
    }


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _status_reply(
    success: bool,
    code: str,
    message: str,
    http_status: int = 200,
    *,
    cli: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    status: dict[str, Any] = {
        "success": success,
        "info": [{"level": "info" if success else "error", "code": code, "message": message}],
    }
    if cli is not None:
        status["cli"] = cli
    return web.json_response({"status": status, **(extra or {})}, status=http_status)


def _envelope(policies: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vpn": {"policy": [{"ipv4": {"site_to_site": p}} for p in policies]}}


def _unwrap(body: dict[str, Any]) -> dict[str, Any]:
    try:
        items = body["vpn"]["policy"]
        if not isinstance(items, list) or len(items) != 1:
            raise SimError(400, "E_INVALID", "Exactly one policy is expected in vpn.policy.")
        policy = items[0]["ipv4"]["site_to_site"]
    except (KeyError, TypeError, IndexError):
        raise SimError(
            400, "E_INVALID", 'Expected {"vpn": {"policy": [{"ipv4": {"site_to_site": ...}}]}}.'
        ) from None
    if not isinstance(policy, dict):
        raise SimError(400, "E_INVALID", "site_to_site must be an object.")
    return policy


DEVICE_KEY = web.AppKey("sonicos", SonicOSDevice)


def create_app(device: SonicOSDevice) -> web.Application:
    """The SonicOS API plus its ``/_sim/`` control routes."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_sim/"):
            device.count("requests")
            device.evaluate()
        try:
            return await handler(request)
        except SimError as exc:
            response = _status_reply(False, exc.code, exc.message, exc.status)
            for challenge in exc.challenges:
                response.headers.add("WWW-Authenticate", challenge)
            return response

    app = web.Application(middlewares=[errors, fault_middleware(device)])
    app[DEVICE_KEY] = device

    def client(request: web.Request) -> str:
        return request.remote or ""

    async def body_of(request: web.Request) -> dict[str, Any]:
        try:
            return await json_body(request)
        except ValueError:
            raise SimError(400, "E_INVALID", "The request body is not valid JSON.") from None

    async def login(request: web.Request) -> web.StreamResponse:
        scheme = device.authenticate(request)
        body = await body_of(request)
        override = body.get("override") in (True, "true", "True")
        device.login(client(request), scheme, override)
        return _status_reply(True, "E_OK", "Success.")

    async def logout(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        device._end_session("logouts")
        return _status_reply(True, "E_OK", "Success.")

    async def list_policies(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        return web.json_response(_envelope(list(copy.deepcopy(device.committed).values())))

    async def get_policy(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        name = request.match_info["name"]
        if name not in device.committed:
            raise SimError(404, "E_NOT_FOUND", f"Site-to-site VPN policy '{name}' not found.")
        return web.json_response(_envelope([copy.deepcopy(device.committed[name])]))

    async def change_policy(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        name = request.match_info["name"]
        current = device.current(name)
        given = _unwrap(await body_of(request))
        if given.get("name", name) != name:
            raise SimError(400, "E_INVALID", "Renaming a policy is not supported here.")
        if request.method == "PUT":
            new = validate_policy({**given, "name": name}, require_name=True)
        else:
            validate_policy(given, require_name=False)
            new = validate_policy(merge(current, given), require_name=True)
        device.stage(name, new)
        return _status_reply(
            True, "E_OK", "Success.", cli={"configuring": True, "pending_config": True}
        )

    async def get_pending(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        pending = copy.deepcopy(list(device.pending.values()))
        return _status_reply(
            True,
            "E_OK",
            "Success.",
            cli={"configuring": bool(pending), "pending_config": bool(pending)},
            extra=_envelope(pending) if pending else None,
        )

    async def commit(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        changed = device.commit()
        message = "Success." if changed else "No pending configuration."
        return _status_reply(
            True, "E_OK", message, cli={"configuring": False, "pending_config": False}
        )

    async def discard(request: web.Request) -> web.StreamResponse:
        device.require_session(client(request))
        device.pending.clear()
        device.count("discards")
        return _status_reply(True, "E_OK", "Success.")

    async def not_found(request: web.Request) -> web.StreamResponse:
        raise SimError(404, "E_NOT_FOUND", f"The resource '{request.path}' was not found.")

    for method, path, handler in [
        ("POST", f"{API}/auth", login),
        ("DELETE", f"{API}/auth", logout),
        ("GET", POLICY_PATH, list_policies),
        ("GET", POLICY_PATH + "/name/{name}", get_policy),
        ("PUT", POLICY_PATH + "/name/{name}", change_policy),
        ("PATCH", POLICY_PATH + "/name/{name}", change_policy),
        ("GET", f"{API}/config/pending", get_pending),
        ("POST", f"{API}/config/pending", commit),
        ("DELETE", f"{API}/config/pending", discard),
    ]:
        app.router.add_route(method, path, handler)
    app.router.add_route("*", API + "/{tail:.*}", not_found)
    add_sim_routes(app, device, _control_routes(device))
    return app


def _control_routes(device: SonicOSDevice) -> list[tuple[str, str, Handler]]:
    async def events(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.events)

    async def tunnels(_: web.Request) -> web.StreamResponse:
        device.evaluate()
        return web.json_response(device.tunnel_dump())

    async def gateways(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.gateway_dump())

    async def put_gateway(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        reachable = body.get("reachable")
        if not isinstance(reachable, bool):
            raise ValueError('expected {"reachable": true|false}')
        device.set_reachable(request.match_info["address"], reachable)
        return web.json_response(
            {"gateways": device.gateway_dump(), "tunnels": device.tunnel_dump()}
        )

    async def traffic(request: web.Request) -> web.StreamResponse:
        device.traffic(str((await json_body(request)).get("policy") or _only(device)))
        return web.json_response(device.tunnel_dump())

    async def idle(request: web.Request) -> web.StreamResponse:
        device.idle(str((await json_body(request)).get("policy") or _only(device)))
        return web.json_response(device.tunnel_dump())

    async def get_session(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.session_info())

    async def put_session(request: web.Request) -> web.StreamResponse:
        if (await json_body(request)).get("holder") != "admin":
            raise ValueError('expected {"holder": "admin"}')
        device.admin_login()
        return web.json_response(device.session_info())

    async def delete_session(_: web.Request) -> web.StreamResponse:
        device._end_session("ended_by_sim")
        return web.json_response(None)

    async def get_config(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.settings.model_dump())

    async def patch_config(request: web.Request) -> web.StreamResponse:
        merged = {**device.settings.model_dump(), **(await json_body(request))}
        device.settings = SonicOSSettings.model_validate(merged)
        device.evaluate()
        return web.json_response(device.settings.model_dump())

    return [
        ("GET", "/_sim/events", events),
        ("GET", "/_sim/tunnels", tunnels),
        ("GET", "/_sim/gateways", gateways),
        ("PUT", "/_sim/gateways/{address}", put_gateway),
        ("POST", "/_sim/traffic", traffic),
        ("POST", "/_sim/idle", idle),
        ("GET", "/_sim/session", get_session),
        ("PUT", "/_sim/session", put_session),
        ("DELETE", "/_sim/session", delete_session),
        ("GET", "/_sim/config", get_config),
        ("PATCH", "/_sim/config", patch_config),
    ]


def _only(device: SonicOSDevice) -> str:
    if len(device.committed) != 1:
        raise ValueError('several policies: name one with {"policy": NAME}')
    return next(iter(device.committed))


async def start_sonicos_sim(
    device: SonicOSDevice, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the simulator on a loopback address; returns the runner and the port."""
    return await serve(create_app(device), host, port)


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    username: str = "admin",
    password: str = "password",
    policies_file: str | Path | None = None,
) -> None:
    """Run the SonicOS simulator until cancelled."""
    text = await asyncio.to_thread(Path(policies_file).read_text) if policies_file else "[]"
    policies = json.loads(text)
    device = SonicOSDevice(username=username, password=password, policies=policies)
    runner, actual = await start_sonicos_sim(device, host, port)
    print(f"SonicOS simulator on {url_for(host, actual)} (control: /_sim/state)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
