"""The failover reconciler's decisions: pure, over a site view (no Redis, no devices).

End-to-end runs against the simulators are in tests/test_failback_e2e.py.
"""

from __future__ import annotations

import re
from typing import Any

from bot.chat.models import Severity
from bot.config import Policy, SiteConfig
from bot.damping import DampingState, PathSamples
from bot.events import Event
from bot.models import Decision, PlaybookResult, RunRecord
from handlers.base import SiteView
from handlers.failover import FailoverCheck, PathHint, decide, describe, judge, remember

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PRIMARY, SECONDARY = "192.0.2.10", "192.0.2.11"


def site(actor: str = "sonicwall", **failover: Any) -> SiteConfig:
    devices: list[dict[str, Any]] = [
        {
            "name": "fw",
            "kind": "sonicwall",
            "url": "http://127.0.0.1:1",
            "username": "admin",
            "password": "pw",
            "policy": "Azure",
        },
        {"name": "lm", "kind": "kemp", "url": "http://127.0.0.1:2", "api_key": "k"},
    ]
    return SiteConfig.model_validate(
        {
            "resource_group": "rg",
            "local_network_gateway": "lng",
            "connection": "conn",
            "probes": [
                {"name": "ike-a", "kind": "tcp", "target": "127.0.0.1:500"},
                {"name": "ike-b", "kind": "tcp", "target": "127.0.0.1:501"},
                {"name": "sec", "kind": "tcp", "target": "127.0.0.1:502"},
                {
                    "name": "inside",
                    "kind": "tcp",
                    "target": "127.0.0.1:503",
                    "through_tunnel": True,
                },
            ],
            "devices": devices,
            "traffic_manager": {"resource_group": "rg", "profile": "vpn", "endpoint": "home"},
            "failover": {
                "actor": actor,
                "primary": PRIMARY if actor != "kemp" else "10.0.0.11",
                "secondary": SECONDARY,
                "primary_probes": ["ike-a", "ike-b"],
                "secondary_probes": ["sec"],
                **failover,
            },
        }
    )


def fields(prefix: str, record: DampingState | PathSamples) -> dict[str, str]:
    return {prefix + k: v for k, v in record.to_fields().items()}


def view(
    config: SiteConfig | None = None,
    *,
    state: DampingState | None = None,
    primary: PathSamples | None = None,
    secondary: PathSamples | None = None,
    now: float = NOW,
    **extra: str,
) -> SiteView:
    data: dict[str, str] = {}
    data.update(fields("damping.", state or DampingState()))
    data.update(fields("path.primary.", primary or PathSamples()))
    data.update(fields("path.secondary.", secondary or PathSamples()))
    data.update(extra)
    return SiteView(
        site="home",
        config=config or site(),
        policy=Policy(),
        state=data,
        changes_last_hour=0,
        now=now,
    )


def check() -> tuple[Event, FailoverCheck]:
    return Event.new("failover.check", "home", source="scheduler"), FailoverCheck()


def record(*results: tuple[str, str, str | None], outcome: str = "ok") -> RunRecord:
    return RunRecord(
        run_id="r1",
        site="home",
        event_type="failover.check",
        event_source="scheduler",
        idempotency_key="k",
        outcome=outcome,  # type: ignore[arg-type]
        playbooks=[
            PlaybookResult(playbook=name, outcome=out, error_code=code)  # type: ignore[arg-type]
            for name, out, code in results
        ],
        started_at=NOW,
        finished_at=NOW + 5,
    )


# The primary judged down once (3 failures at NOW - 60), up again since NOW - 400.
DOWN_ONCE = PathSamples(judged_up=False, fail_streak=3, downs=1, down_at=NOW - 60, last_at=NOW - 60)
BACK = PathSamples(up_streak=20, up_since=NOW - 400, last_at=NOW - 1, downs=1, down_at=NOW - 900)
ON_SECONDARY = DampingState(active="secondary", seen_downs=1, penalty=1000, penalty_at=NOW - 900)


async def test_a_site_without_a_failover_pair_is_skipped() -> None:
    decision = await decide(*check(), view(SiteConfig()))
    assert decision.playbooks == [] and "no [failover] pair" in decision.reason


