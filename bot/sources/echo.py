"""Ask several HTTP "what is my IP" services and believe an address only on a quorum.

One echo service can be stale, blocked (HTML challenge pages, 403/429) or simply wrong; rotating
between services made ddns-updater flip between addresses (qdm12/ddns-updater#351). So all
configured providers of one address family are queried concurrently and an address is believed
only when at least `quorum` of them return the same valid public address. Providers that
returned a different valid address are reported as `liars` so operators can drop them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from bot.sources.ipcheck import Family, IpReason, check_ip

# Re-exported: the config models moved to `models` so `bot.config` can import them cheaply.
from bot.sources.models import EchoConfig as EchoConfig
from bot.sources.models import EchoProvider as EchoProvider
from bot.sources.models import ProviderKind as ProviderKind
from bot.sources.models import effective_quorum as effective_quorum

ErrorKind = Literal[
    "timeout", "connection", "http_status", "too_large", "garbage", "invalid_ip", "wrong_family"
]


@dataclass(frozen=True, slots=True)
class ProviderOutcome:
    """What one provider answered: `ip` (normalized) on success, else `error` + `detail`."""

    name: str
    ip: str | None
    error: ErrorKind | None = None
    detail: str = ""
    status: int | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ConsensusResult:
    """Agreed address (or None), every provider's outcome and who disagreed with the majority."""

    family: Family
    ip: str | None
    quorum: int
    votes: dict[str, int]
    outcomes: tuple[ProviderOutcome, ...]
    liars: tuple[str, ...] = field(default=())
    reason: str = ""

    @property
    def agreed(self) -> bool:
        return self.ip is not None


class _Rejected(Exception):
    def __init__(self, kind: ErrorKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind: ErrorKind = kind
        self.detail = detail
        self.status = status


async def query_consensus(
    session: aiohttp.ClientSession, config: EchoConfig, family: Family = "v4"
) -> ConsensusResult:
    """Query every `family` provider concurrently and apply the quorum rule. Never raises
    for provider failures (cancellation still propagates)."""
    providers = config.providers_for(family)
    quorum = config.quorum_for(family)
    outcomes = tuple(
        await asyncio.gather(
            *(
                _query_one(session, p, config.max_body_bytes, config.allow_documentation)
                for p in providers
            )
        )
    )
    return decide(family, outcomes, quorum)


def decide(family: Family, outcomes: Sequence[ProviderOutcome], quorum: int) -> ConsensusResult:
    """Pure quorum rule: the most common address wins only with >= `quorum` votes and a strict
    lead over the runner-up; otherwise nothing is believed."""
    votes = Counter(o.ip for o in outcomes if o.ip is not None)
    ranked = votes.most_common()
    outs = tuple(outcomes)
    if not ranked:
        return ConsensusResult(family, None, quorum, {}, outs, reason="no provider answered")
    top_ip, top_n = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == top_n:
        return ConsensusResult(
            family, None, quorum, dict(votes), outs, reason=f"tie between addresses ({top_n} each)"
        )
    if top_n < quorum:
        return ConsensusResult(
            family,
            None,
            quorum,
            dict(votes),
            outs,
            reason=f"only {top_n} of {len(outs)} providers agree, quorum is {quorum}",
        )
    liars = tuple(o.name for o in outs if o.ip is not None and o.ip != top_ip)
    return ConsensusResult(family, top_ip, quorum, dict(votes), outs, liars, reason="quorum")


async def _query_one(
    session: aiohttp.ClientSession, provider: EchoProvider, cap: int, allow_documentation: bool
) -> ProviderOutcome:
    start = time.monotonic()
    try:
        async with asyncio.timeout(provider.timeout_s):
            status, body = await _fetch(session, str(provider.url), cap)
        text = _extract(provider, body)
    except _Rejected as exc:
        return ProviderOutcome(
            provider.name, None, exc.kind, exc.detail, exc.status, time.monotonic() - start
        )
    except TimeoutError:
        return ProviderOutcome(
            provider.name,
            None,
            "timeout",
            f"no answer within {provider.timeout_s:g}s",
            elapsed_s=time.monotonic() - start,
        )
    except (aiohttp.ClientError, OSError) as exc:
        return ProviderOutcome(
            provider.name,
            None,
            "connection",
            f"{type(exc).__name__}: {exc}"[:200],
            elapsed_s=time.monotonic() - start,
        )
    elapsed = time.monotonic() - start
    check = check_ip(text, family=provider.family, allow_documentation=allow_documentation)
    if check.ok:
        return ProviderOutcome(provider.name, check.normalized, status=status, elapsed_s=elapsed)
    if check.reason is IpReason.MALFORMED:
        kind: ErrorKind = "garbage"
    elif check.reason is IpReason.WRONG_FAMILY:
        kind = "wrong_family"
    else:
        kind = "invalid_ip"
    return ProviderOutcome(provider.name, None, kind, check.message, status, elapsed)


async def _fetch(session: aiohttp.ClientSession, url: str, cap: int) -> tuple[int, bytes]:
    """GET `url` without following redirects, reading at most `cap` bytes."""
    async with session.get(
        url, allow_redirects=False, headers={"Accept": "text/plain, application/json"}
    ) as resp:
        if resp.status != 200:
            raise _Rejected("http_status", f"HTTP {resp.status}", resp.status)
        if resp.content_length is not None and resp.content_length > cap:
            raise _Rejected("too_large", f"Content-Length {resp.content_length} > {cap}", 200)
        buf = bytearray()
        while len(buf) <= cap:
            chunk = await resp.content.read(cap + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
        if len(buf) > cap:
            raise _Rejected("too_large", f"body larger than {cap} bytes", 200)
        return resp.status, bytes(buf)


def _extract(provider: EchoProvider, body: bytes) -> str:
    """Pull exactly one candidate address string out of a body, or raise `_Rejected`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejected("garbage", "body is not UTF-8", 200) from None
    if provider.kind == "text":
        tokens = text.split()
        if len(tokens) != 1:
            raise _Rejected("garbage", f"expected one token, got {len(tokens)}", 200)
        return tokens[0]
    if provider.kind == "json":
        return _extract_json(text, provider.json_field)
    return _extract_trace(text)


def _extract_json(text: str, path: str) -> str:
    try:
        node: object = json.loads(text)
    except ValueError:
        raise _Rejected("garbage", "body is not JSON", 200) from None
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise _Rejected("garbage", f"JSON field {path!r} missing", 200)
        node = node[part]
    if not isinstance(node, str):
        raise _Rejected("garbage", f"JSON field {path!r} is not a string", 200)
    return node.strip()


def _extract_trace(text: str) -> str:
    values = [
        line.partition("=")[2].strip()
        for line in text.splitlines()
        if line.partition("=")[0].strip() == "ip"
    ]
    if len(values) != 1:
        raise _Rejected("garbage", f"expected one ip= line, got {len(values)}", 200)
    return values[0]
