"""Handlers are pure decisions over a site view: checked without Redis or Azure."""

from __future__ import annotations

import time

import pytest

from bot.config import Policy, SiteConfig
from bot.events import Event
from bot.models import Change, PlaybookResult, RunRecord
from handlers.base import SiteView
from handlers.site import IpChanged, ProbeHint, Reconcile, TunnelHint, decide, describe, remember

AZURE = SiteConfig(resource_group="rg", local_network_gateway="lng", connection="conn")
DESIRED = {"ip.v4": "203.0.113.7", "ip.v4.seq": "3", "ip.v4.previous": "198.51.100.4"}


def view(**kw: object) -> SiteView:
    base: dict[str, object] = {
        "site": "home",
        "config": AZURE,
        "policy": Policy(),
        "state": dict(DESIRED),
        "changes_last_hour": 0,
    }
    base.update(kw)
    return SiteView(**base)  # type: ignore[arg-type]


def changed(ip: str = "203.0.113.7", family: str = "v4", seq: int = 3) -> tuple[Event, IpChanged]:
    data = IpChanged(ip=ip, family=family, previous="198.51.100.4", seq=seq)  # type: ignore[arg-type]
    return Event.new("ip.changed", "home", source="dyndns2", data=data.model_dump()), data


async def test_the_desired_state_decides_not_the_hint() -> None:
    """A hint carrying .9 while the state says .7 converges to .7: the payload is never the
    target (a hint that is not older than the state only says 'look again')."""
    event, data = changed(ip="198.51.100.9", seq=3)
    decision = await decide(event, data, view())
    update, verify = decision.playbooks
    assert (update.name, update.params) == ("update-local-gateway", {"ip": "203.0.113.7"})
    assert verify.name == "verify-tunnel"
    (reset,) = verify.on_failure
    assert reset.name == "reset-connection" and reset.on_failure == []
    assert decision.reason == "public IP changed 198.51.100.4 -> 203.0.113.7 (observation 3)"


async def test_an_older_observation_is_superseded() -> None:
    event, data = changed(ip="198.51.100.100", seq=2)
    decision = await decide(event, data, view())
    assert decision.playbooks == [] and decision.outcome == "superseded"
    assert "superseded by observation 3 (203.0.113.7)" in decision.reason


async def test_a_resync_converges_the_same_way() -> None:
    event = Event.new("site.reconcile", "home", source="scheduler")
    decision = await decide(event, Reconcile(), view())
    assert [c.name for c in decision.playbooks] == ["update-local-gateway", "verify-tunnel"]
    assert decision.reason == "re-check: LNG at 203.0.113.7"
    retry = view(state={**DESIRED, "reconcile.status": "retrying", "reconcile.attempt": "2"})
    assert (await decide(event, Reconcile(), retry)).reason == "retry 2: LNG at 203.0.113.7"
    unknown = await decide(event, Reconcile(), view(state={}))
    assert [c.name for c in unknown.playbooks] == ["verify-tunnel"]


async def test_recreate_is_only_chained_where_policy_allows() -> None:
    event, data = changed()
    decision = await decide(event, data, view(policy=Policy(allow_destructive=True)))
    reset = decision.playbooks[1].on_failure[0]
    recreate, verify = reset.on_failure
    assert (recreate.name, recreate.params) == ("recreate-connection", {"ip": "203.0.113.7"})
    assert verify.name == "verify-tunnel"
    plain = await decide(event, data, view())
    assert plain.playbooks[1].on_failure[0].on_failure == []


async def test_reasons_not_to_act() -> None:
    event, data = changed()
    cases = {
        "site home is paused": view(policy=Policy(paused=True)),
        "site home has no Azure resources configured": view(config=None),
    }
    for reason, site_view in cases.items():
        decision = await decide(event, data, site_view)
        assert decision.playbooks == [] and decision.reason == reason
        assert decision.retry_at is None
    v6_event, v6 = changed("2001:db8::7", "v6")
    assert (await decide(v6_event, v6, view())).playbooks == []


