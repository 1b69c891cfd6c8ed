"""The reconciler: one hint in, the site converged (or a reason and a time to come back).

Modelled on controller-runtime's ``Reconcile(request) → result, requeue after``: the run takes
the site's lock (with a fencing number), reads the site's *latest* state, asks the handler
what to do, runs the playbooks (each re-reads the real state and plans), and records the
result together with what follows from it: the site's reconcile status and when the
scheduler comes back (the periodic resync after success, a jittered backoff after a transient
failure, the end of the window after a held change). The event's payload is never the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from bot.budget import Priority
from bot.budget import priority as budget_priority
from bot.escalate import Escalations
from bot.events import Event
from bot.models import Change, Decision, Outcome, Plan, PlaybookCall, PlaybookResult, RunRecord
from bot.retry import (
    PermanentError,
    TransientError,
    backoff,
    describe_error,
    is_transient,
    retry_after,
)
from bot.scheduler import RECONCILE, member
from bot.services import Services
from bot.state import Begun, Followups, JournalEntry, LockLost, SiteLock, current_lock, poll_until
from handlers.base import Handler, SiteView
from playbooks.base import PLAYBOOK_STEP, JournalKeyUnavailable, Playbook, RunContext

log = logging.getLogger("tunnelwarden.runner")
T = TypeVar("T")
# Sources whose events are a person's request: they bypass the automatic change limit and
# are not counted against it.
MANUAL_SOURCES = frozenset({"cli", "chat"})


@dataclass(frozen=True)
class Handled:
    """A recorded run and the view its handler decided on (the state before the run)."""

    record: RunRecord
    view: SiteView


class Busy(Exception):
    """The site was locked and this hint was folded into the reconcile owed to it."""


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
        self,
        site: str,
        run_id: str,
        index: int,
        journal: list[JournalEntry],
        *,
        lock: SiteLock | None,
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
            dry_run=lock is None,
            lock=lock,
        )

    def playbook(self, name: str) -> Playbook[Any]:
        try:
            return self.playbooks[name]
        except KeyError:
            known = ", ".join(sorted(self.playbooks))
            message = f"unknown playbook {name!r} (known: {known})"
            raise PermanentError(message, "UnknownPlaybook") from None

    def parse(self, playbook: Playbook[Any], params: Mapping[str, Any]) -> Any:
        return playbook.parse(
            dict(params), allow_documentation=self.services.settings.allow_documentation_ips
        )

    async def plan(self, site: str, call: PlaybookCall) -> Plan:
        """A dry-run: read the real state and say what would change. Writes nothing."""
        playbook = self.playbook(call.name)
        params = self.parse(playbook, call.params)
        ctx = self.context(site, "dry-run", 0, [], lock=None)
        ctx.confirmed = call.confirmed
        return await playbook.plan(ctx, params)

    # --- one reconcile ------------------------------------------------------------------
    async def reconcile(
        self, event: Event, handler: Handler, data: Any, *, redelivered: bool = False
    ) -> Handled | None:
        """Handle ``event`` under the site lock; None when a run already handled its key.

        Raises ``Busy`` when the site is locked and the event is a first-delivered hint (the
        holder's record schedules another reconcile), ``LockLost`` when the lock went away
        mid-run (nothing more was written; another worker resumes from the journal). A
        redelivered event may be a run a dead worker started: it waits for the lock and
        resumes that run from its journal instead of being folded away.
        """
        site = event.site
        policy = self.services.settings.policy_for(site)
        state = self.services.state
        lock = state.site_lock(site, policy.lock_ttl)
        hint = member(handler.requeue, site) if handler.reconciles and not redelivered else ""
        begun = Begun("locked")

        async def begin() -> bool:
            nonlocal begun
            begun = await state.begin(
                lock,
                site,
                event.id,
                self.worker,
                event.type,
                event.idempotency_key,
                dirty_member=hint,
                dirty_at=time.time() + policy.lock_ttl + 1,
            )
            return begun.kind != "locked"

        if hint:
            await begin()
            if begun.kind == "locked":
                raise Busy(f"site {site} is busy (fence {begun.holder}); reconcile owed")
        elif not await poll_until(begin, policy.lock_wait):
            raise TransientError(f"site {site} stayed locked for {policy.lock_wait:.0f}s")
        if begun.kind == "done":
            return None
        token = current_lock.set(lock)
        rank = budget_priority.set(Priority.VERIFY)  # reads; a write raises it (bot.budget)
        try:
            return await self._reconcile(event, handler, data, begun, lock)
        finally:
            budget_priority.reset(rank)
            current_lock.reset(token)
            await lock.release()

    async def _reconcile(
        self, event: Event, handler: Handler, data: Any, begun: Begun, lock: SiteLock
    ) -> Handled:
        site = event.site
        settings = self.services.settings
        started = time.time()
        view = SiteView(
            site=site,
            config=settings.sites.get(site),
            policy=settings.policy_for(site),
            state=begun.state,
            changes_last_hour=begun.changes_last_hour,
            oldest_change_at=begun.oldest_change_at,
            fence=begun.fence,
            manual=event.source in MANUAL_SOURCES,
            now=started,
        )
        journal = begun.journal
        if begun.attempt > 1:
            entry = JournalEntry(started, self.worker, -1, ":run", "resumed", begun.attempt)
            await self.services.state.journal_append(site, event.id, entry, lock)
            journal.append(entry)
            log.info("resuming run %s (attempt %d)", event.id, begun.attempt, extra={"site": site})
        decision = await handler.decide(event, data, view)
        results: list[PlaybookResult] = []
        ok = True
        if decision.playbooks:
            results, ok = await self._run_chain(
                event, decision.playbooks, journal, lock, itertools.count()
            )
        outcome = aggregate(results, ok) if decision.playbooks else decision.outcome
        record = self._record_of(event, decision, outcome, results, begun, started)
        followups = self._followups(handler, event, data, decision, record, view)
        record.retry_at = followups.schedule_at if outcome not in ("ok", "no_changes") else None
        automatic = not view.manual and event.type != "playbook.requested"
        changed = automatic and any(r.outcome == "ok" and r.changes for r in results)
        # A converged re-check (or one of a paused site) is the steady state: not history.
        quiet = event.source == "scheduler" and (
            outcome == "no_changes" or (outcome == "skipped" and decision.retry_at is None)
        )
        await self.services.state.record(
            record,
            lock,
            done_key=event.idempotency_key if outcome not in ("failed", "timeout") else None,
            changed=changed,
            history=not quiet,
            followups=followups,
            view=view.state,
        )
        return Handled(record, view)

    def _followups(
        self,
        handler: Handler,
        event: Event,
        data: Any,
        decision: Decision,
        record: RunRecord,
        view: SiteView,
    ) -> Followups:
        """State and schedule changes recorded with the run (atomically, fenced)."""
        extra = handler.remember(event, data, record, view) if handler.remember else {}
        if not handler.reconciles:
            return Followups(state=dict(extra), dirty_member=member(RECONCILE, event.site))
        now = time.time()
        policy = view.policy
        interval = self.services.settings.scheduler.resync_interval
        resync = now + interval * random.uniform(0.95, 1.05)
        f = handler.status  # the reconciler's status fields: reconcile.*, failover.*
        updates: dict[str, str | None] = {f"{f}.at": f"{now:.3f}", f"{f}.run": record.run_id}
        outcome = record.outcome
        when: float | None = resync
        if outcome in ("ok", "no_changes"):
            updates.update(
                {
                    f"{f}.status": "converged",
                    f"{f}.attempt": None,
                    f"{f}.error": None,
                    f"{f}.not_before": None,
                    f"{f}.held_until": None,
                }
            )
        elif outcome == "superseded":
            when = None  # the newer observation's hint is on its way
        elif outcome == "skipped":
            updates[f"{f}.status"] = "held" if decision.retry_at else "skipped"
            updates[f"{f}.error"] = decision.reason
            if decision.retry_at:
                when = decision.retry_at
                updates[f"{f}.not_before"] = f"{decision.retry_at:.3f}"
                updates[f"{f}.held_until"] = f"{decision.retry_at:.3f}"
        else:
            failed = next((r for r in reversed(record.playbooks) if r.outcome != "ok"), None)
            transient = failed is None or failed.retry
            message = f"{failed.playbook}: {failed.error}" if failed and failed.error else outcome
            updates[f"{f}.error"] = message[:500]
            if failed is not None and failed.error_code == "BudgetDeferred":
                # The shared ARM budget had no token soon enough: back at its time, no backoff.
                when = now + (failed.retry_after or 1.0)
                updates[f"{f}.status"] = "deferred"
            elif transient:
                attempt = int(view.state.get(f"{f}.attempt", "0") or 0) + 1
                asked = failed.retry_after if failed else None
                delay = backoff(attempt, policy.retry_base_delay, policy.retry_max_delay, asked)
                when = now + delay
                # ``retry_at`` is when the remedy the decision had to leave out (a reset in
                # its cool-down) is allowed again: it bounds the retry only when the run
                # failed at its last playbook, the one that remedy would follow. A failure
                # earlier (the LNG write) is retried on its own backoff.
                last = decision.playbooks[-1].name if decision.playbooks else None
                if (
                    failed is not None
                    and failed is record.playbooks[-1]
                    and failed.playbook == last
                ):
                    when = max(when, decision.retry_at or 0.0)
                updates[f"{f}.status"] = "retrying"
                updates[f"{f}.attempt"] = str(attempt)
                updates[f"{f}.not_before"] = f"{now + (asked or 0):.3f}" if asked else None
            else:
                updates[f"{f}.status"] = "failed"
                updates[f"{f}.attempt"] = None
        if decision.wake_at is not None:  # a timer of the handler's: never later than asked
            when = decision.wake_at if when is None else min(when, decision.wake_at)
        updates.update(extra)
        return Followups(
            state=updates,
            schedule_member=member(handler.requeue, event.site) if when is not None else "",
            schedule_at=when,
            dirty_member=member(handler.requeue, event.site),
        )

    # --- playbooks ----------------------------------------------------------------------
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
                ctx = self.context(event.site, event.id, index, journal, lock=lock)
                ctx.confirmed = call.confirmed
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
            params = self.parse(playbook, call.params)
            if call.needs_approval and not (call.confirmed or ctx.policy.allow_destructive):
                # The handler asked for an approver (policy.approval): ask once per incident
                # (record, then post), and run nothing destructive here.
                await ctx.guard()
                result = await Escalations(self.services).ask(ctx.site, call)
            else:
                if playbook.destructive and not (call.confirmed or ctx.policy.allow_destructive):
                    raise PermanentError(
                        f"{call.name} is destructive: it runs only where the site's policy has "
                        "allow_destructive = true, or when a person confirms it "
                        "(tunnelwarden playbook run ... --confirm-destructive)",
                        "DestructiveRefused",
                    )
                async with asyncio.timeout(ctx.policy.playbook_timeout):
                    outcome, detail, changes = await self._converge(ctx, playbook, params)
                result = PlaybookResult(
                    playbook=call.name, outcome=outcome, detail=detail, changes=changes
                )
        except (LockLost, JournalKeyUnavailable):
            raise  # not this worker's to record: the event stays for another worker
        except TimeoutError:
            result = PlaybookResult(
                playbook=call.name,
                outcome="timeout",
                error=f"did not finish within {ctx.policy.playbook_timeout:g}s",
                error_code="Timeout",
                retry=True,
            )
        except ValidationError as exc:
            result = PlaybookResult(
                playbook=call.name, outcome="failed", error=_one_line(exc), error_code="BadParams"
            )
        except Exception as exc:
            code, message = describe_error(exc)
            transient = is_transient(exc)
            result = PlaybookResult(
                playbook=call.name,
                outcome="failed",
                error=self.redact(message)[:1000],
                error_code=code,
                retry=transient,
                retry_after=retry_after(exc) if transient else None,
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
    ) -> tuple[Outcome, str, list[Change]]:
        """Plan, apply, verify. After a transient fault in ``apply``, read and plan again (up
        to ``retry_attempts`` plans) instead of repeating the call; a resumed playbook records
        the changes it planned before the crash, and what it finds now."""
        plan = await playbook.plan(ctx, params)
        if plan.converged and not ctx.started():
            return "no_changes", "no changes", []
        if not ctx.started():
            await ctx.note(
                PLAYBOOK_STEP,
                "start",
                {"playbook": playbook.name, "changes": [c.model_dump() for c in plan.changes]},
            )
        detail = "converged"
        for attempt in range(1, ctx.policy.retry_attempts + 1):
            if plan.converged:
                break  # a resumed or re-planned playbook whose change took effect
            try:
                detail = await playbook.apply(ctx, params, plan)
                break
            except Exception as exc:
                if (
                    not is_transient(exc)
                    or attempt == ctx.policy.retry_attempts
                    or getattr(exc, "code", None) == "BudgetDeferred"  # the scheduler's turn
                ):
                    raise
                wait = retry_after(exc) or min(ctx.policy.retry_base_delay, 2.0**attempt)
                log.info(
                    "%s: %s; reading again in %.0fs",
                    playbook.name,
                    self.redact(describe_error(exc)[1])[:300],
                    wait,
                    extra={"site": ctx.site, "run": ctx.run_id},
                )
                await asyncio.sleep(wait)
                await ctx.guard()
                plan = await playbook.plan(ctx, params)
        problem = await playbook.verify(ctx, params)
        if problem:
            raise VerifyFailed(problem)
        return "ok", detail, ctx.planned_changes()

    # --- records ------------------------------------------------------------------------
    def _record_of(
        self,
        event: Event,
        decision: Decision,
        outcome: Outcome,
        results: list[PlaybookResult],
        begun: Begun,
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
            attempt=begun.attempt,
            worker=self.worker,
            fence=begun.fence,
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


class VerifyFailed(TransientError):
    """The change was made and the target is not as intended yet (e.g. tunnel still down):
    worth another reconcile later, so it counts as transient."""

    code = "VerifyFailed"


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
