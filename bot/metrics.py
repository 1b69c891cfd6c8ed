"""Prometheus metrics, on a registry owned by the process (no global state to leak into tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "tunnelwarden_events_consumed", "Events taken from the queue", ["type"], registry=r
        )
        self.duplicates = Counter(
            "tunnelwarden_events_duplicate", "Events skipped as already handled", registry=r
        )
        self.runs = Counter(
            "tunnelwarden_runs", "Playbook runs by outcome", ["playbook", "outcome"], registry=r
        )
        self.run_duration = Histogram(
            "tunnelwarden_run_duration_seconds",
            "Playbook run duration",
            ["playbook"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "tunnelwarden_dead_letters", "Entries moved to the dead-letter stream", registry=r
        )
        self.reclaimed = Counter(
            "tunnelwarden_events_reclaimed", "Entries taken over from silent workers", registry=r
        )
        self.coalesced = Counter(
            "tunnelwarden_hints_coalesced",
            "Hints that found their site busy and were folded into the reconcile owed to it",
            registry=r,
        )
        self.locks_lost = Counter(
            "tunnelwarden_locks_lost",
            "Runs stopped because their site lock (fencing number) was lost",
            registry=r,
        )
        self.journal_key_missing = Counter(
            "tunnelwarden_journal_key_missing",
            "Runs that could not read a journaled secret (no or rotated journal key)",
            registry=r,
        )
        self.redis_up = Gauge(
            "tunnelwarden_redis_up", "1 while Redis answers the health probe", registry=r
        )
        self.redis_data_lost = Counter(
            "tunnelwarden_redis_data_lost",
            "Times Redis came back without the consumer group (its data was lost)",
            registry=r,
        )
        self.redis_persistence = Gauge(
            "tunnelwarden_redis_persistence",
            "Redis persistence mode in use (1 for the current one): aof, rdb, aof+rdb, none",
            ["mode"],
            registry=r,
        )
        self.probe_up = Gauge(
            "tunnelwarden_probe_up",
            "1 if the probe's last result was ok",
            ["site", "probe"],
            registry=r,
        )
        self.probe_latency = Histogram(
            "tunnelwarden_probe_latency_seconds",
            "Probe round trip",
            ["site", "probe"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tunnel_up = Gauge(
            "tunnelwarden_tunnel_up",
            "1 while the ARM watcher last saw the site's connection Connected",
            ["site"],
            registry=r,
        )
        self.queue_lag = Gauge(
            "tunnelwarden_queue_lag", "Entries not yet delivered to any worker", registry=r
        )
        self.queue_pending = Gauge(
            "tunnelwarden_queue_pending", "Entries delivered and not yet acknowledged", registry=r
        )
        self.dead_letter_size = Gauge(
            "tunnelwarden_dead_letter_entries", "Entries in the dead-letter stream", registry=r
        )

        self.budget_tokens = Gauge(
            "tunnelwarden_arm_budget_tokens",
            "Tokens left in the shared ARM budget (last seen by this process), per class",
            ["op"],
            registry=r,
        )
        self.budget_deferred = Counter(
            "tunnelwarden_arm_calls_deferred",
            "ARM calls not sent because the shared budget had no token soon enough",
            ["op", "priority"],
            registry=r,
        )
        self.arm_throttled = Counter(
            "tunnelwarden_arm_throttled",
            "429 answers received from ARM, per class",
            ["op"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
