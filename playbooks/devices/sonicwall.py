"""SonicWall (SonicOS 7 REST API) driver: read and change a site-to-site VPN policy.

    sw = SonicWall("https://fw.example:443", "api-admin", password, ca_file="/etc/tw/fw.pem")
    async with sw.session() as s:              # POST /api/sonicos/auth ... DELETE on exit
        policy = await s.policy("Azure")       # GET .../site-to-site/name/Azure
        await s.set_policy("Azure", {"keep_alive": True})   # PATCH: pending, not yet live
        await s.commit()                       # POST /api/sonicos/config/pending

Sessions. SonicOS allows a single API session, and one administrator configuring at a time
wherever they logged in. :meth:`SonicWall.session` therefore always logs out when the block
ends - normally, on an exception inside it, on a failed commit, on cancellation - so the
appliance is never left locked. Logout failures are logged, never raised (they must not hide
the real outcome). The one exception: when the login itself is *refused* (wrong credentials,
someone else holds the session, the API is off) there is nothing of ours to end, and a
logout from the same address could end someone else's session, so none is sent. A login
refused because the session is held raises :class:`SessionBusy` (transient: try later).

``override`` (``{"override": true}`` on login) ends whoever holds the appliance - possibly
an administrator in the middle of an edit - so it is never sent unless the device is
configured with ``override=True``.

Authentication is HTTP Basic (default) or RFC 7616 Digest (``auth="digest"``; aiohttp's
``DigestAuthMiddleware``, SHA-256 or MD5 as the appliance offers). Credentials are sent on
the login request only; afterwards the appliance recognises the session (by client address
unless "session security" is enabled, see below).

Changes are ``PATCH``-ed with only the fields that change, in the API's own names
(``enable``, ``keep_alive``, ``preempt_secondary_gateway`` = ``{"interval": s}`` or
``null``, ``gateway`` = ``{"primary", "secondary"}``, ...); they stay pending until
:meth:`SonicWallSession.commit`. :func:`policy_changes` computes that patch from a policy and
the wanted settings (empty when already converged).

Not verified from documentation (see also :mod:`bot.sim.devices.sonicos`): the exact error
reply to a second login (the reference lists 503 "maximum number of sessions exceeded"; any
503 on login is treated as :class:`SessionBusy`); whether logging out drops uncommitted
changes; how an unset ``preempt_secondary_gateway`` reads back (``null`` and ``{}`` are both
read as "off"). "Session security" (RFC 7616 Digest on every request after login) is not
implemented: with it enforced on the appliance, requests after login would be refused (401).
SonicOS 7.0.1 has no endpoint listing active tunnels/SAs; tunnel state must come from probes
or the Azure side.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr

from playbooks.devices.common import (
    AccessDenied,
    AuthenticationFailed,
    DeviceError,
    HttpDevice,
    ProtocolError,
    Reply,
    RequestRejected,
    SessionBusy,
    basic_auth,
    quote_segment,
    secret,
    shielded,
)

__all__ = ["POLICY_FIELDS", "S2SPolicy", "SonicWall", "SonicWallSession", "policy_changes"]

log = logging.getLogger("tunnelwarden.devices.sonicwall")

API = "/api/sonicos"
POLICY_PATH = f"{API}/vpn/policies/ipv4/site-to-site"
HEADERS = {"Accept": "application/json"}
LOGOUT_TIMEOUT = 10.0
# Field names of a site-to-site policy (SonicOS 7.0.1 OpenAPI document).
POLICY_FIELDS = frozenset(
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
NO_GATEWAY = ("", "0.0.0.0")


@dataclass(frozen=True)
class S2SPolicy:
    """The settings of a site-to-site policy the bot cares about (``raw`` has all of it)."""

    name: str
    enable: bool
    keep_alive: bool
    primary_gateway: str | None
    secondary_gateway: str | None
    preempt_interval: float | None  # None: preempt (failback to the primary) is off
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def preempt(self) -> bool:
        return self.preempt_interval is not None

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> S2SPolicy:
        gateway = obj.get("gateway") or {}
        preempt = obj.get("preempt_secondary_gateway")
        interval = preempt.get("interval") if isinstance(preempt, Mapping) else None
        return cls(
            name=str(obj.get("name", "")),
            enable=bool(obj.get("enable", False)),
            keep_alive=bool(obj.get("keep_alive", False)),
            primary_gateway=_gateway(gateway.get("primary")),
            secondary_gateway=_gateway(gateway.get("secondary")),
            preempt_interval=float(interval) if isinstance(interval, int | float) else None,
            raw=dict(obj),
        )


def _gateway(value: Any) -> str | None:
    return None if value is None or str(value) in NO_GATEWAY else str(value)


def policy_changes(
    current: S2SPolicy,
    *,
    enable: bool | None = None,
    keep_alive: bool | None = None,
    preempt: bool | None = None,
    preempt_interval: float | None = None,
    primary_gateway: str | None = None,
    secondary_gateway: str | None = None,
) -> dict[str, Any]:
    """The PATCH that brings ``current`` to the wanted settings (``{}`` when converged).

    ``None`` leaves a setting alone. ``preempt=True`` needs ``preempt_interval`` unless the
    policy already has one; ``preempt=False`` clears it. A ``preempt_interval`` alone changes
    the interval of an enabled preempt (or enables it).
    """
    changes: dict[str, Any] = {}
    if enable is not None and enable != current.enable:
        changes["enable"] = enable
    if keep_alive is not None and keep_alive != current.keep_alive:
        changes["keep_alive"] = keep_alive
    if preempt is False:
        if current.preempt:
            changes["preempt_secondary_gateway"] = None
    elif preempt is True or preempt_interval is not None:
        interval = preempt_interval if preempt_interval is not None else current.preempt_interval
        if interval is None:
            raise ValueError("enabling preempt needs preempt_interval (seconds)")
        if interval <= 0:
            raise ValueError("preempt_interval must be positive")
        if current.preempt_interval != interval:
            value = int(interval) if float(interval).is_integer() else interval
            changes["preempt_secondary_gateway"] = {"interval": value}
    gateway: dict[str, str] = {}
    if primary_gateway is not None and primary_gateway != current.primary_gateway:
        gateway["primary"] = primary_gateway
    if secondary_gateway is not None and secondary_gateway != current.secondary_gateway:
        gateway["secondary"] = secondary_gateway
    if gateway:
        changes["gateway"] = gateway
    return changes


class SonicWall(HttpDevice):
    """A SonicWall appliance reached through the SonicOS API."""

    kind = "sonicwall"

    def __init__(
        self,
        url: str,
        username: str,
        password: str | SecretStr,
        *,
        verify_tls: bool = True,
        ca_file: str | Path | None = None,
        override: bool = False,
        auth: Literal["basic", "digest"] = "basic",
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        if auth not in ("basic", "digest"):
            raise ValueError(f"auth must be 'basic' or 'digest', not {auth!r}")
        self._password = secret(password)
        super().__init__(
            url,
            name=name,
            verify_tls=verify_tls,
            ca_file=ca_file,
            timeout=timeout,
            secrets=(self._password,),
        )
        self.username = username
        self.override = override
        self.auth = auth

    @asynccontextmanager
    async def session(self) -> AsyncIterator[SonicWallSession]:
        """Log in, yield the session, and log out whatever happens inside."""
        assert self._password is not None
        password = self._password.get_secret_value()
        middlewares = (
            (aiohttp.DigestAuthMiddleware(self.username, password),)
            if self.auth == "digest"
            else ()
        )
        http = self.new_session(middlewares=middlewares)
        try:
            logged_in = False
            try:
                await self._login(http)
                logged_in = True
                yield SonicWallSession(self, http)
            except DeviceError as exc:
                if not logged_in and _refused(exc):
                    raise  # nothing of ours to end; a logout could end someone else's session
                await shielded(self._logout(http))
                raise
            except BaseException:
                await shielded(self._logout(http))
                raise
            else:
                await shielded(self._logout(http))
        finally:
            await http.close()

    async def _login(self, http: aiohttp.ClientSession) -> None:
        headers = dict(HEADERS)
        if self.auth == "basic":
            assert self._password is not None
            headers.update(basic_auth(self.username, self._password))
        kwargs: dict[str, Any] = {"headers": headers}
        if self.override:
            kwargs["json"] = {"override": True}
            log.warning("%s: logging in with override: any other session is ended", self.name)
        reply = await self.send(http, "POST", f"{API}/auth", **kwargs)
        if reply.status == 503:
            raise SessionBusy(
                "login refused (HTTP 503: the management session is held by someone else, "
                f"or the appliance is out of sessions): {self.scrub(_info(reply))}",
                device=self.name,
                status=503,
            )
        self.check(reply, "login")
        log.info("%s: logged in to the SonicOS API", self.name)

    async def _logout(self, http: aiohttp.ClientSession) -> None:
        try:
            reply = await self.send(
                http,
                "DELETE",
                f"{API}/auth",
                headers=HEADERS,
                timeout=aiohttp.ClientTimeout(total=min(self.timeout, LOGOUT_TIMEOUT)),
            )
        except DeviceError as exc:
            log.warning(
                "%s: logout failed, the session may stay until it idles out: %s", self.name, exc
            )
            return
        if reply.status == 401:
            log.info("%s: logout: no session left to end", self.name)
        elif reply.status >= 400:
            log.warning(
                "%s: logout failed (HTTP %s), the session may stay until it idles out",
                self.name,
                reply.status,
            )
        else:
            log.info("%s: logged out of the SonicOS API", self.name)

    def check(self, reply: Reply, what: str) -> Any:
        """The reply's JSON if it is a success, else the matching :class:`DeviceError`."""
        body = reply.json()
        if reply.status >= 400:
            raise self.fail(reply, what, _info(reply))
        status = body.get("status") if isinstance(body, dict) else None
        if isinstance(status, dict) and status.get("success") is False:
            detail = self.scrub(_info(reply))
            raise RequestRejected(f"{what}: {detail}", device=self.name, status=reply.status)
        return body


