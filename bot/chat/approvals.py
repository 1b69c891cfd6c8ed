"""Two-person approvals for destructive playbooks, kept in Redis.

A request is written (``create``) **before** the message with its Approve/Deny buttons is
posted, so a click can never refer to something unrecorded. ``decide`` is one Lua script:
the first decision wins, atomically; a request past its expiry becomes ``expired`` instead;
the requester cannot approve their own request (they may withdraw it with Deny). Every step
(requested, approved, denied, expired, queued) is appended to an audit stream with who and
when, so "who asked, who decided, when" survives the message being edited or deleted.

Keys (one hash slot, ``{chat}``): ``<prefix>:{chat}:approval:<id>`` (a hash, kept a week)
and ``<prefix>:{chat}:approvals`` (the audit stream, capped).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis

Status = Literal["pending", "approved", "denied", "expired"]
Result = Literal["ok", "missing", "decided", "expired", "self"]
KEEP = 7 * 86400  # how long a decided request stays readable
AUDIT_MAXLEN = 10_000

_DECIDE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', '', ''} end
if status ~= 'pending' then
  return {'decided', status, redis.call('HGET', KEYS[1], 'decided_by') or ''}
end
local id = redis.call('HGET', KEYS[1], 'id')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if tonumber(ARGV[3]) >= expires then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'decided_at', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'approval', id, 'status', 'expired',
             'by', '', 'at', ARGV[3])
  return {'expired', 'expired', ''}
end
if ARGV[1] == 'approved' and redis.call('HGET', KEYS[1], 'requested_by') == ARGV[2] then
  return {'self', status, ''}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_by', ARGV[2], 'decided_at', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'approval', id, 'status', ARGV[1],
           'by', ARGV[2], 'at', ARGV[3])
return {'ok', ARGV[1], ARGV[2]}
"""


_EXPIRE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
if tonumber(ARGV[1]) < tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'expired', 'decided_at', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'approval',
           redis.call('HGET', KEYS[1], 'id'), 'status', 'expired', 'by', '', 'at', ARGV[1])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Approval:
    id: str
    site: str
    playbook: str
    params: dict[str, Any]
    requested_by: str
    requested_at: float
    expires_at: float
    status: Status = "pending"
    decided_by: str = ""
    decided_at: float | None = None
    run_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "id": self.id,
            "site": self.site,
            "playbook": self.playbook,
            "params": json.dumps(self.params, sort_keys=True),
            "requested_by": self.requested_by,
            "requested_at": f"{self.requested_at:.3f}",
            "expires_at": f"{self.expires_at:.3f}",
            "status": self.status,
        }

    @classmethod
    def from_fields(cls, raw: dict[str, str]) -> Approval:
        return cls(
            id=raw["id"],
            site=raw["site"],
            playbook=raw["playbook"],
            params=json.loads(raw.get("params") or "{}"),
            requested_by=raw["requested_by"],
            requested_at=float(raw["requested_at"]),
            expires_at=float(raw["expires_at"]),
            status=raw.get("status", "pending"),  # type: ignore[arg-type]
            decided_by=raw.get("decided_by", ""),
            decided_at=float(raw["decided_at"]) if raw.get("decided_at") else None,
            run_id=raw.get("run_id", ""),
        )


@dataclass(frozen=True)
class Decided:
    result: Result
    status: str
    by: str
    approval: Approval | None = None


@dataclass(frozen=True)
class AuditEntry:
    approval: str
    status: str
    by: str
    at: float
    extra: dict[str, str] = field(default_factory=dict)


class Approvals:
    def __init__(self, redis: Redis, prefix: str, *, ttl: float = 900.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self._decide = redis.register_script(_DECIDE)
        self._expire = redis.register_script(_EXPIRE)

    def key(self, approval_id: str) -> str:
        return f"{self.prefix}:{{chat}}:approval:{approval_id}"

    @property
    def audit_key(self) -> str:
        return f"{self.prefix}:{{chat}}:approvals"

    async def create(
        self,
        site: str,
        playbook: str,
        params: dict[str, Any],
        requested_by: str,
        *,
        now: float | None = None,
        approval_id: str | None = None,
    ) -> Approval:
        """Record a pending request (do this before posting its buttons)."""
        at = time.time() if now is None else now
        approval = Approval(
            id=approval_id or secrets.token_hex(5),
            site=site,
            playbook=playbook,
            params=params,
            requested_by=requested_by,
            requested_at=at,
            expires_at=at + self.ttl,
        )
        key = self.key(approval.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=approval.fields())  # type: ignore[arg-type]
        pipe.expire(key, int(self.ttl + KEEP))
        pipe.xadd(
            self.audit_key,
            {
                "approval": approval.id,
                "status": "requested",
                "by": requested_by,
                "at": f"{at:.3f}",
                "site": site,
                "playbook": playbook,
            },
            maxlen=AUDIT_MAXLEN,
            approximate=True,
        )
        await pipe.execute()
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        if not approval_id.isalnum() or len(approval_id) > 32:
            return None
        raw = await self.redis.hgetall(self.key(approval_id))
        if not raw:
            return None
        return Approval.from_fields({_text(k): _text(v) for k, v in raw.items()})

    async def decide(
        self, approval_id: str, by: str, approve: bool, *, now: float | None = None
    ) -> Decided:
        """First decision wins; ``self`` when the requester tries to approve."""
        if not approval_id.isalnum() or len(approval_id) > 32:
            return Decided("missing", "", "")
        at = time.time() if now is None else now
        reply = await self._decide(
            keys=[self.key(approval_id), self.audit_key],
            args=["approved" if approve else "denied", by, f"{at:.3f}", AUDIT_MAXLEN],
        )
        result, status, who = (_text(x) for x in reply)
        return Decided(result, status, who, await self.get(approval_id))  # type: ignore[arg-type]

    async def expire(self, approval_id: str, *, now: float | None = None) -> bool:
        """Mark a pending request past its expiry ``expired`` (audited); True only for the
        one caller that did, so an expiry is told once however many notice it."""
        at = time.time() if now is None else now
        done = await self._expire(
            keys=[self.key(approval_id), self.audit_key], args=[f"{at:.3f}", AUDIT_MAXLEN]
        )
        return bool(done)

    async def attach_run(self, approval: Approval, run_id: str) -> None:
        approval.run_id = run_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(approval.id), "run_id", run_id)
        pipe.xadd(
            self.audit_key,
            {
                "approval": approval.id,
                "status": "queued",
                "by": "",
                "at": f"{time.time():.3f}",
                "run_id": run_id,
            },
            maxlen=AUDIT_MAXLEN,
            approximate=True,
        )
        await pipe.execute()

    async def audit(self, approval_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, oldest first (only ``approval_id``'s when given)."""
        rows = await self.redis.xrevrange(self.audit_key, count=limit * (20 if approval_id else 1))
        out: list[AuditEntry] = []
        for _, raw in reversed(rows or []):
            f = {_text(k): _text(v) for k, v in (raw or {}).items()}
            if approval_id and f.get("approval") != approval_id:
                continue
            extra = {k: v for k, v in f.items() if k not in ("approval", "status", "by", "at")}
            out.append(AuditEntry(f["approval"], f["status"], f["by"], float(f["at"]), extra))
        return out[-limit:]