async def test_rate_limit_holds_automatic_changes_until_the_window_allows() -> None:
    event, data = changed()
    oldest = time.time() - 600
    held = await decide(event, data, view(changes_last_hour=6, oldest_change_at=oldest))
    assert held.playbooks == []
    assert held.reason == "rate limit: 6 automatic changes in the last hour (max 6)"
    assert held.retry_at == oldest + 3601
    manual = Event.new("ip.changed", "home", source="cli", data=data.model_dump())
    by_hand = await decide(manual, data, view(changes_last_hour=6, manual=True))
    assert by_hand.playbooks, "a person's request is not held by the automatic limit"


def record(outcome: str, *results: PlaybookResult, retry_at: float | None = None) -> RunRecord:
    return RunRecord(
        run_id="r1",
        site="home",
        event_type="ip.changed",
        event_source="test",
        idempotency_key="k",
        outcome=outcome,  # type: ignore[arg-type]
        playbooks=list(results),
        started_at=100.0,
        finished_at=130.0,
        retry_at=retry_at,
    )


TUNNEL_DOWN = (
    PlaybookResult(
        playbook="update-local-gateway",
        outcome="ok",
        changes=[
            Change(target="lng", field="gatewayIpAddress", old="198.51.100.4", new="203.0.113.7")
        ],
    ),
    PlaybookResult(
        playbook="verify-tunnel",
        outcome="failed",
        error="still NotConnected",
        error_code="VerifyFailed",
        retry=True,
    ),
    PlaybookResult(
        playbook="reset-connection",
        outcome="failed",
        error="still NotConnected",
        error_code="VerifyFailed",
        retry=True,
    ),
)


def test_a_failure_is_told_once_per_incident_with_the_next_step() -> None:
    event, data = changed()
    failed = record("failed", *TUNNEL_DOWN, retry_at=time.time() + 60)
    note = describe(event, data, failed, "http://127.0.0.1:8080/runs/home/r1", view())
    assert note is not None
    assert note.severity == "error"
    assert note.title == "home: tunnel down, retrying"
    assert note.summary == "Failed at reset-connection: still NotConnected"
    assert "recreate-connection --site home --param ip=203.0.113.7" in (note.next_step or "")
    assert "--confirm-destructive" in (note.next_step or "")
    opened = remember(event, data, failed, view())
    assert opened["incident.key"] == "reset-connection:VerifyFailed"
    assert opened["incident.since"] == "100.000"
    assert opened["reset.times"] == "130.000", "a reset was sent: it counts for the limits"
    again = view(state={**DESIRED, **{k: v for k, v in opened.items() if v}})
    assert describe(event, data, failed, None, again) is None, "retries must not spam"
    assert remember(event, data, failed, again)["incident.since"] == "100.000"


def test_recovery_and_changes_are_told_and_close_the_incident() -> None:
    event, data = changed()
    ok = record(
        "ok",
        TUNNEL_DOWN[0],
        PlaybookResult(playbook="verify-tunnel", outcome="ok"),
    )
    note = describe(event, data, ok, None, view())
    assert note is not None and note.title == "home: new public IP 203.0.113.7 applied, tunnel back"
    facts = {f.name: f.value for f in note.facts}
    assert facts["Old IP"] == "198.51.100.4" and facts["New IP"] == "203.0.113.7"
    assert describe(event, data, record("no_changes"), None, view()) is None
    incident = view(state={**DESIRED, "incident.key": "x", "incident.since": "10"})
    back = describe(event, data, record("no_changes"), None, incident)
    assert back is not None and back.title == "home: converged again, tunnel Connected"
    assert {f.name: f.value for f in back.facts}["Tunnel down for"] == "120.0s"
    closed = remember(event, data, record("no_changes"), incident)
    assert closed["incident.key"] is None and closed["incident.since"] is None


def test_a_held_change_is_told_once_per_window() -> None:
    event, data = changed()
    until = time.time() + 1800
    held = record("skipped", retry_at=until)
    held.reason = "rate limit: 6 automatic changes in the last hour (max 6)"
    note = describe(event, data, held, None, view())
    assert note is not None and "held by the rate limit until" in note.title
    told = view(state={**DESIRED, "reconcile.held_until": f"{until:.3f}"})
    assert describe(event, data, held, None, told) is None


