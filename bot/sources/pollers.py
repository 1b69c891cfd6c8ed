"""The polling IP sources and the loop that runs them on the leader replica only.

A poller asks the world for a site's public address (echo services by quorum, or the
FRITZ!Box), holds a new address back in a `Debouncer` until it is stable, then hands it to the
`Reporter` (`bot.sources.report.IpReporter`), which publishes `ip.changed` only for a real
change. Pollers keep no other state: after a restart the first stable address is reported
again and the reporter answers `nochg` when it is already known.

`run_pollers` runs them while this replica holds the leader lease, so N replicas poll the
echo services and the router once, not N times.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.retry import backoff, is_transient
from bot.sources.debounce import DebounceDecision, Debouncer
from bot.sources.echo import ConsensusResult, ProviderOutcome, decide, query_consensus
from bot.sources.fritz import (
    AddressReading,
    Connect,
    FritzReading,
    FritzSource,
    connect_fritzconnection,
)
from bot.sources.ipcheck import Family, check_ip
from bot.sources.models import DebounceConfig, EchoSourceConfig, FritzSourceConfig
from bot.state import LeaderLease

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Reported = Literal["good", "nochg", "rejected"]


class Reporter(Protocol):
    """What pollers publish through (`IpReporter`): validates, de-duplicates, publishes."""

    async def report(self, site: str, ip: str, family: Family, source: str) -> Reported:
        """Publish `ip` for `site` unless it is already known; never for an invalid one."""
        ...


class Poller(Protocol):
    """Anything `run_pollers` can schedule: polled every `interval` seconds while leading."""

    @property
    def name(self) -> str:
        """Source name, for logs (and `Event.source`)."""
        ...

    @property
    def interval(self) -> float:
        """Seconds between the starts of two polls."""
        ...

    async def poll(self) -> object:
        """Observe once and publish what is due; may raise (the loop logs and goes on)."""
        ...


@dataclass(frozen=True, slots=True)
class PollReport:
    """One address handed to the reporter: `previous` is the poller's last accepted value."""

    site: str
    family: Family
    ip: str
    previous: str | None
    result: Reported


@dataclass(slots=True)
class ProviderStats:
    """Running counts for one echo provider, so operators can spot one to drop."""

    answered: int = 0  # returned a valid address of the right family
    agreed: int = 0  # ... that matched the consensus
    lied: int = 0  # ... that contradicted the consensus
    failed: int = 0  # timeout, connection, HTTP status, garbage, invalid address, ...
    failures: Counter[str] = field(default_factory=Counter)  # by error kind
    last_error: str = ""


class _DebouncedSource:
    """Debounce per (family, site) and report decisions; shared by both pollers."""

    def __init__(
        self, name: str, debounce: DebounceConfig, reporter: Reporter, clock: Clock
    ) -> None:
        self._name = name
        self._reporter = reporter
        self._debouncers: dict[Family, Debouncer] = {
            "v4": Debouncer(debounce, clock=clock),
            "v6": Debouncer(debounce, clock=clock),
        }

    @property
    def name(self) -> str:
        return self._name

    def debouncer(self, family: Family) -> Debouncer:
        """The family's debouncer (read-only use: inspection in tests and status output)."""
        return self._debouncers[family]

    async def _observe(self, family: Family, site: str, ip: str) -> PollReport | None:
        decision = self._debouncers[family].observe(site, ip)
        if decision.kind == "pending":
            log.info(
                "%s: site %s IP%s %s seen %d time(s) over %.0fs, waiting until stable",
                self._name,
                site,
                family,
                ip,
                decision.observations,
                decision.elapsed_s,
                extra={"site": site, "source": self._name},
            )
        elif decision.kind == "cancelled":
            log.info(
                "%s: site %s IP%s back to %s; dropped the candidate %s",
                self._name,
                site,
                family,
                decision.previous,
                decision.ip,
                extra={"site": site, "source": self._name},
            )
        if decision.kind != "report":
            return None
        return await self._report(family, decision)

    async def _due(self, family: Family) -> list[PollReport]:
        return [await self._report(family, d) for d in self._debouncers[family].due()]

    async def _report(self, family: Family, decision: DebounceDecision) -> PollReport:
        try:
            result = await self._reporter.report(
                decision.site, decision.ip, family, source=self._name
            )
        except BaseException:
            # The debouncer already accepted the address; undo that so the next poll reports
            # it again instead of treating it as known (the reporter de-duplicates).
            debouncer = self._debouncers[family]
            if decision.previous is None:
                debouncer.forget(decision.site)
            else:
                debouncer.seed(decision.site, decision.previous)
            raise
        return PollReport(decision.site, family, decision.ip, decision.previous, result)


