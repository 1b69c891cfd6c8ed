"""SonicWall playbooks: ``sonicwall-preempt``, ``sonicwall-keepalive``, ``sonicwall-reinitiate``.

Each acts on the site-to-site policy its device is configured with (``policy`` in
``[[sites.NAME.devices]]``). Every read and write happens in one SonicOS API session opened
and closed inside ``plan``, each step of ``apply``, and ``verify`` (the appliance has a single
API session and one administrator at a time: it is never held across them). The driver logs
out on every path; a login refused because someone holds the appliance is ``SessionBusy``
(transient: the run is retried later, and the administrator is never kicked out unless the
device is configured with ``override``).

``sonicwall-preempt``/``sonicwall-keepalive``: plan = ``policy_changes`` against the policy
as read (empty when converged); apply = one step, ``set_policy`` + ``commit``; verify = read
again.

``sonicwall-reinitiate`` (disruptive: the tunnel drops and is negotiated again) disables the
policy and enables it again, as two journaled steps with a commit each, so that a run resumed
after a crash always finishes with the policy enabled. It is converged while the site's Azure
connection reports ``Connected`` (SonicOS 7.0.1 offers no API to list tunnels, so Azure is
the judge), unless ``force``; a site without Azure resources needs ``force``. A policy that is
disabled on the device (by an administrator) is left alone unless ``force``. Forcing is
destructive (the tunnel may be up): ``force`` takes effect only where the site's policy has
``allow_destructive`` or a person confirmed the run, and is refused otherwise.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pydantic import Field

from bot.config import SonicWallDevice
from bot.models import Change, Plan
from bot.retry import PermanentError, TransientError, describe_error, is_transient, sample_until
from playbooks.azure.common import NET, network, text
from playbooks.base import Playbook, RunContext
from playbooks.devices.connect import DeviceParams, sonicwall, spec_of
from playbooks.devices.sonicwall import S2SPolicy, policy_changes

log = logging.getLogger("tunnelwarden.playbooks.sonicwall")

PREEMPT_FIELD = "preempt_secondary_gateway"


class PreemptParams(DeviceParams):
    enabled: bool = Field(description="fail back to the primary gateway when it is reachable")
    interval: int = Field(
        60, ge=1, le=86400, description="seconds on the secondary before failing back"
    )


class KeepaliveParams(DeviceParams):
    enabled: bool = Field(True, description="keep the tunnel up without traffic")


class ReinitiateParams(DeviceParams):
    force: bool = Field(
        False,
        description="re-initiate even when Azure reports the connection Connected (or the "
        "site has no Azure connection configured, or the policy is disabled on the device); "
        "destructive then: needs the site's allow_destructive or --confirm-destructive",
    )
    enable_timeout: float = Field(
        60.0,
        ge=0,
        le=600,
        description="seconds to keep trying to enable the policy again (busy session, "
        "device timeouts) before the run fails and says it is left disabled",
    )


def where(spec: SonicWallDevice) -> str:
    return f"sonicwall {spec.name} policy {spec.policy}"


async def read_policy(spec: SonicWallDevice) -> S2SPolicy:
    """The policy as the appliance runs it, in a session of its own."""
    async with sonicwall(spec).session() as s:
        return await s.policy(spec.policy)


def _seconds(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def render(spec: SonicWallDevice, current: S2SPolicy, patch: dict[str, Any]) -> list[Change]:
    """A ``policy_changes`` patch as the plan's changes."""
    target = where(spec)
    changes: list[Change] = []
    for key, value in sorted(patch.items()):
        if key == PREEMPT_FIELD:
            new = value.get("interval") if isinstance(value, dict) else None
            changes.append(
                Change(
                    target=target,
                    field=f"{PREEMPT_FIELD}.interval",
                    old=_seconds(current.preempt_interval),
                    new=new,
                )
            )
        elif key == "gateway" and isinstance(value, dict):
            for role, address in sorted(value.items()):
                old = current.primary_gateway if role == "primary" else current.secondary_gateway
                changes.append(Change(target=target, field=f"gateway.{role}", old=old, new=address))
        else:
            changes.append(Change(target=target, field=key, old=getattr(current, key), new=value))
    return changes


