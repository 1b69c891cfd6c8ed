"""Handlers are pure decisions over a site view: checked without Redis or Azure."""

from __future__ import annotations

from bot.config import Policy, SiteConfig
from bot.events import Event
from bot.models import Change, PlaybookResult, RunRecord
from handlers.base import SiteView
from handlers.ip import IpChanged, decide_changed, describe_changed, remember_changed

AZURE = SiteConfig(resource_group="rg", local_network_gateway="lng", connection="conn")


def view(**kw: object) -> SiteView:
    base: dict[str, object] = {
        "site": "home",
        "config": AZURE,
        "policy": Policy(),
        "state": {},
        "changes_last_hour": 0,
    }
    base.update(kw)
    return SiteView(**base)  # type: ignore[arg-type]


def changed(ip: str = "203.0.113.7", family: str = "v4") -> tuple[Event, IpChanged]:
    data = IpChanged(ip=ip, family=family, previous="198.51.100.4")  # type: ignore[arg-type]
    return Event.new("ip.changed", "home", source="test", data=data.model_dump()), data


async def test_new_ip_runs_update_then_verify_with_reset_as_fallback() -> None:
    event, data = changed()
    decision = await decide_changed(event, data, view())
    update, verify = decision.playbooks
    assert (update.name, update.params) == ("update-local-gateway", {"ip": "203.0.113.7"})
    assert verify.name == "verify-tunnel"
    (reset,) = verify.on_failure
    assert reset.name == "reset-connection" and reset.on_failure == []
    assert decision.reason == "public IP changed 198.51.100.4 -> 203.0.113.7"


async def test_recreate_is_only_chained_where_policy_allows() -> None:
    event, data = changed()
    decision = await decide_changed(event, data, view(policy=Policy(allow_destructive=True)))
    reset = decision.playbooks[1].on_failure[0]
    recreate, verify = reset.on_failure
    assert recreate.params == {"ip": "203.0.113.7", "strategy": "recreate"}
    assert verify.name == "verify-tunnel"


async def test_reasons_not_to_act() -> None:
    event, data = changed()
    cases = {
        "203.0.113.7 is already applied": view(state={"applied.v4": "203.0.113.7"}),
        "site home is paused": view(policy=Policy(paused=True)),
        "rate limit: 6 changes in the last hour (max 6)": view(changes_last_hour=6),
        "site home has no Azure resources configured": view(config=None),
    }
    for reason, site_view in cases.items():
        decision = await decide_changed(event, data, site_view)
        assert decision.playbooks == [] and decision.reason == reason
    v6_event, v6 = changed("2001:db8::7", "v6")
    assert (await decide_changed(v6_event, v6, view())).playbooks == []


def record(outcome: str, *results: PlaybookResult) -> RunRecord:
    return RunRecord(
        run_id="r1",
        site="home",
        event_type="ip.changed",
        event_source="test",
        idempotency_key="k",
        outcome=outcome,
        playbooks=list(results),  # type: ignore[arg-type]
        started_at=0,
        finished_at=0,
    )


def test_remember_only_after_success() -> None:
    event, data = changed()
    assert remember_changed(event, data, record("ok"))["applied.v4"] == "203.0.113.7"
    assert remember_changed(event, data, record("failed")) == {}


def test_failure_message_names_what_failed_and_the_next_step() -> None:
    event, data = changed()
    failed = record(
        "failed",
        PlaybookResult(
            playbook="update-local-gateway",
            outcome="ok",
            changes=[
                Change(
                    target="lng", field="gatewayIpAddress", old="198.51.100.4", new="203.0.113.7"
                )
            ],
        ),
        PlaybookResult(playbook="verify-tunnel", outcome="failed", error="still NotConnected"),
        PlaybookResult(playbook="reset-connection", outcome="failed", error="still NotConnected"),
    )
    note = describe_changed(event, data, failed, "http://127.0.0.1:8080/runs/home/r1")
    assert note is not None
    assert note.severity == "error"
    assert note.summary == "Failed at reset-connection: still NotConnected"
    assert "--param strategy=recreate" in (note.next_step or "")
    assert dict((f.name, f.value) for f in note.facts)["Old IP"] == "198.51.100.4"
    assert describe_changed(event, data, record("no_changes"), None) is None
