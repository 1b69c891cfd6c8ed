"""The HTTP face: liveness, readiness and Prometheus metrics (sources add their own routes)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from bot.services import Services
from bot.worker import Worker

SERVICES = web.AppKey("services", Services)


@dataclass(frozen=True)
class WorkerSlot:
    """The in-process worker, if this process runs one (an AppKey needs a concrete type)."""

    worker: Worker | None


WORKER = web.AppKey("worker", WorkerSlot)


def create_app(services: Services, worker: Worker | None) -> web.Application:
    app = web.Application(client_max_size=services.settings.http.max_body_bytes)
    app[SERVICES] = services
    app[WORKER] = WorkerSlot(worker)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    worker = request.app[WORKER].worker
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(services.redis.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    if worker is not None:
        checks["worker"] = "ok" if worker.consuming else "not consuming"
    elif checks["redis"] == "ok":
        # A bare HTTP server is ready when some worker somewhere is consuming.
        live = await services.redis.zcount(services.keys.workers, time.time() - 30, "+inf")
        checks["worker"] = "ok" if live else "no live worker"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        stats = await services.queue.stats()
        services.metrics.queue_lag.set(stats["lag"])
        services.metrics.queue_pending.set(stats["pending"])
        services.metrics.dead_letter_size.set(await services.queue.dead_count())
    except Exception:  # metrics must render even when Redis is away
        pass
    return web.Response(
        body=services.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def start_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses  # the socket names of our one site
    actual = addresses[0][1] if addresses else port
    return runner, int(actual)