async def _patch_and_commit(spec: SonicWallDevice, patch: dict[str, Any]) -> dict[str, Any]:
    async with sonicwall(spec).session() as s:
        await s.set_policy(spec.policy, patch)
        await s.commit()
    return patch


def _patch_of(plan: Plan) -> dict[str, Any]:
    patch = plan.read.get("patch")
    if not isinstance(patch, dict) or not patch:
        raise PermanentError("the plan carries no policy change to apply", "PlanIncomplete")
    return cast("dict[str, Any]", patch)


class SonicWallPreempt(Playbook[PreemptParams]):
    name = "sonicwall-preempt"
    summary = "Set or clear a SonicWall policy's preempt (fail back to the primary gateway)"
    params_model = PreemptParams

    @staticmethod
    def _patch(current: S2SPolicy, params: PreemptParams) -> dict[str, Any]:
        if params.enabled:
            return policy_changes(current, preempt=True, preempt_interval=params.interval)
        return policy_changes(current, preempt=False)

    async def plan(self, ctx: RunContext, params: PreemptParams) -> Plan:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        current = await read_policy(spec)
        patch = self._patch(current, params)
        if not patch:
            return Plan()
        return Plan(changes=render(spec, current, patch), read={"patch": patch})

    async def apply(self, ctx: RunContext, params: PreemptParams, plan: Plan) -> str:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        patch = _patch_of(plan)
        await ctx.step("set-policy", lambda: _patch_and_commit(spec, patch))
        state = f"on ({params.interval}s)" if params.enabled else "off"
        return f"{where(spec)}: preempt {state}, committed"

    async def verify(self, ctx: RunContext, params: PreemptParams) -> str | None:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        current = await read_policy(spec)
        if self._patch(current, params):
            shown = _seconds(current.preempt_interval)
            return f"{where(spec)}: preempt reads {'off' if shown is None else f'{shown}s'}"
        return None


class SonicWallKeepalive(Playbook[KeepaliveParams]):
    name = "sonicwall-keepalive"
    summary = "Turn a SonicWall policy's keep-alive on (or off)"
    params_model = KeepaliveParams

    async def plan(self, ctx: RunContext, params: KeepaliveParams) -> Plan:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        current = await read_policy(spec)
        patch = policy_changes(current, keep_alive=params.enabled)
        if not patch:
            return Plan()
        return Plan(changes=render(spec, current, patch), read={"patch": patch})

    async def apply(self, ctx: RunContext, params: KeepaliveParams, plan: Plan) -> str:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        patch = _patch_of(plan)
        await ctx.step("set-policy", lambda: _patch_and_commit(spec, patch))
        return f"{where(spec)}: keep-alive {'on' if params.enabled else 'off'}, committed"

    async def verify(self, ctx: RunContext, params: KeepaliveParams) -> str | None:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        current = await read_policy(spec)
        if current.keep_alive != params.enabled:
            return f"{where(spec)}: keep_alive reads {current.keep_alive}"
        return None


async def azure_status(ctx: RunContext) -> tuple[str, str] | None:
    """(connection, status) of the site's Azure connection; None when none is configured."""
    cfg = ctx.site_config
    if cfg is None or not cfg.resource_group or not cfg.connection:
        return None
    client = await network(ctx)
    conn = await client.virtual_network_gateway_connections.get(cfg.resource_group, cfg.connection)
    return cfg.connection, text(conn.connection_status) or "Unknown"


REINITIATED = "re-initiated (disable, commit, enable, commit)"


