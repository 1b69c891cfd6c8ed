"""Handlers are pure decisions over a site view: checked without Redis or Azure."""

from __future__ import annotations

import time
from pathlib import Path

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
    facts = {f.name: f.value for f in note.facts}
    assert facts["Down since"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(100.0))
    assert facts["Done"] == (
        "update-local-gateway (ok) → verify-tunnel (failed) → reset-connection (failed)"
    )
    opened = remember(event, data, failed, view())
    assert opened["incident.key"] == "down:retrying"
    assert opened["incident.since"] == "100.000"
    assert opened["reset.times"] == "130.000", "a reset was sent: it counts for the limits"
    again = view(state={**DESIRED, **{k: v for k, v in opened.items() if v}})
    assert describe(event, data, failed, None, again) is None, "retries must not spam"
    assert remember(event, data, failed, again)["incident.since"] == "100.000"


def test_a_run_deferred_by_the_arm_budget_is_not_told_and_a_permanent_one_has_no_next_try() -> None:
    event, data = changed()
    deferred = PlaybookResult(
        playbook="update-local-gateway",
        outcome="failed",
        error="ARM writes budget spent: deferred 4.0s",
        error_code="BudgetDeferred",
        retry=True,
    )
    record_ = record("failed", deferred, retry_at=time.time() + 4)
    assert describe(event, data, record_, None, view()) is None, "a storm is not an outage"
    forbidden = PlaybookResult(
        playbook="update-local-gateway",
        outcome="failed",
        error="not allowed",
        error_code="AuthorizationFailed",
        retry=False,
    )
    note = describe(
        event, data, record("failed", forbidden, retry_at=time.time() + 900), None, view()
    )
    assert note is not None
    assert "Next try" not in {f.name for f in note.facts}, "only the resync would look again"


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


def probes_config(*probes: tuple[str, bool], **site: object) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "resource_group": "rg",
            "local_network_gateway": "lng",
            "connection": "c",
            "probes": [
                {"name": n, "kind": "tcp", "target": "10.0.0.4:1688", "through_tunnel": through}
                for n, through in probes
            ],
            **site,
        }
    )


async def test_the_quorum_counts_only_through_tunnel_probes() -> None:
    """One through-tunnel and one plain probe: the through-tunnel one alone is the quorum
    (counting the plain one too, the site could never be reset by its probes)."""
    mixed = probes_config(("kms", True), ("portal", False))
    assert mixed.quorum == 1
    event = Event.new("probe.failed", "home", source="probes")
    down = view(config=mixed, state={**DESIRED, "probe.kms.state": "down"})
    forced = await decide(event, ProbeHint(probe="kms", through_tunnel=True), down)
    reset = forced.playbooks[1]
    assert (reset.name, reset.params["force"]) == ("reset-connection", True)
    assert "(1 of quorum 1)" in forced.reason
    assert probes_config(("a", True), ("b", True), ("c", False)).quorum == 2
    assert probes_config(("a", True), ("b", False), ("c", False)).quorum == 1
    assert probes_config(("a", True), ("b", True), probe_quorum=1).quorum == 1


def test_a_quorum_above_the_through_tunnel_probes_is_refused_in_one_line(
    prefix: str, tmp_path: Path
) -> None:
    from bot.config import ConfigError
    from tests.conftest import make_settings

    site = {
        "probes": [
            {"name": "kms", "kind": "tcp", "target": "10.0.0.4:1688", "through_tunnel": True},
            {"name": "portal", "kind": "tcp", "target": "10.0.0.5:443"},
        ],
        "probe_quorum": 2,
    }
    with pytest.raises(ConfigError) as caught:
        make_settings(prefix, tmp_path, sites={"home": site})
    (line,) = caught.value.problems
    assert line == (
        "sites.home: probe_quorum 2 is more than the 1 through-tunnel probes (only probes "
        "with through_tunnel = true count)"
    )
    site["probe_quorum"] = 1
    assert make_settings(prefix, tmp_path, sites={"home": site}).sites["home"].quorum == 1


async def test_a_failing_plain_probe_only_notifies() -> None:
    """A probe that does not go through the tunnel fails: no forced reset, only the usual
    check (Azure says Connected, so nothing is reset), and a warning that says why."""
    config = probes_config(("kms", True), ("dns", True), ("portal", False))
    event = Event.new("probe.failed", "home", source="probes")
    data = ProbeHint(probe="portal", kind="tcp", reason="refused", detail="refused")
    state = {**DESIRED, "probe.portal.state": "down", "probe.kms.state": "up"}
    decision = await decide(event, data, view(config=config, state=state))
    assert [c.name for c in decision.playbooks] == ["update-local-gateway", "verify-tunnel"]
    assert all(not c.params.get("force") for c in decision.playbooks)
    checked = record("no_changes", PlaybookResult(playbook="verify-tunnel", outcome="no_changes"))
    note = describe(event, data, checked, None, view(config=config, state=state))
    assert note is not None and note.title == "home: probe portal fails (refused)"
    assert note.severity == "warning"
    assert "Not through the tunnel, so not a reason to reset" in note.summary