async def test_the_primary_judged_down_fails_over_and_keeps_preempt_off() -> None:
    event = Event.new("path.failed", "home", source="paths")
    v = view(primary=DOWN_ONCE)
    decision = await decide(event, PathHint(failing=["ike-a", "ike-b"]), v)
    (call,) = decision.playbooks
    assert (call.name, call.params) == ("sonicwall-preempt", {"enabled": False, "interval": 60})
    assert decision.reason.startswith("primary failed 3 checks in a row: traffic on secondary")
    assert decision.wake_at is None  # nothing for time to decide while the primary is down

    done = record(("sonicwall-preempt", "no_changes", None), outcome="no_changes")
    out = remember(event, PathHint(), done, v)
    assert out["damping.active"] == "secondary" and out["damping.seen_downs"] == "1"
    assert float(out["damping.penalty"] or 0) == 1000.0
    note = describe(event, PathHint(), done, None, v)
    assert note is not None and note.severity == Severity.WARNING
    assert note.title == "home: primary failed 3 checks in a row: traffic on secondary"
    # Level-triggered: the same view decides the same (remember is written with the record).
    again = await decide(event, PathHint(), v)
    assert again == decision


async def test_a_stable_primary_fails_back_with_preempt_and_the_proof_of_traffic() -> None:
    v = view(state=ON_SECONDARY, primary=BACK)
    decision = await decide(*check(), v)
    names = [(c.name, c.params) for c in decision.playbooks]
    assert names == [
        ("sonicwall-preempt", {"enabled": True, "interval": 60}),
        ("verify-tunnel", {"via": PRIMARY, "timeout": 180.0}),
        ("verify-probes", {"timeout": 180.0}),
    ]
    assert decision.reason.startswith("failing back to primary: primary up continuously since")
    assert decision.wake_at == NOW  # take the verdict at once

    ok = record(
        ("sonicwall-preempt", "ok", None),
        ("verify-tunnel", "ok", None),
        ("verify-probes", "ok", None),
    )
    out = remember(*check(), ok, v)
    assert out["damping.active"] == "primary" and out["damping.verify_ok"] == "1"
    # The next run (verdict taken) turns preempt off again: the appliance must not fail back
    # by itself the next time the primary flaps.
    after = DampingState.from_fields(
        {k.removeprefix("damping."): v or "" for k, v in out.items() if k.startswith("damping.")}
    )
    nxt = await decide(*check(), view(state=after, primary=BACK, now=NOW + 6))
    assert [(c.name, c.params["enabled"]) for c in nxt.playbooks] == [("sonicwall-preempt", False)]
    assert nxt.wake_at == after.verify_until  # the end of the verify window


async def test_a_failed_verify_rolls_back_and_says_so() -> None:
    v = view(state=ON_SECONDARY, primary=BACK)
    failed = record(
        ("sonicwall-preempt", "ok", None),
        ("verify-tunnel", "failed", "VerifyFailed"),
        outcome="failed",
    )
    out = remember(*check(), failed, v)
    assert out["damping.active"] == "secondary" and out["damping.verify_until"] == ""
    assert float(out["damping.probation_from"] or 0) == NOW + 5
    note = describe(*check(), failed, None, v)
    assert note is not None and note.severity == Severity.WARNING
    assert note.title.startswith("home: failback to primary failed (verify failed); rolled back")
    assert "failing back to primary" in note.summary


async def test_a_busy_device_is_no_verdict_and_is_said_once() -> None:
    v = view(state=ON_SECONDARY, primary=BACK)
    busy = record(("sonicwall-preempt", "failed", "SessionBusy"), outcome="failed")
    out = remember(*check(), busy, v)
    assert out["damping.active"] == "primary" and out["damping.verify_ok"] == "0"
    assert out["damping.verify_until"] != ""  # still waiting for its verdict
    note = describe(*check(), busy, None, v)
    assert note is not None and note.title.startswith("home: failing back to primary")
    # A failure with nothing new to say: once, then quiet while it retries.
    stuck = DampingState(
        active="primary", seen_downs=1, verify_until=NOW + 100, last_failback_at=NOW - 10
    )
    first = describe(*check(), busy, None, view(state=stuck, primary=BACK))
    assert first is not None and first.title == "home: failover actor does not converge"
    again = view(state=stuck, primary=BACK, **{"failover.status": "retrying"})
    assert describe(*check(), busy, None, again) is None


