"""Password guessing against the dyndns2 endpoint, and what password checks cost.

Synthetic traces against `GuessingGuard` (injected clock), then the real handler on
127.0.0.1 with attackers on distinct loopback source addresses (127.0.0.0/8 is all loopback).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.sources.dyndns2 import (
    DynDns2Config,
    DynDnsAccount,
    PasswordChecker,
    UpdateResult,
    add_dyndns2_routes,
    hash_password,
    make_dyndns2_handler,
)
from bot.sources.ipcheck import Family
from bot.sources.push import add_push_routes, push_config
from bot.sources.ratelimit import GuessingConfig, GuessingGuard
from bot.sources.report import IpReporter

UA = "tunnelwarden-tests/1.0 ops@example.test"
HOST = "berlin.vpn.example.test"
PASSWORD = "s3cret-berlin"
ROUTER = "127.0.0.2"  # the real router's usual address
ATTACKERS = [f"127.0.0.{100 + i}" for i in range(40)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the guard on synthetic traces --------------------------------------------------------


def attack(guard: GuessingGuard, clock: Clock, *, guesses: int, every: float) -> int:
    """40 addresses take turns guessing; returns how many guesses got a password check."""
    checked = 0
    for n in range(guesses):
        clock.now += every
        if guard.admit("berlin", ATTACKERS[n % len(ATTACKERS)]):
            checked += 1  # ...and the guess was wrong: no success() call
    return checked


def test_forty_addresses_five_guesses_each_get_a_handful_of_checks() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    # 200 guesses in 2 s: 3 free, then 1 s, then 2 s of waiting
    assert attack(guard, clock, guesses=200, every=0.01) == 5
    # all at the same instant (concurrent requests): an admitted check counts as failed
    # until it succeeds, so nothing slips past the count while checks are running
    guard = GuessingGuard(known=["berlin"], clock=clock)
    assert attack(guard, clock, guesses=200, every=0.0) == 4


def test_delays_double_up_to_five_minutes() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    admitted: list[float] = []
    for _ in range(3 * 3600 * 10):  # a guess every 100 ms for 3 hours
        clock.now += 0.1
        if guard.admit("berlin", ATTACKERS[len(admitted) % 40]):
            admitted.append(clock.now)
    gaps = [round(b - a) for a, b in itertools.pairwise(admitted)]
    assert gaps[:12] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert set(gaps[12:]) == {300}  # capped, and no decay while the attack goes on
    assert len(admitted) <= 3 + 9 + 3 * 3600 / 300


def test_the_real_router_is_not_locked_out_by_guessers() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    assert guard.admit("berlin", ROUTER)
    guard.success("berlin", ROUTER)
    assert guard.is_trusted("berlin", ROUTER)
    for _ in range(60):  # an hour of guessing, and the router pushes every minute
        attack(guard, clock, guesses=600, every=0.1)
        assert guard.admit("berlin", ROUTER), "the router's own address is never delayed"
        guard.success("berlin", ROUTER)
    assert guard.retry_after("berlin", ATTACKERS[0]) > 0  # the guessers are still waiting
    # the right password from a guessing address is not even checked
    assert not guard.admit("berlin", ATTACKERS[0])


def test_a_trusted_address_has_its_own_count() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    assert guard.admit("berlin", ROUTER)
    guard.success("berlin", ROUTER)
    for _ in range(4):  # e.g. the password was changed on our side only
        assert guard.admit("berlin", ROUTER)
    assert not guard.admit("berlin", ROUTER)  # delayed like anyone...
    assert guard.admit("berlin", ATTACKERS[0])  # ...without touching the account's count
    assert guard.failures("berlin", ATTACKERS[0]) == 1
    clock.now += 1
    assert guard.admit("berlin", ROUTER)
    guard.success("berlin", ROUTER)  # fixed: its own count starts over
    assert guard.failures("berlin", ROUTER) == 0


def test_penalties_decay_after_quiet_time() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    attack(guard, clock, guesses=12_000, every=0.1)  # 20 minutes: waits up to 256 s
    newcomer = "127.0.0.50"
    wait = guard.retry_after("berlin", newcomer)
    assert 0 < wait <= 300
    failures = guard.failures("berlin", newcomer)
    assert failures >= 10
    clock.now += wait
    assert guard.retry_after("berlin", newcomer) == 0  # the wait ends...
    # ...and every 5 quiet minutes after that one failure is forgotten
    clock.now += 300 * (failures - 3)
    assert guard.failures("berlin", newcomer) == 3
    assert guard.admit("berlin", newcomer)  # a typo or two are free again
    guard.success("berlin", newcomer)
    assert guard.failures("berlin", "127.0.0.51") == 3  # takes back its own check only
    clock.now += 300 * 3
    assert guard.failures("berlin", "127.0.0.51") == 0


def test_a_success_from_a_new_address_does_not_reset_the_guessers() -> None:
    clock = Clock()
    guard = GuessingGuard(known=["berlin"], clock=clock)
    attack(guard, clock, guesses=200, every=0.01)
    clock.now += guard.retry_after("berlin", "127.0.0.60")
    assert guard.admit("berlin", "127.0.0.60")  # the router, after an address change
    before = guard.failures("berlin", ATTACKERS[0])
    guard.success("berlin", "127.0.0.60")
    assert guard.failures("berlin", ATTACKERS[0]) == before - 1
    assert guard.is_trusted("berlin", "127.0.0.60")


def test_trust_expires_and_is_bounded_per_account() -> None:
    clock = Clock()
    cfg = GuessingConfig(trust_for=3600, max_trusted=2)
    guard = GuessingGuard(cfg, known=["berlin"], clock=clock)
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert guard.admit("berlin", address)
        guard.success("berlin", address)
    assert not guard.is_trusted("berlin", "127.0.0.2")  # the oldest made room
    assert guard.is_trusted("berlin", "127.0.0.3") and guard.is_trusted("berlin", "127.0.0.4")
    assert not guard.is_trusted("paris", "127.0.0.3")  # per account
    clock.now += 3601
    assert not guard.is_trusted("berlin", "127.0.0.4")


def test_memory_is_bounded_and_known_accounts_are_never_forgotten() -> None:
    clock = Clock()
    guard = GuessingGuard(GuessingConfig(max_keys=100), known=["berlin"], clock=clock)
    attack(guard, clock, guesses=50, every=0.01)
    locked = guard.failures("berlin", ATTACKERS[0])
    assert locked > 3
    for n in range(10_000):  # random usernames cannot flush the real account's count
        guard.admit(f"ghost{n}", ATTACKERS[n % 40])
    assert len(vars(guard)["_unknown"]) == 100
    assert guard.failures("berlin", ATTACKERS[0]) == locked
    assert guard.failures("ghost0", ATTACKERS[0]) == 0  # forgotten
    assert guard.failures("ghost9999", ATTACKERS[0]) == 1


# --- the same through the real handler on loopback ----------------------------------------


@dataclass
class Store:
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    rejects: list[tuple[str | None, str]] = field(default_factory=list)

    async def on_update(self, site: str, ip: str, family: Family) -> UpdateResult:
        self.calls.append((site, ip, family))
        return "good"

    async def on_reject(self, site: str | None, code: str, detail: str, ip: str | None) -> None:
        self.rejects.append((site, code))


@dataclass
class Endpoint:
    server: TestServer
    store: Store
    checker: PasswordChecker
    clock: Clock
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    async def push(self, source: str, password: str, user: str = "berlin") -> str:
        """One dyndns2 request from `source` (a loopback address)."""
        session = self.sessions.get(source)
        if session is None:
            connector = aiohttp.TCPConnector(local_addr=(source, 0))
            session = self.sessions[source] = aiohttp.ClientSession(connector=connector)
        headers = {"User-Agent": UA, "Authorization": aiohttp.encode_basic_auth(user, password)}
        params = {"hostname": HOST, "myip": "203.0.113.5"}
        async with session.get(
            self.server.make_url("/nic/update"), params=params, headers=headers
        ) as resp:
            assert resp.status == 200
            return await resp.text()


def _config(plaintext: bool) -> DynDns2Config:
    secret: dict[str, Any] = (
        {"password": PASSWORD}
        if plaintext
        else {"password_hash": hash_password(PASSWORD, iterations=1000)}
    )
    account = DynDnsAccount(site="berlin", username="berlin", hostnames=(HOST,), **secret)
    return DynDns2Config(accounts=(account,), allow_documentation=True)


@pytest.fixture(params=["plaintext", "hashed"])
async def endpoint(request: pytest.FixtureRequest) -> AsyncIterator[Endpoint]:
    cfg = _config(request.param == "plaintext")
    store, clock = Store(), Clock()
    checker = PasswordChecker(cfg.accounts, clock=clock)
    app = web.Application()
    handler = make_dyndns2_handler(
        cfg, store.on_update, on_reject=store.on_reject, clock=clock, checker=checker
    )
    add_dyndns2_routes(app, handler)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    e = Endpoint(server, store, checker, clock)
    yield e
    for session in e.sessions.values():
        await session.close()
    await server.close()


async def test_guessing_from_forty_addresses_checks_a_handful_and_the_router_keeps_working(
    endpoint: Endpoint,
) -> None:
    e = endpoint
    assert await e.push(ROUTER, PASSWORD) == "good 203.0.113.5"  # the router, earlier on
    checks_before = e.checker.checks

    async def guesser(n: int, source: str) -> list[str]:
        return [await e.push(source, f"guess-{n}-{i}") for i in range(5)]

    answers = await asyncio.gather(
        *(guesser(n, source) for n, source in enumerate(ATTACKERS)),
        *(e.push(ROUTER, PASSWORD) for _ in range(3)),  # the router pushes meanwhile
    )
    guesses = [a for batch in answers[:40] for a in cast(list[str], batch)]
    assert len(guesses) == 200
    checked = e.checker.checks - checks_before - 3
    assert checked <= 5, f"{checked} guesses were checked"
    assert guesses.count("badauth") == checked
    assert guesses.count("abuse") == 200 - checked  # answered without looking
    assert answers[40:] == ["good 203.0.113.5"] * 3
    # the right password from an attacker's address is not looked at during the wait
    before = e.checker.checks
    assert await e.push(ATTACKERS[0], PASSWORD) == "abuse"
    assert e.checker.checks == before
    assert await e.push(ROUTER, PASSWORD) == "good 203.0.113.5"

    # once the guessing stops, the wait runs out and the count decays
    e.clock.now += 300 * 20
    assert await e.push("127.0.0.3", PASSWORD) == "good 203.0.113.5"  # router, new address
    assert await e.push(ATTACKERS[1], "guess-late") == "badauth"


async def test_unknown_usernames_are_limited_the_same_way(endpoint: Endpoint) -> None:
    e = endpoint
    answers = await asyncio.gather(
        *(e.push(source, "whatever", user="admin") for source in ATTACKERS[:10])
    )
    assert sorted(set(answers)) == ["abuse", "badauth"]  # same answers: no user enumeration
    assert e.checker.checks <= 5


# --- a push storm: 50 routers at once, through push.py ------------------------------------


class _Reporter:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []

    async def report(self, site: str, ip: str, family: Family | None, source: str) -> str:
        self.reports.append((site, ip))
        return "good"


async def test_fifty_router_storm_runs_no_pbkdf2(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any, **kw: Any) -> bytes:
        runs.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    sites = {
        f"site{i:02d}": {
            "push": {
                "hostname": f"r{i}.vpn.example.test",
                "username": f"router{i}",
                "password": f"router-{i}-secret",
            }
        }
        for i in range(50)
    }
    settings = Settings.model_validate({"sites": sites, "detect": {"allow_documentation": True}})
    cfg = push_config(settings)
    assert cfg is not None and all(a.password_hash is None for a in cfg.accounts)
    reporter = _Reporter()
    app = web.Application()
    assert add_push_routes(app, settings, cast(IpReporter, reporter))
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{150 + i}", 0)))
        for i in range(50)
    ]

    async def router(i: int) -> str:
        headers = {
            "User-Agent": "Fritz!Box DDNS/1.0.1",
            "Authorization": aiohttp.encode_basic_auth(f"router{i}", f"router-{i}-secret"),
        }
        params = {"hostname": f"r{i}.vpn.example.test", "myip": f"198.51.100.{i + 1}"}
        async with sessions[i].get(
            server.make_url("/nic/update"), params=params, headers=headers
        ) as resp:
            return await resp.text()

    try:
        cpu = time.process_time()
        answers = await asyncio.gather(*(router(i) for i in range(50)))
        cpu = time.process_time() - cpu
    finally:
        for session in sessions:
            await session.close()
        await server.close()
    assert answers == [f"good 198.51.100.{i + 1}" for i in range(50)]
    assert len(reporter.reports) == 50
    assert runs == []  # not per request, not at start-up
    print(f"50-router storm: {cpu:.3f} s CPU (client and server)")


async def test_router_behind_a_shared_address_is_not_starved(endpoint: Endpoint) -> None:
    """Defect 5: the right password from an address an attacker also uses got `abuse`."""
    e = endpoint
    shared = "127.0.0.5"
    assert await e.push(shared, PASSWORD) == "good 203.0.113.5"
    flood = [await e.push(shared, "pw", user=f"ghost{i}") for i in range(30)]
    assert flood.count("abuse") >= 25  # the address's own budget is spent...
    for _ in range(3):  # ...but the router that logged in from it has one of its own
        assert await e.push(shared, PASSWORD) == "good 203.0.113.5"
    # a newcomer behind that address still waits for the address's budget
    assert await e.push(shared, PASSWORD, user="paris") == "abuse"
