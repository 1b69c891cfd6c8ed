"""One ARM request budget shared by every replica: token buckets in Redis.

ARM throttles per subscription with token buckets per operation class (reads 250 / 25 s⁻¹,
writes 200 / 10 s⁻¹, deletes 200 / 10 s⁻¹) and answers 429 beyond them. Every ARM call of
every process first takes a token from the same bucket in Redis (``[azure.budget]``: the
documented limits times ``headroom``, 80 % by default, so other tools of the subscription keep
the rest). One Lua script refills the bucket by the time elapsed (Redis's clock, the same for
every replica) and either takes the token or says when one will be there:

- a token is taken now, or *reserved* when it comes within the caller's ``max_wait`` (the
  bucket goes below its floor; the caller sleeps until its turn, no polling herd);
- beyond that nothing is taken and the caller learns when: a reconcile raises
  ``BudgetDeferred`` (a transient error whose ``retry_after`` puts the site back in the
  scheduler at that time), so sites wait their turn instead of meeting a 429.

Priorities: a call carries one in a contextvar (``priority``, set per reconcile by the runner
and to SWEEP by the watcher). Writes and deletes of a reconcile (restoring a tunnel) may take
the bucket down to zero, and once one went out the run's further reads (operation polls,
verification) may too and wait up to ``restore_max_wait`` rather than defer; a reconcile's
other reads (planning) keep ``verify_reserve`` of the bucket for those; background sweeps
(the ARM watcher) never take the last ``sweep_reserve``.

ARM's ``x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`` headers correct the
bucket: when ARM says fewer are left than we think (another tool, another region's client),
our tokens are lowered to what ARM leaves us above its headroom. A 429 empties the bucket.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from bot.retry import TransientError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.config import BudgetConfig
    from bot.metrics import Metrics

CLASSES = ("reads", "writes", "deletes")
HEADER = "x-ms-ratelimit-remaining-subscription-{}"
_SUB_RE = re.compile(r"/subscriptions/([^/?#]+)", re.IGNORECASE)


class Priority(IntEnum):
    RESTORE = 0  # writes that restore a down tunnel
    VERIFY = 1  # a reconcile's reads: plan, operation polls, verification
    SWEEP = 2  # background sweeps (the ARM watcher)


# What the current task is doing; the watcher sets SWEEP, everything else is a reconcile.
priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "budget_priority", default=Priority.VERIFY
)


class BudgetDeferred(TransientError):
    """No token soon enough: come back in ``retry_after`` seconds (the scheduler's job)."""

    code = "BudgetDeferred"

    def __init__(self, op: str, wait: float) -> None:
        super().__init__(f"ARM {op} budget spent: deferred {wait:.1f}s", retry_after=wait)
        self.op = op


def op_class(method: str) -> str:
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "reads"
    return "deletes" if method == "DELETE" else "writes"


# KEYS[1]: the bucket (hash: tokens, stamp). ARGV: mode, size, rate, then
#   take:    cost, floor, max_wait -> {"0", tokens} taken now; {"w", tokens} reserved, sleep
#            w seconds; {"-w", tokens} nothing taken, come back in w seconds
#   observe: allowed                -> tokens lowered to ``allowed`` if that is less
#   peek:                           -> tokens
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local size = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(v[1])
local stamp = tonumber(v[2])
if tokens == nil or stamp == nil then
  tokens = size
  stamp = now
end
tokens = math.min(size, tokens + math.max(0, now - stamp) * rate)
local result = 0
if ARGV[1] == 'take' then
  local cost = tonumber(ARGV[4])
  local floor = tonumber(ARGV[5])
  local max_wait = tonumber(ARGV[6])
  local need = floor + cost - tokens
  if need <= 0 then
    tokens = tokens - cost
  elseif need / rate <= max_wait then
    tokens = tokens - cost
    result = need / rate
  else
    result = -(need / rate)
  end
elseif ARGV[1] == 'observe' then
  local allowed = tonumber(ARGV[4])
  if allowed < tokens then
    tokens = math.max(allowed, -size)
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'stamp',
  string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 86400)
