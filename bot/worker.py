"""The worker: takes events off the stream, asks the handler, runs the playbooks, acknowledges.

Several workers (in one process or many) share the stream through the consumer group. An
entry is acknowledged only after its outcome is recorded. Anything that cannot be read as a
known, well-formed event goes to the dead-letter stream with the reason instead of being
dropped, and so does an entry that failed ``max_deliveries`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bot.chat.models import Notification, Severity
from bot.events import Event, EventError, describe
from bot.models import RunRecord
from bot.queue import Delivery
from bot.retry import backoff
from bot.runner import MANUAL_SOURCES, Busy, Runner
from bot.scheduler import resync_members
from bot.services import Services
from bot.state import LockLost
from handlers.base import Handler, SiteView
from playbooks.base import JournalKeyUnavailable

log = logging.getLogger("tunnelwarden.worker")
# Backoff (bot.retry.backoff) while Redis does not answer: from 0.1 s up to 5 s.
REDIS_RETRY_BASE = 0.1
REDIS_RETRY_CAP = 5.0


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(
        self,
        services: Services,
        handlers: Mapping[str, Handler],
        runner: Runner,
        name: str | None = None,
    ) -> None:
        self.services = services
        self.handlers = handlers
        self.runner = runner
        self.cfg = services.settings.worker
        self.name = name or self.cfg.name or default_worker_name()
        self.redact = services.redact
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.last_poll = 0.0
        self.running = False
        self.grouped = False  # the consumer group exists (Redis may be away at start-up)
        # Acknowledgements of first deliveries, sent together: one round trip for many events.
        # Safe to delay: an entry acknowledged late is at worst delivered again, and its
        # recorded run makes that a no-op.
        self._acks: list[str] = []
        self._acks_waiting = asyncio.Event()

    @property
    def consuming(self) -> bool:
        """True while the read loop is alive (it wakes at least every ``block_ms``) and the
        consumer group has been made sure of."""
        fresh = time.monotonic() - self.last_poll < self.cfg.block_ms / 1000 + 10
        return self.running and self.grouped and fresh

    async def run(self, stop: asyncio.Event) -> None:
        queue = self.services.queue
        self.running = True
        keeper = asyncio.create_task(self._keep_alive(stop), name="keep-alive")
        reclaimer = asyncio.create_task(self._reclaim_loop(stop), name="reclaim")
        acker = asyncio.create_task(self._ack_loop(), name="acks")
        settings = self.services.settings
        scheduler = asyncio.create_task(
            self.services.scheduler.run(
                stop,
                tick=settings.scheduler.tick,
                members=lambda: resync_members(settings),
                resync_interval=settings.scheduler.resync_interval,
            ),
            name="scheduler",
        )
        self.grouped = False
        failures = 0  # consecutive Redis failures, for the backoff
        try:
            while not stop.is_set():
                self.last_poll = time.monotonic()
                free = self.cfg.concurrency - len(self.inflight)
                if free <= 0:
                    await self._wait_for_slot(stop)
                    continue
                try:
                    if not self.grouped:
                        await queue.ensure_group()
                        self.grouped = True
                        log.info("worker %s consuming %s", self.name, self.services.keys.stream)
                    deliveries = await queue.read(self.name, free, self.cfg.block_ms)
                except Exception as exc:  # weather, not disaster: Redis away or slow
                    if self.grouped and "NOGROUP" in str(exc):
                        await self._regroup()
                        continue
                    failures += 1
                    pause = backoff(failures, REDIS_RETRY_BASE, REDIS_RETRY_CAP)
                    log.warning(
                        "%s failed (%s: %s); again in %.1fs",
                        "reading the queue" if self.grouped else "creating the consumer group",
                        type(exc).__name__,
                        self.redact(str(exc)),
                        pause,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=pause)
                    continue
                failures = 0
                for delivery in deliveries:
                    self._spawn(delivery)
        finally:
            self.running = False
            await self._drain()
            for task in (keeper, reclaimer, acker, scheduler):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await self._flush_acks()
                await self.services.redis.zrem(self.services.keys.workers, self.name)
            log.info("worker %s stopped", self.name)

    async def _regroup(self) -> None:
        """Redis came back without our consumer group (restarted without persistence, or
        flushed): create it again, and say loudly what was lost."""
        log.error(
            "redis lost the consumer group %s (restart without persistence? flushed?): queued "
            "events, history and site state may be gone; re-creating it. Run Redis with "
            "appendonly yes (docs/operations.md).",
            self.services.keys.group,
        )
        self.services.metrics.redis_data_lost.inc()
        with contextlib.suppress(Exception):
            await self.services.queue.ensure_group()

    async def _ack_loop(self) -> None:
        while True:
            await self._acks_waiting.wait()
            await asyncio.sleep(0.002)  # let the events handled meanwhile join the batch
            try:
                await self._flush_acks()
            except Exception as exc:  # they stay pending; reclaim and dedup cover it
                log.warning("acknowledging failed: %s", self.redact(str(exc)))

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        self._acks_waiting.clear()
        if batch:
            await self.services.queue.ack_many(batch)

    async def _ack(self, delivery: Delivery) -> None:
        if delivery.deliveries > 1:  # it may have left an error note: clear it with the ack
            await self.services.queue.ack(delivery.entry_id)
        else:
            self._acks.append(delivery.entry_id)
            self._acks_waiting.set()

    async def _wait_for_slot(self, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {stopper, *self.inflight.values()}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._process(delivery), name=f"event {delivery.entry_id}")
        self.inflight[delivery.entry_id] = task
        entry_id = delivery.entry_id

        def forget(_task: asyncio.Task[None]) -> None:
            self.inflight.pop(entry_id, None)

        task.add_done_callback(forget)

    async def _drain(self) -> None:
        """Shutdown: let current runs finish within the grace period, hand back the rest."""
        if not self.inflight:
            return
        tasks = dict(self.inflight)
        log.info("waiting up to %.0fs for %d run(s)", self.cfg.grace_period, len(tasks))
        _, pending = await asyncio.wait(tasks.values(), timeout=self.cfg.grace_period)
        if not pending:
            return
        abandoned = [eid for eid, t in tasks.items() if t in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        idle_ms = int(self.cfg.visibility_timeout * 1000)
        with contextlib.suppress(Exception):
            await self.services.queue.hand_back(self.name, abandoned, idle_ms)
        log.warning("handed back %d unfinished run(s): %s", len(abandoned), ", ".join(abandoned))

    async def _keep_alive(self, stop: asyncio.Event) -> None:
        """Heartbeat: keep in-flight entries fresh and announce this worker as alive."""
        interval = min(self.cfg.visibility_timeout / 3, 5.0)
        keys = self.services.keys
        while True:
            try:
                await self.services.queue.touch(self.name, list(self.inflight))
                await self.services.redis.zadd(keys.workers, {self.name: time.time()})
            except Exception as exc:
                log.warning("heartbeat failed: %s", self.redact(str(exc)))
            await asyncio.sleep(interval)

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        queue = self.services.queue
        min_idle = int(self.cfg.visibility_timeout * 1000)
        while not stop.is_set():
            await asyncio.sleep(self.cfg.reclaim_interval)
            free = self.cfg.concurrency - len(self.inflight)
            if free <= 0 or stop.is_set():
                continue
            try:
                claimed = await queue.reclaim(self.name, min_idle, count=free)
            except Exception as exc:
                log.warning("reclaim failed: %s", self.redact(str(exc)))
                continue
            for delivery in claimed:
                self.services.metrics.reclaimed.inc()
                log.info("reclaimed %s (delivery %d)", delivery.entry_id, delivery.deliveries)
                if delivery.deliveries <= self.cfg.max_deliveries:
                    self._spawn(delivery)
                    continue
                try:
                    error = await queue.last_error(delivery.entry_id)
                    reason = (
                        f"gave up after {delivery.deliveries - 1} deliveries: "
                        f"{error or 'the worker handling it stopped without finishing'}"
                    )
                    await self._dead_letter(delivery, reason)
                except Exception as exc:  # Redis away: the entry stays pending, reclaimed again
                    log.warning(
                        "dead-lettering %s failed: %s", delivery.entry_id, self.redact(str(exc))
                    )

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        reason = self.redact(reason)
        # Kept for replay, so kept whole (up to a size that can be replayed at all) — except
        # for secrets someone put in an event.
        fields = {k: _clip(v, self.cfg.max_entry_bytes) for k, v in (delivery.fields or {}).items()}
        masked = dataclasses.replace(delivery, fields=self.redact.tree(fields))
        await self.services.queue.dead_letter(masked, reason)
        self.services.metrics.dead_letters.inc()
        log.error("dead letter %s: %s", delivery.entry_id, reason)

    async def _process(self, delivery: Delivery) -> None:
        try:
            await self._handle(delivery)
        except asyncio.CancelledError:
            raise
        except LockLost as exc:
            # Another worker holds the site now and resumes the run from its journal; this
            # one writes nothing more (not even an error note) and leaves the entry alone.
            self.services.metrics.locks_lost.inc()
            log.warning("event %s: %s", delivery.entry_id, self.redact(str(exc)))
        except JournalKeyUnavailable as exc:
            await self._key_missing(delivery, str(exc))
        except Exception as exc:
            # Left unacknowledged: after the visibility timeout a worker tries again, and
            # after max_deliveries it is dead-lettered with this error.
            error = self.redact(f"{type(exc).__name__}: {exc}")
            log.exception("event %s failed: %s", delivery.entry_id, error)
            with contextlib.suppress(Exception):
                await self.services.queue.note_error(delivery.entry_id, error)

    async def _key_missing(self, delivery: Delivery, message: str) -> None:
        """A run this worker cannot finish without a journal key it lacks: leave the event
        for a worker that has it (after the visibility timeout), and make noise."""
        self.services.metrics.journal_key_missing.inc()
        text = f"JournalKeyUnavailable: {message}"
        log.error("event %s (worker %s): %s", delivery.entry_id, self.name, text)
        with contextlib.suppress(Exception):
            await self.services.queue.note_error(delivery.entry_id, text)
        notifications = self.services.notifications
        event_site = _site_of(delivery)
        if notifications.enabled and await self._first_time(
            event_site, f"journal-key:{self.name}:{delivery.entry_id}"
        ):
            with contextlib.suppress(Exception):
                await notifications.send(
                    Notification(
                        severity=Severity.CRITICAL,
                        title=f"{event_site}: a run cannot finish on worker {self.name}",
                        site=event_site,
                        summary=message,
                        next_step=(
                            "Give every worker the journal keys (security.journal_key: new key "
                            "first, old keys after it); the run resumes on a worker that has it."
                        ),
                    )
                )

    async def _first_time(self, site: str, what: str) -> bool:
        """True once per ``what`` (a day), so a redelivered incident is not told again."""
        try:
            key = self.services.keys.told(site, what)
            return bool(await self.services.redis.set(key, "1", nx=True, ex=86400))
        except Exception:
            return True  # Redis is in doubt: better told twice than not at all

    async def _handle(self, delivery: Delivery) -> None:
        queue, metrics = self.services.queue, self.services.metrics
        if delivery.fields is None:
            log.warning("entry %s was trimmed before it was handled", delivery.entry_id)
            await queue.ack(delivery.entry_id)
            return
        try:
            event = Event.from_wire(
                delivery.fields.get("event"),
                max_bytes=self.cfg.max_entry_bytes,
                max_depth=self.cfg.max_entry_depth,
            )
        except EventError as exc:
            await self._dead_letter(delivery, str(exc))
            return
        metrics.events_consumed.labels(event.type).inc()
        handler = self.handlers.get(event.type)
        if handler is None:
            await self._dead_letter(delivery, f"unknown event type {event.type!r}")
            return
        try:
            data = handler.data_model.model_validate(event.data)
        except ValidationError as exc:
            await self._dead_letter(delivery, f"{event.type}: {describe(exc)}")
            return
        extra = {"event": event.id, "type": event.type, "site": event.site}
        try:
            handled = await self.runner.reconcile(
                event, handler, data, redelivered=delivery.deliveries > 1
            )
        except Busy:
            metrics.coalesced.inc()
            log.debug("site busy: hint folded into the reconcile it is owed", extra=extra)
            await self._ack(delivery)
            return
        if handled is None:
            metrics.duplicates.inc()
            log.info("duplicate of handled key %s", event.idempotency_key, extra=extra)
            await self._follow_up_once(handler, event, data)
            await self._ack(delivery)
            return
        record = handled.record
        # A converged target is the steady state: not worth a line each time at INFO.
        quiet = record.outcome in ("no_changes", "skipped", "superseded")
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "run %s: %s in %.2fs",
            record.run_id,
            record.outcome,
            record.duration_s,
            extra=extra,
        )
        await self._follow_up(handler, event, data, record, handled.view)
        await self._ack(delivery)

    async def _follow_up(
        self, handler: Handler, event: Event, data: Any, record: RunRecord, view: SiteView
    ) -> None:
        """After a run is recorded: tell people (once; a crash before marking it resends)."""
        notifications = self.services.notifications
        if handler.describe is None or not notifications.enabled:
            return
        url = notifications.run_url(event.site, record.run_id)
        message = handler.describe(event, data, record, url, view)
        if message is None or await self.services.state.notified(event.site, record.run_id):
            return
        await notifications.send(message)
        await self.services.state.mark_notified(event.site, record.run_id)

    async def _follow_up_once(self, handler: Handler, event: Event, data: Any) -> None:
        """A redelivered event whose run was recorded: finish what its worker may not have."""
        state = self.services.state
        record = await state.recorded(event.site, event.id)
        if record is None or await state.notified(event.site, event.id):
            return
        info = await state.run_info(event.site, event.id)
        view_state = json.loads(info.get("view") or "{}")
        settings = self.services.settings
        view = SiteView(
            site=event.site,
            config=settings.sites.get(event.site),
            policy=settings.policy_for(event.site),
            state=view_state,
            changes_last_hour=0,
            fence=record.fence,
            manual=event.source in MANUAL_SOURCES,
        )
        await self._follow_up(handler, event, data, record, view)


def _site_of(delivery: Delivery) -> str:
    try:
        return Event.from_wire((delivery.fields or {}).get("event")).site
    except Exception:
        return "(unknown site)"


def _clip(value: str, limit: int) -> str:
    """An oversized field as its head and its size (it could not be replayed anyway)."""
    if len(value) <= limit:
        return value
    return f"{value[:2048]}... [{len(value)} characters; cut at 2048]"
