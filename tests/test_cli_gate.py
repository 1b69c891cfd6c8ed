"""The CLI's gate, as a user meets it (the console script in a subprocess, a real Redis).

- ``emit playbook.requested`` passes the same gate as ``playbook run``: an unknown playbook,
  bad parameters or a private address are refused with one line and nothing is queued; the
  event's data cannot confirm a destructive playbook, only ``--confirm-destructive`` can.
- ``config check`` refuses destructive playbooks without a journal key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bot.keys import Keys
from tests.test_cli import tw, tw_json


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "home.toml"
    path.write_text('[sites.home]\ndescription = "at home"\n')
    return {"TUNNELWARDEN_CONFIG": str(path)}


def _queued(redis_url: str, prefix: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(Keys(prefix).stream)
    finally:
        client.close()
    return [json.loads(fields[b"event"]) for _, fields in entries]


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        ({"playbook": "nope"}, [], "unknown playbook 'nope'"),
        (
            {"playbook": "sleep", "params": {"naps": 2}},
            [],
            "sleep: naps: Extra inputs are not permitted",
        ),
        (
            {"playbook": "update-local-gateway", "params": {"ip": "10.0.0.1"}},
            [],
            "update-local-gateway: ip: 10.0.0.1 is not usable (private)",
        ),
        (
            {"playbook": "update-local-gateway", "params": {"strategy": "recreate"}},
            [],
            "re-creating is its own playbook now: recreate-connection",
        ),
        (
            {"playbook": "recreate-connection"},
            [],
            "recreate-connection is destructive; site home does not allow destructive",
        ),
        (
            {"playbook": "recreate-connection", "confirm_destructive": True},
            [],
            "confirm_destructive cannot be set in the event's data; use --confirm-destructive",
        ),
        (
            {"playbook": "noop", "confirm_destructive": False},
            [],
            "confirm_destructive cannot be set in the event's data",
        ),
    ],
)
def test_emit_playbook_requested_meets_the_same_gate_as_playbook_run(
    redis_url: str,
    prefix: str,
    home: dict[str, str],
    data: dict[str, object],
    extra: list[str],
    message: str,
) -> None:
    args = ["emit", "playbook.requested", "--site", "home", "--data", json.dumps(data), *extra]
    result = tw(redis_url, prefix, *args, env=home)
    assert result.returncode == 2, result.stdout + result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert message in text
    assert "Traceback" not in text and "errors.pydantic.dev" not in text
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    assert _queued(redis_url, prefix) == [], "refused before anything was queued"


def test_a_requested_address_becomes_the_desired_one_whichever_way_it_comes(
    redis_url: str, prefix: str, home: dict[str, str]
) -> None:
    """A person's update-local-gateway with an ip is kept (a resync must not undo it),
    through ``emit`` as through ``playbook run``: the one ``keep_manual_address``."""
    data = {"playbook": "update-local-gateway", "params": {"ip": "203.0.113.77"}}
    args = ["emit", "playbook.requested", "--site", "home", "--data", json.dumps(data)]
    allowed = {**home, "TUNNELWARDEN_DETECT__ALLOW_DOCUMENTATION": "true"}  # 203.0.113.0/24
    result = tw(redis_url, prefix, *args, env=allowed)
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = _queued(redis_url, prefix)
    assert event["data"]["params"] == {"ip": "203.0.113.77"}  # type: ignore[index]
    client = redis.Redis.from_url(redis_url)
    try:
        state = client.hgetall(Keys(prefix).state("home"))
    finally:
        client.close()
    assert state[b"ip.v4"] == b"203.0.113.77"
    assert state[b"ip.v4.source"] == b"cli"


def test_only_the_flag_confirms_a_destructive_playbook_through_emit(
    redis_url: str, prefix: str, home: dict[str, str]
) -> None:
    data = json.dumps({"playbook": "recreate-connection", "params": {"ip": "203.0.113.7"}})
    doc = tw_json(
        redis_url,
        prefix,
        "emit",
        "playbook.requested",
        "--site",
        "home",
        "--data",
        data,
        "--confirm-destructive",
        env={**home, "TUNNELWARDEN_DETECT__ALLOW_DOCUMENTATION": "true"},
    )
    assert doc["result"] == "queued"
    (event,) = _queued(redis_url, prefix)
    assert event["type"] == "playbook.requested" and event["source"] == "cli"
    assert event["data"] == {
        "playbook": "recreate-connection",
        "params": {"ip": "203.0.113.7"},
        "requested_by": "",
        "confirm_destructive": True,
    }
    # A request that needs no confirmation carries none, and its parameters normalised.
    tw_json(
        redis_url,
        prefix,
        "emit",
        "playbook.requested",
        "--site",
        "home",
        "--data",
        json.dumps({"playbook": "sleep", "params": {"seconds": "0.01"}}),
        env=home,
    )
    second = _queued(redis_url, prefix)[1]["data"]
    assert isinstance(second, dict)
    assert second["confirm_destructive"] is False
    assert second["params"] == {"seconds": 0.01, "steps": 1}


def test_the_confirmation_flag_is_refused_for_other_event_types(
    redis_url: str, prefix: str, home: dict[str, str]
) -> None:
    args = ["emit", "test.noop", "--site", "home", "--confirm-destructive"]
    result = tw(redis_url, prefix, *args, env=home)
    assert result.returncode == 2
    assert "--confirm-destructive is for playbook.requested" in result.stderr
    assert _queued(redis_url, prefix) == []


@pytest.mark.parametrize(
    "policy",
    ["[policies]\nallow_destructive = true\n", "[sites.home.policy]\nallow_destructive = true\n"],
)
def test_config_check_refuses_destructive_playbooks_without_a_journal_key(
    tmp_path: Path, redis_url: str, prefix: str, policy: str
) -> None:
    path = tmp_path / "destructive.toml"
    path.write_text('[sites.home]\ndescription = "at home"\n\n' + policy)
    result = tw(redis_url, prefix, "config", "check", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("security.journal_key: required when destructive playbooks are allowed")
    assert "(sites.home: allow_destructive = true)" in line, "names where it is allowed"
    # With a key, the same file passes.
    key = tw(redis_url, prefix, "config", "new-key").stdout.strip()
    env = {"TUNNELWARDEN_SECURITY__JOURNAL_KEY": key}
    ok = tw(redis_url, prefix, "config", "check", "--config", str(path), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert key not in ok.stdout + ok.stderr
