"""Runs a decision's playbooks under the site lock, journaled, and records the result once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from bot.events import Event
from bot.models import Change, Decision, Outcome, Plan, PlaybookCall, PlaybookResult, RunRecord
from bot.retry import PermanentError, TransientError, call_with_retries, describe_error
from bot.services import Services
from bot.state import Begun, JournalEntry, LockLost, SiteLock, poll_until
from playbooks.base import Playbook, RunContext

log = logging.getLogger("tunnelwarden.runner")
T = TypeVar("T")
PLAYBOOK_STEP = ":playbook"  # journal step name of a whole playbook (steps may not start with ':')


class Runner:
    def __init__(
        self,
        services: Services,
        playbooks: Mapping[str, Playbook[Any]],
        worker: str,
    ) -> None:
        self.services = services
        self.playbooks = playbooks
        self.worker = worker
        self.redact = services.redact

    def context(
        self, site: str, run_id: str, index: int, journal: list[JournalEntry], dry_run: bool
    ) -> RunContext:
        settings = self.services.settings
        return RunContext(
            services=self.services,
            site=site,
            run_id=run_id,
            worker=self.worker,
            index=index,
            policy=settings.policy_for(site),
            site_config=settings.sites.get(site),
            journal=journal,
            dry_run=dry_run,
        )

    def playbook(self, name: str) -> Playbook[Any]:
        try:
            return self.playbooks[name]
        except KeyError:
            known = ", ".join(sorted(self.playbooks))
            message = f"unknown playbook {name!r} (known: {known})"
            raise PermanentError(message, "UnknownPlaybook") from None

    async def plan(self, site: str, call: PlaybookCall) -> Plan:
        """A dry-run: read the real state and say what would change. Writes nothing."""
        playbook = self.playbook(call.name)
        params = playbook.parse(dict(call.params))
        ctx = self.context(site, "dry-run", 0, [], dry_run=True)
        return await call_with_retries(
            lambda: playbook.plan(ctx, params),
            ctx.policy.retry_attempts,
            ctx.policy.retry_max_delay,
        )

    async def execute(self, event: Event, decision: Decision) -> RunRecord | None:
        """Run the decision for ``event``; None when another run already handled its key."""
        site = event.site
        policy = self.services.settings.policy_for(site)
        state = self.services.state
        lock = state.site_lock(site, policy.lock_ttl, policy.lock_wait)
        meta = {"event_type": event.type, "reason": decision.reason}
        begun = Begun("locked")

        async def begin() -> bool:
            nonlocal begun
            begun = await state.begin(
                lock, site, event.id, self.worker, meta, event.idempotency_key
            )
            return begun.kind != "locked"

        if not await poll_until(begin, policy.lock_wait):
            raise TransientError(f"site {site} stayed locked for {policy.lock_wait:.0f}s")
        if begun.kind == "done":
            return None
        lock.start_renewing()
        try:
            started = time.time()
            journal = begun.journal
            if begun.attempt > 1:
                entry = JournalEntry(started, self.worker, -1, ":run", "resumed", begun.attempt)
                await state.journal_append(site, event.id, entry)
                journal.append(entry)
                log.info(
                    "resuming run %s (attempt %d)", event.id, begun.attempt, extra={"site": site}
                )
            results, ok = await self._run_chain(
                event, decision.playbooks, journal, lock, itertools.count()
            )
            await lock.stop_renewing()  # the record releases the lock with the same write
            return await self._record(event, decision, results, ok, begun.attempt, started, lock)
        finally:
            await lock.release()

    async def _run_chain(
        self,
        event: Event,
        calls: list[PlaybookCall],
        journal: list[JournalEntry],
        lock: SiteLock,
        order: itertools.count[int],
    ) -> tuple[list[PlaybookResult], bool]:
        """Run ``calls`` in order; a failed call runs its ``on_failure`` chain, and carries on
        if that chain recovers. Playbooks are numbered in the order they run, which is the same
        on a resumed run (finished ones replay their journaled result), so the journal lines up.
        """
        results: list[PlaybookResult] = []
        for call in calls:
            index = next(order)
            finished = [
                e
                for e in journal
                if e.playbook == index and e.step == PLAYBOOK_STEP and e.phase == "done"
            ]
            if finished:
                result = PlaybookResult.model_validate(finished[-1].data)
            else:
                ctx = self.context(event.site, event.id, index, journal, dry_run=False)
                result = await _unless_lost(self._run_one(ctx, call), lock)
            results.append(result)
            if result.outcome in ("failed", "timeout"):
                if call.on_failure:
                    more, recovered = await self._run_chain(
                        event, call.on_failure, journal, lock, order
                    )
                    results.extend(more)
                    if recovered:
                        continue
                return results, False
        return results, True

    async def _run_one(self, ctx: RunContext, call: PlaybookCall) -> PlaybookResult:
        started = time.monotonic()
        metrics = self.services.metrics
        try:
            playbook = self.playbook(call.name)
            params = playbook.parse(dict(call.params))
            async with asyncio.timeout(ctx.policy.playbook_timeout):
                outcome, detail, changes = await self._converge(ctx, playbook, params)
            result = PlaybookResult(
                playbook=call.name, outcome=outcome, detail=detail, changes=changes
            )
        except TimeoutError:
            result = PlaybookResult(
                playbook=call.name,
                outcome="timeout",
                error=f"did not finish within {ctx.policy.playbook_timeout:g}s",
                error_code="Timeout",
            )
        except ValidationError as exc:
            result = PlaybookResult(
                playbook=call.name, outcome="failed", error=_one_line(exc), error_code="BadParams"
            )
        except Exception as exc:
            code, message = describe_error(exc)
            result = PlaybookResult(
                playbook=call.name,
                outcome="failed",
                error=self.redact(message)[:1000],
                error_code=code,
            )
        result.duration_s = round(time.monotonic() - started, 4)
        result = self._masked(result)
        if result.outcome != "no_changes":  # a converged target is simply planned again
            await ctx.note(PLAYBOOK_STEP, "done", result.model_dump(mode="json"))
        metrics.runs.labels(call.name, result.outcome).inc()
        metrics.run_duration.labels(call.name).observe(result.duration_s)
        return result

    async def _converge(
        self, ctx: RunContext, playbook: Playbook[Any], params: Any
    ) -> tuple[Outcome, str, list[Any]]:
        resumed = bool(ctx.done_steps())
        plan = await call_with_retries(
            lambda: playbook.plan(ctx, params),
            ctx.policy.retry_attempts,
            ctx.policy.retry_max_delay,
        )
        if plan.converged and not resumed:
            return "no_changes", "no changes", []
        await ctx.note(PLAYBOOK_STEP, "start", playbook.name)
        detail = await playbook.apply(ctx, params, plan)
        problem = await playbook.verify(ctx, params)
        if problem:
            raise PermanentError(problem, "VerifyFailed")
        return "ok", detail, list(plan.changes)

    async def _record(
        self,
        event: Event,
        decision: Decision,
        results: list[PlaybookResult],
        ok: bool,
        attempt: int,
        started: float,
        lock: SiteLock,
    ) -> RunRecord:
        outcome = aggregate(results, ok)
        record = self._record_of(event, decision, outcome, results, attempt, started)
        done_key = event.idempotency_key if outcome in ("ok", "no_changes") else None
        changed = any(r.outcome == "ok" and r.changes for r in results)
        await self.services.state.record(record, done_key, changed, lock)
        return record

    async def record_skip(self, event: Event, decision: Decision) -> RunRecord:
        """A decision to do nothing is history too (paused, rate-limited, ...)."""
        record = self._record_of(event, decision, "skipped", [], 1, time.time())
        await self.services.state.record(record, None, changed=False)
        return record

    def _record_of(
        self,
        event: Event,
        decision: Decision,
        outcome: Outcome,
        results: list[PlaybookResult],
        attempt: int,
        started: float,
    ) -> RunRecord:
        finished = time.time()
        record = RunRecord(
            run_id=event.id,
            site=event.site,
            event_type=event.type,
            event_source=event.source,
            idempotency_key=event.idempotency_key,
            outcome=outcome,
            reason=decision.reason,
            playbooks=results,
            attempt=attempt,
            worker=self.worker,
            started_at=started,
            finished_at=finished,
            duration_s=round(finished - started, 4),
        )
        record.reason = self.redact(record.reason)  # playbook results are masked already
        return record

    def _masked(self, result: PlaybookResult) -> PlaybookResult:
        """History outlives everything: no secret goes into it, wherever it came from."""
        if result.changes:
            result.changes = [
                Change(
                    target=c.target,
                    field=c.field,
                    old=self.redact.tree(c.old),
                    new=self.redact.tree(c.new),
                )
                for c in result.changes
            ]
        result.playbook = self.redact(result.playbook)  # a requested name can be anything
        result.detail = self.redact(result.detail)
        if result.error:
            result.error = self.redact(result.error)
        return result


def aggregate(results: list[PlaybookResult], ok: bool) -> Outcome:
    """The run's outcome: the last failure if the chain did not recover, else ok/no_changes."""
    if not results:
        return "skipped"
    if not ok:
        return results[-1].outcome
    if all(r.outcome == "no_changes" for r in results):
        return "no_changes"
    return "ok"


async def _unless_lost(work: Awaitable[T], lock: SiteLock) -> T:
    """Await ``work``; abandon it if the site lock is lost (someone else may now act)."""
    task = asyncio.ensure_future(work)
    lost = asyncio.ensure_future(lock.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if lock.lost.is_set() and task.cancelled():
        raise LockLost("site lock lost during the run; another worker will resume it")
    return task.result()


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
    )