async def test_kemp_disables_the_primary_real_server_unless_the_secondary_is_down_too() -> None:
    config = site("kemp", device="lm")
    decision = await decide(*check(), view(config, primary=DOWN_ONCE))
    (call,) = decision.playbooks
    assert call.name == "kemp-real-server"
    assert call.params == {"server": "10.0.0.11", "enabled": False, "device": "lm"}
    dead = PathSamples(judged_up=False, fail_streak=5, downs=1, down_at=NOW - 60)
    decision = await decide(*check(), view(config, primary=DOWN_ONCE, secondary=dead))
    assert decision.playbooks[0].params["enabled"] is True  # nothing to fail over to
    assert "(secondary judged down too)" in decision.reason


async def test_traffic_manager_takes_the_endpoint_out_of_rotation() -> None:
    config = site("traffic-manager")
    (call,) = (await decide(*check(), view(config, primary=DOWN_ONCE))).playbooks
    assert (call.name, call.params) == ("traffic-manager-endpoint", {"enabled": False})
    back = await decide(*check(), view(config, state=ON_SECONDARY, primary=BACK))
    assert back.playbooks[0].params == {"enabled": True, "timeout": 180.0}
    assert [c.name for c in back.playbooks][1:] == ["verify-probes"]


async def test_a_person_s_hold_stops_the_failback_until_released() -> None:
    held = view(state=ON_SECONDARY, primary=BACK, **{"failover.hold": "indefinite"})
    decision = await decide(*check(), held)
    assert [c.params["enabled"] for c in decision.playbooks] == [False]
    assert decision.reason.startswith("automatic failback held until released")
    j = judge(held)
    assert j is not None and j.state.hold_indefinite
    released = view(state=j.state, primary=BACK, **{"failover.hold": ""})
    decision = await decide(*check(), released)
    assert decision.reason.startswith("manual failback hold released; failing back")
    until = view(state=ON_SECONDARY, primary=BACK, **{"failover.hold": f"{NOW + 600}"})
    j = judge(until)
    assert j is not None and j.state.hold_until == NOW + 600
    assert (await decide(*check(), until)).wake_at == NOW + 600


async def test_a_paused_site_is_left_alone() -> None:
    v = view(primary=DOWN_ONCE, paused="1")
    decision = await decide(*check(), v)
    assert decision == Decision.skip("site home is paused")
    assert remember(*check(), record(outcome="skipped"), v) == {}


async def test_the_suppressed_message_goes_out_once_across_successive_runs() -> None:
    """Flapping every two minutes, each run starting from what the last one remembered (as
    the runner writes it): one "suppressed until ~HH:MM" for the episode, not one per flap."""
    state = DampingState()
    titles: list[str] = []
    t = NOW
    for flap in range(1, 8):
        for event, obs in (
            # judged down (the sampler's edge), then back up a minute later (a resync)
            (
                Event.new("path.failed", "home", source="paths"),
                PathSamples(judged_up=False, fail_streak=3, downs=flap, down_at=t, last_at=t),
            ),
            (
                Event.new("failover.check", "home", source="scheduler"),
                PathSamples(up_streak=6, up_since=t + 60, downs=flap, last_at=t + 60),
            ),
        ):
            now = t if event.type == "path.failed" else t + 60
            v = view(state=state, primary=obs, now=now)
            data = PathHint() if event.type == "path.failed" else FailoverCheck()
            decision = await decide(event, data, v)
            assert decision.playbooks[0].params["enabled"] is False  # no failback meanwhile
            done = record(("sonicwall-preempt", "no_changes", None), outcome="no_changes")
            note = describe(event, data, done, None, v)
            if note is not None:
                titles.append(note.title)
            out = remember(event, data, done, v)
            state = DampingState.from_fields(
                {k.removeprefix("damping."): x or "" for k, x in out.items() if k[:8] == "damping."}
            )
            # A rerun from what was remembered has nothing new to say.
            assert (
                describe(event, data, done, None, view(state=state, primary=obs, now=now)) is None
            )
        t += 120
    assert state.suppressed and state.episode_flaps == 7 and state.episode_notified
    suppressed = [x for x in titles if "primary flapping, failback suppressed until ~" in x]
    assert len(suppressed) == 1, titles
    assert re.search(r"until ~\d\d:\d\d UTC", suppressed[0])
    assert titles[0] == "home: primary failed 3 checks in a row: traffic on secondary"
    assert len(titles) == 2  # the failover, then the suppression: flaps on the secondary are quiet