def _refused(exc: DeviceError) -> bool:
    return isinstance(exc, SessionBusy | AuthenticationFailed | AccessDenied)


def _info(reply: Reply) -> str:
    """``code: message`` of the SonicOS status object, or the raw text."""
    body = reply.json()
    try:
        info = body["status"]["info"]
        return "; ".join(f"{i.get('code', '')}: {i.get('message', '')}" for i in info)
    except (KeyError, TypeError, AttributeError):
        return reply.text().strip()


class SonicWallSession:
    """What may be done while logged in (obtained from :meth:`SonicWall.session`)."""

    def __init__(self, device: SonicWall, http: aiohttp.ClientSession) -> None:
        self._device = device
        self._http = http

    def __repr__(self) -> str:
        return f"SonicWallSession({self._device.name!r})"

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        reply = await self._device.send(self._http, method, path, headers=HEADERS, **kwargs)
        return self._device.check(reply, what)

    async def policies(self) -> list[S2SPolicy]:
        body = await self._call("GET", POLICY_PATH, "read site-to-site policies")
        return [S2SPolicy.from_api(p) for p in self._unwrap(body, "policies")]

    async def policy(self, name: str) -> S2SPolicy:
        """The running (committed) configuration of policy ``name``."""
        path = f"{POLICY_PATH}/name/{quote_segment(name)}"
        body = await self._call("GET", path, f"read policy {name!r}")
        found = [p for p in self._unwrap(body, f"policy {name!r}") if p.get("name") == name]
        if len(found) != 1:
            raise ProtocolError(
                f"reading policy {name!r} returned {len(found)} matching policies",
                device=self._device.name,
            )
        return S2SPolicy.from_api(found[0])

    async def set_policy(self, name: str, changes: Mapping[str, Any]) -> None:
        """PATCH ``changes`` (API field names) into policy ``name``; pending until commit."""
        unknown = sorted(set(changes) - POLICY_FIELDS)
        if unknown:
            raise ValueError(f"unknown site-to-site policy field(s): {', '.join(unknown)}")
        if not changes:
            return
        body = {"vpn": {"policy": [{"ipv4": {"site_to_site": {**changes, "name": name}}}]}}
        path = f"{POLICY_PATH}/name/{quote_segment(name)}"
        await self._call("PATCH", path, f"change policy {name!r}", json=body)
        log.info("%s: staged %s on policy %r", self._device.name, sorted(changes), name)

    async def pending(self) -> dict[str, Any]:
        """The appliance's view of what is pending (raw JSON)."""
        body = await self._call("GET", f"{API}/config/pending", "read pending configuration")
        return body if isinstance(body, dict) else {}

    async def commit(self) -> None:
        await self._call("POST", f"{API}/config/pending", "commit", json={})
        log.info("%s: committed the pending configuration", self._device.name)

    async def discard(self) -> None:
        await self._call("DELETE", f"{API}/config/pending", "discard pending configuration")

    def _unwrap(self, body: Any, what: str) -> list[Mapping[str, Any]]:
        try:
            items = body["vpn"]["policy"]
            return [item["ipv4"]["site_to_site"] for item in items]
        except (KeyError, TypeError):
            raise ProtocolError(
                f"unexpected reply reading {what}: no vpn.policy[].ipv4.site_to_site",
                device=self._device.name,
            ) from None
