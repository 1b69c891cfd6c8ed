"""The console script, run as a user runs it (subprocess), against a real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.events import Event
from bot.keys import Keys
from bot.services import Services
from tests.conftest import cli_env, tunnelwarden


def tw(
    redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tunnelwarden(), *args],
        env={**cli_env(redis_url, prefix), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tw_json(redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None) -> Any:
    result = tw(redis_url, prefix, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A config with one site, ``home`` (the gate refuses unknown sites), as the environment
    the commands run with."""
    path = tmp_path / "home.toml"
    path.write_text('[sites.home]\ndescription = "at home"\n')
    return {"TUNNELWARDEN_CONFIG": str(path)}


GOOD = """
[redis]
prefix = "tw"

[worker]
concurrency = 2

[policies]
max_changes_per_hour = 4

[sites.home]
description = "FRITZ!Box at home"
resource_group = "rg-vpn"
local_network_gateway = "lng-home"
connection = "conn-home"

[sites.home.policy]
paused = true
"""


def test_config_check_accepts_a_valid_file(tmp_path: Path, redis_url: str, prefix: str) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(GOOD)
    result = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 site(s)" in result.stdout


def test_shipped_example_config_is_valid(redis_url: str, prefix: str) -> None:
    example = Path(__file__).parent.parent / "deploy" / "config.example.toml"
    secrets = {
        "HOME_PUSH_PASSWORD": "push-secret",
        "SLACK_WEBHOOK_URL": "https://chat.example.invalid/hook/T/B/x",
    }
    result = tw(redis_url, prefix, "config", "check", "--config", str(example), env=secrets)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = tw(redis_url, prefix, "config", "check", "--config", str(example))
    assert missing.returncode == 1
    assert "sites.home.push: password_env: environment variable HOME_PUSH_PASSWORD is not set" in (
        missing.stdout
    )


BAD = """
[redis]
url = "http://127.0.0.1:6379"
password = "hunter2hunter2"

[worker]
concurrency = "many"
max_deliveries = 0
colour = "blue"

[sites.Home]
description = "bad name"

[sites.office.policy]
lock_ttl = -1

[security]
journal_key_file = "/nonexistent/key"

[[notify]]
kind = "slack"
url = "https://chat.example.invalid/hook/T0/B0/secret-token"
"""