class EchoPoller(_DebouncedSource):
    """Believe this machine's public address only when a quorum of echo services agrees.

    An address a quorum agrees on but `ipcheck` rejects (CGNAT, private) is reported too, so
    the reporter publishes `ip.rejected` and people hear that the site cannot host a tunnel.
    The session is the caller's (timeouts, proxy, address-family pinning); it is not closed.
    """

    def __init__(
        self,
        config: EchoSourceConfig,
        session: aiohttp.ClientSession,
        reporter: Reporter,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(config.name, config.debounce, reporter, clock)
        self.config = config
        self._session = session
        self.stats: dict[str, ProviderStats] = {p.name: ProviderStats() for p in config.providers}
        self.no_consensus: Counter[Family] = Counter()

    @property
    def interval(self) -> float:
        return self.config.interval

    async def poll(self) -> list[PollReport]:
        """Query every family's providers, then debounce and report per site."""
        results = await asyncio.gather(
            *(query_consensus(self._session, self.config, fam) for fam in self.config.families)
        )
        reports: list[PollReport] = []
        for result in results:
            family = result.family
            self._count(result)
            address = _believed(result)
            if address is None:
                self.no_consensus[family] += 1
                log.warning(
                    "%s: no IP%s consensus (%s); %s",
                    self.name,
                    family,
                    result.reason,
                    _describe(
                        [o for o in result.outcomes if o.ip is None],
                        [o for o in result.outcomes if o.ip is not None],
                        "answers",
                    ),
                    extra={"source": self.name},
                )
            else:
                self._warn_about_providers(result, address)
                for site in self.config.sites:
                    report = await self._observe(family, site, address)
                    if report is not None:
                        reports.append(report)
            reports.extend(await self._due(family))
        return reports

    def _count(self, result: ConsensusResult) -> None:
        for o in result.outcomes:
            stats = self.stats.setdefault(o.name, ProviderStats())
            if o.ip is None:
                stats.failed += 1
                stats.failures[o.error or "unknown"] += 1
                stats.last_error = f"{o.error}: {o.detail}"
                continue
            stats.answered += 1
            if result.ip is not None:
                if o.ip == result.ip:
                    stats.agreed += 1
                else:
                    stats.lied += 1

    def _warn_about_providers(self, result: ConsensusResult, address: str) -> None:
        agreeing = [o for o in result.outcomes if address in (o.ip, _rejected_ip(o))]
        failing = [o for o in result.outcomes if o.ip is None and o not in agreeing]
        liars = [o for o in result.outcomes if o.ip is not None and o not in agreeing]
        if failing or liars:
            log.warning(
                "%s: IP%s consensus %s from %d of %d providers; %s",
                self.name,
                result.family,
                address,
                len(agreeing),
                len(result.outcomes),
                _describe(failing, liars),
                extra={"source": self.name},
            )


def _rejected_ip(outcome: ProviderOutcome) -> str | None:
    """The address an `invalid_ip` outcome carried (its detail starts with `<ip>: `)."""
    if outcome.error != "invalid_ip":
        return None
    head = outcome.detail.partition(": ")[0]
    try:
        return str(ipaddress.ip_address(head))
    except ValueError:
        return None


def _believed(result: ConsensusResult) -> str | None:
    """The consensus address; failing that, an address a quorum agreed on but that is not
    usable (CGNAT, private...), so it can be reported as rejected. None: nothing agreed."""
    if result.ip is not None:
        return result.ip
    votes = [
        replace(o, ip=raw, error=None) if (raw := _rejected_ip(o)) is not None else o
        for o in result.outcomes
    ]
    rejected = decide(result.family, votes, result.quorum)
    if rejected.ip is None or check_ip(rejected.ip, family=result.family).ok:
        return None
    return rejected.ip


def _describe(
    failing: Sequence[ProviderOutcome],
    answers: Sequence[ProviderOutcome],
    answers_label: str = "disagreeing",
) -> str:
    """`failing: a (timeout: ...); disagreeing: b=1.2.3.4` for a log line."""
    parts = []
    if failing:
        parts.append("failing: " + ", ".join(f"{o.name} ({o.error}: {o.detail})" for o in failing))
    if answers:
        parts.append(f"{answers_label}: " + ", ".join(f"{o.name}={o.ip}" for o in answers))
    return "; ".join(parts) or "no providers"


class FritzPoller(_DebouncedSource):
    """Report the address a FRITZ!Box holds for `config.site` (IPv6 only if `config.ipv6`).

    Nothing is reported while the box is unreachable or says its WAN link is down: the address
    it shows then is stale or empty. A CGNAT/private address goes to the reporter, which
    publishes `ip.rejected`.
    """

    def __init__(
        self,
        config: FritzSourceConfig,
        reporter: Reporter,
        *,
        connect: Connect = connect_fritzconnection,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(config.name, config.debounce, reporter, clock)
        self.config = config
        self.source = FritzSource(config, connect=connect)
        self.last_reading: FritzReading | None = None

    @property
    def interval(self) -> float:
        return self.config.interval

    async def close(self) -> None:
        """Drop the box connection."""
        await self.source.close()

    async def poll(self) -> list[PollReport]:
        """Read the box once; debounce and report its address(es)."""
        reading = await self.source.poll()
        self.last_reading = reading
        site, extra = self.config.site, {"site": self.config.site, "source": self.name}
        if not reading.reachable:
            log.warning(
                "%s: box %s unreachable: %s",
                self.name,
                self.config.address,
                "; ".join(reading.errors),
                extra=extra,
            )
            return []
        if reading.errors:
            log.warning(
                "%s: box %s answered partly: %s",
                self.name,
                self.config.address,
                "; ".join(reading.errors),
                extra=extra,
            )
        if reading.linked is False or reading.connected is False:
            log.warning(
                "%s: WAN down (link up: %s, connected: %s); not reporting",
                self.name,
                reading.linked,
                reading.connected,
                extra=extra,
            )
            return []
        if reading.uptime_reset:
            log.info("%s: new WAN session (uptime %ss)", self.name, reading.uptime_s, extra=extra)
        families: list[tuple[Family, AddressReading | None]] = [("v4", reading.ipv4)]
        if self.config.ipv6:
            families.append(("v6", reading.ipv6))
        reports: list[PollReport] = []
        for family, address in families:
            if address is None:
                if family == "v4":
                    log.warning("%s: box has no IPv4 address", self.name, extra=extra)
            elif address.check.normalized is None:
                log.warning(
                    "%s: box sent a malformed IP%s address %r",
                    self.name,
                    family,
                    address.raw[:64],
                    extra=extra,
                )
            else:
                report = await self._observe(family, site, address.check.normalized)
                if report is not None:
                    reports.append(report)
            reports.extend(await self._due(family))
        return reports


def build_pollers(
    specs: Sequence[EchoSourceConfig | FritzSourceConfig],
    *,
    session: aiohttp.ClientSession,
    reporter: Reporter,
    connect: Connect = connect_fritzconnection,
) -> list[EchoPoller | FritzPoller]:
    """Pollers for the enabled polling sources (other kinds are someone else's)."""
    pollers: list[EchoPoller | FritzPoller] = []
    for spec in specs:
        if not spec.enabled:
            continue
        if isinstance(spec, EchoSourceConfig):
            pollers.append(EchoPoller(spec, session, reporter))
        else:
            pollers.append(FritzPoller(spec, reporter, connect=connect))
    return pollers


def _weather(exc: BaseException) -> bool:
    """A fault that passes by itself (Redis away or slow, a connection refused): retried with
    the backoff and logged in one line, not with a traceback each time."""
    return isinstance(exc, RedisConnectionError | RedisTimeoutError) or is_transient(exc)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__


async def _poll_once(poller: Poller) -> bool:
    """One poll; False if it failed with weather (the caller backs off)."""
    try:
        await poller.poll()
    except Exception as exc:
        if _weather(exc):
            log.warning("poller %s failed (%s)", poller.name, _brief(exc))
            return False
        log.exception("poller %s failed; trying again next interval", poller.name)
    return True


async def run_pollers(
    pollers: Sequence[Poller],
    lease: LeaderLease,
    stop: asyncio.Event,
    *,
    tick: float = 1.0,
    retry_cap: float = 30.0,
    clock: Clock = time.monotonic,
) -> None:
    """Run each poller every `interval` seconds while this replica holds `lease`.

    The lease is renewed every `tick` seconds, independently of polls in progress; a renewal
    that fails or takes longer than `tick` counts as lost leadership and cancels running
    polls, so keep `lease.ttl` at 3 ticks or more to hand over before the old leader could
    still be polling. A new leader polls everything at once. Returns soon after `stop` is set,
    releasing the lease so another replica takes over without waiting for it to expire.

    Redis away is weather: failed renewals are retried with the one backoff
    (`bot.retry.backoff`, from `tick` up to `retry_cap` seconds), and so is a poller whose
    poll failed with weather (from its interval up to `retry_cap`), each logged in one line.
    """
    if tick <= 0:
        raise ValueError("tick must be > 0")
    if lease.ttl < 3 * tick:
        log.warning(
            "leader lease ttl %.1fs < 3 ticks of %.1fs: leadership may flap or overlap",
            lease.ttl,
            tick,
        )
    leading = False
    due = [0.0] * len(pollers)
    failed = [0] * len(pollers)  # consecutive weather failures, per poller
    tasks: list[asyncio.Task[bool] | None] = [None] * len(pollers)
    next_renewal = clock()
    renewal_failures = 0
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            now = clock()
            if now >= next_renewal:
                was_leading = leading
                try:
                    leading = await _renew(lease, tick)
                except Exception as exc:
                    leading = False
                    renewal_failures += 1
                    delay = backoff(renewal_failures, tick, max(tick, retry_cap))
                    log.warning(
                        "leader lease %s: renewal failed (%s); again in %.1fs",
                        lease.key,
                        _brief(exc),
                        delay,
                    )
                    next_renewal = now + delay
                else:
                    if renewal_failures:
                        log.info(
                            "leader lease %s: redis answers again after %d failed renewal(s)",
                            lease.key,
                            renewal_failures,
                        )
                    renewal_failures = 0
                    next_renewal = now + tick
                if leading and not was_leading:
                    log.info("leader lease %s taken: running %d poller(s)", lease.key, len(pollers))
                    due = [clock()] * len(pollers)
                elif was_leading and not leading:
                    log.warning("leader lease %s lost: pollers stopped", lease.key)
                    await _cancel(tasks)
            waits: set[asyncio.Future[Any]] = {stopped}
            wake = next_renewal
            if leading:
                now = clock()
                for i, poller in enumerate(pollers):
                    task = tasks[i]
                    if task is not None and not task.done():
                        waits.add(task)
                        continue
                    if task is not None:  # finished: back off after weather
                        tasks[i] = None
                        ok = task.cancelled() or task.result()
                        failed[i] = 0 if ok else failed[i] + 1
                        if failed[i]:
                            cap = max(retry_cap, poller.interval)
                            due[i] = max(due[i], now + backoff(failed[i], poller.interval, cap))
                    if now >= due[i]:
                        due[i] = now + poller.interval
                        task = asyncio.create_task(_poll_once(poller), name=f"poll {poller.name}")
                        tasks[i] = task
                        waits.add(task)
                    else:
                        wake = min(wake, due[i])
            await asyncio.wait(
                waits, timeout=max(0.0, wake - clock()), return_when=asyncio.FIRST_COMPLETED
            )
    finally:
        stopped.cancel()
        await _cancel(tasks)
        try:  # bounded: with Redis gone, the client's own retries would hold up shutdown
            async with asyncio.timeout(tick):
                await lease.release()
        except Exception as exc:
            log.warning(
                "could not release leader lease %s (%s); it expires in %.0fs",
                lease.key,
                _brief(exc),
                lease.ttl,
            )


async def _renew(lease: LeaderLease, within: float) -> bool:
    """Take or keep the lease; raises (``TimeoutError`` after ``within`` seconds) on failure."""
    async with asyncio.timeout(within):
        return await lease.try_acquire()


async def _cancel(tasks: list[asyncio.Task[bool] | None]) -> None:
    """Cancel running polls and wait for them (a cancellation of the caller still raises)."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    tasks[:] = [None] * len(tasks)
    await asyncio.gather(*running, return_exceptions=True)
