"""ARM REST front end of the simulator (aiohttp, loopback only).

Speaks enough of Azure Resource Manager's ``Microsoft.Network`` protocol that the
real, unmodified ``azure.mgmt.network.aio.NetworkManagementClient`` works
against it: bearer-token check with ARM's 401 + ``WWW-Authenticate``,
``api-version`` validation, case-insensitive paths, ``etag`` + ``If-Match`` /
``If-None-Match``, NRP-style long-running operations (``Azure-AsyncOperation``
for PUT/PATCH, plus ``Location`` for DELETE/POST, with ``Retry-After``),
``nextLink`` paging, ARM error envelopes and subscription throttling.

Routes (all under ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network``):

- ``localNetworkGateways[/{n}]``
- ``connections[/{n}[/sharedkey[/reset] | /resetconnection | /getikesas]]``
- ``virtualNetworkGateways[/{n}[/reset[?gatewayVip=] | /getBgpPeerStatus[?peer=] |
  /connections]]``
- operation status: ``/subscriptions/{sub}/providers/Microsoft.Network/locations/{loc}/``
  ``operations/{id}`` (Azure-AsyncOperation) and ``operationResults/{id}`` (Location).

Traffic Manager (:mod:`bot.sim.trafficmanager`): ``trafficmanagerprofiles[/{p}[/{AzureEndpoints|
ExternalEndpoints|NestedEndpoints}/{e}]]`` under the group, and the subscription-wide list
``/subscriptions/{sub}/providers/Microsoft.Network/trafficmanagerprofiles``; synchronous writes,
no ETags, checked against ``settings.traffic_manager_api_versions``.

Plus Microsoft.Resources resource groups: ``/subscriptions/{sub}/resourcegroups[/{rg}]``
(PUT, GET, HEAD, DELETE as an LRO polled at ``/subscriptions/{sub}/operationresults/{id}``;
GET of the collection lists them), checked against ``settings.resource_api_versions``.

A LIST of connections (the collection, and a gateway's ``/connections``) leaves out
``connectionStatus`` and ``tunnelConnectionStatus`` like ARM does; a GET by name has them.
Each LIST page counts as one read of the collection (key: the collection path, see
:func:`bot.sim.resources.collection_id`), each GET as a read of that resource.
The ``/_sim/`` control API lives in :mod:`bot.sim.control`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.sim.control import add_control_routes
from bot.sim.errors import ArmError
from bot.sim.faults import REQUEST_KINDS, FaultKind, FaultRule
from bot.sim.lro import Operation, OpStatus
from bot.sim.metering import OpClass
from bot.sim.resources import Kind, collection_id, make_id, resource_group_id
from bot.sim.trafficmanager import (
    ENDPOINT_TYPES,
    endpoint_id,
    profile_id,
    profiles_collection_id,
)
from bot.sim.world import World

__all__ = ["WORLD_KEY", "World", "create_app", "main", "start_arm_sim"]

WORLD_KEY = web.AppKey("world", World)
log = logging.getLogger(__name__)

OP_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Network/locations/(?P<loc>[^/]+)"
    r"/(?P<what>operations|operationResults)/(?P<op>[^/]+)/?$",
    re.IGNORECASE,
)
RES_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Network"
    r"/(?P<type>[^/]+)(?:/(?P<name>[^/]+)(?P<action>(?:/[^/]+)*))?/?$",
    re.IGNORECASE,
)
TM_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)(?:/resourceGroups/(?P<rg>[^/]+))?/providers/Microsoft\.Network"
    r"/trafficmanagerprofiles(?:/(?P<profile>[^/]+)(?P<rest>(?:/[^/]+)*))?/?$",
    re.IGNORECASE,
)
RG_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups(?:/(?P<rg>[^/]+))?/?$", re.IGNORECASE
)
RG_OP_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/operationresults/(?P<op>[^/]+)/?$", re.IGNORECASE
)
API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
DEFAULT_STATUS_CODES = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
WWW_AUTH = (
    'Bearer authorization_uri="https://login.microsoftonline.com/common", '
    'error="invalid_token", error_description="{}"'
)


def create_app(world: World) -> web.Application:
    """Build the aiohttp application serving ARM + the ``/_sim/`` control API."""
    app = web.Application()
    app[WORLD_KEY] = world
    add_control_routes(app, world)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


def _require_loopback(host: str) -> None:
    # An ARM endpoint that accepts any token must never be reachable off-box.
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the ARM simulator only binds to loopback addresses, not {host!r}")


async def start_arm_sim(
    world: World, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the simulator; returns the runner (``await runner.cleanup()``) and the port."""
    _require_loopback(host)
    runner = web.AppRunner(create_app(world), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses: list[Any] = list(runner.addresses)
    return runner, int(addresses[0][1])


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    world_file: str | Path | None = None,
    *,
    retry_after: int | None = None,
    tunnel_delay: float | None = None,
) -> None:
    """Run the simulator until cancelled (entry point for ``tunnelwarden sim arm``)."""
    world = World.from_file(world_file) if world_file else World.empty()
    if retry_after is not None:
        world.settings.retry_after = retry_after
    if tunnel_delay is not None:
        world.settings.tunnel_delay = tunnel_delay
    runner, actual = await start_arm_sim(world, host, port)
    print(
        f"ARM simulator listening on http://{host}:{actual} (control API: /_sim/state)", flush=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------- plumbing
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def _error(exc: ArmError) -> web.Response:
    return _json(exc.body(), exc.status, exc.headers)


async def _dispatch(request: web.Request) -> web.StreamResponse:
    world = request.app[WORLD_KEY]
    world.tick()
    try:
        response = await _handle(world, request)
    except ArmError as exc:
        response = _error(exc)
    except Exception:  # a simulator bug must still look like ARM to the SDK
        log.exception("ARM simulator failed on %s %s", request.method, request.path)
        response = _error(ArmError(500, "InternalServerError", "Simulator internal error."))
    response.headers["x-ms-request-id"] = str(uuid.uuid4())
    response.headers["x-ms-correlation-request-id"] = str(uuid.uuid4())
    client_id = request.headers.get("x-ms-client-request-id")
    if client_id:
        response.headers["x-ms-client-request-id"] = client_id
    return response


def _retry_after(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _fault_response(world: World, rule: FaultRule) -> web.Response:
    if rule.kind is FaultKind.THROTTLE:
        wait = rule.retry_after if rule.retry_after is not None else world.settings.retry_after
        exc = ArmError(
            429,
            rule.code or "TooManyRequests",
            rule.message or "The request is being throttled (injected by the simulator).",
            headers={"Retry-After": _retry_after(wait)},
        )
    else:
        headers = (
            {"Retry-After": _retry_after(rule.retry_after)} if rule.retry_after is not None else {}
        )
        exc = ArmError(
            rule.status,
            rule.code or DEFAULT_STATUS_CODES.get(rule.status, "InjectedFault"),
            rule.message or f"Injected fault {rule.id} (HTTP {rule.status}).",
            headers=headers,
        )
    return _error(exc)


def _authenticate(world: World, request: web.Request) -> None:
    header = request.headers.get("Authorization")
    if not header:
        raise ArmError(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
            headers={
                "WWW-Authenticate": WWW_AUTH.format(
                    "The authentication failed because of missing 'Authorization' header."
                )
            },
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ArmError(
            401,
            "AuthenticationFailedInvalidHeader",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            headers={"WWW-Authenticate": WWW_AUTH.format("The authentication header is invalid.")},
        )
    if world.settings.tokens and token not in world.settings.tokens:
        raise ArmError(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
            headers={"WWW-Authenticate": WWW_AUTH.format("The access token is invalid.")},
        )


def _api_version(
    world: World,
    request: web.Request,
    type_name: str,
    *,
    arm_own: bool = False,
    versions: list[str] | None = None,
) -> str:
    """The request's api-version; ``arm_own`` for ARM's own types (resource groups), which
    ARM answers with ``InvalidApiVersionParameter`` rather than ``NoRegisteredProviderFound``.
    ``versions``: the type's own list (Traffic Manager), else Microsoft.Network's."""
    version = request.query.get("api-version")
    if not version:
        raise ArmError(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if versions is None:
        own = world.settings.resource_api_versions
        versions = own if arm_own else world.settings.api_versions
    supported = "', '".join(versions)
    if not API_VERSION_RE.match(version) or (arm_own and version not in versions):
        raise ArmError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. The supported versions are '{supported}'.",
        )
    if version not in versions:
        raise ArmError(
            400,
            "NoRegisteredProviderFound",
            f"No registered resource provider found for API version '{version}' and type "
            f"'{type_name}'. The supported api-versions are '{supported}'.",
        )
    return version


def _op_class(method: str) -> OpClass:
    return {"GET": OpClass.READ, "HEAD": OpClass.READ, "DELETE": OpClass.DELETE}.get(
        method, OpClass.WRITE
    )


async def _body(request: web.Request) -> Any:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ArmError(
            400,
            "InvalidRequestContent",
            f"The request content was invalid and could not be deserialized: '{exc}'.",
        ) from None


class _Ctx:
    """Per-request values the handlers need."""

    def __init__(self, world: World, request: web.Request, api_version: str) -> None:
        self.world = world
        self.request = request
        self.api_version = api_version
        self.base = f"{request.scheme}://{request.host}"
        self.sig = (request.method, request.path)

    def lro_headers(self, op: Operation | None, *, location: bool) -> dict[str, str]:
        if op is None:
            return {}
        query = f"?api-version={self.api_version}"
        if op.arm_scope:  # ARM's own operations only have a Location URL
            return {
                "Location": self.base + op.path() + query,
                "Retry-After": str(self.world.settings.retry_after),
            }
        headers = {
            "Azure-AsyncOperation": self.base + op.path("operations") + query,
            "Retry-After": str(self.world.settings.retry_after),
        }
        if location:
            headers["Location"] = self.base + op.path("operationResults") + query
        return headers

    def page(self, items: list[dict[str, Any]]) -> web.Response:
        size = self.world.settings.page_size
        try:
            start = max(0, int(self.request.query.get("$skiptoken", "0")))
        except ValueError:
            raise ArmError(400, "InvalidSkipToken", "The $skiptoken is invalid.") from None
        body: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            body["nextLink"] = (
                f"{self.base}{self.request.path}?api-version={self.api_version}"
                f"&$skiptoken={start + size}"
            )
        return _json(body)


async def _handle(world: World, request: web.Request) -> web.StreamResponse:
    path, method = request.path, request.method.upper()
    op_match = OP_RE.match(path) or RG_OP_RE.match(path)
    tm_match = TM_RE.match(path)
    res_match = None if tm_match else RES_RE.match(path)
    rg_match = RG_RE.match(path)
    arm_own = False
    versions: list[str] | None = None
    if tm_match:
        sub, type_name = tm_match["sub"], "trafficmanagerprofiles"
        counter_key = _tm_counter_key(tm_match)
        versions = world.settings.traffic_manager_api_versions
        world.counters.count(counter_key, "reads" if method in ("GET", "HEAD") else "writes")
    elif op_match:
        op = world.ops.get(op_match["op"])
        sub, type_name = op_match["sub"], "locations/operations"
        arm_own = "loc" not in op_match.groupdict()
        world.counters.count(op.resource_id if op else path, "polls")
        counter_key = op.resource_id if op else path
    elif res_match:
        sub, type_name = res_match["sub"], res_match["type"]
        kind = Kind.parse(type_name)
        name = res_match["name"]
        if kind and name:
            counter_key = make_id(sub, res_match["rg"], kind, name)
        elif kind:
            counter_key = collection_id(sub, res_match["rg"], kind)
        else:
            counter_key = path
        world.counters.count(counter_key, "reads" if method in ("GET", "HEAD") else "writes")
    elif rg_match:
        sub, type_name, arm_own = rg_match["sub"], "resourceGroups", True
        counter_key = (
            resource_group_id(sub, rg_match["rg"])
            if rg_match["rg"]
            else f"/subscriptions/{sub}/resourceGroups"
        )
        world.counters.count(counter_key, "reads" if method in ("GET", "HEAD") else "writes")
    else:
        raise ArmError(
            404, "NotFound", f"The requested path '{path}' is not an ARM route of this simulator."
        )

    _authenticate(world, request)
    api_version = _api_version(world, request, type_name, arm_own=arm_own, versions=versions)
    rule = world.faults.take(method, path, REQUEST_KINDS)
    if rule is not None:
        world.counters.count(counter_key, "faults")
        return _fault_response(world, rule)
    rate_header: dict[str, str] = {}
    if world.settings.throttling:
        op_class = _op_class(method)
        allowed, remaining, wait = world.limiter.acquire(sub, op_class)
        if not allowed:
            world.counters.count(counter_key, "faults")
            raise ArmError(
                429,
                "SubscriptionRequestsThrottled",
                f"Number of '{op_class.value}' requests for subscription '{sub}' exceeded. Please "
                f"try again after '{wait}' seconds after the additional tokens are added.",
                headers={"Retry-After": str(wait)},
            )
        rate_header[f"x-ms-ratelimit-remaining-subscription-{op_class.value}"] = str(remaining)

    ctx = _Ctx(world, request, api_version)
    if tm_match:
        response = await _handle_traffic_manager(ctx, tm_match, method, counter_key)
    elif op_match:
        what = op_match.groupdict().get("what") or "operationresults"
        response = _handle_operation(ctx, op_match["op"], what.lower(), method)
    elif res_match:
        response = await _handle_resource(ctx, res_match, method)
    else:
        assert rg_match is not None
        response = await _handle_resource_group(ctx, rg_match, method)
    response.headers.update(rate_header)
    return response


def _handle_operation(ctx: _Ctx, op_id: str, what: str, method: str) -> web.StreamResponse:
    if method != "GET":
        raise ArmError(405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported.")
    op = ctx.world.ops.get(op_id)
    if op is None or op.lost:
        raise ArmError(404, "NotFound", f"Operation {op_id} not found.")
    ctx.world.ops.poll(op)
    retry = {"Retry-After": str(ctx.world.settings.retry_after)}
    if what == "operations":
        return _json(op.status_body(), 200, retry if not op.done else None)
    if not op.done:
        return web.Response(status=202, headers={**retry, **ctx.lro_headers(op, location=True)})
    if op.status is OpStatus.FAILED and op.failure:
        raise ArmError(400, op.failure.code, op.failure.message)
    status, body = op.result()
    return web.Response(status=204) if body is None else _json(body, status)


def _not_modelled(kind: str, action: str) -> ArmError:
    return ArmError(
        404,
        "InvalidResourceType",
        f"The resource type '{kind}{action}' could not be found in the namespace "
        "'Microsoft.Network' (not modelled by the simulator).",
    )


def _method_not_allowed(method: str) -> ArmError:
    return ArmError(405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported.")


async def _handle_resource(ctx: _Ctx, m: re.Match[str], method: str) -> web.StreamResponse:
    world = ctx.world
    sub, rg, name = m["sub"], m["rg"], m["name"]
    action = (m["action"] or "").lower().rstrip("/")
    kind = Kind.parse(m["type"])
    if kind is None:
        raise _not_modelled(m["type"], "")

    if name is None:
        if method != "GET":
            raise _method_not_allowed(method)
        return ctx.page(
            [world.render(r, listing=True) for r in world.list_resources(kind, sub, rg)]
        )

    if_match = ctx.request.headers.get("If-Match")
    if_none_match = ctx.request.headers.get("If-None-Match")
    if action == "":
        if method == "GET":
            res = world.get(kind, sub, rg, name)
            if if_none_match and method == "GET" and if_none_match.strip() in (res.etag, "*"):
                return web.Response(status=304, headers={"ETag": res.etag})
            return _json(world.render(res), 200, {"ETag": res.etag})
        if method == "PUT":
            res, created, op = world.put(
                kind,
                sub,
                rg,
                name,
                await _body(ctx.request),
                if_match=if_match,
                if_none_match=if_none_match,
                request=ctx.sig,
            )
            return _json(
                world.render(res), 201 if created else 200, ctx.lro_headers(op, location=False)
            )
        if method == "PATCH":
            res, op = world.patch_tags(
                kind, sub, rg, name, await _body(ctx.request), if_match=if_match, request=ctx.sig
            )
            return _json(world.render(res), 200, ctx.lro_headers(op, location=False))
        if method == "DELETE":
            deleted, op = world.delete(kind, sub, rg, name, if_match=if_match, request=ctx.sig)
            if deleted is None:
                return web.Response(status=204)
            return web.Response(status=202, headers=ctx.lro_headers(op, location=True))
        raise _method_not_allowed(method)

    if kind is Kind.CONNECTION and action == "/sharedkey":
        if method == "GET":
            return _json({"id": "", "value": world.get_shared_key(sub, rg, name)})
        if method == "PUT":
            body = await _body(ctx.request)
            conn, op = world.set_shared_key(sub, rg, name, body, request=ctx.sig)
            return _json(
                {"id": "", "value": conn.shared_key}, 200, ctx.lro_headers(op, location=False)
            )
        raise _method_not_allowed(method)

    posts = {
        (Kind.CONNECTION, "/sharedkey/reset"),
        (Kind.CONNECTION, "/resetconnection"),
        (Kind.CONNECTION, "/getikesas"),
        (Kind.VNG, "/reset"),
        (Kind.VNG, "/getbgppeerstatus"),
    }
    if (kind, action) in posts:
        if method != "POST":
            raise _method_not_allowed(method)
        if action == "/sharedkey/reset":
            _, op = world.reset_shared_key(sub, rg, name, await _body(ctx.request), request=ctx.sig)
        elif action == "/resetconnection":
            _, op = world.reset_connection(sub, rg, name, request=ctx.sig)
        elif action == "/getikesas":
            _, op = world.get_ike_sas(sub, rg, name, request=ctx.sig)
        elif action == "/getbgppeerstatus":
            _, op = world.get_bgp_peer_status(
                sub, rg, name, peer=ctx.request.query.get("peer"), request=ctx.sig
            )
        else:
            _, op = world.reset_gateway(
                sub, rg, name, gateway_vip=ctx.request.query.get("gatewayVip"), request=ctx.sig
            )
        return web.Response(status=202, headers=ctx.lro_headers(op, location=True))

    if kind is Kind.VNG and action == "/connections":
        if method != "GET":
            raise _method_not_allowed(method)
        gw = world.get(Kind.VNG, sub, rg, name)
        conns = [
            world.render(r, listing=True)
            for r in world.list_resources(Kind.CONNECTION, sub, rg)
            if gw.key in (r.ref("virtualNetworkGateway1"), r.ref("virtualNetworkGateway2"))
        ]
        return ctx.page(conns)

    raise _not_modelled(kind.value, action)


async def _handle_resource_group(ctx: _Ctx, m: re.Match[str], method: str) -> web.StreamResponse:
    """Microsoft.Resources ``resourcegroups``: create/update, read, exists, delete, list."""
    world, sub, name = ctx.world, m["sub"], m["rg"]
    if name is None:
        if method != "GET":
            raise _method_not_allowed(method)
        return ctx.page([g.render() for g in world.list_resource_groups(sub)])
    if method == "PUT":
        group, created = world.put_resource_group(sub, name, await _body(ctx.request))
        return _json(group.render(), 201 if created else 200)
    if method == "GET":
        return _json(world.get_resource_group(sub, name).render())
    if method == "HEAD":
        exists = (sub.lower(), name.lower()) in world.resource_groups
        return web.Response(status=204 if exists else 404)
    if method == "DELETE":
        op = world.delete_resource_group(sub, name, request=ctx.sig)
        if op is None:
            return web.Response(status=200)
        return web.Response(status=202, headers=ctx.lro_headers(op, location=True))
    raise _method_not_allowed(method)


# ---------------------------------------------------------------------- Traffic Manager
def _tm_parts(m: re.Match[str]) -> tuple[str | None, list[str]]:
    rest = m["rest"] or ""
    return m["profile"], [part for part in rest.split("/") if part]


def _tm_counter_key(m: re.Match[str]) -> str:
    """Endpoint id, profile id or collection path (the request-counter key)."""
    sub, rg = m["sub"], m["rg"]
    profile, parts = _tm_parts(m)
    if rg is None or profile is None:
        return profiles_collection_id(sub, rg)
    if len(parts) == 2 and parts[0].lower() in ENDPOINT_TYPES:
        return endpoint_id(sub, rg, profile, parts[0], parts[1])
    return profile_id(sub, rg, profile) + "".join(f"/{p}" for p in parts)


def _tm_write_done(ctx: _Ctx, counter_key: str, changed: bool) -> None:
    """After a write went through: count a no-op write, and let an armed ``lost_operation``
    lose the answer. Traffic Manager writes are synchronous, so the operation the caller loses
    is the request itself: ARM answers 504 GatewayTimeout while the change stands (a retry of
    the same write finds it made)."""
    world = ctx.world
    if not changed:
        world.counters.count(counter_key, "redundant")
    rule = world.faults.take(*ctx.sig, frozenset({FaultKind.LOST_OPERATION}))
    if rule is not None:
        world.counters.count(counter_key, "faults")
        raise ArmError(
            504,
            "GatewayTimeout",
            "The gateway did not receive a response from 'Microsoft.Network' within the "
            "specified time period.",
        )


async def _handle_traffic_manager(
    ctx: _Ctx, m: re.Match[str], method: str, counter_key: str
) -> web.StreamResponse:
    tm = ctx.world.traffic_manager
    sub, rg = m["sub"], m["rg"]
    profile, parts = _tm_parts(m)
    if rg is None and profile is not None:
        raise _not_modelled("trafficmanagerprofiles", " outside a resource group")
    if rg is None or profile is None:  # a list, by subscription or by group
        if method != "GET":
            raise _method_not_allowed(method)
        return ctx.page([tm.render_profile(p) for p in tm.list_profiles(sub, rg)])

    if not parts:
        if method == "GET":
            return _json(tm.render_profile(tm.get_profile(sub, rg, profile)))
        if method == "PUT":
            prof, created, changed = tm.put_profile(sub, rg, profile, await _body(ctx.request))
            _tm_write_done(ctx, counter_key, changed)
            return _json(tm.render_profile(prof), 201 if created else 200)
        if method == "PATCH":
            prof, changed = tm.patch_profile(sub, rg, profile, await _body(ctx.request))
            _tm_write_done(ctx, counter_key, changed)
            return _json(tm.render_profile(prof))
        if method == "DELETE":
            deleted = tm.delete_profile(sub, rg, profile)
            _tm_write_done(ctx, counter_key, deleted)
            return _json({}) if deleted else web.Response(status=204)
        raise _method_not_allowed(method)

    if len(parts) != 2 or parts[0].lower() not in ENDPOINT_TYPES:
        raise _not_modelled("trafficmanagerprofiles/", parts[0])
    etype, name = parts
    if method == "GET":
        return _json(tm.render_endpoint(tm.get_endpoint(sub, rg, profile, etype, name)))
    if method == "PUT":
        ep, created, changed = tm.put_endpoint(
            sub, rg, profile, etype, name, await _body(ctx.request)
        )
        _tm_write_done(ctx, counter_key, changed)
        return _json(tm.render_endpoint(ep), 201 if created else 200)
    if method == "PATCH":
        ep, changed = tm.patch_endpoint(sub, rg, profile, etype, name, await _body(ctx.request))
        _tm_write_done(ctx, counter_key, changed)
        return _json(tm.render_endpoint(ep))
    if method == "DELETE":
        deleted = tm.delete_endpoint(sub, rg, profile, etype, name)
        _tm_write_done(ctx, counter_key, deleted)
        return _json({}) if deleted else web.Response(status=204)
    raise _method_not_allowed(method)
