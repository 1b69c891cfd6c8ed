"""Server side of the dyndns2 protocol, so routers (FRITZ!Box, ddclient, inadyn) can push
their new public IP to us instead of us polling for it.

Protocol (help.dyn.com "perform update" / "return codes", Google Domains' dyndns2 page):
`GET /nic/update?hostname=h1[,h2...]&myip=IP` with HTTP Basic auth; the body is text/plain with
one return code per hostname, in request order; account/system-level errors are answered once.

Choices made here (see the report / docs):

- `myip` may hold `v4,v6` (variomedia style); `myipv6` is also read. Empty values are treated
  as absent, because a FRITZ!Box without IPv6 substitutes `<ip6addr>` with nothing. With no
  address at all, the request's remote address is used (aiohttp `request.remote`; put a
  forwarded-header middleware in front when behind a proxy).
- An address that does not parse answers `badagent` ("your client is making bad requests",
  Google Domains); one that parses but is not usable as a gateway (private, CGNAT, loopback,
  ...; see `ipcheck`) answers `dnserr`. Both are fatal for well-behaved clients, which is what
  we want: a site behind CGNAT needs a human, not retries. Nothing is updated in either case
  (no partial v4-only update when the v6 value is bad).
- Credentials missing entirely get HTTP 401 with a Basic challenge (body `badauth`) so
  challenge-driven clients retry with credentials; wrong credentials get HTTP 200 `badauth`,
  as Dyn did, so ddclient parses the code instead of failing on the status.
- FRITZ!Box "user-defined" update URLs can carry `username=<username>&password=<pass>` as query
  parameters (AVM placeholders; goip.de documents this form for FRITZ!Box). Accepted when
  `allow_query_credentials` is on. The box does not URL-escape placeholder values, so use
  passwords without `&`, `#`, `+`, `%` or spaces there, and remember query strings land in
  access logs; prefer Basic auth.
- `system`, `wildcard`, `mx`, `backmx`, `offline` are accepted and ignored.
- Repeated identical pushes are idempotent (`nochg`); unlike Dyn we do not punish them.
- Each client address has a token bucket; an empty bucket answers `abuse` before any
  password hashing is done.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.sources.ipcheck import Family, IpReason, check_ip
from bot.sources.ratelimit import Clock, RateLimitConfig, TokenBucketLimiter

log = logging.getLogger(__name__)

UpdateResult = Literal["good", "nochg"]
OnUpdate = Callable[[str, str, Family], Awaitable[UpdateResult]]
OnReject = Callable[[str | None, str, str, str | None], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_HOSTS = 20
PBKDF2_PREFIX = "pbkdf2_sha256"
DEFAULT_PBKDF2_ITERATIONS = 200_000
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


# ----------------------------------------------------------------------------- credentials


def hash_password(
    password: str, *, iterations: int = DEFAULT_PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Return `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` for storing in config."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join(
        (
            PBKDF2_PREFIX,
            str(iterations),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        )
    )


def _parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    prefix, iterations, salt, digest = stored.split("$")
    if prefix != PBKDF2_PREFIX:
        raise ValueError(f"unsupported hash scheme {prefix!r}")
    n = int(iterations)
    if n < 1:
        raise ValueError("iterations must be positive")
    return n, base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string (never raises)."""
    try:
        iterations, salt, expected = _parse_hash(stored)
    except ValueError:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(actual, expected)


def normalize_hostname(name: str) -> str | None:
    """Lower-case, strip a trailing dot; None unless it is a syntactically valid FQDN."""
    host = name.strip().lower().rstrip(".")
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return host


# ----------------------------------------------------------------------------- config


class DynDnsAccount(BaseModel):
    """Credentials of one site and the hostnames it may update."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: str = Field(min_length=1)
    username: str = Field(min_length=1, max_length=128)
    password_hash: str = Field(description="output of dyndns2.hash_password()")
    hostnames: tuple[str, ...] = Field(min_length=1)

    @field_validator("password_hash")
    @classmethod
    def _valid_hash(cls, value: str) -> str:
        _parse_hash(value)
        return value

    @field_validator("hostnames")
    @classmethod
    def _valid_hostnames(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for name in value:
            host = normalize_hostname(name)
            if host is None:
                raise ValueError(f"{name!r} is not a fully-qualified domain name")
            out.append(host)
        return tuple(out)


class DynDns2Config(BaseModel):
    """Receiver settings; see the module docstring for the protocol choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accounts: tuple[DynDnsAccount, ...] = Field(min_length=1)
    rate_limit: RateLimitConfig = RateLimitConfig()
    require_user_agent: bool = True
    allow_query_credentials: bool = True
    allow_documentation: bool = False
    realm: str = "tunnelwarden dyndns2"

    @model_validator(mode="after")
    def _unique(self) -> DynDns2Config:
        users = [a.username for a in self.accounts]
        if len(set(users)) != len(users):
            raise ValueError("usernames must be unique")
        hosts = [h for a in self.accounts for h in a.hostnames]
        if len(set(hosts)) != len(hosts):
            raise ValueError("a hostname may belong to one account only")
        return self


# ----------------------------------------------------------------------------- handler


@dataclass(frozen=True, slots=True)
class _Addresses:
    by_family: dict[Family, str]
    error: str | None = None  # dyndns2 code answered for every host
    detail: str = ""
    refused_ip: str | None = None  # the parseable but unusable address, if that was the problem


