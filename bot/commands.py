"""The one command layer: chat (Slack, Discord, Teams) and the CLI call the same functions.

A command is an async function over a :class:`Context` (the services, who is asking, the
roles) returning a structured :class:`Reply` (text, detail lines, buttons, a link, a run to
follow). Each command names the role it needs; :func:`dispatch` checks it (per site where the
command names one) before the function runs, so a user in no role can do nothing (fail
closed). Everything a person asks for goes through ``bot.gate`` like any other entry point:
known site, playbook and parameters, the address rules, the destructive marker.

Chat runs a playbook as a **dry-run first**: ``playbook`` shows the plan and an *Apply*
button whose value is a reference to the checked request kept in Redis (never the raw
parameters). *Apply* queues a ``playbook.requested``; a destructive playbook asks for an
approval instead (``bot.chat.approvals``), and only an approver other than the requester
queues it, with ``confirmed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from bot.chat.approvals import Approval, Approvals
from bot.chat.roles import Role, Roles
from bot.escalate import BOT, Escalations
from bot.events import Event
from bot.gate import REQUESTED, Refused, event_data, playbook_call
from bot.models import PlaybookCall, RunRecord
from bot.scheduler import RECONCILE
from bot.services import Services
from handlers.base import Handler
from playbooks.base import Playbook

log = logging.getLogger("tunnelwarden.commands")

Platform = Literal["slack", "discord", "teams", "cli"]
MAX_LINES = 20


@dataclass(frozen=True)
class Button:
    label: str
    action: Literal["apply", "approve", "deny"]
    value: str  # a reference (plan ref, approval id): never parameters
    style: Literal["primary", "danger"] | None = None


@dataclass
class Reply:
    """What a command answers; each platform renders it (Block Kit, components, text)."""

    text: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)
    link: str | None = None
    public: bool = False  # post in the channel (approval requests), not just to the asker
    follow: tuple[str, str] | None = None  # (site, run id): post its outcome when recorded

    def plain(self) -> str:
        parts = [self.text, *self.lines]
        if self.link:
            parts.append(self.link)
        return "\n".join(parts)


@dataclass(frozen=True)
class Caller:
    """Who asks: ``id`` is the platform id roles are checked on (``slack:T…:U…``)."""

    id: str
    platform: Platform
    name: str = ""  # display only; never authorised on

    @classmethod
    def cli(cls) -> Caller:
        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
        return cls(f"cli:{user}", "cli", user)


@dataclass
class Context:
    services: Services
    caller: Caller
    roles: Roles | None  # None: the CLI (whoever runs it holds the config and Redis)
    playbooks: Mapping[str, Playbook[Any]]
    handlers: Mapping[str, Handler]
    now: Callable[[], float] = time.time

    def allows(self, role: Role, site: str | None = None) -> bool:
        return self.roles is None or self.roles.allows(self.caller.id, role, site)

    @property
    def approvals(self) -> Approvals:
        s = self.services.settings
        return Approvals(self.services.redis, s.redis.prefix, ttl=s.chat.approval_ttl)


Func = Callable[[Context, list[str]], Awaitable[Reply]]


@dataclass(frozen=True)
class Command:
    name: str
    func: Func
    role: Role
    usage: str
    summary: str
    site_arg: int | None = None  # which argument names the site the role is checked for
    read_only: bool = True
    chat_only: bool = False


REGISTRY: dict[str, Command] = {}


def command(
    name: str,
    role: Role,
    usage: str,
    summary: str,
    *,
    site_arg: int | None = None,
    read_only: bool = True,
    chat_only: bool = False,
) -> Callable[[Func], Func]:
    def register(func: Func) -> Func:
        REGISTRY[name] = Command(name, func, role, usage, summary, site_arg, read_only, chat_only)
        return func

    return register


class Usage(ValueError):
    """Bad arguments: the message is shown with the command's usage."""


