"""The HTTP face: liveness, readiness, Prometheus metrics, run records, and router push."""

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
    from bot.sources.push import add_push_routes
    from bot.sources.report import IpReporter

    settings = services.settings
    app = web.Application(client_max_size=settings.http.max_body_bytes)
    app[SERVICES] = services
    app[WORKER] = WorkerSlot(worker)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/runs/{site}/{run_id}", run_record)
    reporter = IpReporter(services, allow_documentation=settings.allow_documentation_ips)
    add_push_routes(app, settings, reporter)
    return app


async def run_record(request: web.Request) -> web.Response:
    """A run as recorded, with its journal: where chat messages link to."""
    services = request.app[SERVICES]
    site, run_id = request.match_info["site"], request.match_info["run_id"]
    record = await services.state.recorded(site, run_id)
    journal = await services.state.journal(site, run_id)
    if record is None and not journal:
        return web.json_response({"error": f"no run {run_id} for site {site}"}, status=404)
    return web.json_response(
        {
            "record": record.model_dump(mode="json") if record else None,
            "journal": [e.__dict__ for e in journal],
        }
    )


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
