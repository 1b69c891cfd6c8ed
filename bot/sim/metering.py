"""Request counters and ARM-style subscription throttling for the simulator.

Counters let tests assert exactly how many reads/writes the bot issued per
resource (the point of a rate-limit-aware bot). The rate limiter mimics ARM's
token buckets per subscription and operation class so a bot that hammers ARM
sees a real 429 + ``Retry-After`` instead of silently succeeding.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class OpClass(StrEnum):
    READ = "reads"
    WRITE = "writes"
    DELETE = "deletes"


@dataclass
class Counter:
    # GETs of a resource, its sub-resources (sharedkey) or a collection (one per LIST page)
    reads: int = 0
    writes: int = 0  # PUT / PATCH / DELETE / POST actions
    polls: int = 0  # GETs of this resource's async-operation / operation-result URLs
    faults: int = 0  # injected or throttled responses among the above
    # PUTs that changed nothing a client asked for (same properties and tags as a healthy
    # resource already had): what a converged bot never sends.
    redundant: int = 0


@dataclass
class RequestCounters:
    """Per-key counters; keys are lower-cased resource ids or collection paths."""

    by_key: dict[str, Counter] = field(default_factory=dict)

    def _get(self, key: str) -> Counter:
        return self.by_key.setdefault(key.lower().rstrip("/"), Counter())

    def count(self, key: str, kind: str) -> None:
        counter = self._get(key)
        setattr(counter, kind, getattr(counter, kind) + 1)

    def get(self, key: str) -> Counter:
        """Counts for ``key`` (case-insensitive); zeros if never seen."""
        return self.by_key.get(key.lower().rstrip("/"), Counter())

    def reads(self, key: str) -> int:
        return self.get(key).reads

    def writes(self, key: str) -> int:
        return self.get(key).writes

    def polls(self, key: str) -> int:
        return self.get(key).polls

    def totals(self) -> Counter:
        total = Counter()
        for counter in self.by_key.values():
            total.reads += counter.reads
            total.writes += counter.writes
            total.polls += counter.polls
            total.faults += counter.faults
            total.redundant += counter.redundant
        return total

    def reset(self) -> None:
        self.by_key.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {key: asdict(value) for key, value in sorted(self.by_key.items())}


# ARM's documented per-subscription token buckets: (bucket size, refill per second).
ARM_LIMITS: dict[OpClass, tuple[float, float]] = {
    OpClass.READ: (250.0, 25.0),
    OpClass.WRITE: (200.0, 10.0),
    OpClass.DELETE: (200.0, 10.0),
}


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per (subscription, operation class)."""

    def __init__(self, clock: Callable[[], float], limits: dict[OpClass, tuple[float, float]]):
        self._clock = clock
        self._limits = dict(limits)
        self._buckets: dict[tuple[str, OpClass], _Bucket] = {}
        # When each request of a class was admitted or refused (the world's clock): what a
        # test or benchmark counts per window. ``throttled`` counts the 429s given.
        self.admitted: dict[OpClass, deque[float]] = {op: deque(maxlen=200_000) for op in OpClass}
        self.throttled: dict[OpClass, int] = {op: 0 for op in OpClass}

    def configure(self, limits: dict[OpClass, tuple[float, float]]) -> None:
        """New bucket sizes and refill rates (e.g. scaled down for a small storm); the
        buckets start full again."""
        self._limits.update(limits)
        self._buckets.clear()

    def busiest(self, op: OpClass, window: float) -> int:
        """The most requests of ``op`` admitted within any ``window`` seconds."""
        times = list(self.admitted[op])
        best, start = 0, 0
        for end, stamp in enumerate(times):
            while stamp - times[start] > window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def acquire(self, subscription: str, op: OpClass) -> tuple[bool, int, int]:
        """Take a token; return (allowed, remaining, retry_after_seconds)."""
        size, rate = self._limits[op]
        now = self._clock()
        key = (subscription.lower(), op)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=size, stamp=now)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self.admitted[op].append(now)
            return True, int(bucket.tokens), 0
        self.throttled[op] += 1
        return False, 0, max(1, math.ceil((1.0 - bucket.tokens) / rate))

    def reset(self) -> None:
        self._buckets.clear()
        for op in OpClass:
            self.admitted[op].clear()
            self.throttled[op] = 0
