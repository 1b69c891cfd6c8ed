"""dyndns2 receiver tests: real aiohttp server on 127.0.0.1, real HTTP client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Middleware
from pydantic import SecretStr, ValidationError

from bot.sources.dyndns2 import (
    DynDns2Config,
    DynDnsAccount,
    PasswordChecker,
    UpdateResult,
    add_dyndns2_routes,
    hash_password,
    make_dyndns2_handler,
    normalize_hostname,
    verify_password,
)
from bot.sources.httplog import LogThrottle, quiet_bad_requests
from bot.sources.ipcheck import Family
from bot.sources.ratelimit import RateLimitConfig, TokenBucketLimiter, address_key

UA = "tunnelwarden-tests/1.0 ops@example.test"
FRITZ_UA = "Fritz!Box DDNS/1.0.1"
FAST = 1000  # pbkdf2 iterations; production default is much higher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Store:
    """The caller's side: remembers addresses and answers good/nochg like the worker will."""

    ips: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    rejects: list[tuple[str | None, str, str]] = field(default_factory=list)
    refused_ips: list[str | None] = field(default_factory=list)
    fail: bool = False

    async def on_update(self, site: str, ip: str, family: Family) -> UpdateResult:
        self.calls.append((site, ip, family))
        if self.fail:
            raise RuntimeError("redis down")
        if self.ips.get((site, family)) == ip:
            return "nochg"
        self.ips[(site, family)] = ip
        return "good"

    async def on_reject(self, site: str | None, code: str, detail: str, ip: str | None) -> None:
        self.rejects.append((site, code, detail))
        self.refused_ips.append(ip)


def _secret(password: str, plaintext: bool) -> dict[str, Any]:
    if plaintext:
        return {"password": SecretStr(password)}
    return {"password_hash": hash_password(password, iterations=FAST)}


def config(plaintext: bool = False, **kw: Any) -> DynDns2Config:
    """Two accounts; hashed secrets (an operator's config) or plaintext ones (push.py's)."""
    accounts = [
        DynDnsAccount(
            site="berlin",
            username="berlin",
            hostnames=("berlin.vpn.example.test", "gw.berlin.example.test"),
            **_secret("s3cret-berlin", plaintext),
        ),
        DynDnsAccount(
            site="paris",
            username="paris",
            hostnames=("paris.vpn.example.test",),
            **_secret("s3cret-paris", plaintext),
        ),
    ]
    data: dict[str, Any] = {"accounts": accounts, "allow_documentation": True, **kw}
    return DynDns2Config.model_validate(data)


