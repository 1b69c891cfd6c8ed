"""Data passed between the parts: a decision, a plan, a playbook's result, a run's record."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

Outcome = Literal["ok", "no_changes", "planned", "failed", "timeout", "skipped", "superseded"]


class PlaybookCall(BaseModel):
    """A playbook to run; if it fails, ``on_failure`` runs, and the run goes on if that works."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    params: dict[str, JsonValue] = {}
    on_failure: list[PlaybookCall] = []
    # A destructive playbook runs only where the site's policy allows it, or when a person
    # confirmed it (CLI --confirm-destructive; chat: an approval).
    confirmed: bool = False
    # A destructive step a handler decided on a site whose policy has ``approval = true``: the
    # runner does not run it but asks an approver in chat, once per ``incident`` (the key that
    # lets a retry find the request already asked); an approval queues it, confirmed.
    needs_approval: bool = False
    incident: str = ""


class Decision(BaseModel):
    """What a handler decided: the playbooks to run in order, or none and why.

    ``outcome`` says what kind of nothing a skip is (``superseded``: a newer observation
    exists); ``retry_at`` asks the scheduler to come back (a change held by the rate limit);
    ``wake_at`` asks it to come back no later than then whatever the outcome (a timer, such as
    the end of a failback's stability window).
    """

    model_config = ConfigDict(extra="forbid")
    playbooks: list[PlaybookCall] = []
    reason: str = ""
    outcome: Literal["skipped", "superseded"] = "skipped"
    retry_at: float | None = None
    wake_at: float | None = None

    @classmethod
    def skip(cls, reason: str, *, retry_at: float | None = None) -> Decision:
        return cls(playbooks=[], reason=reason, retry_at=retry_at)

    @classmethod
    def superseded(cls, reason: str) -> Decision:
        return cls(playbooks=[], reason=reason, outcome="superseded")


class Change(BaseModel):
    """One field of one target that a playbook would change."""

    model_config = ConfigDict(frozen=True)
    target: str
    field: str
    old: JsonValue = None
    new: JsonValue = None

    def __str__(self) -> str:
        return f"{self.target} {self.field}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: JsonValue) -> str:
    return "(none)" if value is None else str(value)


class Plan(BaseModel):
    """The changes a playbook would make; empty means the target is already converged."""

    changes: list[Change] = []
    notes: list[str] = []
    # What plan() read that apply() builds on, e.g. the resource body and its ETag (ARM
    # writes send If-Match with it: a target changed meanwhile is read and planned again).
    read: dict[str, JsonValue] = {}

    @property
    def converged(self) -> bool:
        return not self.changes

    def render(self) -> str:
        if self.converged:
            return "no changes"
        return "\n".join(str(c) for c in self.changes)


class PlaybookResult(BaseModel):
    playbook: str
    outcome: Outcome
    changes: list[Change] = []
    detail: str = ""
    error: str | None = None
    error_code: str | None = None
    # A failure that may pass (429, 5xx, timeout, busy, tunnel not up yet): try again later;
    # retry_after is what the far side asked for.
    retry: bool = False
    retry_after: float | None = None
    duration_s: float = 0.0


class RunRecord(BaseModel):
    """One handled event, as it appears in the history (and in ``--json`` output)."""

    run_id: str
    site: str
    event_type: str
    event_source: str
    idempotency_key: str
    outcome: Outcome
    reason: str = ""
    playbooks: list[PlaybookResult] = []
    attempt: int = 1
    worker: str = ""
    fence: int = 0
    started_at: float
    finished_at: float
    duration_s: float = Field(0.0, ge=0)
    retry_at: float | None = None  # when the scheduler comes back to the site
