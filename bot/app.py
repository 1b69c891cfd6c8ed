"""Assembling a process: Redis, services, worker and HTTP server, and stopping them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.config import Settings
from bot.redact import Redactor, use_process_redactor
from bot.redisconn import open_redis, redact_url
from bot.runner import Runner
from bot.services import Services
from bot.worker import Worker

if TYPE_CHECKING:
    from bot.sources.pollers import Poller

log = logging.getLogger("tunnelwarden")


@asynccontextmanager
async def open_services(
    settings: Settings, redis_url: str | None = None, redact: Redactor | None = None
) -> AsyncIterator[Services]:
    async with open_redis(settings.redis, redis_url) as redis:
        services = Services.build(settings, redis, redact=redact)
        attach_budget(services)
        use_process_redactor(services.redact)  # for drivers handed no Services
        try:
            yield services
        finally:
            await services.azure.close()
            await services.notifications.close()


def attach_budget(services: Services) -> None:
    """Every ARM call of this process draws on the budget all replicas share (bot.budget)."""
    from bot.budget import Budget

    settings = services.settings
    if settings.azure.budget.enabled:
        services.azure.budget = Budget(
            services.redis,
            services.keys.prefix,
            settings.azure.budget,
            services.metrics,
            settings.azure.subscription_id,
        )


def build_worker(services: Services, name: str | None = None) -> Worker:
    import handlers
    import playbooks

    worker_name = name or services.settings.worker.name or None
    from bot.worker import default_worker_name

    runner = Runner(services, playbooks.builtin(), worker_name or default_worker_name())
    return Worker(services, handlers.builtin(), runner, runner.worker)


def source_pollers(services: Services, session: aiohttp.ClientSession) -> list[Poller]:
    """Every source that polls: IP pollers, the ARM tunnel watcher, each site's probes and
    failover paths."""
    from bot.sources.paths import PathPoller, path_probes
    from bot.sources.pollers import build_pollers
    from bot.sources.probing import ProbePoller
    from bot.sources.report import IpReporter
    from bot.sources.watcher import TunnelWatcher

    settings = services.settings
    reporter = IpReporter(services, allow_documentation=settings.allow_documentation_ips)
    pollers: list[Poller] = [*build_pollers(settings.sources, session=session, reporter=reporter)]
    watcher = TunnelWatcher(services, settings.watcher)
    if settings.watcher.enabled and watcher.sites and settings.azure.subscription_id:
        pollers.append(watcher)
    for name, site in settings.sites.items():
        on_paths = path_probes(site)  # run by the site's path sampler instead
        pollers += [ProbePoller(services, name, s) for s in site.probes if s.name not in on_paths]
        if site.failover is not None:
            pollers.append(PathPoller(services, name, site))
    return pollers


async def poll_sources(services: Services, stop: asyncio.Event) -> None:
    """The polling sources, on whichever replica holds the sources' lease (one reads ARM,
    one runs each probe, one asks the echo services)."""
    from bot.sources.pollers import run_pollers

    async with aiohttp.ClientSession() as session:
        pollers = source_pollers(services, session)
        if not pollers:
            await stop.wait()  # nothing to poll; stay until the process stops
            return
        lease = services.state.leader_lease("pollers", ttl=15.0)
        log.info("sources: %s", ", ".join(p.name for p in pollers))
        await run_pollers(pollers, lease, stop, tick=3.0)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def run_process(
    settings: Settings,
    *,
    redis_url: str | None,
    worker: bool,
    http: bool,
    sources: bool = False,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    redact: Redactor | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after a clean shutdown within the grace period.

    Every process serves the admin listener (probes, metrics); ``http`` adds the public one
    (router push). Redis going away is weather: the loops retry with backoff and ``/readyz``
    says not ready meanwhile; the process stays up.
    """
    from bot.http import Health, create_admin_app, create_public_app, start_http
    from bot.sources.httplog import quiet_bad_requests

    stop = stop or asyncio.Event()
    if handle_signals:
        stop_on_signals(stop)
    for line in settings.warnings():  # accepted, but questionable (also: config check)
        log.warning("config: %s", line)
    async with open_services(settings, redis_url, redact) as services:
        target = redis_url or settings.redis.url or "embedded"
        log.info("redis: %s", redact_url(target))
        the_worker = build_worker(services) if worker else None
        health = Health(services, the_worker)
        await health.check()
        health.start()
        runners = []
        tasks: list[asyncio.Task[None]] = []
        chats: list[Any] = []  # Slack Socket Mode clients, closed on the way out
        try:
            admin = settings.admin
            admin_runner, admin_port = await start_http(
                create_admin_app(services, health), admin.host, admin.port
            )
            runners.append(admin_runner)
            log.info("admin: listening on %s:%d", admin.host, admin_port)
            if http:
                public = create_public_app(services)
                quiet_bad_requests(public)  # the internet's garbage: one line, no traceback
                public_runner, port = await start_http(
                    public, settings.http.host, settings.http.port
                )
                runners.append(public_runner)
                log.info("http: listening on %s:%d", settings.http.host, port)
            if the_worker is not None:
                tasks.append(asyncio.create_task(the_worker.run(stop), name="worker"))
                from bot.commands import expire_pauses_loop

                tasks.append(asyncio.create_task(expire_pauses_loop(services, stop), name="pauses"))
                from bot.escalate import expire_loop

                tasks.append(asyncio.create_task(expire_loop(services, stop), name="approvals"))
            slack = settings.chat.slack
            if http and slack.enabled and slack.mode == "socket":
                from bot.chat.slack import SlackChat

                socket_chat = SlackChat(services)
                socket_chat.start()  # outbound only; connects (and retries) in the background
                chats.append(socket_chat)
            if sources:
                tasks.append(asyncio.create_task(poll_sources(services, stop), name="sources"))
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            waiter.cancel()
            for task in tasks:
                await task  # the worker drains within its grace period
        finally:
            for chat in chats:
                await chat.close()
            await health.stop()
            for runner in runners:
                await runner.cleanup()
    return 0