def _text(
    lines: list[str], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text="\n".join(lines),
        status=status,
        content_type="text/plain",
        charset="utf-8",
        headers=headers,
    )


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _decode_basic(header: str) -> tuple[str, str] | None:
    """Parse `Basic b64(user:pass)`; UTF-8 first, Latin-1 as the RFC 7617 legacy fallback."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip().encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def _credentials(request: web.Request, allow_query: bool) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header:
        # present but unusable counts as wrong credentials, not as missing ones
        return _decode_basic(header) or ("", "")
    if allow_query:
        user = request.query.get("username")
        password = request.query.get("password")
        if user is not None and password is not None:
            return user, password
    return None


def _addresses(request: web.Request, allow_documentation: bool) -> _Addresses:
    raw = _split(request.query.getall("myip", [])) + _split(request.query.getall("myipv6", []))
    if not raw:
        if not request.remote:
            return _Addresses({}, "911", "no myip and no remote address")
        raw = [request.remote]
    found: dict[Family, str] = {}
    for value in raw:
        check = check_ip(value, allow_documentation=allow_documentation)
        if check.reason is IpReason.MALFORMED:
            return _Addresses({}, "badagent", check.message)
        if not check.ok or check.family is None or check.normalized is None:
            return _Addresses({}, "dnserr", check.message, refused_ip=value)
        if found.get(check.family, check.normalized) != check.normalized:
            return _Addresses({}, "badagent", f"two different IP{check.family} addresses given")
        found[check.family] = check.normalized
    return _Addresses(found)


def make_dyndns2_handler(
    config: DynDns2Config,
    on_update: OnUpdate,
    *,
    on_reject: OnReject | None = None,
    clock: Clock = time.monotonic,
) -> Handler:
    """Build the `/nic/update` handler.

    `on_update(site, ip, family)` is awaited once per distinct (site, address) in a request;
    it compares with stored state, publishes the change and returns "good" or "nochg". An
    exception from it answers `911` (try again later) for the affected hosts. `on_reject(site
    or None, code, detail, ip or None)` is awaited for refused requests so operators hear about
    e.g. CGNAT (``ip`` is the refused address when an unusable address was the reason).
    """
    limiter = TokenBucketLimiter(config.rate_limit, clock=clock)
    by_user = {a.username: a for a in config.accounts}
    # Unknown users still pay for one hash so response time does not reveal valid usernames.
    dummy_hash = hash_password(secrets.token_urlsafe(16), iterations=_iterations(config))

    async def reject(site: str | None, code: str, detail: str, ip: str | None = None) -> None:
        log.info("dyndns2 refused (%s) site=%s: %s", code, site, detail)
        if on_reject is not None:
            try:
                await on_reject(site, code, detail, ip)
            except Exception:
                log.exception("dyndns2 on_reject callback failed")

    async def handler(request: web.Request) -> web.StreamResponse:
        raw_hosts = _split(request.query.getall("hostname", []))
        per_host = max(1, len(raw_hosts))
        remote = request.remote or "unknown"

        if not limiter.allow(remote):
            await reject(None, "abuse", f"rate limit exceeded for {remote}")
            return _text(["abuse"] * per_host)
        if config.require_user_agent and not request.headers.get("User-Agent", "").strip():
            await reject(None, "badagent", "no User-Agent")
            return _text(["badagent"])

        creds = _credentials(request, config.allow_query_credentials)
        if creds is None:
            return _text(
                ["badauth"],
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{config.realm}", charset="UTF-8"'},
            )
        user, password = creds
        account = by_user.get(user)
        stored = account.password_hash if account is not None else dummy_hash
        valid = await asyncio.to_thread(verify_password, password, stored)
        if account is None or not valid:
            await reject(None, "badauth", f"bad credentials for user {user[:64]!r} from {remote}")
            return _text(["badauth"])

        if not raw_hosts:
            return _text(["notfqdn"])
        if len(raw_hosts) > MAX_HOSTS:
            return _text(["numhost"])

        hosts = [normalize_hostname(raw) for raw in raw_hosts]
        addresses = _Addresses({})
        if any(h in account.hostnames for h in hosts):
            addresses = _addresses(request, config.allow_documentation)
            if addresses.error is not None:
                await reject(account.site, addresses.error, addresses.detail, addresses.refused_ip)
        results: dict[str, str] = {}  # family -> result, per request (one site per account)
        lines: list[str] = []
        for host in hosts:
            if host is None:
                lines.append("notfqdn")
            elif host not in account.hostnames:
                lines.append("nohost")
            elif addresses.error is not None:
                lines.append(addresses.error)
            else:
                lines.append(await _update(account.site, addresses.by_family, results, on_update))
        return _text(lines)

    return handler


async def _update(
    site: str, by_family: dict[Family, str], results: dict[str, str], on_update: OnUpdate
) -> str:
    """Call `on_update` once per family and fold the results into one dyndns2 line."""
    for family, ip in by_family.items():
        if family in results:
            continue
        outcome: str
        try:
            outcome = await on_update(site, ip, family)
        except Exception:
            log.exception("dyndns2 on_update failed for site=%s ip=%s", site, ip)
            outcome = "911"
        results[family] = outcome if outcome in ("good", "nochg") else "911"
    outcomes = [results[f] for f in by_family]
    if "911" in outcomes:
        return "911"
    code = "good" if "good" in outcomes else "nochg"
    return f"{code} {','.join(by_family.values())}"


def _iterations(config: DynDns2Config) -> int:
    try:
        return _parse_hash(config.accounts[0].password_hash)[0]
    except ValueError:  # pragma: no cover - validated by the model
        return DEFAULT_PBKDF2_ITERATIONS


def add_dyndns2_routes(app: web.Application, handler: Handler, path: str = "/nic/update") -> None:
    """Register `handler` for GET (dyndns2) and POST (accepted by Google-style clients)."""
    app.router.add_get(path, handler)
    app.router.add_post(path, handler)
