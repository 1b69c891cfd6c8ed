"""What a playbook is, and the context it runs in.

A playbook converges one target: ``plan`` reads the real state and lists the changes (none
when converged; a dry-run is ``plan`` alone), ``apply`` makes them in journaled steps, and
``verify`` checks the outcome. Every step goes through ``ctx.step``, which journals it before
and after; a run resumed by another worker skips the steps the journal shows done and gets
their recorded results back, so a crash never applies a step twice or forgets one.

Steps are not retried here: the clients own HTTP retries (azure-core's policy), and after a
failure the runner re-reads the target and plans again. A step whose outcome is unknown (it
started, then the worker died or the call failed after it was sent) runs its ``on_unknown``
instead when it has one: that is how a reset that must not be repeated is judged by reading.
Before each step the run proves it still holds the site (its lock's fencing number).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from cryptography.fernet import InvalidToken
from pydantic import BaseModel, ConfigDict, JsonValue

from bot.config import Policy, SiteConfig
from bot.models import Change, Plan
from bot.retry import PermanentError
from bot.services import Services
from bot.state import JournalEntry, SiteLock

PLAYBOOK_STEP = ":playbook"  # journal step name of a whole playbook (steps may not start with ':')

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
    lock: SiteLock | None = None  # None for a dry-run
    confirmed: bool = False  # a person confirmed this call (--confirm-destructive, an approval)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tunnelwarden.run"))

    @property
    def disruption_allowed(self) -> bool:
        """May this call do something destructive (a playbook decides so at run time, e.g. a
        re-initiate while the tunnel is up)? When a person confirmed it, or where the site's
        policy has ``allow_destructive``: the same rule as for destructive playbooks."""
        return self.confirmed or self.policy.allow_destructive

    def _mine(self) -> list[JournalEntry]:
        return [e for e in self.journal if e.playbook == self.index]

    def done_steps(self) -> dict[str, Any]:
        """Steps of this playbook the journal shows finished, with their recorded data."""
        return {e.step: e.data for e in self._mine() if e.phase == "done"}

    def started(self) -> bool:
        """True if this playbook began changing its target in this run (maybe before a crash)."""
        return any(e.step == PLAYBOOK_STEP and e.phase == "start" for e in self._mine())

    def planned_changes(self) -> list[Change]:
        """The changes this playbook planned when it started (journaled, survives a crash)."""
        for e in self._mine():
            if e.step == PLAYBOOK_STEP and e.phase == "start" and isinstance(e.data, dict):
                return [Change.model_validate(c) for c in e.data.get("changes", [])]
        return []

    async def note(
        self, step: str, phase: str, data: JsonValue = None, *, sealed: bool = False
    ) -> None:
        """Journal a step boundary; secrets are masked (sealed data is ciphertext already).

        Written only while the run holds its site lock (``LockLost`` otherwise)."""
        if not sealed:
            data = self.services.redact.tree(data)
        entry = JournalEntry(time.time(), self.worker, self.index, step, phase, data)
        if not self.dry_run:
            assert self.lock is not None, "a run that writes a journal holds a lock"
            await self.services.state.journal_append(self.site, self.run_id, entry, self.lock)
        self.journal.append(entry)

    async def guard(self) -> None:
        """Before an external change: prove the site is still ours (``LockLost`` if not)."""
        if self.lock is not None:
            await self.lock.check()

    async def step(
        self,
        name: str,
        action: Callable[[], Awaitable[T]],
        *,
        secret: bool = False,
        on_unknown: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``action`` once across crashes and re-plans, journaled before and after.

        A step the journal shows done returns its recorded result. A step that started before
        without finishing (crash, or a failure after the request went out) runs ``on_unknown``
        when given (judge by reading; never repeat what must not be repeated), else the
        action again (it must then be idempotent, like a PUT of the desired state). The
        result must be JSON-serialisable; with ``secret=True`` it is encrypted with the
        journal key before it is written (and the step refuses to start without one).
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
        tried = any(e.step == name and e.phase in ("start", "failed") for e in self._mine())
        runner = on_unknown if tried and on_unknown is not None else action
        await self.guard()
        await self.note(name, "resumed" if runner is on_unknown else "start")
        try:
            value = await runner()
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
        """Decrypt a journaled secret. A worker without the key (or with a rotated set that no
        longer holds it) fails *transiently*: another worker may hold it, and the run must not
        be given up after the destructive step it protects."""
        cipher = self.services.journal_cipher
        if cipher is None:
            raise JournalKeyUnavailable(
                "the journal holds an encrypted step and this worker has no journal key "
                "(security.journal_key)"
            )
        try:
            return json.loads(cipher.decrypt(str(token).encode()))
        except InvalidToken:
            raise JournalKeyUnavailable(
                "the journal holds a step encrypted with a key this worker does not have "
                "(rotated away?); keep old keys in security.journal_key until runs finish"
            ) from None


class JournalKeyUnavailable(Exception):
    """This worker cannot read a journaled secret; another worker (or a restart with the
    key) may. The run is not recorded: its event stays on the stream for another worker,
    and the resumed run finishes what was started (e.g. re-creating a deleted connection)."""

    code = "JournalKeyUnavailable"


class Playbook(ABC, Generic[P]):
    name: ClassVar[str]
    summary: ClassVar[str]
    destructive: ClassVar[bool] = False
    # Azure RBAC actions the playbook may call (docs/azure.md, deploy/azure-role.json).
    permissions: ClassVar[tuple[str, ...]] = ()
    params_model: type[P]

    def parse(self, raw: dict[str, Any], *, allow_documentation: bool = False) -> P:
        """Validate parameters; address parameters follow the same rules as every other entry
        point (``bot.sources.ipcheck``), which need to know if documentation ranges count."""
        return self.params_model.model_validate(
            raw, context={"allow_documentation": allow_documentation}
        )

    @abstractmethod
    async def plan(self, ctx: RunContext, params: P) -> Plan: ...

    @abstractmethod
    async def apply(self, ctx: RunContext, params: P, plan: Plan) -> str:
        """Make the planned changes through ``ctx.step``; return a one-line summary."""

    async def verify(self, ctx: RunContext, params: P) -> str | None:
        """None when the outcome is as intended, else what is wrong."""
        return None
