"""The HTTP faces: a public listener and an admin listener.

- **public** (``[http]``): what may face the internet: router push (``/nic/update``), later
  alert intake (``/hooks/...``) and chat (``/chat/...``). Nothing here reads run records.
- **admin** (``[admin]``, default 127.0.0.1:9108): ``/healthz``, ``/readyz``, ``/metrics``,
  ``/runs/{site}/{run_id}``: loopback or cluster-internal. With ``admin.token`` set,
  ``/metrics`` and ``/runs/...`` want ``Authorization: Bearer <token>``; the probes stay open.

No admin request can starve the worker or the push endpoint of Redis connections: readiness
and the queue figures come from a background probe (``Health``), and the routes that must read
Redis (``/runs/...``) share a few slots and answer 503 when they are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from bot.services import Services
from bot.worker import Worker

log = logging.getLogger("tunnelwarden.http")

SERVICES = web.AppKey("services", Services)
ADMIN_SLOTS = 4  # concurrent admin requests that read Redis


@dataclass
class Health:
    """What ``/readyz`` and ``/metrics`` report, refreshed in the background."""

    services: Services
    worker: Worker | None
    interval: float = 2.0
    redis_ok: bool = False
    redis_error: str = "not checked yet"
    live_workers: int = 0
    persistence: str = "unknown"
    checked_at: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="health")

    async def stop(self) -> None:
        """Cancel the refresh loop and wait for it. Cancel again until it is done: on Python
        3.11 ``asyncio.timeout`` can turn a cancel that lands as its deadline expires into a
        ``TimeoutError`` (fixed in 3.12), which ``check`` then takes for a Redis fault."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def _loop(self) -> None:
        while not self._stopping:
            await self.check()
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        services, metrics = self.services, self.services.metrics
        try:
            async with asyncio.timeout(max(1.0, self.interval)):
                await services.redis.ping()
                stats = await services.queue.stats()
                dead = await services.queue.dead_count()
                if self.worker is None:
                    self.live_workers = len(await services.state.live_workers(within=30))
                if not self.redis_ok or self.persistence == "unknown":
                    self.persistence = await redis_persistence(services)
            metrics.queue_lag.set(stats["lag"])
            metrics.queue_pending.set(stats["pending"])
            metrics.dead_letter_size.set(dead)
            self.redis_ok, self.redis_error = True, ""
        except Exception as exc:
            if self.redis_ok:
                log.warning("redis: %s: %s", type(exc).__name__, services.redact(str(exc)))
            self.redis_ok, self.redis_error = False, f"unreachable: {type(exc).__name__}"
        metrics.redis_up.set(1 if self.redis_ok else 0)
        self.checked_at = time.time()

    def readiness(self) -> tuple[bool, dict[str, str]]:
        checks = {"redis": "ok" if self.redis_ok else self.redis_error}
        if self.worker is not None:
            checks["worker"] = "ok" if self.worker.consuming else "not consuming"
        elif self.redis_ok:  # a process without a worker is useful while some worker lives
            checks["worker"] = "ok" if self.live_workers else "no live worker"
        return all(v == "ok" for v in checks.values()), checks


async def redis_persistence(services: Services) -> str:
    """``aof``, ``rdb``, ``aof+rdb``, ``none`` or ``unknown`` (CONFIG refused, e.g. managed
    Redis). Without persistence a restart loses queued events, history, state and the
    consumer group: say so loudly (log, ``tunnelwarden_redis_persistence``, ``status``)."""
    redis = services.redis
    try:
        aof = (await redis.config_get("appendonly")).get("appendonly") == "yes"
        save = (await redis.config_get("save")).get("save", "")
        rdb = bool(str(save).strip())
    except Exception:
        try:
            info = await redis.info("persistence")
            aof = bool(int(info.get("aof_enabled", 0)))
            rdb = False
            if not aof:
                return "unknown"
        except Exception:
            return "unknown"
    mode = "+".join(m for m, on in (("aof", aof), ("rdb", rdb)) if on) or "none"
    for name in ("aof", "rdb", "aof+rdb", "none", "unknown"):
        services.metrics.redis_persistence.labels(name).set(1 if name == mode else 0)
    if mode == "none":
        log.warning(
            "redis has no persistence (neither AOF nor RDB): a restart loses queued events, "
            "history, site state and the consumer group; run it with appendonly yes "
            "(docs/operations.md)"
        )
    return mode


def create_public_app(services: Services) -> web.Application:
    """The listener that may face the internet: router push (and later hooks and chat)."""
    from bot.sources.hooks import add_hook_routes
    from bot.sources.push import add_push_routes
    from bot.sources.report import IpReporter

    settings = services.settings
    app = web.Application(client_max_size=settings.http.max_body_bytes)
    app[SERVICES] = services
    reporter = IpReporter(services, allow_documentation=settings.allow_documentation_ips)
    add_push_routes(app, settings, reporter)
    add_hook_routes(app, services)
    from bot.chat.routes import add_chat_routes

    add_chat_routes(app, services)  # /chat/...: only the platforms configured
    return app


def create_admin_app(services: Services, health: Health) -> web.Application:
    """Probes, metrics and run records: loopback or cluster-internal only."""
    token = services.settings.admin.token
    slots = asyncio.Semaphore(ADMIN_SLOTS)
    app = web.Application(client_max_size=4096)
    app[SERVICES] = services

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready, checks = health.readiness()
        body = {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "redis_persistence": health.persistence,
            "checked_at": round(health.checked_at, 3),
        }
        return web.json_response(body, status=200 if ready else 503)

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def check(request: web.Request) -> web.Response:
            if token is not None:
                given = request.headers.get("Authorization", "")
                wanted = f"Bearer {token.get_secret_value()}"
                if not hmac.compare_digest(given.encode(), wanted.encode()):
                    return web.json_response(
                        {"error": "unauthorized"},
                        status=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            return await handler(request)

        return check

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=services.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def run_record(request: web.Request) -> web.Response:
        """A run as recorded, with its journal: where chat messages link to."""
        site, run_id = request.match_info["site"], request.match_info["run_id"]
        try:
            async with asyncio.timeout(2):
                await slots.acquire()
        except TimeoutError:
            return web.json_response({"error": "busy, try again"}, status=503)
        try:
            record = await services.state.recorded(site, run_id)
            journal = await services.state.journal(site, run_id)
        except Exception as exc:
            return web.json_response({"error": f"redis: {type(exc).__name__}"}, status=503)
        finally:
            slots.release()
        if record is None and not journal:
            return web.json_response({"error": f"no run {run_id} for site {site}"}, status=404)
        return web.json_response(
            {
                "record": record.model_dump(mode="json") if record else None,
                "journal": [e.__dict__ for e in journal],
            }
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", guarded(metrics))
    app.router.add_get("/runs/{site}/{run_id}", guarded(run_record))
    return app


async def start_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses  # the socket names of our one site
    actual = addresses[0][1] if addresses else port
    return runner, int(actual)