class SonicWallReinitiate(Playbook[ReinitiateParams]):
    name = "sonicwall-reinitiate"
    summary = "Re-initiate a SonicWall tunnel: disable and enable its policy (disruptive)"
    params_model = ReinitiateParams
    permissions = (f"{NET}/connections/read",)

    async def plan(self, ctx: RunContext, params: ReinitiateParams) -> Plan:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        target = where(spec)
        if ctx.started():  # resumed or re-planned: finish what this run began
            if "enable" in ctx.done_steps():
                return Plan()
            current = await read_policy(spec)
            state = "enabled" if current.enable else "disabled"
            return Plan(
                changes=[
                    Change(
                        target=target, field="tunnel", old=f"interrupted ({state})", new=REINITIATED
                    )
                ]
            )

        def confirmed(why: str) -> None:
            """Forced past ``why``: destructive, so confirmed or allowed by policy only."""
            if not ctx.disruption_allowed:
                raise PermanentError(
                    f"re-initiating {target} while {why} is destructive (every session through "
                    "it drops): force=true runs only where the site's policy has "
                    "allow_destructive = true, or when a person confirms it "
                    "(--confirm-destructive)",
                    "DestructiveRefused",
                )

        azure = await azure_status(ctx)
        if azure is None:
            if not params.force:
                raise PermanentError(
                    f"site {ctx.site} has no Azure connection configured to tell whether the "
                    f"tunnel is up; re-initiating {target} needs force=true",
                    "ForceRequired",
                )
            confirmed("the tunnel may be up (no Azure connection configured)")
            old = "unknown (no Azure connection configured)"
        else:
            connection, status = azure
            if status == "Connected":
                if not params.force:
                    return Plan(
                        notes=[
                            f"connection {connection} is Connected: {target} is not "
                            "re-initiated (force=true to do it anyway)"
                        ]
                    )
                confirmed(f"connection {connection} is Connected")
            old = f"connection {connection} {status}"
        current = await read_policy(spec)
        if not current.enable:
            if not params.force:
                return Plan(
                    notes=[
                        f"{target} is disabled on the device: not re-initiated (enable it "
                        "there, or force=true to enable it)"
                    ]
                )
            confirmed("an administrator has it disabled")
        return Plan(
            changes=[Change(target=target, field="tunnel", old=old, new=REINITIATED)],
            notes=["disruptive: the tunnel drops and is negotiated again"],
        )

    async def apply(self, ctx: RunContext, params: ReinitiateParams, plan: Plan) -> str:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        target = where(spec)
        device = sonicwall(spec)

        async def set_enable(enable: bool) -> str:
            """Read, then change only if needed: safe to run again after an unknown outcome
            (a disable that did not take effect is made; one that did is not repeated)."""
            async with device.session() as s:
                current = await s.policy(spec.policy)
                if current.enable == enable:
                    return "enabled already" if enable else "disabled already"
                await s.set_policy(spec.policy, {"enable": enable})
                await s.commit()
            log.info("%s: %s", target, "enabled" if enable else "disabled")
            return "enabled" if enable else "disabled"

        async def disable() -> str:
            return await set_enable(False)

        async def judge_disable() -> str:
            """The disable went out before (crash, failure): read; disable only if it did not
            take effect. The enable step follows either way."""
            return await set_enable(False)

        async def enable() -> str:
            waited = await sample_until(
                lambda: set_enable(True),
                lambda _: True,
                within=params.enable_timeout,
                every=min(2.0, max(0.1, params.enable_timeout / 10)),
                tolerate=is_transient,
            )
            if waited.done and waited.value is not None:
                return waited.value
            reason = describe_error(waited.error)[1] if waited.error else "no answer"
            raise TransientError(
                f"{target} is left DISABLED: enabling it failed for "
                f"{params.enable_timeout:g}s ({reason}); the run is retried, or enable it on "
                "the device"
            )

        await ctx.step("disable", disable, on_unknown=judge_disable)
        await ctx.step("enable", enable)
        return f"{target}: re-initiated (disabled and enabled again, committed)"

    async def verify(self, ctx: RunContext, params: ReinitiateParams) -> str | None:
        spec = spec_of(ctx, SonicWallDevice, params.device)
        current = await read_policy(spec)
        if not current.enable:
            return f"{where(spec)} is disabled after re-initiating it"
        return None
