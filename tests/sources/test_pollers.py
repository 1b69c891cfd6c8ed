"""Pollers end to end: local echo services / TR-064 responder → real IpReporter → Redis stream.

Everything listens on 127.0.0.1 (port 0). Events are read back from the real stream.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.events import Event
from bot.queue import EVENT_FIELD
from bot.services import Services
from bot.sources.debounce import DebounceConfig as DebounceFromOldModule
from bot.sources.echo import EchoConfig as EchoConfigFromOldModule
from bot.sources.fritz import FritzConfig as FritzConfigFromOldModule
from bot.sources.models import (
    DebounceConfig,
    EchoConfig,
    EchoSourceConfig,
    FritzConfig,
    FritzSourceConfig,
    SourceSpec,
)
from bot.sources.pollers import EchoPoller, FritzPoller, Poller, build_pollers, run_pollers
from bot.sources.report import IpReporter
from bot.state import LeaderLease
from tests.conftest import start_private_redis
from tests.helpers import eventually, free_port
from tests.sources.tr064_responder import Tr064Responder

A = "203.0.113.10"
B = "198.51.100.20"
CGNAT = "100.64.1.2"
USER, PASSWORD = "tunnelwarden", "fritz-secret"


class EchoFarm:
    """Several fake echo providers on one local server: `answers[name]` is what each says.

    An answer is an address, or `!slow` (never answers in time), `!garbage` (an HTML page),
    `!500` (server error).
    """

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/p/{name}", self.answer)
        self.server = TestServer(app, host="127.0.0.1", port=None)

    async def answer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        value = self.answers[name]
        if value == "!slow":
            await self.release.wait()
            return web.Response(text=A)
        if value == "!garbage":
            return web.Response(text="<html><body>Just a moment...</body></html>")
        if value == "!500":
            return web.Response(status=500, text="oops")
        return web.Response(text=value + "\n")

    def config(self, *, sites: list[str], **kw: Any) -> EchoSourceConfig:
        providers = [
            {"name": name, "url": str(self.server.make_url(f"/p/{name}")), "timeout_s": 0.3}
            for name in self.answers
        ]
        data: dict[str, Any] = {
            "kind": "echo",
            "name": "echo-test",
            "sites": sites,
            "providers": providers,
            "allow_documentation": True,
            "debounce": {"polls": 2},
            **kw,
        }
        return EchoSourceConfig.model_validate(data)


@pytest.fixture
async def farm() -> AsyncIterator[EchoFarm]:
    f = EchoFarm()
    await f.server.start_server()
    try:
        yield f
    finally:
        f.release.set()
        await f.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def reporter(services: Services) -> IpReporter:
    return IpReporter(services, allow_documentation=True)


async def events(services: Services) -> list[Event]:
    """Everything on the stream, oldest first."""
    rows = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", await services.redis.xrange(services.keys.stream)
    )
    return [Event.from_wire(fields[EVENT_FIELD.encode()]) for _, fields in rows]


# --- config models --------------------------------------------------------------------


def test_models_are_reexported_and_light() -> None:
    assert EchoConfigFromOldModule is EchoConfig
    assert FritzConfigFromOldModule is FritzConfig
    assert DebounceFromOldModule is DebounceConfig
    heavy = ("aiohttp", "fritzconnection", "redis", "requests")
    code = (
        "import sys, bot.sources.models; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_source_spec_discriminates_and_forbids_typos(tmp_path: Path) -> None:
    adapter: TypeAdapter[EchoSourceConfig | FritzSourceConfig] = TypeAdapter(SourceSpec)
    secret = tmp_path / "fritz.pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    fritz = adapter.validate_python({"kind": "fritz", "site": "home", "password_file": secret})
    assert isinstance(fritz, FritzSourceConfig)
    assert fritz.password.get_secret_value() == "s3cret"
    assert (fritz.name, fritz.interval, fritz.ipv6, fritz.sites) == ("fritz", 60, False, ["home"])
    echo_ok: dict[str, Any] = {
        "kind": "echo",
        "sites": ["home"],
        "providers": [{"name": "a", "url": "http://x.test/"}],
    }
    echo = adapter.validate_python(echo_ok)
    assert isinstance(echo, EchoSourceConfig)
    assert (echo.interval, echo.families, echo.debounce.polls) == (300, ["v4"], 2)
    assert echo.quorum_for("v4") == 1

    bad: list[dict[str, Any]] = [
        {**echo_ok, "intervall": 5},  # typo
        {**echo_ok, "sites": []},
        {**echo_ok, "families": ["v4", "v6"]},  # no IPv6 provider
        {**echo_ok, "interval": -1},
        {"kind": "echo", "sites": ["home"]},  # providers are required: none are built in
        {"kind": "fritz", "site": "home", "password_file": str(tmp_path / "missing")},
        {"kind": "fritz", "site": "Home Office"},
        {"kind": "fritz", "site": "home", "interval": 0},
        {"kind": "dyndns", "site": "home"},
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            adapter.validate_python(data)


# --- echo poller --------------------------------------------------------------------------


async def test_echo_quorum_debounce_and_change(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": A, "two": A, "three": A}
    poller = EchoPoller(farm.config(sites=["home", "office"]), session, reporter)

    assert await poller.poll() == []  # seen once: debounce wants 2 polls
    assert await events(services) == []

    reports = await poller.poll()
    assert sorted((r.site, r.ip, r.result) for r in reports) == [
        ("home", A, "good"),
        ("office", A, "good"),
    ]
    evs = await events(services)
    assert sorted((e.type, e.site, e.data["ip"], e.source) for e in evs) == [
        ("ip.changed", "home", A, "echo-test"),
        ("ip.changed", "office", A, "echo-test"),
    ]

    assert await poller.poll() == []  # same address again: nothing new
    assert len(await events(services)) == 2

    # a one-poll blip to B is cancelled when A comes back
    farm.answers.update(one=B, two=B, three=B)
    assert await poller.poll() == []
    farm.answers.update(one=A, two=A, three=A)
    assert await poller.poll() == []
    assert len(await events(services)) == 2

    # a stable change to B is reported once per site, with the previous address
    farm.answers.update(one=B, two=B, three=B)
    await poller.poll()
    await poller.poll()
    await poller.poll()
    changed = [e for e in await events(services) if e.data["ip"] == B]
    assert sorted((e.site, e.data["previous"]) for e in changed) == [("home", A), ("office", A)]
    assert poller.stats["one"].agreed == 8 and poller.stats["one"].failed == 0


async def test_echo_restart_reports_known_address_as_nochg(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": A, "two": A}
    first = EchoPoller(farm.config(sites=["home"], debounce={"polls": 1}), session, reporter)
    assert [r.result for r in await first.poll()] == ["good"]
    restarted = EchoPoller(farm.config(sites=["home"], debounce={"polls": 1}), session, reporter)
    assert [r.result for r in await restarted.poll()] == ["nochg"]
    assert len(await events(services)) == 1


async def test_echo_no_consensus_publishes_nothing_and_names_providers(
    farm: EchoFarm,
    session: aiohttp.ClientSession,
    services: Services,
    reporter: IpReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    farm.answers = {"honest": A, "liar": B, "slowpoke": "!slow", "html": "!garbage"}
    poller = EchoPoller(farm.config(sites=["home"], quorum=2), session, reporter)
    with caplog.at_level(logging.WARNING, logger="bot.sources.pollers"):
        for _ in range(3):
            assert await poller.poll() == []
    assert await events(services) == []
    warning = caplog.records[-1].getMessage()
    assert "no IPv4 consensus" in warning
    for name in ("slowpoke (timeout", "html (garbage", f"honest={A}", f"liar={B}"):
        assert name in warning
    assert poller.stats["slowpoke"].failures["timeout"] == 3
    assert poller.stats["html"].failures["garbage"] == 3
    assert poller.stats["honest"].answered == 3 and poller.stats["honest"].lied == 0
    assert poller.no_consensus["v4"] == 3


async def test_echo_quorum_survives_failures_and_flags_liar(
    farm: EchoFarm,
    session: aiohttp.ClientSession,
    services: Services,
    reporter: IpReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    farm.answers = {"a1": A, "a2": A, "stale": B, "down": "!500", "slowpoke": "!slow"}
    poller = EchoPoller(farm.config(sites=["home"], quorum=2), session, reporter)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="bot.sources.pollers"):
        await poller.poll()
        reports = await poller.poll()
    assert time.monotonic() - started < 2.0  # the slow provider costs its timeout, no more
    assert [(r.site, r.ip, r.result) for r in reports] == [("home", A, "good")]
    assert [(e.type, e.data["ip"]) for e in await events(services)] == [("ip.changed", A)]
    assert poller.stats["stale"].lied == 2
    assert poller.stats["down"].failures["http_status"] == 2
    text = caplog.records[-1].getMessage()
    assert f"consensus {A} from 2 of 5" in text
    assert f"stale={B}" in text and "down (http_status" in text


async def test_echo_cgnat_agreed_by_all_is_rejected_once(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": CGNAT, "two": CGNAT, "three": CGNAT}
    poller = EchoPoller(farm.config(sites=["home"]), session, reporter)
    results = [await poller.poll() for _ in range(4)]
    assert [[r.result for r in rs] for rs in results] == [[], ["rejected"], [], []]
    evs = await events(services)
    assert [(e.type, e.data["ip"], e.data["reason"]) for e in evs] == [
        ("ip.rejected", CGNAT, "cgnat")
    ]
    assert "ip.v4" not in await services.state.site_state("home")  # nothing believed


async def test_echo_single_cgnat_liar_is_not_reported(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": CGNAT, "two": A, "three": "!garbage"}
    poller = EchoPoller(farm.config(sites=["home"], debounce={"polls": 1}), session, reporter)
    assert await poller.poll() == []
    assert await events(services) == []


async def test_echo_report_failure_is_retried_next_poll(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": A, "two": A}
    poller = EchoPoller(farm.config(sites=["home"], debounce={"polls": 1}), session, reporter)
    dead = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0)
    )
    reporter.services = Services.build(services.settings, dead)  # Redis unreachable
    try:
        with pytest.raises(RedisConnectionError):
            await poller.poll()
    finally:
        reporter.services = services
        await dead.aclose()
    assert await events(services) == []
    assert [r.result for r in await poller.poll()] == ["good"]  # not forgotten as "known"
    assert [e.data["ip"] for e in await events(services)] == [A]


# --- FRITZ!Box poller -----------------------------------------------------------------


def fritz_config(port: int, tmp_path: Path, **kw: Any) -> FritzSourceConfig:
    secret = tmp_path / "fritz-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    data: dict[str, Any] = {
        "kind": "fritz",
        "name": "fritz-test",
        "site": "home",
        "address": "127.0.0.1",
        "port": port,
        "username": USER,
        "password_file": str(secret),
        "timeout_s": 2.0,
        "allow_documentation": True,
        "debounce": {"polls": 1},
        **kw,
    }
    return FritzSourceConfig.model_validate(data)


async def test_fritz_reports_box_address_and_changes(
    services: Services, reporter: IpReporter, tmp_path: Path
) -> None:
    async with Tr064Responder(username=USER, password=PASSWORD) as box:
        box.state.igd = False  # TR-064 only: the password from the file must work
        poller = FritzPoller(fritz_config(box.port, tmp_path, ipv6=True), reporter)
        try:
            reports = await poller.poll()
            assert sorted((r.family, r.ip, r.result) for r in reports) == [
                ("v4", "198.51.100.7", "good")
            ]  # the TR-064 PPP service has no IPv6 action: v6 absent, v4 still reported
            assert any(c.user == USER for c in box.calls)
            assert await poller.poll() == []

            box.state.link = "Down"
            box.state.ipv4 = "203.0.113.99"
            assert await poller.poll() == []  # link down: nothing reported

            box.state.link = "Up"
            reports = await poller.poll()
            assert [(r.ip, r.previous) for r in reports] == [("203.0.113.99", "198.51.100.7")]
        finally:
            await poller.close()
    evs = await events(services)
    assert [(e.type, e.site, e.source, e.data["ip"], e.data["previous"]) for e in evs] == [
        ("ip.changed", "home", "fritz-test", "198.51.100.7", None),
        ("ip.changed", "home", "fritz-test", "203.0.113.99", "198.51.100.7"),
    ]


async def test_fritz_ipv6_and_cgnat(
    services: Services, reporter: IpReporter, tmp_path: Path
) -> None:
    async with Tr064Responder(username=USER, password=PASSWORD) as box:
        box.state.ipv4 = CGNAT
        poller = FritzPoller(fritz_config(box.port, tmp_path, ipv6=True), reporter)
        try:
            reports = await poller.poll()
        finally:
            await poller.close()
    assert sorted((r.family, r.ip, r.result) for r in reports) == [
        ("v4", CGNAT, "rejected"),
        ("v6", "2001:db8:7::1", "good"),
    ]
    assert sorted((e.type, e.data["family"]) for e in await events(services)) == [
        ("ip.changed", "v6"),
        ("ip.rejected", "v4"),
    ]


async def test_fritz_unreachable_reports_nothing(
    services: Services, reporter: IpReporter, tmp_path: Path
) -> None:
    poller = FritzPoller(fritz_config(free_port(), tmp_path, timeout_s=0.5), reporter)
    try:
        assert await poller.poll() == []
    finally:
        await poller.close()
    assert poller.last_reading is not None and not poller.last_reading.reachable
    assert await events(services) == []


class StaleBox:
    """A fritzconnection stand-in whose box still shows an address while its WAN is down
    (the responder answers 0.0.0.0 then, so it cannot show this)."""

    def __init__(self) -> None:
        self.linked = False
        self.services: dict[str, Any] = {
            "WANIPConn1": SimpleNamespace(actions={"GetExternalIPAddress", "GetStatusInfo"}),
            "WANCommonIFC1": SimpleNamespace(actions={"GetCommonLinkProperties"}),
        }

    def call_action(self, service_name: str, action_name: str, **kwargs: Any) -> dict[str, Any]:
        status = "Connected" if self.linked else "Connecting"
        answers: dict[str, dict[str, Any]] = {
            "GetExternalIPAddress": {"NewExternalIPAddress": "198.51.100.7"},
            "GetStatusInfo": {"NewConnectionStatus": status, "NewUptime": 5},
            "GetCommonLinkProperties": {"NewPhysicalLinkStatus": "Up" if self.linked else "Down"},
        }
        return answers[action_name]


async def test_fritz_stale_address_while_wan_down_is_not_reported(
    services: Services, reporter: IpReporter, tmp_path: Path
) -> None:
    box = StaleBox()
    poller = FritzPoller(fritz_config(1, tmp_path), reporter, connect=lambda _: box)
    assert await poller.poll() == []
    assert poller.last_reading is not None and poller.last_reading.ipv4 is not None
    assert await events(services) == []
    box.linked = True
    assert [r.result for r in await poller.poll()] == ["good"]


# --- run_pollers ------------------------------------------------------------------------


class Probe:
    """A poller that records when it ran (and can fail or hang on demand)."""

    def __init__(self, name: str, interval: float, log: list[tuple[str, float, float]]) -> None:
        self.name = name
        self.interval = interval
        self.log = log
        self.fail = False
        self.hang = False

    async def poll(self) -> None:
        start = time.monotonic()
        if self.hang:
            await asyncio.sleep(30)
        await asyncio.sleep(0.01)
        self.log.append((self.name, start, time.monotonic()))
        if self.fail:
            raise RuntimeError("boom")


def _lease(services: Services, ttl: float) -> LeaderLease:
    return services.state.leader_lease("pollers", ttl)


async def test_only_the_lease_holder_polls_and_another_takes_over(services: Services) -> None:
    polls: list[tuple[str, float, float]] = []
    a, b = Probe("a", 0.05, polls), Probe("b", 0.05, polls)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    lease_a, lease_b = _lease(services, 0.6), _lease(services, 0.6)
    run_a = asyncio.create_task(run_pollers([a], lease_a, stop_a, tick=0.1))
    await asyncio.sleep(0.05)  # a leads
    run_b = asyncio.create_task(run_pollers([b], lease_b, stop_b, tick=0.1))
    try:
        await asyncio.sleep(0.6)
        assert {name for name, *_ in polls} == {"a"}
        assert 6 <= len(polls) <= 16  # first at once, then every 50 ms

        stop_a.set()  # a leaves cleanly: releases the lease
        stopped = time.monotonic()
        await asyncio.wait_for(run_a, 1.0)
        assert time.monotonic() - stopped < 0.2
        await asyncio.sleep(0.4)
        first_b = min(start for name, start, _ in polls if name == "b")
        assert first_b - stopped < 0.25  # one tick, not the ttl
        last_a = max(end for name, _, end in polls if name == "a")
        assert last_a <= first_b
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(run_a, run_b)
    assert await services.redis.exists(lease_b.key) == 0  # released on exit


async def test_dead_leader_is_replaced_after_ttl(services: Services) -> None:
    polls: list[tuple[str, float, float]] = []
    a, b = Probe("a", 0.05, polls), Probe("b", 0.05, polls)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    lease_a, lease_b = _lease(services, 0.6), _lease(services, 0.6)
    run_a = asyncio.create_task(run_pollers([a], lease_a, stop_a, tick=0.1))
    await asyncio.sleep(0.05)
    run_b = asyncio.create_task(run_pollers([b], lease_b, stop_b, tick=0.1))
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.05)  # a's Redis
    try:
        await asyncio.sleep(0.3)
        lease_a.redis = dead  # a can neither renew nor release any more
        cut = time.monotonic()
        await asyncio.sleep(1.2)
        a_after = [end for name, start, end in polls if name == "a" and start > cut + 0.2]
        assert a_after == []  # a stopped polling at its next failed renewal
        b_starts = [start for name, start, _ in polls if name == "b"]
        assert b_starts, "b never took over"
        assert 0.4 <= min(b_starts) - cut <= 0.9  # after the lease expired (~ttl)
        last_a = max(end for name, _, end in polls if name == "a")
        assert last_a <= min(b_starts)  # never both at once
        stop_a.set()
        stopped = time.monotonic()
        await asyncio.wait_for(run_a, 1.0)
        assert time.monotonic() - stopped < 0.3  # releasing on a dead Redis does not hang
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(run_a, run_b)
        await dead.aclose()


async def test_failing_poller_does_not_stop_the_loop_and_stop_is_prompt(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    polls: list[tuple[str, float, float]] = []
    bad, good, stuck = Probe("bad", 0.05, polls), Probe("good", 0.1, polls), Probe("s", 1, polls)
    bad.fail = True
    stuck.hang = True
    stop = asyncio.Event()
    lease = _lease(services, 1.0)
    pollers: list[Poller] = [bad, good, stuck]
    with caplog.at_level(logging.ERROR, logger="bot.sources.pollers"):
        runner = asyncio.create_task(run_pollers(pollers, lease, stop, tick=0.1))
        await asyncio.sleep(0.55)
        assert await services.redis.get(lease.key) == lease.holder.encode()
        stop.set()
        stopped = time.monotonic()
        await asyncio.wait_for(runner, 1.0)
    assert time.monotonic() - stopped < 0.2  # the hanging poll was cancelled
    counts = {n: sum(1 for name, *_ in polls if name == n) for n in ("bad", "good", "s")}
    assert counts["bad"] >= 6 and 4 <= counts["good"] <= 8 and counts["s"] == 0
    assert sum("poller bad failed" in r.getMessage() for r in caplog.records) == counts["bad"]
    assert await services.redis.exists(lease.key) == 0


async def test_run_pollers_with_real_echo_poller(
    farm: EchoFarm, session: aiohttp.ClientSession, services: Services, reporter: IpReporter
) -> None:
    farm.answers = {"one": A, "two": A}
    config = farm.config(sites=["home"], interval=0.05)
    disabled = farm.config(sites=["office"], enabled=False)
    pollers = build_pollers([config, disabled], session=session, reporter=reporter)
    assert [type(p) for p in pollers] == [EchoPoller]
    stop = asyncio.Event()
    runner = asyncio.create_task(run_pollers(pollers, _lease(services, 1.0), stop, tick=0.1))
    try:
        for _ in range(100):
            if await events(services):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # more polls: still one event
    finally:
        stop.set()
        await runner
    assert [(e.type, e.site, e.data["ip"]) for e in await events(services)] == [
        ("ip.changed", "home", A)
    ]
    assert farm.hits["one"] >= 3


async def test_sources_ride_out_a_redis_restart(
    farm: EchoFarm,
    session: aiohttp.ClientSession,
    services: Services,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A private redis-server goes away under running pollers and comes back empty: the
    loop stays up, retries with the backoff (one line per failure, no traceback), takes the
    lease again and reports the next change into the new Redis."""
    directory = tmp_path / "redis"
    directory.mkdir()
    proc, url = start_private_redis(directory)
    client = Redis.from_url(url, socket_connect_timeout=0.5)
    private = Services.build(services.settings, client)
    farm.answers = {"one": A, "two": A}
    pollers = build_pollers(
        [farm.config(sites=["home"], interval=0.05)],
        session=session,
        reporter=IpReporter(private, allow_documentation=True),
    )
    lease = _lease(private, 1.0)
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="bot.sources.pollers"):
            runner = asyncio.create_task(run_pollers(pollers, lease, stop, tick=0.1, retry_cap=0.5))

            async def reported(ip: str) -> bool:
                try:
                    return ip in [e.data["ip"] for e in await events(private)]
                except RedisConnectionError:
                    return False

            await eventually(lambda: reported(A), within=10)
            proc.terminate()
            proc.wait(10)

            async def renewal_failed() -> bool:
                return any("renewal failed" in r.getMessage() for r in caplog.records)

            await eventually(renewal_failed, within=10)
            farm.answers = {"one": B, "two": B}
            proc, _ = start_private_redis(directory)  # empty: no persistence
            await eventually(lambda: reported(B), within=15)
            assert not runner.done(), "the loop stays up"
            assert await client.get(lease.key) == lease.holder.encode(), "the lease is back"
        ours = [r for r in caplog.records if r.name == "bot.sources.pollers"]
        assert ours and all(r.exc_info is None for r in ours), "weather logs no traceback"
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
        await client.aclose()
        proc.terminate()
        proc.wait(10)
