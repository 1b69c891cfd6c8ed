"""Redis key names.

Every key of one site carries the hash tag ``{site}`` and every queue key carries ``{events}``.
The scripts that observe an address (site state + stream) and record a run (site keys +
schedule) touch both groups in one atomic step, so tunnelwarden runs on a single Redis server
(or a Sentinel-managed primary), not on a Redis Cluster.
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
    def schedule(self) -> str:
        """Sorted set: ``type|site`` → when the scheduler publishes that event (unix seconds)."""
        return f"{self.prefix}:{{events}}:schedule"

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
        """String: the fencing number of the run that holds the site (with a TTL)."""
        return f"{self._site(site)}:lock"

    def fence(self, site: str) -> str:
        """Counter: the last fencing number handed out for the site (never goes down)."""
        return f"{self._site(site)}:fence"

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

    def probe(self, site: str, name: str) -> str:
        """Stream (capped): one entry per result of the site's probe ``name``."""
        return f"{self._site(site)}:probe:{name}"

    def alert(self, digest: str) -> str:
        """An alert already accepted (de-duplication of Azure Monitor's retries)."""
        return f"{self.prefix}:{{events}}:alert:{digest}"

    def told(self, site: str, what: str) -> str:
        """A notice already sent, so an incident is told once (not at every redelivery)."""
        return f"{self._site(site)}:told:{what}"

    def changes(self, site: str) -> str:
        """Sorted set of applied changes (member = run id, score = time), for rate limits."""
        return f"{self._site(site)}:changes"