async def test_resets_are_held_by_their_cool_down_and_hourly_limit() -> None:
    event = Event.new("tunnel.down", "home", source="arm-watcher")
    data = TunnelHint(status="NotConnected")
    now = time.time()
    fresh = await decide(event, data, view(state={**DESIRED, "reset.times": f"{now - 10:.3f}"}))
    names = [c.name for c in fresh.playbooks]
    assert names == ["update-local-gateway", "verify-tunnel"], "no reset in the cool-down"
    assert fresh.retry_at == pytest.approx(now - 10 + 300, abs=1)
    assert "resets held until" in fresh.reason and "cool-down" in fresh.reason
    many = " ".join(f"{now - 3000 + i * 400:.3f}" for i in range(3))
    limited = await decide(event, data, view(state={**DESIRED, "reset.times": many}))
    assert limited.retry_at == pytest.approx(now - 3000 + 3600, abs=1)
    assert "3 resets in the last hour" in limited.reason
    old = f"{now - 4000:.3f}"
    free = await decide(event, data, view(state={**DESIRED, "reset.times": old}))
    assert free.playbooks[1].on_failure[0].name == "reset-connection"


async def test_a_quorum_of_failing_through_tunnel_probes_forces_a_reset() -> None:
    probes = [
        {"name": n, "kind": "tcp", "target": "10.0.0.4:1688", "through_tunnel": through}
        for n, through in (("kms", True), ("dns", True), ("portal", False))
    ]
    config = SiteConfig.model_validate(
        {
            "resource_group": "rg",
            "local_network_gateway": "lng",
            "connection": "c",
            "probes": probes,
        }
    )
    event = Event.new("probe.failed", "home", source="probes")
    data = ProbeHint(probe="kms", through_tunnel=True)
    one = view(config=config, state={**DESIRED, "probe.kms.state": "down"})
    assert [c.name for c in (await decide(event, data, one)).playbooks] == [
        "update-local-gateway",
        "verify-tunnel",
    ], "one probe of a quorum of 2: only the usual check"
    two = view(
        config=config,
        state={**DESIRED, "probe.kms.state": "down", "probe.dns.state": "down"},
    )
    forced = await decide(event, data, two)
    reset = forced.playbooks[1]
    assert (reset.name, reset.params["force"]) == ("reset-connection", True)
    assert "kms, dns fail through the tunnel" in forced.reason
    off = view(config=config, state=two.state, policy=Policy(reset_on_probe_failure=False))
    assert all(c.name != "reset-connection" for c in (await decide(event, data, off)).playbooks)


async def test_destructive_escalation_recreates_then_resets_the_gateway() -> None:
    event = Event.new("tunnel.down", "home", source="arm-watcher")
    decision = await decide(event, TunnelHint(), view(policy=Policy(allow_destructive=True)))
    reset = decision.playbooks[1].on_failure[0]
    recreate, verify = reset.on_failure
    assert recreate.name == "recreate-connection"
    gateway, last = verify.on_failure
    assert (gateway.name, last.name) == ("reset-gateway", "verify-tunnel")


def test_drops_close_together_are_one_flapping_episode_told_once() -> None:
    event = Event.new("tunnel.down", "home", source="arm-watcher")
    data = TunnelHint(status="NotConnected")
    healed = record(
        "ok",
        PlaybookResult(playbook="verify-tunnel", outcome="failed"),
        PlaybookResult(
            playbook="reset-connection",
            outcome="ok",
            changes=[Change(target="connection c", field="reset", old="NotConnected", new="reset")],
        ),
    )
    first = remember(event, data, healed, view())
    assert first["flap.count"] == "1"
    assert describe(event, data, healed, None, view()) is not None, "the first drop is told"
    during = view(state={**DESIRED, **{k: v for k, v in first.items() if v}})
    healed.finished_at = float(first["flap.last"]) + 60  # another drop a minute later
    second = remember(event, data, healed, during)
    assert second["flap.count"] == "2"
    assert describe(event, data, healed, None, during) is None, "summed up later, not told"
    quiet = view(state={**DESIRED, **{k: v for k, v in {**first, **second}.items() if v}})
    later = record("no_changes")
    later.finished_at = float(second["flap.last"]) + 1000
    summary = describe(Event.new("site.reconcile", "home", source="scheduler"), Reconcile(),
                       later, None, quiet)  # fmt: skip
    assert summary is not None and summary.title == "home: tunnel stable again after 2 drops"
    cleared = remember(Event.new("site.reconcile", "home", source="s"), Reconcile(), later, quiet)
    assert cleared["flap.count"] is None
