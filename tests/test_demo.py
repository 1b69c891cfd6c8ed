"""`tunnelwarden demo`, run as a newcomer runs it: its own private Redis, no cloud account."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import tunnelwarden


def test_demo_plays_ip_changes_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    result = subprocess.run(
        [
            *tunnelwarden(),
            "demo",
            "--changes",
            "3",
            "--tunnel-delay",
            "0.3",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={**env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "ARM writes: 0 (already converged)" in out
    assert out.count("-> good 203.0.113.") == 3
    assert "lng lng-home gatewayIpAddress: 198.51.100.10 -> 203.0.113.10" in out
    assert "playbook reset-connection: ok" in out  # the third change needed a reset
    assert "chat home: new public IP 203.0.113.12 applied, tunnel back" in out
    pushed = out.index("myip=203.0.113.12")
    assert out.index("done  ok", pushed) < out.index("chat home: new public IP 203.0.113.12"), (
        "a run's chat line is shown after the run it reports on"
    )
    assert "3/3 changes applied;" in out
    assert "Tunnels now: home Connected, branch Connected" in out
    # Nobody says the tunnel dropped: the ARM watcher notices, a reset heals it.
    drop = out[out.index("the tunnel drops, nobody tells the bot") :]
    assert "chat home: tunnel was down; a reset brought it back" in drop
    assert "reset-connection (ok)" in drop
    # Azure says Connected, nothing passes: the probes behind the tunnel notice.
    probe = out[out.index("nothing passes the tunnel") :]
    assert "chat branch: nothing passed the tunnel; a reset brought it back" in probe
    assert "fail through the tunnel (2 of quorum 2): reset" in probe
    # The campus's primary gateway flaps: the bot keeps traffic on the secondary, says so
    # once, and fails back once the primary is stable.
    failback = out[out.index("the primary gateway flaps; failback waits") :]
    assert re.search(
        r"chat campus: primary flapping, failback suppressed until ~\d\d:\d\d UTC", failback
    )
    assert failback.count("failback suppressed") == 1
    assert "(1 failback); preempt off again" in failback
    assert "primary stable: traffic verified on primary" in failback
    assert "probe ike-" not in failback, "a path's probe is told of by the failover reconciler"
    assert "campus: tunnel Connected but degraded" not in out, "one gateway at a time by design"
    assert "campus-demo-fw-pw" not in out + result.stderr
    # In Slack, alice asks for a destructive playbook: the dry-run, an approval request her
    # own click cannot decide, nothing deleted until bob approves, then the run's outcome.
    chat = out[out.index("a destructive playbook asked for in chat") :]
    assert "slack alice: /tunnelwarden playbook recreate-connection home" in chat
    assert "slack bot (to the asker): dry-run of recreate-connection on home:" in chat
    assert "connection conn-home recreate: NotConnected -> delete and re-create" in chat
    assert "asks to run recreate-connection (destructive) on home" in chat
    assert "[Approve] [Deny]" in chat
    assert "not allowed: you asked for" in chat
    assert "connection conn-home untouched so far (nothing ran)" in chat
    assert re.search(r"approval \w+ approved by bob: recreate-connection on home queued", chat)
    assert "slack bot (in #tunnelwarden): ok: playbook.requested on home" in chat
    assert "approved by slack:T0SIMTEAM1:U0DEMOBOB01" in chat
    assert "recreate-connection: ok connection conn-home re-created" in chat
    assert "conn-home re-created after bob's approval; tunnel Connected" in chat
    assert "xoxb-" not in out + result.stderr and "xapp-" not in out + result.stderr
    assert any((tmp_path / "state").glob("appendonly*")), "the private Redis kept no data"
