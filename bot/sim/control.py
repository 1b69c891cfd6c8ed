"""``/_sim/`` control API: change the simulated world at run time (JSON in/out).

Routes (no authentication; the server only listens on loopback)::

    GET    /_sim/state                      full world dump (shared keys included)
    GET    /_sim/config                     current settings
    PATCH  /_sim/config                     {"tunnel_delay": 2, "retry_after": 0, ...}
    POST   /_sim/resource-groups            {"subscription", "name", "location"?}
    GET    /_sim/devices
    PUT    /_sim/devices/{name}             {"public_ip"?, "shared_key"?, "lng"?, "fqdn"?}
    PUT    /_sim/dns/{name}                 {"ip": "203.0.113.7"}
    DELETE /_sim/dns/{name}
    GET    /_sim/tunnels                    {connection id: status}
    GET    /_sim/tunnels/detail             [per connection: status, drop, tunnels[] with
                                             instance, tunnel, vip, status, idle, bytes]
    POST   /_sim/tunnels/drop               {"connection": id-or-name, "cleared_by"?: [...],
                                             "instance"?: 0 | 1 | tunnel name | VIP}
    POST   /_sim/tunnels/idle               {"connection": id-or-name, "idle"?: true,
                                             "instance"?: 0 | 1 | tunnel name | VIP}
    PUT    /_sim/tunnels/peer               {"connection": id-or-name, "instances": [0] | null}
                                            which tunnels the device dials (null: all)
    GET    /_sim/traffic-manager            profiles: status, endpoints with their monitor
                                             status and health controls
    POST   /_sim/traffic-manager/health     {"endpoint": id | profile/name | name,
                                             "healthy"?: bool, "stopped"?: bool}
    GET    /_sim/faults                     armed rules
    POST   /_sim/faults                     FaultSpec -> 201 armed rule (with "id")
    DELETE /_sim/faults                     disarm all
    DELETE /_sim/faults/{id}
    GET    /_sim/counters                   {key: {reads, writes, polls, faults}}
    DELETE /_sim/counters                   reset counters
    POST   /_sim/operations/complete        finish every pending LRO now

Errors come back as ``{"error": "..."}`` with 400 (bad input) or 404 (unknown thing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bot.sim.faults import FaultSpec
from bot.sim.resources import Kind
from bot.sim.world import World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except (ValueError, TypeError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


async def _json_body(request: web.Request) -> dict[str, Any]:
    data = await request.json() if request.can_read_body else {}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _field(body: dict[str, Any], name: str) -> str:
    if name not in body:
        raise ValueError(f"missing field {name!r}")
    return str(body[name])


def add_control_routes(app: web.Application, world: World) -> None:
    """Register the ``/_sim/`` routes operating on ``world``."""

    async def state(_: web.Request) -> web.StreamResponse:
        return web.json_response(world.dump())

    async def get_config(_: web.Request) -> web.StreamResponse:
        return web.json_response(world.settings.model_dump())

    async def patch_config(request: web.Request) -> web.StreamResponse:
        return web.json_response(world.configure(**await _json_body(request)).model_dump())

    async def add_group(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        group = world.add_resource_group(
            _field(body, "subscription"),
            _field(body, "name"),
            str(body.get("location", "westeurope")),
        )
        return web.json_response(asdict(group), status=201)

    async def list_devices(_: web.Request) -> web.StreamResponse:
        return web.json_response([asdict(d) for d in world.devices.values()])

    async def put_device(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        allowed = {"public_ip", "shared_key", "lng", "fqdn"}
        if set(body) - allowed:
            raise ValueError(f"unknown fields {sorted(set(body) - allowed)}")
        device = world.set_device(request.match_info["name"], **body)
        return web.json_response(asdict(device))

    async def put_dns(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        world.set_dns(request.match_info["name"], _field(body, "ip"))
        return web.json_response(world.dns)

    async def delete_dns(request: web.Request) -> web.StreamResponse:
        world.set_dns(request.match_info["name"], None)
        return web.json_response(world.dns)

    async def tunnels(_: web.Request) -> web.StreamResponse:
        return web.json_response(world.dump()["tunnels"])

    async def tunnel_detail(_: web.Request) -> web.StreamResponse:
        conns = sorted(
            (r for r in world.resources.values() if r.kind is Kind.CONNECTION),
            key=lambda r: r.key,
        )
        return web.json_response([world.tunnel_info(r) for r in conns])

    def instance(body: dict[str, Any]) -> int | str | None:
        value = body.get("instance")
        if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
            return value
        raise ValueError("instance must be an index, a tunnel name or a gateway VIP")

    async def drop(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        world.drop_tunnel(
            _field(body, "connection"), body.get("cleared_by"), instance=instance(body)
        )
        conn = world.find(_field(body, "connection"))
        return web.json_response(
            {"id": conn.id, "connectionStatus": world.connection_status(conn)}
            | {"tunnels": world.tunnel_info(conn)["tunnels"]}
        )

    async def idle(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        flag = body.get("idle", True)
        if not isinstance(flag, bool):
            raise ValueError("idle must be true or false")
        world.set_idle(_field(body, "connection"), flag, instance=instance(body))
        return web.json_response(world.tunnel_info(_field(body, "connection")))

    async def peer(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        chosen = body.get("instances")
        if chosen is not None and (
            not isinstance(chosen, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen)
        ):
            raise ValueError("instances must be a list of instance indexes or null")
        world.set_peer_legs(_field(body, "connection"), chosen)
        return web.json_response(world.tunnel_info(_field(body, "connection")))

    async def traffic_manager(_: web.Request) -> web.StreamResponse:
        return web.json_response(world.traffic_manager.snapshot())

    async def endpoint_health(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        allowed = {"endpoint", "healthy", "stopped"}
        if set(body) - allowed:
            raise ValueError(f"unknown fields {sorted(set(body) - allowed)}")
        flags = {k: body.get(k) for k in ("healthy", "stopped")}
        if any(v is not None and not isinstance(v, bool) for v in flags.values()):
            raise ValueError("healthy and stopped must be true or false")
        endpoint = world.set_endpoint_health(
            _field(body, "endpoint"), flags["healthy"], stopped=flags["stopped"]
        )
        return web.json_response(world.traffic_manager.endpoint_view(endpoint))

    async def list_faults(_: web.Request) -> web.StreamResponse:
        return web.json_response([r.model_dump() for r in world.faults.rules()])

    async def add_fault(request: web.Request) -> web.StreamResponse:
        rule = world.add_fault(FaultSpec.model_validate(await _json_body(request)))
        return web.json_response(rule.model_dump(), status=201)

    async def clear_faults(_: web.Request) -> web.StreamResponse:
        world.faults.clear()
        return web.json_response([])

    async def delete_fault(request: web.Request) -> web.StreamResponse:
        if not world.faults.remove(int(request.match_info["id"])):
            raise KeyError(f"no fault {request.match_info['id']}")
        return web.json_response([r.model_dump() for r in world.faults.rules()])

    async def counters(_: web.Request) -> web.StreamResponse:
        return web.json_response(world.counters.snapshot())

    async def reset_counters(_: web.Request) -> web.StreamResponse:
        world.counters.reset()
        return web.json_response({})

    async def complete_ops(_: web.Request) -> web.StreamResponse:
        world.ops.finish_all()
        return web.json_response(world.ops.snapshot())

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_sim/state", state),
        ("GET", "/_sim/config", get_config),
        ("PATCH", "/_sim/config", patch_config),
        ("POST", "/_sim/resource-groups", add_group),
        ("GET", "/_sim/devices", list_devices),
        ("PUT", "/_sim/devices/{name}", put_device),
        ("PUT", "/_sim/dns/{name}", put_dns),
        ("DELETE", "/_sim/dns/{name}", delete_dns),
        ("GET", "/_sim/tunnels", tunnels),
        ("GET", "/_sim/tunnels/detail", tunnel_detail),
        ("POST", "/_sim/tunnels/drop", drop),
        ("POST", "/_sim/tunnels/idle", idle),
        ("PUT", "/_sim/tunnels/peer", peer),
        ("GET", "/_sim/traffic-manager", traffic_manager),
        ("POST", "/_sim/traffic-manager/health", endpoint_health),
        ("GET", "/_sim/faults", list_faults),
        ("POST", "/_sim/faults", add_fault),
        ("DELETE", "/_sim/faults", clear_faults),
        ("DELETE", "/_sim/faults/{id}", delete_fault),
        ("GET", "/_sim/counters", counters),
        ("DELETE", "/_sim/counters", reset_counters),
        ("POST", "/_sim/operations/complete", complete_ops),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
