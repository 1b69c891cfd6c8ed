"""The dependencies a run needs, built once per process and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.fernet import Fernet, MultiFernet
from redis.asyncio import Redis

from bot.azure import AzureClients
from bot.config import Settings, journal_keys
from bot.keys import Keys
from bot.metrics import Metrics
from bot.notify import Notifications
from bot.queue import EventQueue
from bot.redact import Redactor
from bot.scheduler import Scheduler
from bot.state import StateStore


@dataclass
class Services:
    settings: Settings
    redis: Redis
    keys: Keys
    state: StateStore
    queue: EventQueue
    metrics: Metrics
    azure: AzureClients
    notifications: Notifications
    redact: Redactor
    scheduler: Scheduler
    journal_cipher: MultiFernet | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        metrics: Metrics | None = None,
        redact: Redactor | None = None,
    ) -> Services:
        """``redact``: the process's redactor (the one the logs use); one is made if none."""
        keys = Keys(settings.redis.prefix)
        key = settings.security.journal_key
        redact = redact or settings.redactor()  # one per process: logs, history, chat
        return cls(
            settings=settings,
            redis=redis,
            keys=keys,
            state=StateStore(
                redis,
                keys,
                history_maxlen=settings.redis.history_maxlen,
                done_ttl=settings.worker.idempotency_ttl,
            ),
            queue=EventQueue(
                redis,
                keys,
                maxlen=settings.redis.stream_maxlen,
                dead_maxlen=settings.redis.dead_letter_maxlen,
            ),
            metrics=metrics or Metrics(),
            azure=AzureClients(settings.azure),
            notifications=Notifications(settings, redact),
            redact=redact,
            scheduler=Scheduler(redis, keys, stream_maxlen=settings.redis.stream_maxlen),
            journal_cipher=(
                MultiFernet([Fernet(k) for k in journal_keys(key)]) if key is not None else None
            ),
        )