def test_config_check_names_each_key_and_problem(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    result = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    expected = [
        "redis.password: secrets must not be written in the config file; "
        "set TUNNELWARDEN_REDIS__PASSWORD, or use password_file or password_env",
        "notify.0.url: secrets must not be written in the config file; use url_file or url_env",
        "redis.url: unsupported scheme; use one of redis://, rediss://, unix://, "
        "redis+sentinel://, rediss+sentinel://",
        "worker.concurrency: Input should be a valid integer, unable to parse string as an integer",
        "worker.max_deliveries: Input should be greater than or equal to 1",
        "worker.colour: Extra inputs are not permitted",
        "sites.Home: site name 'Home' must be lowercase letters, digits, '-' or '_' (max 63)",
    ]
    for line in expected:
        assert line in lines, f"missing {line!r} in {lines}"
    assert any(line.startswith("sites.office.policy.lock_ttl: ") for line in lines)
    assert any("security: journal_key_file: cannot read /nonexistent/key" in ln for ln in lines)
    assert "hunter2hunter2" not in result.stdout + result.stderr
    assert "secret-token" not in result.stdout + result.stderr


def test_config_check_reports_toml_syntax_and_env_errors(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[worker\nconcurrency = 2\n")
    result = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}: not valid TOML:")

    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    result = tw(
        redis_url,
        prefix,
        "config",
        "check",
        "--config",
        str(good),
        env={"TUNNELWARDEN_WORKER__CONCURRENCY": "0"},
    )
    assert result.returncode == 1
    assert result.stdout.strip() == "worker.concurrency: Input should be greater than or equal to 1"


def test_secret_from_file_and_env(tmp_path: Path, redis_url: str, prefix: str) -> None:
    key = tw(redis_url, prefix, "config", "new-key").stdout.strip()
    keyfile = tmp_path / "journal.key"
    keyfile.write_text(key + "\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[security]\njournal_key_file = "{keyfile}"\n')
    assert tw(redis_url, prefix, "config", "check", "--config", str(path)).returncode == 0
    result = tw(
        redis_url,
        prefix,
        "config",
        "check",
        env={"TUNNELWARDEN_SECURITY__JOURNAL_KEY": "not-a-key"},
    )
    assert result.returncode == 1
    assert result.stdout.startswith("security.journal_key: must be a Fernet key")
    assert "not-a-key" not in result.stdout


def test_emit_run_history_status_and_dead_letters_json(
    redis_url: str, prefix: str, home: dict[str, str]
) -> None:
    emitted = tw_json(redis_url, prefix, "emit", "test.noop", "--site", "home", env=home)
    assert emitted["result"] == "queued"
    assert emitted["event"]["type"] == "test.noop"
    assert emitted["event"]["schema"] == 1
    # What a newer (or broken) source might leave on the stream: dead-lettered, not dropped.
    stray = Event.new("made.up", "home", source="elsewhere")
    client = redis.Redis.from_url(redis_url)
    client.xadd(Keys(prefix).stream, {"event": stray.to_wire()})
    client.close()

    # No worker is running: `playbook run` runs one locally until its own run is recorded,
    # which also drains the events queued above.
    record = tw_json(
        redis_url,
        prefix,
        "playbook",
        "run",
        "sleep",
        "--site",
        "home",
        "--param",
        "seconds=0.05",
        "--param",
        "steps=2",
        env=home,
    )
    assert record["outcome"] == "ok"
    assert record["event_type"] == "playbook.requested"
    assert record["playbooks"][0]["playbook"] == "sleep"
    assert record["playbooks"][0]["detail"] == "slept 2 x 0.05s"
    assert set(record) >= {"run_id", "site", "outcome", "playbooks", "started_at", "finished_at"}

    history = tw_json(redis_url, prefix, "history", "--site", "home", "--limit", "5", env=home)
    assert record["run_id"] in [h["run_id"] for h in history]

    status = tw_json(redis_url, prefix, "status", env=home)
    assert set(status) >= {"queue", "workers", "sites", "redis", "state_dir"}  # only added
    assert status["redis"]["persistence"] in ("none", "aof", "rdb", "aof+rdb", "unknown")
    assert status["queue"]["lag"] == 0 and status["queue"]["dead_letters"] == 1
    (site,) = status["sites"]
    assert site["name"] == "home"

    dead = tw_json(redis_url, prefix, "dead-letters", env=home)
    assert isinstance(dead, list) and len(dead) == 1
    assert dead[0]["reason"] == "unknown event type 'made.up'"
    assert json.loads(dead[0]["raw"]["event"])["id"] == stray.id


def test_human_output_uses_tables(redis_url: str, prefix: str, home: dict[str, str]) -> None:
    run = tw(redis_url, prefix, "playbook", "run", "noop", "--site", "home", env=home)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("no_changes playbook.requested on home")
    listing = tw(redis_url, prefix, "history", env=home)
    assert "┃ site" in listing.stdout and "no_changes" in listing.stdout


def test_dry_run_shows_the_plan_and_writes_nothing(
    redis_url: str, prefix: str, home: dict[str, str]
) -> None:
    plan = tw_json(
        redis_url,
        prefix,
        "playbook",
        "run",
        "notify",
        "--site",
        "home",
        "--param",
        "message=hello",
        "--dry-run",
        env=home,
    )
    assert plan == {
        "playbook": "notify",
        "site": "home",
        "dry_run": True,
        "converged": False,
        "changes": [{"target": "site home", "field": "notify", "old": None, "new": "hello"}],
        "notes": [],
    }
    assert tw_json(redis_url, prefix, "history", env=home) == []
    assert tw_json(redis_url, prefix, "status", env=home)["queue"]["length"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["emit", "ip.changed", "--site", "Bad Site"], "unknown site 'Bad Site' (sites: home)"),
        (["emit", "ip.changed", "--site", "home", "--data", "[1]"], "must be a JSON object"),
        (["emit", "made.up", "--site", "home"], "unknown event type 'made.up'"),
        (["emit", "ip.chnaged", "--site", "home"], "unknown event type 'ip.chnaged'"),
        (["emit", "ip.changed", "--site", "home", "--data", '{"ip": "10.1.1.1"}'], "private"),
        (["emit", "ip.changed", "--site", "home", "--data", "{}"], "ip.changed: ip: Field"),
        (["playbook", "run", "nope", "--site", "home", "--dry-run"], "unknown playbook 'nope'"),
        (["playbook", "run", "noop", "--site", "office"], "unknown site 'office'"),
        (
            ["playbook", "run", "sleep", "--site", "home", "--param", "x", "--dry-run"],
            "expected k=v",
        ),
        (
            ["playbook", "run", "sleep", "--site", "home", "--param", "naps=2"],
            "sleep: naps: Extra inputs are not permitted",
        ),
        (
            ["playbook", "run", "update-local-gateway", "--site", "home", "--param", "ip=10.0.0.1"],
            "update-local-gateway: ip: 10.0.0.1 is not usable (private)",
        ),
        (
            [
                "playbook",
                "run",
                "update-local-gateway",
                "--site",
                "home",
                "--param",
                "ip=100.64.1.1",
            ],
            "(cgnat)",
        ),
        (
            ["playbook", "run", "recreate-connection", "--site", "home"],
            "recreate-connection is destructive; site home does not allow destructive",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_queues_nothing(
    redis_url: str, prefix: str, home: dict[str, str], args: list[str], message: str
) -> None:
    """One gate for every entry point: the same refusals for a dry-run and a real run, one
    line each, and nothing queued."""
    result = tw(redis_url, prefix, *args, env=home)
    assert result.returncode == 2, result.stdout + result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert message in text
    assert "Traceback" not in text and "errors.pydantic.dev" not in text
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    assert tw_json(redis_url, prefix, "status", env=home)["queue"]["length"] == 0


def test_playbook_list_json() -> None:
    result = subprocess.run(
        [*tunnelwarden(), "playbook", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"]: p for p in json.loads(result.stdout)}
    assert {"notify", "noop", "sleep"} <= set(names)
    assert "seconds" in names["sleep"]["params"]


def test_unreachable_redis_is_a_clear_error(prefix: str) -> None:
    result = tw("redis://127.0.0.1:1/0", prefix, "status")
    assert result.returncode == 4  # README's exit codes: Redis unreachable
    assert "redis:" in result.stderr and "Traceback" not in result.stderr


# --- status, probes, warnings ------------------------------------------------------------

WIDE = {"COLUMNS": "200"}  # rich wraps table cells at the default 80 columns


def probes_toml(port: int, *, interval: int = 30) -> str:
    return f"""
[sites.home]
description = "at home"

[[sites.home.probes]]
name = "kms"
kind = "tcp"
target = "127.0.0.1:{port}"
through_tunnel = true
recover_after = 1

[[sites.home.probes]]
name = "ike"
kind = "ikev2"
target = "127.0.0.1:{port}"
interval = {interval}
timeout = 1
"""


def test_status_shows_each_sites_tunnel_and_probes(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    path = tmp_path / "probes.toml"
    path.write_text(probes_toml(9))
    env = {"TUNNELWARDEN_CONFIG": str(path), **WIDE}
    client = redis.Redis.from_url(redis_url)
    client.hset(
        Keys(prefix).state("home"),
        mapping={
            "tunnel.status": "NotConnected",
            "tunnel.since": f"{time.time() - 125:.3f}",
            "probe.kms.state": "down",
            "probe.ike.state": "up",
        },
    )
    client.close()
    result = tw(redis_url, prefix, "status", env=env)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "reconcile" in line)
    assert "tunnel" in header and "probes" in header
    (row,) = [line for line in result.stdout.splitlines() if "│ home" in line]
    assert "NotConnected 2m" in row
    assert "1/2 up (down: kms)" in row
    doc = tw_json(redis_url, prefix, "status", env=env)
    (site,) = doc["sites"]
    assert site["state"]["tunnel.status"] == "NotConnected"


async def _tw(redis_url: str, prefix: str, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The console script without blocking the event loop (the responders run in it)."""
    proc = await asyncio.create_subprocess_exec(
        *tunnelwarden(),
        *args,
        env={**cli_env(redis_url, prefix), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, errs = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), errs.decode()


async def test_probe_run_and_list_against_a_local_responder(
    tmp_path: Path, redis_url: str, prefix: str, services: Services
) -> None:
    from bot.probes import parse_probe
    from bot.sim.sites import start_sites_sim
    from bot.sources.probing import ProbePoller

    sim = await start_sites_sim(
        {"sites": [{"name": "home", "responders": [{"name": "kms", "kind": "tcp"}]}]}
    )
    port = sim.port("home", "kms")
    path = tmp_path / "probes.toml"
    path.write_text(probes_toml(port, interval=60))
    env = {"TUNNELWARDEN_CONFIG": str(path), **WIDE}
    series = services.keys.probe("home", "kms")
    try:
        code, out, _ = await _tw(
            redis_url, prefix, "probe", "run", "kms", "--site", "home", env=env
        )
        assert code == 0
        assert out.startswith("up home/kms (tcp) in ")
        assert f": ok: connected to 127.0.0.1:{port} in " in out
        code, out, _ = await _tw(
            redis_url, prefix, "probe", "run", "kms", "--site", "home", "--json", env=env
        )
        assert code == 0
        doc = json.loads(out)
        assert (doc["site"], doc["probe"], doc["kind"], doc["ok"]) == ("home", "kms", "tcp", True)
        assert doc["reason"] == "ok" and doc["latency_s"] > 0
        assert await services.redis.exists(series) == 0, "probe run records nothing"

        await sim.set_state("home", "kms", up=False)
        code, out, _ = await _tw(
            redis_url, prefix, "probe", "run", "kms", "--site", "home", env=env
        )
        assert code == 1
        assert out.strip() == (
            f"down home/kms (tcp): refused: 127.0.0.1:{port} refused the connection"
        )
        code, _, errs = await _tw(
            redis_url, prefix, "probe", "run", "nope", "--site", "home", env=env
        )
        assert code == 2
        assert "site home has no probe 'nope' (probes: ike, kms)" in " ".join(errs.split())

        listed = await _tw(redis_url, prefix, "probe", "list", "--json", env=env)
        assert listed[0] == 0
        rows = {r["probe"]: r for r in json.loads(listed[1])}
        assert set(rows) == {"kms", "ike"}
        assert rows["kms"]["state"] == "unknown" and rows["kms"]["checked"] is None
        assert (rows["kms"]["kind"], rows["kms"]["through_tunnel"]) == ("tcp", True)
        assert (rows["ike"]["kind"], rows["ike"]["interval"]) == ("ikev2", 60)

        await sim.set_state("home", "kms", up=True)
        spec = parse_probe(
            {"name": "kms", "kind": "tcp", "target": f"127.0.0.1:{port}", "recover_after": 1}
        )
        await ProbePoller(services, "home", spec).poll()  # what the sources record
        code, out, _ = await _tw(redis_url, prefix, "probe", "list", env=env)
        assert code == 0
        (row,) = [line for line in out.splitlines() if "│ kms" in line]
        assert "│ tcp" in row and "│ yes" in row and "│ up" in row
        assert f"ok: connected to 127.0.0.1:{port}" in row and "s ago" in row
        (ike,) = [line for line in out.splitlines() if "│ ike" in line]
        assert "unknown" in ike and "never" in ike
    finally:
        await sim.close()


def test_config_check_warns_of_a_fast_ikev2_probe(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    path = tmp_path / "fast.toml"
    path.write_text(probes_toml(500, interval=10))
    result = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    warning, ok = result.stdout.strip().splitlines()
    assert warning == (
        "warning: sites.home.probes.1 (ike): interval 10s: each IKEv2 probe leaves a half-open "
        "SA on the responder; use 60s (strongSwan ignores a peer after 5)"
    )
    assert ok.startswith("ok: ")
    path.write_text(probes_toml(500, interval=60))
    quiet = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert quiet.returncode == 0 and "warning" not in quiet.stdout


def test_a_fast_ikev2_probe_is_warned_of_at_start_up(
    tmp_path: Path, redis_url: str, prefix: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "fast.toml"
    path.write_text(probes_toml(500, interval=10))
    proc = subprocess.Popen(
        [*tunnelwarden(), "--config", str(path), "worker"],
        env=cli_env(redis_url, prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(proc)  # killed at the end whatever happens
    assert proc.stderr is not None
    for _ in range(50):  # the first lines it logs
        line = json.loads(proc.stderr.readline())
        if line.get("level") == "warning" and line["msg"].startswith("config: "):
            break
    else:
        raise AssertionError("no config warning logged at start-up")
    assert line["msg"] == (
        "config: sites.home.probes.1 (ike): interval 10s: each IKEv2 probe leaves a half-open "
        "SA on the responder; use 60s (strongSwan ignores a peer after 5)"
    )
