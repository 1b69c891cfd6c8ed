"""Fault injection rules for the ARM simulator.

A rule matches requests by HTTP method and a regular expression searched
(case-insensitively) in the URL path, and fires for its next ``count`` matches.
Request-level kinds (``throttle``, ``error``) replace the response outright; LRO
kinds (``slow_lro``, ``fail_lro``, ``lost_operation``) shape the long-running
operation started by the matching request, so the bot's poller paths get exercised.
"""

from __future__ import annotations

import itertools
import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FaultKind(StrEnum):
    THROTTLE = "throttle"  # 429 + Retry-After, like ARM throttling
    ERROR = "error"  # arbitrary status (default 500) with an ARM error body
    SLOW_LRO = "slow_lro"  # the operation reports InProgress for extra_polls more polls
    FAIL_LRO = "fail_lro"  # the operation ends Failed; the resource goes Failed
    LOST_OPERATION = "lost_operation"  # op-status URL 404s ("Operation not found")


REQUEST_KINDS = frozenset({FaultKind.THROTTLE, FaultKind.ERROR})
LRO_KINDS = frozenset({FaultKind.SLOW_LRO, FaultKind.FAIL_LRO, FaultKind.LOST_OPERATION})


class FaultSpec(BaseModel):
    """What a caller asks for (control API body / Python API argument)."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    method: str = Field(default="*", description="HTTP method or '*'")
    path: str = Field(default=".*", description="regex searched in the URL path")
    count: int = Field(default=1, ge=1)
    status: int = Field(default=500, ge=400, le=599)
    code: str | None = None
    message: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    extra_polls: int = Field(default=3, ge=0)

    @field_validator("path")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        re.compile(value)
        return value

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class FaultRule(FaultSpec):
    """An armed rule with its id and remaining shots."""

    id: int
    remaining: int

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method not in ("*", method.upper()):
            return False
        return re.search(self.path, path, re.IGNORECASE) is not None


class FaultBook:
    """The armed rules; rules fire in the order they were added."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, spec: FaultSpec) -> FaultRule:
        rule = FaultRule(**spec.model_dump(), id=next(self._ids), remaining=spec.count)
        self._rules.append(rule)
        return rule

    def take(self, method: str, path: str, kinds: frozenset[FaultKind]) -> FaultRule | None:
        """Consume one shot of the first live rule of ``kinds`` matching the request."""
        for rule in self._rules:
            if rule.kind in kinds and rule.matches(method, path):
                rule.remaining -= 1
                return rule
        return None

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """Rules that still have shots left."""
        return [r for r in self._rules if r.remaining > 0]