def after(v: SiteView, fields: dict[str, str | None]) -> SiteView:
    """The view the next run sees: ``v``'s state with what a run remembered."""
    state = dict(v.state)
    for key, value in fields.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return view(state=state, policy=v.policy)


def test_an_outage_with_retries_across_a_reset_cool_down_is_one_incident() -> None:
    """Retries inside the cool-down fail at verify-tunnel, those after it at
    reset-connection: one message when it goes down, none per retry, one when it is back."""
    down = Event.new("tunnel.down", "home", source="arm-watcher")
    hint = TunnelHint(status="NotConnected", since=90.0)
    retry = Event.new("site.reconcile", "home", source="scheduler")
    verify_failed = PlaybookResult(
        playbook="verify-tunnel", outcome="failed", error="still NotConnected",
        error_code="VerifyFailed", retry=True,
    )  # fmt: skip
    reset_failed = verify_failed.model_copy(update={"playbook": "reset-connection"})
    runs = [
        (down, hint, record("failed", verify_failed, reset_failed, retry_at=200.0)),
        (retry, Reconcile(), record("failed", verify_failed, retry_at=300.0)),  # cool-down
        (retry, Reconcile(), record("failed", verify_failed, retry_at=400.0)),  # cool-down
        (retry, Reconcile(), record("failed", verify_failed, reset_failed, retry_at=500.0)),
        (retry, Reconcile(), record("failed", verify_failed, retry_at=600.0)),  # cool-down
    ]
    v = view(state={**DESIRED, "tunnel.status": "NotConnected", "tunnel.since": "90.000"})
    notes = []
    for event, data, rec in runs:
        notes.append(describe(event, data, rec, None, v))
        v = after(v, remember(event, data, rec, v))
    first, *rest = notes
    assert rest == [None] * 4, "retries must not post"
    assert first is not None and first.title == "home: tunnel down, retrying"
    facts = {f.name: f.value for f in first.facts}
    assert facts["Down since"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(90.0))
    assert facts["Done"] == "verify-tunnel (failed) → reset-connection (failed)"
    assert facts["Noticed by"] == "arm-watcher"
    assert v.state["incident.since"] == "90.000", "since the watcher saw it drop"
    back = record(
        "ok",
        PlaybookResult(playbook="verify-tunnel", outcome="ok"),
    )
    back.finished_at = 700.0
    note = describe(retry, Reconcile(), back, None, v)
    assert note is not None and note.title == "home: converged again, tunnel Connected"
    assert {f.name: f.value for f in note.facts}["Tunnel down for"] == "610.0s"
    closed = after(v, remember(retry, Reconcile(), back, v))
    assert "incident.key" not in closed.state
    assert describe(retry, Reconcile(), back, None, closed) is None, "told once"


def test_a_failure_that_needs_a_person_is_told_even_during_an_outage() -> None:
    event, data = changed()
    refused = PlaybookResult(
        playbook="recreate-connection", outcome="failed", error="destructive",
        error_code="DestructiveRefused",
    )  # fmt: skip
    during = view(state={**DESIRED, "incident.key": "down:retrying", "incident.since": "50"})
    note = describe(event, data, record("failed", refused), None, during)
    assert note is not None and note.title == "home: cannot converge, needs a person"


RRAS = {"kind": "rras", "name": "rras1", "url": "https://rras01.corp.example:5986",
        "interface": "Azure", "recording": "/nonexistent/recording.json"}  # fmt: skip
KEMP = {"kind": "kemp", "name": "lm1", "url": "https://kemp.corp.example", "api_key": "k-1"}


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([], None),
        ([KEMP], None),  # a load balancer cannot re-initiate a tunnel
        ([KEMP, RRAS], ("rras-connect", {"device": "rras1"})),
    ],
)
async def test_a_device_re_initiates_before_the_destructive_steps(
    devices: list[dict[str, object]], expected: tuple[str, dict[str, str]] | None
) -> None:
    config = SiteConfig.model_validate(
        {"resource_group": "rg", "local_network_gateway": "lng", "connection": "c",
         "devices": devices}
    )  # fmt: skip
    event = Event.new("tunnel.down", "home", source="arm-watcher")
    site = view(config=config, policy=Policy(allow_destructive=True))
    decision = await decide(event, TunnelHint(), site)
    reset = decision.playbooks[1].on_failure[0]
    assert reset.name == "reset-connection"
    names = [c.name for c in reset.on_failure]
    if expected is None:
        assert names == ["recreate-connection", "verify-tunnel"]
        return
    device, verify = reset.on_failure
    assert (device.name, device.params) == expected
    assert verify.name == "verify-tunnel"
    for step in (device, verify):  # still down (or the device failed): then destructive
        recreate, last = step.on_failure
        assert recreate.name == "recreate-connection"
        assert [c.name for c in last.on_failure] == ["reset-gateway", "verify-tunnel"]
    plain = await decide(event, TunnelHint(), view(config=config))
    device, verify = plain.playbooks[1].on_failure[0].on_failure
    assert device.on_failure == [] and verify.on_failure == [], "no destructive steps"
