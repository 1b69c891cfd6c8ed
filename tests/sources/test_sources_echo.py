"""Consensus tests against local fake echo services (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from bot.sources.echo import (
    EchoConfig,
    EchoProvider,
    ProviderOutcome,
    decide,
    effective_quorum,
    query_consensus,
)

A = "203.0.113.10"
B = "198.51.100.20"
V6 = "2001:db8:10::1"


class EchoServer:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hits: dict[str, int] = {}
        app = web.Application()
        r = app.router
        r.add_get("/text/{ip}", self.text)
        r.add_get("/json/{ip}", self.json)
        r.add_get("/nested/{ip}", self.nested)
        r.add_get("/trace/{ip}", self.trace)
        r.add_get("/html", self.html)
        r.add_get("/multi", self.multi)
        r.add_get("/huge", self.huge)
        r.add_get("/huge-declared", self.huge_declared)
        r.add_get("/slow", self.slow)
        r.add_get("/status/{code}", self.status)
        r.add_get("/redirect", self.redirect)
        r.add_get("/binary", self.binary)
        r.add_get("/badjson", self.badjson)
        r.add_get("/twotraces", self.twotraces)
        self.server = TestServer(app, host="127.0.0.1", port=None)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def text(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(text=request.match_info["ip"] + "\n")

    async def json(self, request: web.Request) -> web.Response:
        return web.json_response({"ip": request.match_info["ip"], "country": "XX"})

    async def nested(self, request: web.Request) -> web.Response:
        return web.json_response({"data": {"address": request.match_info["ip"]}})

    async def trace(self, request: web.Request) -> web.Response:
        ip = request.match_info["ip"]
        return web.Response(text=f"fl=1f1\nh=example.test\nip={ip}\nts=1.0\nvisit_scheme=https\n")

    async def html(self, request: web.Request) -> web.Response:
        body = "<!DOCTYPE html><html><body>Just a moment... checking your browser</body></html>"
        return web.Response(text=body, content_type="text/html")

    async def multi(self, request: web.Request) -> web.Response:
        return web.Response(text=f"{A}\n{B}\n")

    async def huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked, no Content-Length
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"9" * 16384)
        await resp.write_eof()
        return resp

    async def huge_declared(self, request: web.Request) -> web.Response:
        return web.Response(body=b"1" * 100_000)

    async def slow(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text=A)

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text=A)

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/text/{B}")

    async def binary(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xfe\x00\x01")

    async def badjson(self, request: web.Request) -> web.Response:
        return web.Response(text='{"ip": ', content_type="application/json")

    async def twotraces(self, request: web.Request) -> web.Response:
        return web.Response(text=f"ip={A}\nip={B}\n")


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    srv = EchoServer()
    await srv.server.start_server()
    try:
        yield srv
    finally:
        srv.release.set()
        await srv.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def prov(name: str, url: str, **kw: object) -> EchoProvider:
    return EchoProvider.model_validate({"name": name, "url": url, **kw})


def cfg(*providers: EchoProvider, **kw: object) -> EchoConfig:
    return EchoConfig.model_validate({"providers": providers, "allow_documentation": True, **kw})


async def test_all_kinds_agree(echo: EchoServer, session: aiohttp.ClientSession) -> None:
    config = cfg(
        prov("ipify", echo.url(f"/text/{A}")),
        prov("ipinfo", echo.url(f"/json/{A}"), kind="json"),
        prov("nested", echo.url(f"/nested/{A}"), kind="json", json_field="data.address"),
        prov("cf", echo.url(f"/trace/{A}"), kind="trace"),
    )
    result = await query_consensus(session, config)
    assert result.ip == A and result.agreed
    assert result.quorum == 3  # majority of 4
    assert result.votes == {A: 4}
    assert result.liars == ()
    assert [o.ip for o in result.outcomes] == [A, A, A, A]
    assert all(o.error is None and o.status == 200 for o in result.outcomes)


async def test_minority_provider_is_flagged_as_liar(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(
        prov("one", echo.url(f"/text/{A}")),
        prov("two", echo.url(f"/trace/{A}"), kind="trace"),
        prov("stale", echo.url(f"/text/{B}")),
    )
    result = await query_consensus(session, config)
    assert result.ip == A
    assert result.liars == ("stale",)
    assert result.votes == {A: 2, B: 1}


async def test_two_providers_disagree_means_no_ip(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(prov("one", echo.url(f"/text/{A}")), prov("two", echo.url(f"/text/{B}")))
    result = await query_consensus(session, config)
    assert result.ip is None and not result.agreed
    assert result.quorum == 2
    assert result.liars == ()
    assert "tie" in result.reason


async def test_tie_is_never_resolved_even_if_quorum_met(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(
        prov("a1", echo.url(f"/text/{A}")),
        prov("a2", echo.url(f"/json/{A}"), kind="json"),
        prov("b1", echo.url(f"/text/{B}")),
        prov("b2", echo.url(f"/trace/{B}"), kind="trace"),
        quorum=2,
    )
    result = await query_consensus(session, config)
    assert result.ip is None
    assert result.votes == {A: 2, B: 2}


async def test_timeout_does_not_block_consensus(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(
        prov("one", echo.url(f"/text/{A}")),
        prov("two", echo.url(f"/json/{A}"), kind="json"),
        prov("slow", echo.url("/slow"), timeout_s=0.3),
    )
    start = time.monotonic()
    result = await query_consensus(session, config)
    assert time.monotonic() - start < 2.0
    assert result.ip == A
    slow = result.outcomes[2]
    assert slow.error == "timeout" and slow.ip is None
    assert result.liars == ()


async def test_too_many_failures_means_no_quorum(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(
        prov("good", echo.url(f"/text/{A}")),
        prov("slow", echo.url("/slow"), timeout_s=0.2),
        prov("html", echo.url("/html")),
    )
    result = await query_consensus(session, config)
    assert result.ip is None
    assert "quorum is 2" in result.reason
    assert [o.error for o in result.outcomes] == [None, "timeout", "garbage"]


@pytest.mark.parametrize(
    ("path", "kind", "error", "detail"),
    [
        ("/html", "text", "garbage", "expected one token"),
        ("/multi", "text", "garbage", "got 2"),
        ("/huge", "text", "too_large", "larger than"),
        ("/huge-declared", "text", "too_large", "Content-Length"),
        ("/status/503", "text", "http_status", "503"),
        ("/status/429", "text", "http_status", "429"),
        ("/redirect", "text", "http_status", "302"),
        ("/binary", "text", "garbage", "UTF-8"),
        ("/badjson", "json", "garbage", "not JSON"),
        (f"/text/{A}", "json", "garbage", "not JSON"),
        (f"/json/{A}", "trace", "garbage", "ip= line"),
        ("/twotraces", "trace", "garbage", "got 2"),
        ("/text/1.2.3", "text", "garbage", "not an IP"),
        ("/text/10.0.0.1", "text", "invalid_ip", "private"),
        ("/text/100.64.3.4", "text", "invalid_ip", "carrier-grade NAT"),
        ("/text/127.0.0.1", "text", "invalid_ip", "loopback"),
        (f"/text/{V6}", "text", "wrong_family", "expected IPv4"),
    ],
)
async def test_bad_answers_are_rejected(
    echo: EchoServer,
    session: aiohttp.ClientSession,
    path: str,
    kind: str,
    error: str,
    detail: str,
) -> None:
    config = cfg(prov("p", echo.url(path), kind=kind, timeout_s=2))
    result = await query_consensus(session, config)
    (outcome,) = result.outcomes
    assert outcome.ip is None
    assert outcome.error == error, outcome
    assert detail in outcome.detail
    assert result.ip is None


async def test_documentation_addresses_need_the_flag(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    providers = (prov("p", echo.url(f"/text/{A}")),)
    strict = EchoConfig(providers=providers)
    result = await query_consensus(session, strict)
    assert result.outcomes[0].error == "invalid_ip"
    assert result.ip is None
    lenient = EchoConfig(providers=providers, allow_documentation=True)
    assert (await query_consensus(session, lenient)).ip == A


async def test_ipv6_family_only_queries_v6_providers(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    config = cfg(
        prov("v4", echo.url(f"/text/{A}")),
        prov("v6a", echo.url("/text/2001:DB8:10:0:0:0:0:1"), family="v6"),
        prov("v6b", echo.url(f"/trace/{V6}"), kind="trace", family="v6"),
    )
    result = await query_consensus(session, config, "v6")
    assert result.family == "v6"
    assert result.ip == V6  # normalized, so differently written addresses agree
    assert [o.name for o in result.outcomes] == ["v6a", "v6b"]
    assert echo.hits.get(f"/text/{A}") is None


async def test_connection_refused_is_reported(
    echo: EchoServer, session: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:  # find a free local port, then close it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = cfg(
        prov("dead", f"http://127.0.0.1:{port}/ip", timeout_s=2),
        prov("good", echo.url(f"/text/{A}")),
    )
    result = await query_consensus(session, config)
    assert result.outcomes[0].error == "connection"
    assert result.ip is None  # one good answer is below the quorum of 2


def test_effective_quorum_table() -> None:
    assert [effective_quorum(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    assert effective_quorum(5, 5) == 5


def test_config_validation() -> None:
    p = {"name": "a", "url": "http://127.0.0.1:1/"}
    with pytest.raises(ValidationError, match="quorum"):
        EchoConfig.model_validate({"providers": [p], "quorum": 2})
    with pytest.raises(ValidationError, match="unique"):
        EchoConfig.model_validate({"providers": [p, p]})
    with pytest.raises(ValidationError):
        EchoConfig.model_validate({"providers": []})
    with pytest.raises(ValidationError):
        EchoProvider.model_validate({**p, "kind": "xml"})
    with pytest.raises(ValidationError):
        EchoProvider.model_validate({**p, "url": "ftp://127.0.0.1/"})


def test_decide_is_pure() -> None:
    outs = [
        ProviderOutcome("a", A),
        ProviderOutcome("b", A),
        ProviderOutcome("c", None, "timeout"),
        ProviderOutcome("d", B),
    ]
    result = decide("v4", outs, quorum=2)
    assert result.ip == A and result.liars == ("d",)
    assert decide("v4", outs, quorum=3).ip is None
    assert decide("v4", [], quorum=1).reason == "no provider answered"
