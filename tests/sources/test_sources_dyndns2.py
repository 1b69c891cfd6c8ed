"""dyndns2 receiver tests: real aiohttp server on 127.0.0.1, real HTTP client."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Middleware
from pydantic import ValidationError

from bot.sources.dyndns2 import (
    DynDns2Config,
    DynDnsAccount,
    UpdateResult,
    add_dyndns2_routes,
    hash_password,
    make_dyndns2_handler,
    normalize_hostname,
    verify_password,
)
from bot.sources.ipcheck import Family
from bot.sources.ratelimit import RateLimitConfig, TokenBucketLimiter

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


def config(**kw: Any) -> DynDns2Config:
    accounts = [
        DynDnsAccount(
            site="berlin",
            username="berlin",
            password_hash=hash_password("s3cret-berlin", iterations=FAST),
            hostnames=("berlin.vpn.example.test", "gw.berlin.example.test"),
        ),
        DynDnsAccount(
            site="paris",
            username="paris",
            password_hash=hash_password("s3cret-paris", iterations=FAST),
            hostnames=("paris.vpn.example.test",),
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

    async def get(
        self,
        auth: tuple[str, str] | None = ("berlin", "s3cret-berlin"),
        headers: dict[str, str] | None = None,
        skip_ua: bool = False,
        **params: str,
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        hdrs = {"User-Agent": UA} if not skip_ua else {}
        if auth:
            hdrs["Authorization"] = aiohttp.encode_basic_auth(*auth)
        hdrs.update(headers or {})
        async with self.client.get(
            self.server.make_url("/nic/update"),
            params=params,
            headers=hdrs,
            skip_auto_headers=["User-Agent"] if skip_ua else (),
        ) as resp:
            return resp.status, await resp.text(), resp


async def start(cfg: DynDns2Config, middlewares: list[Middleware] | None = None) -> Env:
    store, clock = Store(), Clock()
    app = web.Application(middlewares=middlewares or [])
    handler = make_dyndns2_handler(cfg, store.on_update, on_reject=store.on_reject, clock=clock)
    add_dyndns2_routes(app, handler)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    return Env(server, store, clock, aiohttp.ClientSession())


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = await start(config())
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
        bodies = [
            (await e.get(hostname="berlin.vpn.example.test", myip="203.0.113.5"))[1]
            for _ in range(4)
        ]
        assert bodies == ["good 203.0.113.5", "nochg 203.0.113.5", "nochg 203.0.113.5", "abuse"]
        # rate limiting happens before authentication
        assert (await e.get(auth=("berlin", "wrong"), hostname="a.example.test"))[1] == "abuse"
        assert e.store.rejects[-1][1] == "abuse"
        e.clock.now += 10  # 6/min refills one token in 10 s
        assert (await e.get(hostname="berlin.vpn.example.test", myip="203.0.113.5"))[1] == (
            "nochg 203.0.113.5"
        )
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


async def test_ignored_parameters_and_post(env: Env) -> None:
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
        params={"hostname": "berlin.vpn.example.test", "myip": "203.0.113.5"},
        headers={
            "User-Agent": UA,
            "Authorization": aiohttp.encode_basic_auth("berlin", "s3cret-berlin"),
        },
    ) as resp:
        assert await resp.text() == "nochg 203.0.113.5"


async def test_password_check_uses_constant_time_compare(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    await env.get(auth=("berlin", "wrong"), hostname="berlin.vpn.example.test")
    await env.get(auth=("ghost", "whatever"), hostname="berlin.vpn.example.test")  # dummy hash
    _, body, _ = await env.get(hostname="berlin.vpn.example.test", myip="203.0.113.5")
    assert body == "good 203.0.113.5"
    assert seen == [(32, 32)] * 3  # sha256 digests, also for unknown users


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
