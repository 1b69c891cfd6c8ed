"""Per-key token bucket, used to answer `abuse` to clients that hammer the dyndns2 endpoint.

Pure logic with an injected clock; memory is bounded by evicting the stalest keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

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