@dataclass
class Env:
    server: TestServer
    store: Store
    clock: Clock
    client: aiohttp.ClientSession

    checker: PasswordChecker

    async def get(
        self,
        auth: tuple[str, str] | None = ("berlin", "s3cret-berlin"),
        headers: dict[str, str] | None = None,
        skip_ua: bool = False,
        method: str = "GET",
        **params: str,
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        hdrs = {"User-Agent": UA} if not skip_ua else {}
        if auth:
            hdrs["Authorization"] = aiohttp.encode_basic_auth(*auth)
        hdrs.update(headers or {})
        async with self.client.request(
            method,
            self.server.make_url("/nic/update"),
            params=params,
            headers=hdrs,
            skip_auto_headers=["User-Agent"] if skip_ua else (),
        ) as resp:
            return resp.status, await resp.text(), resp


async def start(cfg: DynDns2Config, middlewares: list[Middleware] | None = None) -> Env:
    store, clock = Store(), Clock()
    app = web.Application(middlewares=middlewares or [])
    checker = PasswordChecker(cfg.accounts, cache_seconds=cfg.check_cache_seconds, clock=clock)
    handler = make_dyndns2_handler(
        cfg, store.on_update, on_reject=store.on_reject, clock=clock, checker=checker
    )
    add_dyndns2_routes(app, handler)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    return Env(server, store, clock, aiohttp.ClientSession(), checker)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = await start(config())
    yield e
    await e.client.close()
    await e.server.close()


@pytest.fixture(params=["hashed", "plaintext"])
async def any_env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The same endpoint with hashed (operator config) and plaintext (push.py) secrets."""
    e = await start(config(plaintext=request.param == "plaintext"))
    yield e
    await e.client.close()
    await e.server.close()


async def test_good_then_nochg(env: Env) -> None:
    status, body, resp = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
    assert (status, body) == (200, "good 203.0.113.5")
    assert resp.content_type == "text/plain"
    assert env.store.calls == [("berlin", "203.0.113.5", "v4")]
    status, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
    assert (status, body) == (200, "nochg 203.0.113.5")
    status, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.6")
    assert body == "good 203.0.113.6"


async def test_badauth(env: Env) -> None:
    status, body, _ = await env.get(
        auth=("berlin", "wrong"), hostname="berlin.vpn.example.test", myip="203.0.113.5"
    )
    assert (status, body) == (200, "badauth")
    status, body, _ = await env.get(
        auth=("nobody", "s3cret-berlin"), hostname="berlin.vpn.example.test", myip="203.0.113.5"
    )
    assert (status, body) == (200, "badauth")
    # another site's valid credentials do not authorize this hostname
    status, body, _ = await env.get(
        auth=("paris", "s3cret-paris"), hostname="berlin.vpn.example.test", myip="203.0.113.5"
    )
    assert body == "nohost"
    assert env.store.calls == []
    assert [r[1] for r in env.store.rejects] == ["badauth", "badauth"]


async def test_missing_credentials_get_a_basic_challenge(env: Env) -> None:
    status, body, resp = await env.get(auth=None, hostname="berlin.vpn.example.test")
    assert status == 401 and body == "badauth"
    assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")


async def test_garbled_authorization_header_is_badauth(env: Env) -> None:
    status, body, _ = await env.get(
        auth=None, headers={"Authorization": "Basic !!!notbase64"}, hostname="x.example.test"
    )
    assert (status, body) == (200, "badauth")


async def test_host_errors_one_line_per_hostname(env: Env) -> None:
    hosts = "berlin.vpn.example.test,paris.vpn.example.test,localhost,gw.berlin.example.test"
    status, body, _ = await env.get(hostname=hosts, myip="203.0.113.7")
    assert status == 200
    assert body.split("\n") == [
        "good 203.0.113.7",
        "nohost",
        "notfqdn",
        "good 203.0.113.7",  # same site, same request: one update, same answer
    ]
    assert env.store.calls == [("berlin", "203.0.113.7", "v4")]


async def test_notfqdn_and_numhost(env: Env) -> None:
    assert (await env.get(myip="203.0.113.7"))[1] == "notfqdn"
    assert (await env.get(hostname="", myip="203.0.113.7"))[1] == "notfqdn"
    assert (await env.get(hostname="-bad-.example.test"))[1] == "notfqdn"
    many = ",".join(f"h{i}.example.test" for i in range(21))
    assert (await env.get(hostname=many, myip="203.0.113.7"))[1] == "numhost"


async def test_ipv6_and_dual_stack(env: Env) -> None:
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myipv6="2001:DB8::0005")
    assert body == "good 2001:db8::5"
    assert env.store.calls == [("berlin", "2001:db8::5", "v6")]
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.9,2001:db8::5")
    assert body == "good 203.0.113.9,2001:db8::5"
    _, body, _ = await env.get(
        hostname="berlin.vpn.example.test", myip="203.0.113.9", myipv6="2001:db8::5"
    )
    assert body == "nochg 203.0.113.9,2001:db8::5"


async def test_fritzbox_style_query_credentials_and_empty_v6(env: Env) -> None:
    # FRITZ!Box user-defined URL:
    # ...?hostname=<domain>&myip=<ipaddr>&myipv6=<ip6addr>&username=<username>&password=<pass>
    status, body, _ = await env.get(
        auth=None,
        headers={"User-Agent": FRITZ_UA},
        hostname="paris.vpn.example.test",
        myip="198.51.100.44",
        myipv6="",  # box without IPv6 substitutes nothing
        username="paris",
        password="s3cret-paris",
    )
    assert (status, body) == (200, "good 198.51.100.44")
    assert env.store.calls == [("paris", "198.51.100.44", "v4")]
    _, body, _ = await env.get(
        auth=None,
        hostname="paris.vpn.example.test",
        myip="198.51.100.44",
        username="paris",
        password="nope",
    )
    assert body == "badauth"


async def test_query_credentials_can_be_disabled() -> None:
    e = await start(config(allow_query_credentials=False))
    try:
        status, body, _ = await e.get(
            auth=None, hostname="paris.vpn.example.test", username="paris", password="s3cret-paris"
        )
        assert (status, body) == (401, "badauth")
    finally:
        await e.client.close()
        await e.server.close()


async def test_unusable_addresses(env: Env) -> None:
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="100.64.7.7")
    assert body == "dnserr"
    site, code, detail = env.store.rejects[-1]
    assert (site, code) == ("berlin", "dnserr") and "carrier-grade NAT" in detail
    assert env.store.refused_ips[-1] == "100.64.7.7"
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="192.168.178.20")
    assert body == "dnserr"
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="<ipaddr>")
    assert body == "badagent"
    # a bad v6 value blocks the whole request: no partial update
    _, body, _ = await env.get(
        hostname="berlin.vpn.example.test", myip="203.0.113.5", myipv6="fe80::1"
    )
    assert body == "dnserr"
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5,203.0.113.6")
    assert body == "badagent"
    assert env.store.calls == []


async def test_documentation_ips_refused_unless_allowed() -> None:
    e = await start(config(allow_documentation=False))
    try:
        _, body, _ = await e.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
        assert body == "dnserr"
    finally:
        await e.client.close()
        await e.server.close()


async def test_missing_myip_uses_remote_address(env: Env) -> None:
    # The test client connects from 127.0.0.1, which is loopback and must be refused...
    _, body, _ = await env.get(hostname="berlin.vpn.example.test")
    assert body == "dnserr"
    assert "127.0.0.1" in env.store.rejects[-1][2]
    assert env.store.calls == []


async def test_missing_myip_uses_remote_address_behind_proxy() -> None:
    # ...and behind a reverse proxy that rewrites request.remote, that address is used.
    @web.middleware
    async def forwarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        return await handler(request.clone(remote=request.headers["X-Test-Client"]))

    e = await start(config(), middlewares=[forwarded])
    try:
        _, body, _ = await e.get(
            headers={"X-Test-Client": "203.0.113.77"}, hostname="berlin.vpn.example.test"
        )
        assert body == "good 203.0.113.77"
        assert e.store.calls == [("berlin", "203.0.113.77", "v4")]
    finally:
        await e.client.close()
        await e.server.close()


async def test_abuse_rate_limit_per_client(env: Env) -> None:
    cfg = config(rate_limit=RateLimitConfig(burst=3, per_minute=6))
    e = await start(cfg)
    try:
        nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
        bodies = [(await e.get(auth=("nobody", f"pw{i}"), **nic))[1] for i in range(4)]
        assert bodies == ["badauth", "badauth", "badauth", "abuse"]
        # rate limiting happens before authentication: the right password gets abuse too...
        assert (await e.get(**nic))[1] == "abuse"
        assert e.store.rejects[-1][1] == "abuse"
        assert e.checker.pbkdf2_runs == 3
        e.clock.now += 10  # 6/min refills one token in 10 s
        assert (await e.get(**nic))[1] == "good 203.0.113.5"
        # ...but an address that logged in to an account has a bucket of its own for it, so
        # other traffic from a shared address cannot starve it (and it is limited too)
        assert (await e.get(auth=("nobody", "pw"), **nic))[1] == "abuse"
        bodies = [(await e.get(**nic))[1] for _ in range(4)]
        assert bodies == ["nochg 203.0.113.5"] * 3 + ["abuse"]
        assert (await e.get(auth=("berlin", "wrong"), **nic))[1] == "abuse"
    finally:
        await e.client.close()
        await e.server.close()


async def test_badagent_without_user_agent(env: Env) -> None:
    _, body, _ = await env.get(skip_ua=True, hostname="berlin.vpn.example.test")
    assert body == "badagent"


async def test_callback_failure_answers_911(env: Env) -> None:
    env.store.fail = True
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
    assert body == "911"


async def test_ignored_parameters_and_a_post_is_refused(env: Env) -> None:
    _, body, _ = await env.get(
        hostname="berlin.vpn.example.test",
        myip="203.0.113.5",
        system="dyndns",
        wildcard="NOCHG",
        mx="NOCHG",
        backmx="NOCHG",
        offline="NO",
    )
    assert body == "good 203.0.113.5"
    async with env.client.post(
        env.server.make_url("/nic/update"),
        params={"hostname": "berlin.vpn.example.test", "myip": "203.0.113.6"},
        headers={
            "User-Agent": UA,
            "Authorization": aiohttp.encode_basic_auth("berlin", "s3cret-berlin"),
        },
    ) as resp:
        assert resp.status == 405, "a POST never updates"
    assert env.store.calls == [("berlin", "203.0.113.5", "v4")]


async def test_password_check_uses_constant_time_compare(
    any_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = any_env
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    await env.get(auth=("berlin", "wrong"), hostname="berlin.vpn.example.test")
    await env.get(auth=("berlin", "s3cret-berlin-and-much-longer"), hostname="x.example.test")
    await env.get(auth=("ghost", "whatever"), hostname="berlin.vpn.example.test")  # dummy
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
    assert body == "good 203.0.113.5"
    # sha256-sized digests whatever the password's length (PBKDF2 output, or an HMAC of the
    # UTF-8 bytes for plaintext secrets), also for unknown users
    assert seen == [(32, 32)] * 4


def test_password_hashing() -> None:
    stored = hash_password("pw", iterations=FAST)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("pw", stored)
    assert not verify_password("pw ", stored)
    assert not verify_password("pw", "garbage")
    assert not verify_password("pw", "md5$1$AA==$AA==")
    assert hash_password("pw", iterations=FAST) != stored  # random salt


def test_config_validation() -> None:
    good = hash_password("x", iterations=FAST)
    with pytest.raises(ValidationError):
        DynDnsAccount(site="s", username="u", password_hash="plaintext", hostnames=("a.b.test",))
    with pytest.raises(ValidationError, match="fully-qualified"):
        DynDnsAccount(site="s", username="u", password_hash=good, hostnames=("localhost",))
    acc = DynDnsAccount(site="s", username="u", password_hash=good, hostnames=("A.B.Test.",))
    assert acc.hostnames == ("a.b.test",)
    with pytest.raises(ValidationError, match="unique"):
        DynDns2Config(accounts=(acc, acc))
    with pytest.raises(ValidationError, match="exactly one"):
        DynDnsAccount(site="s", username="u", hostnames=("a.b.test",))
    with pytest.raises(ValidationError, match="exactly one"):
        DynDnsAccount(
            site="s",
            username="u",
            password=SecretStr("x"),
            password_hash=good,
            hostnames=("a.b.test",),
        )
    with pytest.raises(ValidationError, match="empty"):
        DynDnsAccount(site="s", username="u", password=SecretStr(""), hostnames=("a.b.test",))
    plain = DynDnsAccount(
        site="s", username="u", password=SecretStr("pw-shown-nowhere"), hostnames=("a.b.test",)
    )
    assert "pw-shown-nowhere" not in repr(plain) + str(plain.model_dump())


def test_normalize_hostname() -> None:
    assert normalize_hostname(" Berlin.VPN.example.test. ") == "berlin.vpn.example.test"
    for bad in ("localhost", "", "a..b", "-a.b", "a_b.test", "a." + "b" * 64 + ".test"):
        assert normalize_hostname(bad) is None, bad


def test_token_bucket() -> None:
    clock = Clock()
    lim = TokenBucketLimiter(RateLimitConfig(burst=2, per_minute=60, max_keys=2), clock=clock)
    assert [lim.allow("a") for _ in range(3)] == [True, True, False]
    assert lim.allow("b")
    clock.now += 1.0
    assert lim.allow("a") and not lim.allow("a")
    lim.allow("c")  # evicts the stalest key ("b")
    assert lim.allow("b") and lim.allow("b") and not lim.allow("b")  # fresh bucket


# --- methods: only GET updates; HEAD answers without side effects ---------------------------


async def test_head_answers_like_get_but_changes_nothing(any_env: Env) -> None:
    env = any_env
    nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
    status, body, resp = await env.get(method="HEAD", **nic)
    assert (status, body) == (200, "")  # HTTP: no body for HEAD, headers as GET's
    assert resp.headers["Content-Length"] == str(len("nochg 203.0.113.5"))
    assert env.store.calls == [] and env.store.ips == {}
    # what GET would answer about credentials and hosts, again without any report
    status, _, resp = await env.get(method="HEAD", auth=("berlin", "wrong"), **nic)
    assert (status, resp.headers["Content-Length"]) == (200, str(len("badauth")))
    status, _, resp = await env.get(method="HEAD", auth=None, **nic)
    assert status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic realm=")
    status, _, resp = await env.get(method="HEAD", hostname=nic["hostname"], myip="100.64.7.7")
    assert resp.headers["Content-Length"] == str(len("dnserr"))  # CGNAT: refused...
    _, _, resp = await env.get(method="HEAD", skip_ua=True, **nic)
    assert resp.headers["Content-Length"] == str(len("badagent"))
    assert env.store.calls == [] and env.store.rejects == []  # ...but nothing is published
    # the GET that follows is the first update
    assert (await env.get(**nic))[1] == "good 203.0.113.5"
    assert env.store.calls == [("berlin", "203.0.113.5", "v4")]


async def test_head_is_not_a_free_password_oracle(env: Env) -> None:
    nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
    for i in range(3):  # the guard's free failures, spent with HEAD
        await env.get(method="HEAD", auth=("paris", f"guess{i}"), **nic)
    await env.get(method="HEAD", auth=("paris", "guess3"), **nic)  # starts a 1 s wait
    _, _, resp = await env.get(method="HEAD", auth=("paris", "s3cret-paris"), **nic)
    assert resp.headers["Content-Length"] == str(len("abuse"))  # not checked: no answer
    assert env.checker.pbkdf2_runs == 4
    assert env.store.rejects == []


async def test_only_get_updates_post_and_other_methods_are_refused(env: Env) -> None:
    nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, resp = await env.get(method=method, **nic)
        assert status == 405 and set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}
    assert env.store.calls == [], "no method but GET updates"
    assert (await env.get(**nic))[:2] == (200, "good 203.0.113.5")
    assert env.store.calls == [("berlin", "203.0.113.5", "v4")]


# --- password checking cost ---------------------------------------------------------------


async def test_plaintext_secrets_never_run_pbkdf2(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any, **kw: Any) -> bytes:
        runs.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    e = await start(config(plaintext=True))
    try:
        nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
        assert (await e.get(**nic))[1] == "good 203.0.113.5"
        assert (await e.get(auth=("berlin", "s3cret-berlin "), **nic))[1] == "badauth"
        assert (await e.get(auth=("berlin", "s3cret-berli"), **nic))[1] == "badauth"
        assert (await e.get(auth=("ghost", "s3cret-berlin"), **nic))[1] == "badauth"
        assert (await e.get(auth=("paris", "s3cret-berlin"), **nic))[1] == "badauth"
        assert (await e.get(auth=("paris", "s3cret-paris"), **nic))[1] == "nohost"
        assert runs == [] and e.checker.pbkdf2_runs == 0  # not even at start-up
    finally:
        await e.client.close()
        await e.server.close()


async def test_plaintext_compare_handles_non_ascii_and_garbage() -> None:
    account = DynDnsAccount(
        site="s", username="u", password=SecretStr("pässwörd-ß"), hostnames=("a.b.test",)
    )
    checker = PasswordChecker([account])
    assert await checker.check("u", "pässwörd-ß") is account
    assert await checker.check("u", "passwoerd-ss") is None
    assert await checker.check("u", "p\udcc3sswörd-ß") is None  # lone surrogate: no crash
    assert await checker.check("u", "") is None
    assert checker.pbkdf2_runs == 0


async def test_hashed_secrets_cache_successes_briefly(env: Env) -> None:
    nic: dict[str, Any] = {"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"}
    assert (await env.get(**nic))[1] == "good 203.0.113.5"
    assert env.checker.pbkdf2_runs == 1
    for _ in range(3):
        assert (await env.get(**nic))[1] == "nochg 203.0.113.5"
    assert env.checker.pbkdf2_runs == 1  # remembered
    # a wrong password is never answered from the cache, and always costs a check
    assert (await env.get(auth=("berlin", "s3cret-berlin2"), **nic))[1] == "badauth"
    assert (await env.get(auth=("paris", "s3cret-berlin"), **nic))[1] == "badauth"
    assert env.checker.pbkdf2_runs == 3
    env.clock.now += 61  # past check_cache_seconds
    assert (await env.get(**nic))[1] == "nochg 203.0.113.5"
    assert env.checker.pbkdf2_runs == 4


async def test_success_cache_is_bounded_and_holds_no_plaintext() -> None:
    clock = Clock()
    accounts = [
        DynDnsAccount(
            site=f"s{i}",
            username=f"u{i}",
            password_hash=hash_password(f"pw-{i}", iterations=FAST),
            hostnames=(f"h{i}.example.test",),
        )
        for i in range(5)
    ]
    checker = PasswordChecker(accounts, cache_size=3, clock=clock)
    for i in range(5):
        assert await checker.check(f"u{i}", f"pw-{i}") is accounts[i]
    assert checker.pbkdf2_runs == 5
    cache = vars(checker)["_cache"]
    assert len(cache) == 3
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache)  # HMACs, no plaintext
    assert await checker.check("u4", "pw-4") is accounts[4]  # still cached
    assert await checker.check("u0", "pw-0") is accounts[0]  # evicted: checked again
    assert checker.pbkdf2_runs == 6
    # unknown users cost a (dummy) PBKDF2 when every account is hashed: no timing oracle
    assert await checker.check("ghost", "pw-0") is None
    assert checker.pbkdf2_runs == 7


# --- malformed requests are logged quietly ------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


@pytest.fixture
async def roomy_env() -> AsyncIterator[Env]:
    """Rate limits out of the way."""
    e = await start(config(rate_limit=RateLimitConfig(burst=1000, per_minute=1000)))
    yield e
    await e.client.close()
    await e.server.close()


async def test_malformed_requests_log_one_line_per_address_per_minute(
    roomy_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env = roomy_env
    caplog.set_level(logging.DEBUG, logger="bot.sources.dyndns2")
    bad: list[dict[str, Any]] = [
        {"q": "A" * 2000, "hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"},
        {"auth": None, "headers": {"Authorization": "Basic !!!notbase64"}},  # garbled
        {"auth": None, "headers": {"Authorization": "Basic " + "QUFB" * 2000}},
        {"myip": "203.0.113.5"},  # no hostname
        {"hostname": "%ff.example.test", "pw": "s3cret-in-the-wrong-field"},
    ]
    for kw in bad * 4:
        await env.get(**kw)
    records = _lines(caplog, "bot.sources.dyndns2")
    assert len(records) == 1, [r.getMessage() for r in records]
    line = records[0]
    assert line.levelno == logging.INFO and line.exc_info is None
    assert "127.0.0.1" in line.getMessage() and "'q'" in line.getMessage()
    assert "AAAA" not in caplog.text and "s3cret" not in caplog.text
    env.clock.now += 61
    await env.get(**bad[1])
    records = _lines(caplog, "bot.sources.dyndns2")
    assert len(records) == 2
    assert "unusable credentials" in records[1].getMessage()
    assert "more since the last line" in records[1].getMessage()
    assert "Traceback" not in caplog.text


def test_address_key_groups_ipv6_by_64() -> None:
    assert address_key("203.0.113.5") == "203.0.113.5"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.5") == "203.0.113.5"
    assert address_key("not-an-address" * 10) == ("not-an-address" * 10)[:64]


def test_log_throttle() -> None:
    clock = Clock()
    throttle = LogThrottle(60.0, max_keys=2, clock=clock)
    assert throttle.hit("a") == 0
    assert [throttle.hit("a") for _ in range(3)] == [None, None, None]
    clock.now += 60
    assert throttle.hit("a") == 3
    assert throttle.hit("b") == 0 and throttle.hit("c") == 0  # evicts "a"
    assert throttle.hit("a") == 0


# --- aiohttp's own bad-request logging ----------------------------------------------------

MALFORMED = b"GET /nic/update?q=" + b"A" * 8100 + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n"
LEAKY = b"GET /nic/update?username=berlin&password=s3cret-berlin\x01 HTTP/1.1\r\n\r\n"


async def _raw(port: int, payload: bytes, source: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def test_bad_http_is_logged_once_per_address_per_minute_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    app = web.Application()

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a real bug")

    app.router.add_get("/boom", boom)
    quiet = quiet_bad_requests(app, clock=clock)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    try:
        port = server.port
        assert port is not None
        for _ in range(5):
            for source in ("127.0.0.21", "127.0.0.22"):
                reply = await _raw(port, MALFORMED, source)
                assert reply.startswith(b"HTTP/1.0 400")
        await _raw(port, LEAKY, "127.0.0.21")
        await _raw(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", "127.0.0.23")  # TLS probe
        server_lines = _lines(caplog, "aiohttp.server")
        assert sorted(r.getMessage().split(":")[0] for r in server_lines) == [
            "bad HTTP request from 127.0.0.21",
            "bad HTTP request from 127.0.0.22",
            "bad HTTP request from 127.0.0.23",
        ]
        assert all(r.levelno <= logging.INFO and r.exc_info is None for r in server_lines)
        assert "400 Invalid char in url query" in server_lines[0].getMessage()
        assert _lines(caplog, "aiohttp.access") == []  # the "UNKNOWN / HTTP/1.0" 400 lines
        assert "Traceback" not in caplog.text
        assert "AAAA" not in caplog.text and "s3cret" not in caplog.text
        assert sum(len(r.getMessage()) for r in caplog.records) < 400

        clock.now += 61
        await _raw(port, MALFORMED, "127.0.0.21")
        last = _lines(caplog, "aiohttp.server")[-1].getMessage()
        assert last.startswith("bad HTTP request from 127.0.0.21") and "5 more" in last

        # handler bugs still log their traceback, and normal requests their access line
        async with (
            aiohttp.ClientSession() as client,
            client.get(server.make_url("/boom")) as resp,
        ):
            assert resp.status == 500
        bug = _lines(caplog, "aiohttp.server")[-1]
        assert bug.levelno == logging.ERROR and bug.exc_info is not None
        assert '"GET /boom HTTP/1.1" 500' in _lines(caplog, "aiohttp.access")[-1].getMessage()
    finally:
        await server.close()
    assert quiet not in logging.getLogger("aiohttp.server").filters  # removed on clean-up
    assert quiet not in logging.getLogger("aiohttp.access").filters
