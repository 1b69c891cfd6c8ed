"""The event queue: one Redis stream, one consumer group, a dead-letter stream.

Delivery is at least once. A worker acknowledges an entry only after its run is recorded; an
entry whose worker went silent for longer than the visibility timeout is claimed by another
worker (``XAUTOCLAIM``). Workers that live keep their in-flight entries fresh (``XCLAIM
JUSTID``), so a long run is never taken from a healthy worker. After ``max_deliveries`` an
entry goes to the dead-letter stream with the last error it raised.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bot.events import Event

if TYPE_CHECKING:  # redis.typing's names differ between redis-py releases
    from redis.typing import EncodableT, FieldT, StreamIdT, StreamRangeResponse
from bot.keys import Keys

EVENT_FIELD = "event"

_TOUCH = """
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return 1
"""


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    fields: dict[str, str] | None  # None: the entry was trimmed away while pending
    deliveries: int = 1


@dataclass(frozen=True)
class DeadLetter:
    id: str
    entry_id: str
    reason: str
    deliveries: int
    dead_at: float
    raw: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entry_id": self.entry_id,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "dead_at": self.dead_at,
            "raw": self.raw,
        }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# redis-py types replies as unions over the RESP2 and RESP3 shapes. We speak RESP2 (the
# default), where a stream entry is (id, fields); fields is None when the entry was trimmed
# away while pending.
RawFields = dict[bytes | str, bytes | str]
RawEntry = tuple[bytes | str, RawFields | None]


def _entries(reply: StreamRangeResponse | None) -> list[RawEntry]:
    """An XRANGE/XREVRANGE reply as the entries it holds (entry ids are never nil there)."""
    return cast("list[RawEntry]", reply)


def as_fields(fields: dict[str, str]) -> dict[FieldT, EncodableT]:
    """Our text fields as redis-py's field type (a dict's key type is invariant)."""
    return cast("dict[FieldT, EncodableT]", fields)


def _fields(raw: RawFields | None) -> dict[str, str] | None:
    if raw is None:
        return None
    return {_text(k): _text(v) for k, v in raw.items()}


class EventQueue:
    def __init__(
        self, redis: Redis, keys: Keys, *, maxlen: int = 100_000, dead_maxlen: int = 10_000
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.dead_maxlen = dead_maxlen

    async def publish(self, event: Event) -> str:
        return await self.publish_fields({EVENT_FIELD: event.to_wire()})

    async def publish_fields(self, fields: dict[str, str]) -> str:
        """Append raw fields (a malformed entry too: the worker dead-letters it, never drops it)."""
        entry_id = await self.redis.xadd(
            self.keys.stream,
            as_fields(fields),
            maxlen=self.maxlen,
            approximate=True,
        )
        return _text(entry_id)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        reply = await self.redis.xreadgroup(
            self.keys.group, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        streams = cast("list[tuple[bytes | str, list[RawEntry]]] | None", reply)
        out = []
        for _stream, entries in streams or []:
            for entry_id, fields in entries:
                out.append(Delivery(_text(entry_id), _fields(fields)))
        return out

    async def ack(self, entry_id: str) -> None:
        """Acknowledge, and forget any error an earlier delivery noted."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.keys.stream, self.keys.group, entry_id)
        pipe.hdel(self.keys.errors, entry_id)
        await pipe.execute()

    async def ack_many(self, entry_ids: list[str]) -> None:
        await self.redis.xack(self.keys.stream, self.keys.group, *entry_ids)

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries still being worked on, so nobody reclaims them.

        Only entries this consumer still owns: a worker that was paused and whose entry was
        taken over meanwhile must not take it back."""
        if entry_ids:
            await self.redis.eval(
                _TOUCH, 1, self.keys.stream, self.keys.group, consumer, *entry_ids
            )

    async def hand_back(self, consumer: str, entry_ids: list[str], idle_ms: int) -> None:
        """Make entries we abandon (shutdown) immediately reclaimable by another worker."""
        if entry_ids:
            ids: list[StreamIdT] = list(entry_ids)
            await self.redis.xclaim(
                self.keys.stream, self.keys.group, consumer, 0, ids, idle=idle_ms, justid=True
            )

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int = 50) -> list[Delivery]:
        """Claim entries whose worker went silent; each with its delivery count."""
        reply = await self.redis.xautoclaim(
            self.keys.stream, self.keys.group, consumer, min_idle_ms, "0-0", count=count
        )
        # 6.2 replies [cursor, entries]; 7.0+ adds the ids it purged as deleted.
        entries = reply[1] if len(reply) > 1 else []
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _fields_raw in entries:
            pipe.xpending_range(self.keys.stream, self.keys.group, entry_id, entry_id, 1)
        pending = await pipe.execute()
        out = []
        for (entry_id, fields), info in zip(entries, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 1
            out.append(Delivery(_text(entry_id), _fields(fields), deliveries))
        return out

    async def note_error(self, entry_id: str, error: str) -> None:
        await self.redis.hset(self.keys.errors, entry_id, error[:2000])

    async def last_error(self, entry_id: str) -> str | None:
        value = await self.redis.hget(self.keys.errors, entry_id)
        return None if value is None else _text(value)

    async def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Move an entry to the dead-letter stream: added there before it leaves the queue."""
        record = {
            "entry_id": delivery.entry_id,
            "reason": reason[:2000],
            "deliveries": str(delivery.deliveries),
            "dead_at": f"{time.time():.3f}",
            "raw": json.dumps(delivery.fields),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, as_fields(record), maxlen=self.dead_maxlen, approximate=True)
        pipe.xack(self.keys.stream, self.keys.group, delivery.entry_id)
        pipe.hdel(self.keys.errors, delivery.entry_id)
        dead_id, *_ = await pipe.execute()
        return _text(dead_id)

    async def dead_letter_raw(self, source: str, raw: str, reason: str) -> str:
        """Keep something that never became an event (an HTTP body a hook could not read),
        with the reason, beside the stream's dead letters."""
        record = {
            "entry_id": source,
            "reason": reason[:2000],
            "deliveries": "0",
            "dead_at": f"{time.time():.3f}",
            "raw": json.dumps({"body": raw[:16384]}),
        }
        dead_id = await self.redis.xadd(
            self.keys.dead, as_fields(record), maxlen=self.dead_maxlen, approximate=True
        )
        return _text(dead_id)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = _entries(await self.redis.xrevrange(self.keys.dead, count=limit))
        out = []
        for dead_id, raw_fields in rows:
            f = _fields(raw_fields) or {}
            raw = json.loads(f.get("raw", "null")) or {}
            out.append(
                DeadLetter(
                    id=_text(dead_id),
                    entry_id=f.get("entry_id", ""),
                    reason=f.get("reason", ""),
                    deliveries=int(f.get("deliveries", "0")),
                    dead_at=float(f.get("dead_at", "0")),
                    raw=raw,
                )
            )
        return out

    async def dead_count(self) -> int:
        return int(await self.redis.xlen(self.keys.dead))

    async def stats(self) -> dict[str, int]:
        """Stream length, entries not yet delivered (lag) and delivered but unacknowledged."""
        length = int(await self.redis.xlen(self.keys.stream))
        try:
            groups = await self.redis.xinfo_groups(self.keys.stream)
        except ResponseError:  # no stream yet
            return {"length": 0, "lag": 0, "pending": 0}
        group = next((g for g in groups if _text(g["name"]) == self.keys.group), None)
        if group is None:
            return {"length": length, "lag": length, "pending": 0}
        pending = int(group["pending"])
        lag = group.get("lag")
        if lag is None:  # Redis < 7 has no lag field: count entries after the group's cursor
            last = _text(group["last-delivered-id"])
            after = _entries(
                await self.redis.xrange(self.keys.stream, min=f"({last}", count=100_000)
            )
            lag = len(after)
        return {"length": length, "lag": int(lag), "pending": pending}
