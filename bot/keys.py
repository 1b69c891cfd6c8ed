"""Redis key names.

Every key of one site carries the hash tag ``{site}`` and every queue key carries ``{events}``,
so on a Redis Cluster the keys that are written together (a run's journal, the site's history
and its idempotency keys; the stream and its dead-letter stream) share a hash slot and can be
written in one MULTI.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "tw"

    @property
    def stream(self) -> str:
        return f"{self.prefix}:{{events}}"

    @property
    def group(self) -> str:
        return "workers"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:{{events}}:dead"

    @property
    def errors(self) -> str:
        """Hash: stream entry id → the last error that entry raised (for its dead letter)."""
        return f"{self.prefix}:{{events}}:errors"

    @property
    def workers(self) -> str:
        """Sorted set: consumer name → last heartbeat (unix seconds)."""
        return f"{self.prefix}:{{events}}:workers"

    @property
    def sites(self) -> str:
        """Set of sites that have state or history."""
        return f"{self.prefix}:sites"

    def leader(self, role: str) -> str:
        return f"{self.prefix}:leader:{role}"

    def _site(self, site: str) -> str:
        return f"{self.prefix}:site:{{{site}}}"

    def state(self, site: str) -> str:
        return f"{self._site(site)}:state"

    def lock(self, site: str) -> str:
        return f"{self._site(site)}:lock"

    def done(self, site: str, key: str) -> str:
        return f"{self._site(site)}:done:{key}"

    def history(self, site: str) -> str:
        return f"{self._site(site)}:history"

    def run(self, site: str, run_id: str) -> str:
        """Hash: a run's status, attempt count and result."""
        return f"{self._site(site)}:run:{run_id}"

    def journal(self, site: str, run_id: str) -> str:
        """List: the run's journal, one JSON record per step boundary."""
        return f"{self._site(site)}:journal:{run_id}"

    def active(self, site: str) -> str:
        """Set of run ids started and not yet recorded."""
        return f"{self._site(site)}:active"

    def changes(self, site: str) -> str:
        """Sorted set of applied changes (member = run id, score = time), for rate limits."""
        return f"{self._site(site)}:changes"
