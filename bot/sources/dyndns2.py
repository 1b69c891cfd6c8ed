"""Server side of the dyndns2 protocol, so routers (FRITZ!Box, ddclient, inadyn) can push
their new public IP to us instead of us polling for it.

Protocol (help.dyn.com "perform update" / "return codes", Google Domains' dyndns2 page):
`GET /nic/update?hostname=h1[,h2...]&myip=IP` with HTTP Basic auth; the body is text/plain with
one return code per hostname, in request order; account/system-level errors are answered once.

Choices made here (see the report / docs):

- Methods. Only GET updates: the dyndns2 protocol is `GET /nic/update` (Dyn's "perform
  update" page), and what the routers we serve send (FRITZ!Box, ddclient, inadyn). HEAD is
  answered exactly as GET would be (status and headers; HTTP sends no body) but changes
  nothing: no update, no `on_reject` report. A HEAD for a valid request reports `nochg <ip>`,
  which is literally what happened. HEAD still spends a rate-limit token and counts as a
  password check (it would be a free password oracle otherwise). Every other method, POST
  included, gets 405 with `Allow: GET,HEAD` and changes nothing (a form or script on another
  site cannot push an address through a visitor's browser).
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
- Limits, all answered before any password is checked:
  - each client address (IPv6: each /64) has a token bucket; an empty bucket answers
    `abuse`. An address that logged in to an account recently gets a bucket of its own for
    that account, so other traffic from a shared address cannot starve the real router;
  - each username has a failure count (`ratelimit.GuessingGuard`): after a few failed checks
    from addresses that have not logged in to it, the next check waits 1 s, 2 s, 4 s ... up
    to 5 min, and requests meanwhile get `abuse` at once without a check. `abuse` is Dyn's
    "temporarily blocked" code and the one we already answer for too many requests; `badauth`
    would tell the router its password is wrong when it was never looked at, sending its owner
    to reset a correct password. Addresses that logged in to the account recently keep their
    own count, so guessers elsewhere cannot lock the real router out.
- Passwords: a plaintext secret (how `push.py` builds accounts from site config) is compared
  in constant time without any hashing; a configured `password_hash` costs one PBKDF2 per
  check, with successes cached briefly (see `PasswordChecker`).
- Malformed requests (unknown parameters, no hostname, garbled `Authorization`, no
  User-Agent, ...) are logged once per client address per minute at INFO, one line; for the
  raw-HTTP errors aiohttp logs itself, see `bot.sources.httplog.quiet_bad_requests`.
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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from aiohttp import hdrs, web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from bot.sources.httplog import LogThrottle, suppressed_note
from bot.sources.ipcheck import Family, IpReason, check_ip
from bot.sources.ratelimit import (
    Clock,
    GuessingConfig,
    GuessingGuard,
    RateLimitConfig,
    TokenBucketLimiter,
    address_key,
)

log = logging.getLogger(__name__)

UpdateResult = Literal["good", "nochg"]
OnUpdate = Callable[[str, str, Family], Awaitable[UpdateResult]]
OnReject = Callable[[str | None, str, str, str | None], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_HOSTS = 20
MAX_USERNAME = 128
PBKDF2_PREFIX = "pbkdf2_sha256"
DEFAULT_PBKDF2_ITERATIONS = 200_000
KNOWN_PARAMETERS = frozenset(
    {
        "hostname",
        "myip",
        "myipv6",
        "username",
        "password",
        "system",
        "wildcard",
        "mx",
        "backmx",
        "offline",
    }
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


# ----------------------------------------------------------------------------- credentials


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from a garbled request) must not raise, and its bytes
    # are never valid UTF-8, so it cannot collide with another string's encoding
    return text.encode("utf-8", "surrogatepass")


def hash_password(
    password: str, *, iterations: int = DEFAULT_PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Return `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` for storing in config."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", _utf8(password), salt, iterations)
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
    actual = hashlib.pbkdf2_hmac("sha256", _utf8(password), salt, iterations)
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
    """Credentials of one site and the hostnames it may update.

    Exactly one of `password` (the secret itself, as held in memory anyway when it comes from
    site config; compared in constant time, no hashing) and `password_hash` (output of
    `hash_password`, for secrets that should not be stored in plaintext).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: str = Field(min_length=1)
    username: str = Field(min_length=1, max_length=MAX_USERNAME)
    password: SecretStr | None = Field(default=None, description="the secret in plaintext")
    password_hash: str | None = Field(default=None, description="dyndns2.hash_password() output")
    hostnames: tuple[str, ...] = Field(min_length=1)

    @field_validator("password_hash")
    @classmethod
    def _valid_hash(cls, value: str | None) -> str | None:
        if value is not None:
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

    @model_validator(mode="after")
    def _one_secret(self) -> DynDnsAccount:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        if self.password is not None and not self.password.get_secret_value():
            raise ValueError("password must not be empty")
        return self


