"""Limits for the dyndns2 endpoint: a per-key token bucket (answer `abuse` to clients that
hammer it) and a per-account guard against password guessing from many addresses.

Pure logic with an injected clock; memory is bounded by evicting the stalest keys.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

Clock = Callable[[], float]


class RateLimitConfig(BaseModel):
    """`burst` requests at once, refilled at `per_minute`; `max_keys` bounds memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    burst: int = Field(default=5, ge=1)
    per_minute: float = Field(default=6.0, gt=0)
    max_keys: int = Field(default=10_000, ge=1)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBucketLimiter:
    """`allow(key)` spends one token for `key`; False means the caller is over its budget."""

    def __init__(self, config: RateLimitConfig, *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self._clock()
        cfg = self._config
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(cfg.burst), stamp=now)
            self._buckets[key] = bucket
            while len(self._buckets) > cfg.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            refill = max(0.0, now - bucket.stamp) * cfg.per_minute / 60.0
            bucket.tokens = min(float(cfg.burst), bucket.tokens + refill)
            bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False


def address_key(remote: str) -> str:
    """The unit a client address is counted in: an IPv4 address, or an IPv6 /64.

    One customer gets a whole /64 (usually more), so counting single IPv6 addresses would
    give one attacker 2**64 fresh budgets. IPv4-mapped IPv6 counts as the IPv4 address;
    anything that does not parse is used as it is (cut to 64 characters).
    """
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# ----------------------------------------------------------------------------- guessing


class GuessingConfig(BaseModel):
    """Per-account defence against password guessing; see `GuessingGuard`.

    After `free_failures` failed checks for one username, the next check waits `base_delay`,
    then twice that after each further failure, up to `max_delay`. Each `forget_after` seconds
    without a check, once the current wait has run out, forgets one failure. An address that
    logged in to the account is trusted for `trust_for` seconds (the last `max_trusted` of
    them per account): it has its own failure count and is never delayed by other addresses.
    `max_keys` bounds how many unknown usernames are remembered (known ones always are).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    free_failures: int = Field(default=3, ge=0)
    base_delay: float = Field(default=1.0, gt=0)
    max_delay: float = Field(default=300.0, gt=0)
    forget_after: float = Field(default=300.0, gt=0)
    trust_for: float = Field(default=30 * 86400.0, ge=0)
    max_trusted: int = Field(default=4, ge=0)
    max_keys: int = Field(default=10_000, ge=1)


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    stamp: float = 0.0  # when the last check was admitted
    until: float = 0.0  # no check before this

    def decay(self, cfg: GuessingConfig, now: float) -> None:
        if not self.failures:
            return
        quiet_since = max(self.stamp, self.until)
        steps = int((now - quiet_since) // cfg.forget_after)
        if steps > 0:
            self.failures = max(0, self.failures - steps)
            self.stamp = quiet_since + steps * cfg.forget_after

    def delay(self, cfg: GuessingConfig) -> float:
        over = self.failures - cfg.free_failures
        if over <= 0:
            return 0.0
        # 2**60 is plenty and keeps the float finite however long the count gets
        return min(cfg.max_delay, cfg.base_delay * 2.0 ** min(over - 1, 60))

    def admit(self, cfg: GuessingConfig, now: float) -> bool:
        self.decay(cfg, now)
        if now < self.until:
            return False
        self.failures += 1  # counted as failed until success() says otherwise
        self.stamp = now
        self.until = now + self.delay(cfg)
        return True


@dataclass(slots=True)
class _Trusted:
    seen: float
    backoff: _Backoff = field(default_factory=_Backoff)


@dataclass(slots=True)
class _Account:
    backoff: _Backoff = field(default_factory=_Backoff)
    trusted: OrderedDict[str, _Trusted] = field(default_factory=OrderedDict)


class GuessingGuard:
    """Which password checks to attempt at all, per account (username) and client address.

    Call `admit(key, address)` before checking a password: False means "do not check, answer
    at once". An admitted check counts as a failure until `success(key, address)` is called,
    so concurrent requests cannot slip past the count while a slow check is running.
    Addresses that succeeded for `key` recently keep their own count, so a guessing attacker
    elsewhere cannot lock the real client out. Pure logic with an injected clock.
    """

    def __init__(
        self,
        config: GuessingConfig | None = None,
        *,
        known: Iterable[str] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self._config = config or GuessingConfig()
        self._clock = clock
        self._known: dict[str, _Account] = {key: _Account() for key in known}
        self._unknown: OrderedDict[str, _Account] = OrderedDict()

    def _account(self, key: str, *, create: bool) -> _Account | None:
        account = self._known.get(key)
        if account is not None:
            return account
        account = self._unknown.get(key)
        if account is not None:
            self._unknown.move_to_end(key)
            return account
        if not create:
            return None
        account = self._unknown[key] = _Account()
        while len(self._unknown) > self._config.max_keys:
            self._unknown.popitem(last=False)
        return account

    def _trusted(self, account: _Account, address: str, now: float) -> _Trusted | None:
        entry = account.trusted.get(address)
        if entry is not None and now - entry.seen > self._config.trust_for:
            del account.trusted[address]
            return None
        return entry

    def _backoff(self, key: str, address: str, *, create: bool) -> _Backoff | None:
        account = self._account(key, create=create)
        if account is None:
            return None
        trusted = self._trusted(account, address, self._clock())
        return trusted.backoff if trusted is not None else account.backoff

    def is_trusted(self, key: str, address: str) -> bool:
        """True if `address` logged in to `key` within `trust_for`."""
        account = self._account(key, create=False)
        return account is not None and self._trusted(account, address, self._clock()) is not None

    def admit(self, key: str, address: str) -> bool:
        """May a password for `key` from `address` be checked now? If so, it is counted."""
        backoff = self._backoff(key, address, create=True)
        assert backoff is not None
        return backoff.admit(self._config, self._clock())

    def retry_after(self, key: str, address: str) -> float:
        """Seconds until `admit(key, address)` would be True (0 if it would be now)."""
        backoff = self._backoff(key, address, create=False)
        if backoff is None:
            return 0.0
        now = self._clock()
        backoff.decay(self._config, now)
        return max(0.0, backoff.until - now)

    def failures(self, key: str, address: str) -> int:
        """Failed checks still counted against `key` for `address` (for log lines)."""
        backoff = self._backoff(key, address, create=False)
        if backoff is None:
            return 0
        backoff.decay(self._config, self._clock())
        return backoff.failures

    def success(self, key: str, address: str) -> None:
        """The admitted check was right: take its count back and trust `address` for `key`."""
        cfg = self._config
        account = self._account(key, create=True)
        assert account is not None
        now = self._clock()
        entry = self._trusted(account, address, now)
        if entry is not None:
            entry.backoff = _Backoff()
            entry.seen = now
            account.trusted.move_to_end(address)
            return
        # Only this check's own count is taken back: a success from a new address must not
        # wipe what guessers elsewhere have run up (that address is trusted from now on).
        backoff = account.backoff
        backoff.failures = max(0, backoff.failures - 1)
        backoff.until = min(backoff.until, backoff.stamp + backoff.delay(cfg))
        if cfg.max_trusted and cfg.trust_for > 0:
            account.trusted[address] = _Trusted(seen=now)
            while len(account.trusted) > cfg.max_trusted:
                account.trusted.popitem(last=False)
