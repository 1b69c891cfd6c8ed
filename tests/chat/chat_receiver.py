"""A scriptable local HTTP receiver on 127.0.0.1 for chat delivery tests.

The receiver stands in for Slack/Teams/Discord: it records every request and
answers from a per-path script (e.g. 429 with Retry-After, then 500, then 200),
so retry and routing behaviour is exercised over real HTTP without leaving the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    hang: bool = False  # never answer (until the receiver shuts down)


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # loop time the request arrived

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        app.router.add_patch("/{tail:.*}", self._handle)  # Discord edits @original
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        self._release.set()
        await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts[path] = deque(replies)

    def at(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                path=request.path,
                headers=dict(request.headers),
                body=body,
                at=asyncio.get_running_loop().time(),
            )
        )
        script = self._scripts.get(request.path)
        reply = script.popleft() if script else Reply()
        if reply.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=30)
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)
