"""What a playbook is, and the context it runs in.

A playbook converges one target: ``plan`` reads the real state and lists the changes (none
when converged; a dry-run is ``plan`` alone), ``apply`` makes them in journaled steps, and
``verify`` checks the outcome. Every step goes through ``ctx.step``, which journals it before
and after; a run resumed by another worker skips the steps the journal shows done and gets
their recorded results back, so a crash never applies a step twice or forgets one.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, JsonValue

from bot.config import Policy, SiteConfig
from bot.models import Plan
from bot.retry import PermanentError, call_with_retries
from bot.services import Services
from bot.state import JournalEntry

P = TypeVar("P", bound=BaseModel)
T = TypeVar("T")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class RunContext:
    services: Services
    site: str
    run_id: str
    worker: str
    index: int  # position of this playbook in the run
    policy: Policy
    site_config: SiteConfig | None
    journal: list[JournalEntry] = field(default_factory=list)
    dry_run: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tunnelwarden.run"))

    def done_steps(self) -> dict[str, Any]:
        """Steps of this playbook the journal shows finished, with their recorded data."""
        return {
            e.step: e.data for e in self.journal if e.playbook == self.index and e.phase == "done"
        }

    async def note(
        self, step: str, phase: str, data: JsonValue = None, *, sealed: bool = False
    ) -> None:
        """Journal a step boundary; secrets are masked (sealed data is ciphertext already)."""
        if not sealed:
            data = self.services.redact.tree(data)
        entry = JournalEntry(time.time(), self.worker, self.index, step, phase, data)
        self.journal.append(entry)
        if not self.dry_run:
            await self.services.state.journal_append(self.site, self.run_id, entry)

    async def step(
        self, name: str, action: Callable[[], Awaitable[T]], *, secret: bool = False
    ) -> T:
        """Run ``action`` once across crashes: journal it, retry transient faults.

        The action's result must be JSON-serialisable; with ``secret=True`` it is encrypted
        with the operator's journal key before it is written (and the step refuses to run
        without one).
        """
        done = self.done_steps()
        if name in done:
            stored = done[name]
            result: T = self._unseal(stored) if secret else stored
            return result
        if secret and self.services.journal_cipher is None:
            raise PermanentError(
                f"step {name!r} must journal a secret and no journal key is configured "
                "(security.journal_key)",
                code="JournalKeyMissing",
            )
        await self.note(name, "start")
        try:
            value = await call_with_retries(
                action, self.policy.retry_attempts, self.policy.retry_max_delay
            )
        except Exception as exc:
            await self.note(name, "failed", f"{type(exc).__name__}: {exc}"[:500])
            raise
        # The action's result is JSON by contract (see the docstring); the type cannot say so.
        if secret:
            await self.note(name, "done", self._seal(value), sealed=True)
        else:
            await self.note(name, "done", cast("JsonValue", value))
        return value

    def _seal(self, value: Any) -> str:
        assert self.services.journal_cipher is not None
        return self.services.journal_cipher.encrypt(json.dumps(value).encode()).decode()

    def _unseal(self, token: Any) -> Any:
        cipher = self.services.journal_cipher
        if cipher is None:
            raise PermanentError(
                "the journal holds an encrypted step and no journal key is configured",
                code="JournalKeyMissing",
            )
        return json.loads(cipher.decrypt(str(token).encode()))


class Playbook(ABC, Generic[P]):
    name: ClassVar[str]
    summary: ClassVar[str]
    destructive: ClassVar[bool] = False
    # Azure RBAC actions the playbook may call (docs/azure.md, deploy/azure-role.json).
    permissions: ClassVar[tuple[str, ...]] = ()
    params_model: type[P]

    def parse(self, raw: dict[str, Any]) -> P:
        return self.params_model.model_validate(raw)

    @abstractmethod
    async def plan(self, ctx: RunContext, params: P) -> Plan: ...

    @abstractmethod
    async def apply(self, ctx: RunContext, params: P, plan: Plan) -> str:
        """Make the planned changes through ``ctx.step``; return a one-line summary."""

    async def verify(self, ctx: RunContext, params: P) -> str | None:
        """None when the outcome is as intended, else what is wrong."""
        return None