return {string.format('%.6f', result), string.format('%.6f', tokens)}
"""


@dataclass(frozen=True)
class Limit:
    arm_size: float  # ARM's documented bucket
    size: float  # ours: arm_size x headroom
    rate: float  # ours: refill x headroom


class Budget:
    """The shared buckets of one Redis (``prefix``), all subscriptions."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        cfg: BudgetConfig,
        metrics: Metrics | None = None,
        subscription: str = "",
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.cfg = cfg
        self.metrics = metrics
        self.subscription = subscription
        self.limits = {
            op: Limit(size, size * cfg.headroom, rate * cfg.headroom)
            for op, (size, rate) in (
                ("reads", cfg.reads),
                ("writes", cfg.writes),
                ("deletes", cfg.deletes),
            )
        }
        self._script = redis.register_script(_SCRIPT)

    def key(self, subscription: str, op: str) -> str:
        return f"{self.prefix}:budget:{{{subscription.lower()}}}:{op}"

    def stats_key(self) -> str:
        return f"{self.prefix}:budget:stats"

    def floor(self, op: str, prio: Priority) -> float:
        size = self.limits[op].size
        if prio >= Priority.SWEEP:
            return size * self.cfg.sweep_reserve
        if op == "reads" and prio == Priority.VERIFY:
            return size * self.cfg.verify_reserve
        return 0.0  # a reconcile's writes and deletes: restoring comes first

    async def _run(self, subscription: str, op: str, *args: Any) -> tuple[float, float]:
        limit = self.limits[op]
        reply = await self._script(
            keys=[self.key(subscription, op)], args=[args[0], limit.size, limit.rate, *args[1:]]
        )
        result, tokens = float(reply[0]), float(reply[1])
        if self.metrics is not None:
            self.metrics.budget_tokens.labels(op).set(tokens)
        return result, tokens

    async def take(self, subscription: str, op: str, prio: Priority, max_wait: float) -> float:
        """Take (or reserve) a token: seconds to sleep (>= 0) before the call may go, or a
        negative number: nothing taken, come back in that many seconds."""
        result, _ = await self._run(subscription, op, "take", 1, self.floor(op, prio), max_wait)
        return result

    async def acquire(self, subscription: str, op: str, prio: Priority | None = None) -> None:
        """Before one ARM call: wait for its token, or raise ``BudgetDeferred``."""
        prio = priority.get() if prio is None else prio
        if prio == Priority.RESTORE:
            max_wait = self.cfg.restore_max_wait  # a write went out: finish it, do not defer
        elif prio == Priority.SWEEP:
            max_wait = self.cfg.sweep_max_wait
        else:
            max_wait = self.cfg.max_wait
        if prio != Priority.SWEEP and op != "reads":
            # A reconcile's write: first in line; its polls and verification follow it.
            max_wait, prio = self.cfg.max_wait, Priority.RESTORE
            priority.set(Priority.RESTORE)
        wait = await self.take(subscription, op, prio, max_wait)
        if wait < 0:
            await self.redis.hincrby(self.stats_key(), f"deferred.{op}", 1)
            if self.metrics is not None:
                self.metrics.budget_deferred.labels(op, prio.name.lower()).inc()
            raise BudgetDeferred(op, -wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def observe(self, subscription: str, op: str, remaining: int) -> None:
        """ARM says ``remaining`` tokens of ``op`` are left: lower ours if that leaves less."""
        limit = self.limits[op]
        allowed = remaining - (limit.arm_size - limit.size)
        await self._run(subscription, op, "observe", allowed)

    async def throttled(self, subscription: str, op: str) -> None:
        """ARM answered 429: count it and empty our bucket."""
        await self.redis.hincrby(self.stats_key(), f"throttled.{op}", 1)
        if self.metrics is not None:
            self.metrics.arm_throttled.labels(op).inc()
        await self.observe(subscription, op, 0)

    async def follow(self, subscription: str, headers: Any) -> None:
        for op in CLASSES:
            value = headers.get(HEADER.format(op)) if headers is not None else None
            if value is None:
                continue
            try:
                remaining = int(value)
            except (TypeError, ValueError):
                continue
            await self.observe(subscription, op, remaining)

    async def snapshot(self, subscription: str | None = None) -> dict[str, Any]:
        """Tokens left per class (refilled to now), calls deferred and 429s received."""
        sub = subscription or self.subscription
        tokens = {}
        for op in CLASSES:
            _, left = await self._run(sub, op, "peek")
            tokens[op] = round(left, 1)
        raw = await self.redis.hgetall(self.stats_key())
        stats = {_text(k): int(v) for k, v in raw.items()}
        return {
            "subscription": sub,
            "tokens": tokens,
            "size": {op: self.limits[op].size for op in CLASSES},
            "deferred": {op: stats.get(f"deferred.{op}", 0) for op in CLASSES},
            "throttled": {op: stats.get(f"throttled.{op}", 0) for op in CLASSES},
        }


def subscription_of(url: str, default: str) -> str:
    match = _SUB_RE.search(url)
    return match.group(1) if match else default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
