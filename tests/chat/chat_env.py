"""A chat test bed: two sites, roles for every kind of user, a destructive test playbook, a
worker, a probe target that answers only when told to, and the public listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

import handlers
import playbooks
from bot.commands import Caller, Context, context
from bot.config import Settings
from bot.models import Change, Plan
from bot.runner import Runner
from bot.services import Services
from bot.worker import Worker
from playbooks.base import NoParams, Playbook, RunContext
from tests.conftest import make_settings

TEAM = "T0SIMTEAM1"  # the Slack simulator's workspace
VIEWER, OPERATOR, OPERATOR_HQ = "UVIEW0001", "UOPER0001", "UOPER0002"
APPROVER, APPROVER2, NOBODY = "UAPPR0001", "UAPPR0002", "UNOBODY01"
DISCORD_OPERATOR, DISCORD_APPROVER, DISCORD_NOBODY = (
    "100000000000000001",
    "100000000000000002",
    "100000000000000009",
)
TEAMS_VIEWER = "29:teams-viewer-1"
SECRET_LIKE = "s3cr3t-push-password-do-not-show"


def slack_id(user: str) -> str:
    return f"slack:{TEAM}:{user}"


ROLES: dict[str, Any] = {
    "viewers": [slack_id(VIEWER), f"teams:{TEAMS_VIEWER}"],
    "operators": [
        slack_id(OPERATOR),
        slack_id(OPERATOR_HQ),
        slack_id(APPROVER),
        f"discord:{DISCORD_OPERATOR}",
    ],
    "approvers": [slack_id(APPROVER), slack_id(APPROVER2), f"discord:{DISCORD_APPROVER}"],
    "sites": {"branch": {"operators": [slack_id(OPERATOR), slack_id(APPROVER)]}},
}


class Wipe(Playbook[NoParams]):
    """A destructive test playbook: it 'changes' something without touching anything."""

    name = "test-wipe"
    summary = "destructive test playbook"
    destructive = True
    params_model = NoParams

    async def plan(self, ctx: RunContext, params: NoParams) -> Plan:
        return Plan(changes=[Change(target=f"site {ctx.site}", field="wiped", old=False, new=True)])

    async def apply(self, ctx: RunContext, params: NoParams, plan: Plan) -> str:
        return "wiped (pretend)"


PLAYBOOKS: dict[str, Playbook[Any]] = {**playbooks.builtin(), "test-wipe": Wipe()}


def chat_settings(
    prefix: str, tmp_path: Path, probe_url: str | None = None, **chat: Any
) -> Settings:
    hq: dict[str, Any] = {
        "description": "headquarters",
        "push": {"username": "hq", "password": SECRET_LIKE, "hostname": "hq.example.net"},
    }
    if probe_url is not None:
        hq["probes"] = [
            {"name": "web", "kind": "http", "url": probe_url, "timeout": 20, "interval": 30}
        ]
    return make_settings(
        prefix,
        tmp_path,
        sites={"hq": hq, "branch": {"description": "branch office"}},
        chat={"roles": ROLES, **chat},
        admin={"port": 0, "public_url": "http://admin.internal:9108"},
        policies={"lock_ttl": 2.0, "lock_wait": 30.0},
    )


def ctx_for(services: Services, user: str, **kw: Any) -> Context:
    """The command context of a Slack user (the roles of the config)."""
    return context(
        services, Caller(slack_id(user), "slack", user.lower()), playbooks=PLAYBOOKS, **kw
    )


@contextlib.asynccontextmanager
async def worker(services: Services) -> AsyncIterator[Worker]:
    runner = Runner(services, PLAYBOOKS, "chat-test-worker")
    w = Worker(services, handlers.builtin(), runner, runner.worker)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        yield w
    finally:
        stop.set()
        await task


class HeldTarget:
    """An HTTP probe target that answers 200 only once ``release()`` is called: a command
    that probes it is 'slow work' whose end the test decides."""

    def __init__(self) -> None:
        self.hits = 0
        self.answered = 0
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.port = 0

    async def _health(self, request: web.Request) -> web.Response:
        self.hits += 1
        await self._release.wait()
        self.answered += 1
        return web.Response(text="ok")

    def release(self) -> None:
        self._release.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        self._release.set()
        await self._runner.cleanup()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{int(runner.addresses[0][1])}"