class DynDns2Config(BaseModel):
    """Receiver settings; see the module docstring for the protocol choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accounts: tuple[DynDnsAccount, ...] = Field(min_length=1)
    rate_limit: RateLimitConfig = RateLimitConfig()
    guessing: GuessingConfig = GuessingConfig()
    check_cache_seconds: float = Field(
        default=60.0, ge=0, description="how long a successful PBKDF2 check is remembered"
    )
    check_cache_size: int = Field(default=1024, ge=1)
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


# ----------------------------------------------------------------------------- checking


class PasswordChecker:
    """Checks credentials against the accounts as cheaply as is safe.

    - Plaintext secret: HMAC-SHA256 (per-process random key) of the UTF-8 bytes of both
      sides, compared with `hmac.compare_digest`. That is constant time and, unlike
      `compare_digest` on the raw bytes, does not reveal the secret's length. No PBKDF2.
    - Hash only: PBKDF2 in a worker thread. A success is remembered for `cache_seconds`,
      keyed by the HMAC of username and password (the cache holds no plaintext), at most
      `cache_size` entries; failures are never cached.
    - Unknown usernames cost what known ones do: a dummy PBKDF2 when every account is
      hashed, else a dummy HMAC compare (with a mix, timing tells plaintext accounts from
      unknown names; we do not pay PBKDF2 per unknown name to hide that).

    `checks` counts calls of `check`, `pbkdf2_runs` PBKDF2 computations (tests, metrics).
    """

    def __init__(
        self,
        accounts: Iterable[DynDnsAccount],
        *,
        cache_seconds: float = 60.0,
        cache_size: int = 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        self._key = secrets.token_bytes(32)
        self._accounts = {a.username: a for a in accounts}
        self._macs = {
            a.username: self._mac(_utf8(a.password.get_secret_value()))
            for a in self._accounts.values()
            if a.password is not None
        }
        self._dummy_mac = self._mac(secrets.token_bytes(16))
        self._dummy_hash: str | None = None
        hashes = [a.password_hash for a in self._accounts.values() if a.password_hash]
        if hashes and len(hashes) == len(self._accounts):
            iterations = _parse_hash(hashes[0])[0]
            self._dummy_hash = hash_password(secrets.token_urlsafe(16), iterations=iterations)
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry
        self.checks = 0
        self.pbkdf2_runs = 0

    def _mac(self, data: bytes) -> bytes:
        return hmac.digest(self._key, data, "sha256")

    def _cache_key(self, username: str, password: str) -> bytes:
        user = _utf8(username)
        return self._mac(len(user).to_bytes(4, "big") + user + _utf8(password))

    async def _pbkdf2(self, password: str, stored: str) -> bool:
        self.pbkdf2_runs += 1
        return await asyncio.to_thread(verify_password, password, stored)

    async def check(self, username: str, password: str) -> DynDnsAccount | None:
        """The account if `password` is right for `username`, else None."""
        self.checks += 1
        account = self._accounts.get(username)
        if account is None or account.password_hash is None:
            if account is None and self._dummy_hash is not None:
                await self._pbkdf2(password, self._dummy_hash)
                return None
            expected = self._macs.get(username, self._dummy_mac)
            ok = hmac.compare_digest(self._mac(_utf8(password)), expected)
            return account if ok and account is not None else None
        key = self._cache_key(username, password)
        now = self._clock()
        expiry = self._cache.get(key)
        if expiry is not None and now < expiry:
            return account
        if not await self._pbkdf2(password, account.password_hash):
            return None
        if self._cache_seconds > 0:
            self._cache[key] = self._clock() + self._cache_seconds
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return account


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


def _malformed_query(request: web.Request) -> str | None:
    """What is odd about the query string, for the throttled log line (no values, ever)."""
    query = request.query
    unknown = sorted({name for name in query if name not in KNOWN_PARAMETERS})
    if unknown:
        names = ", ".join(repr(name[:24]) for name in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        return f"unknown parameter(s) {names}{more}"
    if any("\ufffd" in value for value in query.values()):
        return "undecodable query string"
    return None


def make_dyndns2_handler(
    config: DynDns2Config,
    on_update: OnUpdate,
    *,
    on_reject: OnReject | None = None,
    clock: Clock = time.monotonic,
    checker: PasswordChecker | None = None,
) -> Handler:
    """Build the `/nic/update` handler.

    `on_update(site, ip, family)` is awaited once per distinct (site, address) in a request;
    it compares with stored state, publishes the change and returns "good" or "nochg". An
    exception from it answers `911` (try again later) for the affected hosts. `on_reject(site
    or None, code, detail, ip or None)` is awaited for refused requests so operators hear about
    e.g. CGNAT (``ip`` is the refused address when an unusable address was the reason).
    Neither is called for HEAD requests. `checker` defaults to a `PasswordChecker` for the
    configured accounts.
    """
    limiter = TokenBucketLimiter(config.rate_limit, clock=clock)
    by_user = {a.username: a for a in config.accounts}
    guard = GuessingGuard(config.guessing, known=by_user, clock=clock)
    checker = checker or PasswordChecker(
        config.accounts,
        cache_seconds=config.check_cache_seconds,
        cache_size=config.check_cache_size,
        clock=clock,
    )
    quiet = LogThrottle(60.0, clock=clock)

    def throttled(key: str, message: str, *args: object) -> None:
        suppressed = quiet.hit(key)
        if suppressed is not None:
            log.info(message + "%s", *args, suppressed_note(suppressed))

    def malformed(client: str, what: str) -> None:
        throttled(f"malformed {client}", "dyndns2 malformed request from %s: %s", client, what)

    async def handler(request: web.Request) -> web.StreamResponse:
        head = request.method == hdrs.METH_HEAD

        async def reject(site: str | None, code: str, detail: str, ip: str | None = None) -> None:
            if on_reject is None or head:
                return
            try:
                await on_reject(site, code, detail, ip)
            except Exception:
                log.exception("dyndns2 on_reject callback failed")

        raw_hosts = _split(request.query.getall("hostname", []))
        per_host = len(raw_hosts) if 0 < len(raw_hosts) <= MAX_HOSTS else 1
        remote = request.remote or "unknown"
        client = address_key(remote)
        oddity = _malformed_query(request)
        if oddity is not None:
            malformed(client, oddity)

        creds = _credentials(request, config.allow_query_credentials)
        user, password = creds if creds is not None else ("", "")
        user_key = user[: MAX_USERNAME + 1]  # longer names are unknown anyway; bounds memory
        trusted = bool(user_key) and guard.is_trusted(user_key, client)
        if not limiter.allow(f"{client} {user_key}" if trusted else client):
            throttled(f"abuse {client}", "dyndns2 answering abuse to %s: over its budget", client)
            await reject(None, "abuse", f"rate limit exceeded for {remote}")
            return _text(["abuse"] * per_host)
        if config.require_user_agent and not request.headers.get("User-Agent", "").strip():
            malformed(client, "no User-Agent")
            await reject(None, "badagent", "no User-Agent")
            return _text(["badagent"])

        if creds is None:
            return _text(
                ["badauth"],
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{config.realm}", charset="UTF-8"'},
            )
        if not user:
            malformed(client, "unusable credentials (garbled Authorization or empty username)")
            await reject(None, "badauth", f"unusable credentials from {remote}")
            return _text(["badauth"])
        if not guard.admit(user_key, client):
            throttled(
                f"locked {user_key}" if user in by_user else f"locked, unknown user {client}",
                "dyndns2 user %r: %d failed logins, answering abuse without checking for %.0f s"
                " (addresses it logged in from recently are not affected)",
                user[:64],
                guard.failures(user_key, client),
                guard.retry_after(user_key, client),
            )
            await reject(None, "abuse", f"too many failed logins for user {user[:64]!r}")
            return _text(["abuse"] * per_host)

        account = await checker.check(user, password)
        if account is None:
            detail = f"bad credentials for user {user[:64]!r} from {remote}"
            if user in by_user:  # bounded by the guard; unknown names only by the bucket
                log.info("dyndns2 refused (badauth): %s", detail)
            else:
                throttled(f"unknown {client}", "dyndns2 refused (badauth): %s", detail)
            await reject(None, "badauth", detail)
            return _text(["badauth"])
        guard.success(user_key, client)

        if not raw_hosts:
            malformed(client, "no hostname")
            return _text(["notfqdn"])
        if len(raw_hosts) > MAX_HOSTS:
            malformed(client, f"{len(raw_hosts)} hostnames")
            return _text(["numhost"])

        hosts = [normalize_hostname(raw) for raw in raw_hosts]
        addresses = _Addresses({})
        if any(h in account.hostnames for h in hosts):
            addresses = _addresses(request, config.allow_documentation)
            if addresses.error is not None:
                if not head:
                    log.info(
                        "dyndns2 refused (%s) site=%s: %s",
                        addresses.error,
                        account.site,
                        addresses.detail,
                    )
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
            elif head:  # what GET would do, minus doing it: nothing changed
                lines.append(f"nochg {','.join(addresses.by_family.values())}")
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


def add_dyndns2_routes(app: web.Application, handler: Handler, path: str = "/nic/update") -> None:
    """Register `handler` for GET (updates) and HEAD (answers, changes nothing); aiohttp
    answers any other method, POST included, with 405 and `Allow: GET,HEAD`."""
    app.router.add_get(path, handler, allow_head=False)
    app.router.add_route(hdrs.METH_HEAD, path, handler)