def context(
    services: Services,
    caller: Caller,
    *,
    cli: bool = False,
    playbooks: Mapping[str, Playbook[Any]] | None = None,
) -> Context:
    """The context for ``caller``: the chat roles from the config, or none for the CLI.
    ``playbooks``: the set the workers run (default: the shipped ones)."""
    import handlers
    import playbooks as shipped

    roles = None if cli else Roles(services.settings.chat.roles)
    found = shipped.builtin() if playbooks is None else playbooks
    return Context(services, caller, roles, found, handlers.builtin())


async def dispatch(ctx: Context, text: str, *, read_only: bool = False) -> Reply:
    """Run one command line (``status hq``); the reply's text is passed through the
    redactor, so a secret can never leave in a reply."""
    try:
        reply = await _dispatch(ctx, text, read_only=read_only)
    except Exception as exc:
        log.exception("command %r failed", text.split(" ", 1)[0][:32])
        reply = Reply(f"error: {type(exc).__name__}", ok=False)
    return redacted(ctx.services, reply)


def redacted(services: Services, reply: Reply) -> Reply:
    r = services.redact
    reply.text = r(reply.text)
    reply.lines = [r(line) for line in reply.lines]
    return reply


async def _dispatch(ctx: Context, text: str, *, read_only: bool) -> Reply:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        return Reply(f"cannot read that: {exc}", ok=False)
    if not words:
        words = ["help"]
    name, args = words[0].lower(), words[1:]
    cmd = REGISTRY.get(name)
    if cmd is None:
        return Reply(f"unknown command {name[:32]!r}; try: help", ok=False)
    if read_only and not cmd.read_only:
        return Reply(
            f"{name} is not available here (read-only: buttons and changes need Slack, "
            "Discord or the CLI)",
            ok=False,
        )
    site = args[cmd.site_arg] if cmd.site_arg is not None and len(args) > cmd.site_arg else None
    if not ctx.allows(cmd.role, site):
        return refused(ctx, name, cmd.role, site)
    try:
        return await cmd.func(ctx, args)
    except Usage as exc:
        return Reply(f"{exc}\nusage: {cmd.usage}", ok=False)
    except Refused as exc:
        return Reply(str(exc), ok=False)


def refused(ctx: Context, name: str, role: Role, site: str | None) -> Reply:
    where = f" on {site}" if site else ""
    log.warning("chat: %s refused: %s%s needs the %s role", ctx.caller.id, name, where, role)
    return Reply(f"not allowed: {name}{where} needs the {role} role", ok=False)


