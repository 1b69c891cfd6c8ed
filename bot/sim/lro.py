"""Long-running operations as the Network resource provider exposes them.

Each write that ARM treats as asynchronous gets an :class:`Operation` reachable
at ``…/providers/Microsoft.Network/locations/{loc}/operations/{id}`` (the
``Azure-AsyncOperation`` target, always HTTP 200 with ``{"status": …}``) and
``…/operationResults/{id}`` (the ``Location`` target: 202 while running, then
the action's result). An operation finishes after ``required_polls`` InProgress
polls, or on its own once ``settle_at`` passes, so clients that never poll
(``polling=False``) still see their resource settle.

Resource-group deletes are ARM's own operations (``arm_scope``): their only URL is
``/subscriptions/{sub}/operationresults/{id}`` (the ``Location`` target).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class OpStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass
class OpFailure:
    code: str = "InternalServerError"
    message: str = "An error occurred while processing the operation (injected by the simulator)."


@dataclass
class Operation:
    id: str
    subscription: str
    location: str
    resource_id: str
    created: float
    required_polls: int
    settle_at: float
    on_success: Callable[[], None]
    on_failure: Callable[[], None]
    result: Callable[[], tuple[int, Any]]  # (status, JSON body or None) for operationResults
    failure: OpFailure | None = None
    lost: bool = False
    arm_scope: bool = False  # a Microsoft.Resources operation (resource group delete)
    polls: int = 0
    status: OpStatus = OpStatus.IN_PROGRESS
    start_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    end_time: str | None = None

    @property
    def done(self) -> bool:
        return self.status is not OpStatus.IN_PROGRESS

    def path(self, what: str = "operations") -> str:
        if self.arm_scope:
            return f"/subscriptions/{self.subscription}/operationresults/{self.id}"
        return (
            f"/subscriptions/{self.subscription}/providers/Microsoft.Network/locations/"
            f"{self.location}/{what}/{self.id}"
        )

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.path(),
            "name": self.id,
            "status": str(self.status),
            "startTime": self.start_time,
        }
        if self.end_time:
            body["endTime"] = self.end_time
        if self.status is OpStatus.FAILED and self.failure:
            body["error"] = {"code": self.failure.code, "message": self.failure.message}
        return body


class OperationBook:
    """All operations the simulator has started (kept for the process lifetime)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ops: dict[str, Operation] = {}

    def start(
        self,
        *,
        subscription: str,
        location: str,
        resource_id: str,
        required_polls: int,
        settle_seconds: float,
        on_success: Callable[[], None],
        on_failure: Callable[[], None] | None = None,
        result: Callable[[], tuple[int, Any]] | None = None,
        failure: OpFailure | None = None,
        lost: bool = False,
        arm_scope: bool = False,
    ) -> Operation:
        now = self._clock()
        op = Operation(
            id=str(uuid.uuid4()),
            subscription=subscription,
            location=location or "global",
            resource_id=resource_id.lower(),
            created=now,
            required_polls=required_polls,
            settle_at=now + settle_seconds if math.isfinite(settle_seconds) else math.inf,
            on_success=on_success,
            on_failure=on_failure or (lambda: None),
            result=result or (lambda: (204, None)),
            failure=failure,
            lost=lost,
            arm_scope=arm_scope,
        )
        self._ops[op.id.lower()] = op
        return op

    def get(self, op_id: str) -> Operation | None:
        return self._ops.get(op_id.lower())

    def poll(self, op: Operation) -> Operation:
        """Register one status poll and finish the operation when it is due."""
        if not op.done:
            op.polls += 1
            if op.polls > op.required_polls:
                self.finish(op)
        return op

    def finish(self, op: Operation) -> None:
        if op.done:
            return
        op.end_time = datetime.now(UTC).isoformat()
        if op.failure is not None:
            op.status = OpStatus.FAILED
            op.on_failure()
        else:
            op.status = OpStatus.SUCCEEDED
            op.on_success()

    def settle(self) -> None:
        """Finish operations whose time is up (called on every request)."""
        now = self._clock()
        for op in list(self._ops.values()):
            if not op.done and now >= op.settle_at:
                self.finish(op)

    def finish_all(self) -> None:
        for op in list(self._ops.values()):
            self.finish(op)

    def pending_for(self, resource_id: str) -> Operation | None:
        key = resource_id.lower()
        for op in self._ops.values():
            if not op.done and op.resource_id == key:
                return op
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {**op.status_body(), "resourceId": op.resource_id, "polls": op.polls}
            for op in self._ops.values()
        ]
