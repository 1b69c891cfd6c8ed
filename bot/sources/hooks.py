"""Alert intake on the public listener: ``POST /hooks/azure-monitor?token=...``.

Azure Monitor action groups post the common alert schema (``bot.sources.azure_monitor``):
metric alerts on the VPN gateway (per ``ConnectionName``) and Resource Health alerts on a
connection. A fired alert becomes a ``tunnel.down`` hint for the site whose connection it
names, a resolved one (or Resource Health ``Available``) a ``tunnel.up``; the reconciler then
confirms with a fresh read and heals, exactly as for the ARM watcher.

Plain action-group webhooks are unsigned: the token in the URL is compared in constant time.
With ``[hooks.azure_monitor.entra]`` set, Azure's "secure webhook" bearer token is checked too
(issuer, audience, roles, signature against the tenant's keys). Azure retries a failed post 5
times, then skips the endpoint for 15 minutes, so the answer comes fast (202) and a repeat of
the same alert (``alertId`` + ``monitorCondition``) is answered 200 and starts nothing. A body
that is not the common schema is answered 400 and kept as a dead letter with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.events import Event
from bot.services import Services
from bot.sources.azure_monitor import (
    AlertError,
    AlertSignal,
    bearer_token,
    match_site,
    parse_alert,
    token_matches,
    verify_entra_token,
)
from bot.sources.httplog import LogThrottle

log = logging.getLogger("tunnelwarden.hooks")
DEDUPE_TTL = 7 * 24 * 3600


def add_hook_routes(app: web.Application, services: Services) -> bool:
    """Serve ``/hooks/azure-monitor`` when a token is configured; True if it is."""
    cfg = services.settings.hooks.azure_monitor
    if cfg.token is None:
        return False
    expected = cfg.token.get_secret_value()
    throttle = LogThrottle(60.0)
    keys = _jwks(cfg.entra.jwks_file) if cfg.entra and cfg.entra.jwks_file else None

    async def azure_monitor(request: web.Request) -> web.Response:
        remote = request.remote or "unknown"
        if not token_matches(request.query.get("token"), expected):
            if throttle.hit(remote) is not None:
                log.info("azure-monitor hook: bad token from %s", remote)
            return web.json_response({"error": "unauthorized"}, status=401)
        if cfg.entra is not None:
            try:
                jwks = keys if keys is not None else await _fetch_jwks(cfg.entra.jwks_url)
                await asyncio.to_thread(
                    verify_entra_token,
                    bearer_token(request.headers.get("Authorization")),
                    jwks=jwks,
                    issuer=cfg.entra.issuer,
                    audience=cfg.entra.audience,
                    required_roles=cfg.entra.roles,
                )
            except AlertError as exc:
                if throttle.hit(f"entra {remote}") is not None:
                    log.info("azure-monitor hook: bearer token refused: %s", exc)
                return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.read()
        try:
            signal = parse_alert(body)
        except AlertError as exc:
            await services.queue.dead_letter_raw(
                "hooks/azure-monitor", body.decode("utf-8", "replace"), str(exc)
            )
            services.metrics.dead_letters.inc()
            return web.json_response({"error": str(exc)}, status=400)
        return await _accept(services, signal)

    app.router.add_post("/hooks/azure-monitor", azure_monitor)
    return True


async def _accept(services: Services, signal: AlertSignal) -> web.Response:
    digest = hashlib.sha256(signal.dedupe_key.encode()).hexdigest()[:32]
    fresh = await services.redis.set(
        services.keys.alert(digest), signal.alert_id[:200], nx=True, ex=DEDUPE_TTL
    )
    if not fresh:
        return web.json_response({"duplicate": True, "alert": signal.alert_id})
    settings = services.settings
    targets = {
        name: (site.resource_group, site.connection)
        for name, site in settings.sites.items()
        if site.resource_group and site.connection
    }
    sites = match_site(signal, targets)
    if not sites:
        log.info(
            "azure-monitor alert %s names no configured connection (%s)",
            signal.alert_id,
            ", ".join(signal.connections or signal.resource_ids) or "none",
        )
    for site in sites:
        await services.queue.publish(
            Event.new(
                f"tunnel.{signal.state}",
                site,
                source="azure-monitor",
                data={
                    "status": signal.condition,
                    "detail": signal.description[:300],
                    "alert": signal.alert_id[:200],
                },
                idempotency_key=f"alert:{site}:{digest}",
            )
        )
    return web.json_response({"sites": sites}, status=202)


def _jwks(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a JWKS document is a JSON object with 'keys'")
    return loaded


_JWKS_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}


async def _fetch_jwks(url: str | None) -> dict[str, Any]:
    """The tenant's signing keys (cached for an hour)."""
    import time

    import aiohttp

    if not url:
        raise AlertError("no jwks_url or jwks_file configured for the secure webhook")
    cached = _JWKS_CACHE.get(url)
    if cached and time.monotonic() - cached[0] < 3600:
        return cached[1]
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url) as resp,
        ):
            doc = await resp.json()
    except Exception as exc:
        raise AlertError(f"cannot fetch the signing keys: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise AlertError("the signing keys are not a JWKS document")
    _JWKS_CACHE[url] = (time.monotonic(), doc)
    return doc