# --------------------------------------------------------------------- helpers
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` in seconds."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise Usage(f"not a duration: {text!r} (e.g. 90s, 30m, 2h, 1d)") from None
    if not 0 < value <= 30 * 86400:
        raise Usage(f"duration out of range: {text!r} (more than 0, at most 30d)")
    return value


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ts: float, now: float) -> str:
    secs = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _site(ctx: Context, args: list[str], usage: str) -> str:
    if not args:
        raise Usage("which site?")
    name = args[0]
    settings = ctx.services.settings
    if name not in settings.sites:
        names = ", ".join(sorted(settings.sites)) or "none configured"
        raise Refused(f"unknown site {name[:64]!r} (sites: {names})")
    return name


def run_link(ctx: Context, site: str, run_id: str) -> str | None:
    base = ctx.services.settings.admin.public_url
    return f"{base.rstrip('/')}/runs/{site}/{run_id}" if base else None


def record_lines(record: RunRecord) -> list[str]:
    lines = []
    if record.reason:
        lines.append(f"reason: {record.reason}")
    for result in record.playbooks:
        lines.append(f"{result.playbook}: {result.outcome} {result.detail}".rstrip())
        lines += [f"  {c}" for c in result.changes[:MAX_LINES]]
        if result.error:
            lines.append(f"  {result.error_code}: {result.error}")
    return lines


def outcome_reply(ctx: Context, record: RunRecord) -> Reply:
    good = record.outcome in ("ok", "no_changes")
    return Reply(
        f"{record.outcome}: {record.event_type} on {record.site} in {record.duration_s:.1f}s "
        f"(run {record.run_id[:12]})",
        ok=good,
        lines=record_lines(record),
        link=run_link(ctx, record.site, record.run_id),
    )


async def wait_run(
    services: Services, site: str, run_id: str, within: float, poll: float = 0.2
) -> RunRecord | None:
    """The run's record once it is written; None if not ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        record = await services.state.recorded(site, run_id)
        if record is not None or loop.time() >= deadline:
            return record
        await asyncio.sleep(poll)


# --------------------------------------------------------------------- read commands
@command("help", "viewer", "help", "what you can ask")
async def help_(ctx: Context, args: list[str]) -> Reply:
    mine = [c for c in REGISTRY.values() if ctx.allows(c.role) and not c.name.startswith("_")]
    lines = [f"{c.usage}: {c.summary}" for c in mine]
    return Reply("commands:", lines=lines)


@command("status", "viewer", "status [site]", "sites at a glance", site_arg=0)
async def status(ctx: Context, args: list[str]) -> Reply:
    services, now = ctx.services, ctx.now()
    settings, state = services.settings, services.state
    if args:
        names = [_site(ctx, args, "status [site]")]
    else:
        known = set(settings.sites) | set(await state.known_sites())
        names = sorted(n for n in known if ctx.allows("viewer", n))
    lines = []
    for name in names:
        st = await state.site_state(name)
        last = await state.history(name, 1)
        paused = settings.policy_for(name).paused or st.get("paused") == "1"
        parts = [
            f"tunnel {st.get('tunnel.status', '-')}",
            f"reconcile {st.get('reconcile.status', '-')}",
            f"last run {last[0].outcome} {ago(last[0].finished_at, now)}" if last else "no runs",
        ]
        if paused:
            until = st.get("paused.until")
            parts.append("PAUSED" + (f" until {clock(float(until))}" if until else ""))
        lines.append(f"{name}: " + ", ".join(parts))
    return Reply(f"{len(names)} site(s)", lines=lines or ["no sites"])


@command("history", "viewer", "history [site]", "the last runs", site_arg=0)
async def history(ctx: Context, args: list[str]) -> Reply:
    site = _site(ctx, args, "history [site]") if args else None
    records = await ctx.services.state.history(site, 50)
    if site is None:
        records = [r for r in records if ctx.allows("viewer", r.site)]
    now = ctx.now()
    lines = [
        f"{ago(r.finished_at, now)} {r.site} {r.event_type} {r.outcome} "
        f"{', '.join(p.playbook for p in r.playbooks) or r.reason[:60]} (run {r.run_id[:12]})"
        for r in records[:10]
    ]
    return Reply(f"last {len(lines)} run(s)" + (f" of {site}" if site else ""), lines=lines)


@command("run", "viewer", "run <id>", "a run's record and journal")
async def run(ctx: Context, args: list[str]) -> Reply:
    if not args or not args[0].isalnum():
        raise Usage("which run? (an id from history)")
    wanted = args[0]
    state = ctx.services.state
    found: RunRecord | None = None
    for site in await state.known_sites():
        found = await state.recorded(site, wanted)
        if found is not None:
            break
    if found is None and len(wanted) >= 6:
        found = next(
            (r for r in await state.history(None, 500) if r.run_id.startswith(wanted)), None
        )
    if found is None or not ctx.allows("viewer", found.site):
        return Reply(f"no run {wanted[:40]}", ok=False)
    journal = await state.journal(found.site, found.run_id)
    reply = outcome_reply(ctx, found)
    reply.lines += [f"journal: {e.step} {e.phase}" for e in journal[-MAX_LINES:]]
    return reply


@command(
    "probe", "viewer", "probe <site>", "run the site's probes now (records nothing)", site_arg=0
)
async def probe(ctx: Context, args: list[str]) -> Reply:
    from bot.probes import probe as run_probe

    site = _site(ctx, args, "probe <site>")
    specs = ctx.services.settings.sites[site].probes
    if not specs:
        return Reply(f"{site} has no probes")
    results = await asyncio.gather(*(run_probe(spec) for spec in specs))
    lines = []
    for spec, result in zip(specs, results, strict=True):
        took = f" in {result.latency_s * 1000:.0f} ms" if result.latency_s is not None else ""
        lines.append(
            f"{spec.name} ({spec.kind}): {'up' if result.ok else 'down'}{took}: {result.reason}"
        )
    up = sum(r.ok for r in results)
    return Reply(f"{site}: {up}/{len(results)} probes up", ok=up == len(results), lines=lines)


# --------------------------------------------------------------------- changes
async def _hint(services: Services, site: str, key: str) -> None:
    event = Event.new(RECONCILE, site, source="chat", idempotency_key=key)
    await services.queue.publish(event)


@command(
    "pause",
    "operator",
    "pause <site> [for]",
    "hold every change to a site",
    site_arg=0,
    read_only=False,
)
async def pause(ctx: Context, args: list[str]) -> Reply:
    site = _site(ctx, args, "pause <site> [for]")
    words = [w for w in args[1:] if w.lower() != "for"]
    now = ctx.now()
    until = now + duration(words[0]) if words else None
    await ctx.services.state.set_site_state(
        site,
        {
            "paused": "1",
            "paused.by": ctx.caller.id,
            "paused.at": f"{now:.3f}",
            "paused.until": "" if until is None else f"{until:.3f}",
        },
    )
    shown = "until resumed" if until is None else f"until {clock(until)}"
    return Reply(f"{site} paused {shown} by {ctx.caller.name or ctx.caller.id}")


@command("resume", "operator", "resume <site>", "end a pause", site_arg=0, read_only=False)
async def resume(ctx: Context, args: list[str]) -> Reply:
    site = _site(ctx, args, "resume <site>")
    await resume_site(ctx.services, site, ctx.caller.id, ctx.now())
    note = ""
    if ctx.services.settings.policy_for(site).paused:
        note = " (its policy still says paused = true)"
    return Reply(f"{site} resumed by {ctx.caller.name or ctx.caller.id}; reconcile asked{note}")


async def resume_site(services: Services, site: str, by: str, now: float) -> None:
    await services.state.set_site_state(
        site, {"paused": "", "paused.until": "", "paused.by": by, "paused.at": f"{now:.3f}"}
    )
    await _hint(services, site, f"resume:{site}:{now:.6f}")


async def expire_pauses(services: Services, now: float | None = None) -> list[str]:
    """Resume the sites whose ``pause <site> <for>`` ran out; the names resumed."""
    at = time.time() if now is None else now
    done = []
    for site in await services.state.known_sites():
        until = (await services.state.site_state(site)).get("paused.until")
        if until and float(until) <= at:
            await resume_site(services, site, "expiry", at)
            done.append(site)
    return done


async def expire_pauses_loop(services: Services, stop: asyncio.Event, every: float = 5.0) -> None:
    """Run :func:`expire_pauses` until ``stop``; Redis trouble is weather (logged, retried)."""
    while not stop.is_set():
        try:
            for site in await expire_pauses(services):
                log.info("pause of %s ran out: resumed", site, extra={"site": site})
        except Exception as exc:
            log.warning("pause expiry: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def _plan_key(ctx: Context, ref: str) -> str:
    return f"{ctx.services.settings.redis.prefix}:{{chat}}:plan:{ref}"


def _params(words: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in words:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise Usage(f"expected k=v, got {item[:40]!r}")
        params[name] = value
    return params


@command(
    "playbook",
    "operator",
    "playbook <name> <site> [k=v ...]",
    "dry-run a playbook, with an Apply button",
    site_arg=1,
    read_only=False,
    chat_only=True,
)
async def playbook(ctx: Context, args: list[str]) -> Reply:
    from bot.retry import describe_error
    from bot.runner import Runner

    if len(args) < 2:
        raise Usage("which playbook, on which site?")
    name, site = args[0], args[1]
    settings = ctx.services.settings
    call = playbook_call(settings, ctx.playbooks, site, name, _params(args[2:]), dry_run=True)
    runner = Runner(ctx.services, ctx.playbooks, "chat-dry-run")
    try:
        plan = await runner.plan(site, call)
    except Exception as exc:
        code, message = describe_error(exc)
        return Reply(f"dry-run of {name} on {site} failed: {code}: {message}", ok=False)
    ref = secrets.token_hex(6)
    doc = {"site": site, "playbook": name, "params": call.params, "by": ctx.caller.id}
    await ctx.services.redis.set(
        _plan_key(ctx, ref), json.dumps(doc), ex=int(settings.chat.approval_ttl)
    )
    destructive = ctx.playbooks[name].destructive
    lines = [str(c) for c in plan.changes[:MAX_LINES]] or ["no changes: already converged"]
    lines += [f"note: {n}" for n in plan.notes[:5]]
    if destructive:
        lines.append("destructive: Apply asks an approver (not you) to confirm")
    minutes = settings.chat.approval_ttl / 60
    lines.append(f"the Apply button works for {minutes:.0f} min")
    return Reply(
        f"dry-run of {name} on {site}:",
        lines=lines,
        buttons=[Button("Apply", "apply", ref, "danger" if destructive else "primary")],
    )


@command(
    "apply",
    "operator",
    "apply <ref>",
    "run a dry-run's playbook (its button)",
    read_only=False,
    chat_only=True,
)
async def apply(ctx: Context, args: list[str]) -> Reply:
    if not args or not args[0].isalnum():
        raise Usage("which dry-run?")
    raw = await ctx.services.redis.getdel(_plan_key(ctx, args[0]))
    if raw is None:
        return Reply("that dry-run expired or was applied already: run playbook again", ok=False)
    doc = json.loads(raw)
    site, name, params = doc["site"], doc["playbook"], doc["params"]
    if not ctx.allows("operator", site):
        return refused(ctx, "apply", "operator", site)
    settings = ctx.services.settings
    call = playbook_call(settings, ctx.playbooks, site, name, params, dry_run=True)
    if ctx.playbooks[name].destructive:
        approval = await ctx.approvals.create(site, name, call.params, ctx.caller.id)
        return approval_request(ctx, approval)
    run_id = await queue_request(ctx, site, call, ctx.caller.id, key=f"chat:{args[0]}")
    return Reply(
        f"{name} on {site} queued by {ctx.caller.name or ctx.caller.id} (run {run_id[:12]})",
        follow=(site, run_id),
        link=run_link(ctx, site, run_id),
    )


def approval_request(ctx: Context, approval: Approval) -> Reply:
    return approval_reply(approval)


def approval_reply(approval: Approval) -> Reply:
    """The approval request as posted in the channel, with Approve and Deny."""
    who = approval.requested_by
    return Reply(
        f"approval {approval.id}: {who} asks to run {approval.playbook} (destructive) "
        f"on {approval.site}",
        lines=[
            *(f"{k}={v}" for k, v in sorted(approval.params.items())),
            f"an approver other than {who} must decide by {clock(approval.expires_at)} "
            f"(expires in {(approval.expires_at - approval.requested_at) / 60:.0f} min)",
        ],
        buttons=[
            Button("Approve", "approve", approval.id, "primary"),
            Button("Deny", "deny", approval.id, "danger"),
        ],
        public=True,
    )


async def queue_request(
    ctx: Context,
    site: str,
    call: PlaybookCall,
    requested_by: str,
    *,
    key: str,
    confirmed: bool = False,
) -> str:
    """Queue a ``playbook.requested`` through the gate; the event (run) id."""
    services = ctx.services
    data = {"playbook": call.name, "params": call.params, "requested_by": requested_by}
    checked = event_data(
        services.settings,
        ctx.handlers,
        REQUESTED,
        site,
        data,
        playbooks=ctx.playbooks,
        confirm_destructive=confirmed,
    )
    payload = checked.model_dump(mode="json")
    from bot.sources.report import keep_manual_address

    await keep_manual_address(services, site, call.name, payload["params"], "chat")
    event = Event.new(REQUESTED, site, source="chat", data=payload, idempotency_key=key)
    await services.queue.publish(event)
    return event.id


async def _decide(ctx: Context, args: list[str], approve: bool) -> Reply:
    verb = "approve" if approve else "deny"
    if not args:
        raise Usage("which request?")
    approvals = ctx.approvals
    current = await approvals.get(args[0])
    if current is None:
        return Reply(f"no approval request {args[0][:32]}", ok=False)
    withdraw = not approve and current.requested_by == ctx.caller.id
    if not withdraw and not ctx.allows("approver", current.site):
        return refused(ctx, verb, "approver", current.site)
    decided = await approvals.decide(current.id, ctx.caller.id, approve, now=ctx.now())
    approval = decided.approval or current
    if current.requested_by == BOT and decided.result in ("ok", "expired"):
        # Asked by the bot itself (a site with approval = true): tell its channels too.
        escalations = Escalations(ctx.services)
        await escalations.decided(approval)
        if decided.result == "expired":
            await escalations.closed(approval, "expired", "")
        elif not approve:
            slack = ctx.caller.platform != "slack"  # a Slack click replaces the request
            await escalations.closed(approval, "denied", ctx.caller.id, slack=slack)
    if decided.result == "self":
        log.warning("chat: %s refused: approving their own request %s", ctx.caller.id, current.id)
        return Reply(
            f"not allowed: you asked for {approval.id}; another approver must decide", ok=False
        )
    if decided.result == "expired":
        return Reply(
            f"approval {approval.id} expired at {clock(approval.expires_at)}: nothing runs; "
            "ask again with playbook",
            ok=False,
        )
    if decided.result == "decided":
        return Reply(
            f"approval {approval.id} was already {decided.status} by {decided.by or 'expiry'}",
            ok=False,
        )
    if decided.result != "ok":
        return Reply(f"no approval request {args[0][:32]}", ok=False)
    who = ctx.caller.name or ctx.caller.id
    if not approve:
        return Reply(
            f"approval {approval.id} denied by {who}: {approval.playbook} will not run "
            f"on {approval.site}"
        )
    call = PlaybookCall(name=approval.playbook, params=approval.params, confirmed=True)
    asked = (
        f"{approval.requested_by} (approval {approval.id}, approved by {ctx.caller.id} "
        f"at {clock(approval.decided_at or ctx.now())})"
    )
    run_id = await queue_request(
        ctx, approval.site, call, asked, key=f"approval:{approval.id}", confirmed=True
    )
    await approvals.attach_run(approval, run_id)
    return Reply(
        f"approval {approval.id} approved by {who}: {approval.playbook} on {approval.site} "
        f"queued (run {run_id[:12]})",
        follow=(approval.site, run_id),
        link=run_link(ctx, approval.site, run_id),
    )


@command(
    "approve", "approver", "approve <id>", "approve a waiting destructive run", read_only=False
)
async def approve(ctx: Context, args: list[str]) -> Reply:
    return await _decide(ctx, args, True)


@command("deny", "viewer", "deny <id>", "deny (or withdraw) a waiting request", read_only=False)
async def deny(ctx: Context, args: list[str]) -> Reply:
    return await _decide(ctx, args, False)
