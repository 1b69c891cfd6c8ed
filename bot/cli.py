"""The ``tunnelwarden`` command.

Heavy modules (Redis, aiohttp, the Azure SDK) are imported inside the commands that need
them, so ``tunnelwarden --help`` and ``config check`` start fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.models import RunRecord
    from bot.redact import Redactor
    from bot.services import Services

T = TypeVar("T")

app = typer.Typer(
    name="tunnelwarden",
    help="Keeps site-to-site VPNs into Azure healthy, without a human in the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
playbook_app = typer.Typer(help="List and run playbooks by hand.", no_args_is_help=True)
config_app = typer.Typer(
    help="Check the configuration; make a new journal key (new-key).", no_args_is_help=True
)
app.add_typer(playbook_app, name="playbook")
sim_app = typer.Typer(help="Local simulators (loopback only).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(sim_app, name="sim")
probe_app = typer.Typer(help="The sites' health probes: list them, run one now.")
app.add_typer(probe_app, name="probe")
failover_app = typer.Typer(
    help="A site's failover pair: hold failback (failback by hand only), release, show.",
    no_args_is_help=True,
)
app.add_typer(failover_app, name="failover")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class Globals:
    config: Path | None
    redis_url: str | None


# Exit codes (README "Exit codes" lists them; tests/test_cli_errors.py checks them).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and the thing failed (a run, a probe, config check)
EXIT_USAGE = 2  # bad input: options, parameters, config, unknown names; nothing was done
EXIT_TIMEOUT = 3  # no result in time (playbook run --timeout)
EXIT_REDIS = 4  # Redis unreachable or unusable
EXIT_AZURE = 5  # Azure (or the simulator) unreachable or refused the request
EXIT_LISTEN = 6  # cannot listen: the port is taken or not allowed
EXIT_INTERNAL = 70  # a bug: run again with --debug for the traceback
EXIT_INTERRUPTED = 130

_DEBUG = {"on": False}


# typer's help shows ``--json <bool>``; newer typers render that in ``display_type_rich``.
# Where it exists, flags show no type; older typers (the declared floor) keep their own help.
_typer_display_type: Any = getattr(typer.core.TyperOption, "display_type_rich", None)


def _flag_metavar(self: Any, ctx: Any) -> str | None:
    """Help shows no type for flags (``--json``, not ``--json <bool>``)."""
    if getattr(self, "is_flag", False):
        return None
    shown: str | None = _typer_display_type(self, ctx)
    return shown


if _typer_display_type is not None:
    setattr(typer.core.TyperOption, "display_type_rich", _flag_metavar)  # noqa: B010


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="TUNNELWARDEN_CONFIG", help="TOML config file."),
]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="TUNNELWARDEN_REDIS_URL",
        help="Redis to use (overrides redis.url); default: the embedded server.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable).")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"tunnelwarden {version('tunnelwarden')}\n")
        raise typer.Exit(0)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, show the Python traceback too.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug
    if redis_url and not redis_url.startswith(_REDIS_SCHEMES):
        raise typer.BadParameter(
            f"{redis_url!r}: unsupported scheme; use one of {', '.join(_REDIS_SCHEMES)}",
            param_hint="--redis-url",
        )
    ctx.obj = Globals(config, redis_url)


def _settings(ctx: typer.Context, *, lenient: bool = False) -> Settings:
    """The config; ``lenient`` for read-only commands (a secret whose ``_env`` variable is unset
    is no error: they do not use it)."""
    from bot.config import ConfigError, load_config

    g: Globals = ctx.obj
    try:
        return load_config(g.config, lenient=lenient)
    except ConfigError as exc:
        first, more = exc.problems[0], len(exc.problems) - 1
        extra = f" (and {more} more; see: tunnelwarden config check)" if more else ""
        err.print(f"[red]config:[/red] {escape(first)}{extra}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


def _setup_logs(settings: Settings) -> Redactor:
    """Logging through the process's one redactor (returned: the services use it too, so a
    secret learnt at run time, like a connection's shared key, is masked in logs as well)."""
    from bot.logs import setup_logging

    redact = settings.redactor()
    setup_logging(settings.log.level, settings.log.format, redact)
    return redact


def _with_services(
    ctx: typer.Context, work: Callable[[Services], Awaitable[T]], *, lenient: bool = False
) -> T:
    """Open Redis (embedded if none is configured), run ``work``, close (``lenient``: a
    read-only command, see ``_settings``)."""
    from bot.app import open_services
    from bot.embedded import EmbeddedRedisError

    settings = _settings(ctx, lenient=lenient)
    g: Globals = ctx.obj

    async def go() -> T:
        async with open_services(settings, g.redis_url) as services:
            return await work(services)

    try:
        return asyncio.run(go())
    except EmbeddedRedisError as exc:
        _fail(f"redis: {exc}", EXIT_REDIS)
    except OSError as exc:
        if type(exc).__module__.startswith("redis") or isinstance(exc, ConnectionError):
            _fail(f"redis: cannot connect: {_one_line(exc)}", EXIT_REDIS)
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            _fail(f"redis: {type(exc).__name__}: {_one_line(exc)}", EXIT_REDIS)
        raise


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (its type name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# --- long-running processes ------------------------------------------------------------


def _serve(ctx: typer.Context, *, worker: bool, http: bool, sources: bool = False) -> None:
    from bot.app import run_process

    settings = _settings(ctx)
    redact = _setup_logs(settings)
    g: Globals = ctx.obj
    code = asyncio.run(
        run_process(
            settings,
            redis_url=g.redis_url,
            worker=worker,
            http=http,
            sources=sources,
            redact=redact,
        )
    )
    raise typer.Exit(code)


@app.command()
def run(ctx: typer.Context) -> None:
    """Run everything in one process: sources, worker and HTTP server."""
    _serve(ctx, worker=True, http=True, sources=True)


@app.command()
def worker(ctx: typer.Context) -> None:
    """Consume events and run playbooks (start as many as you like; each serves the admin
    listener for probes: give each on one host its own admin.port)."""
    _serve(ctx, worker=True, http=False)


@app.command()
def sources(ctx: typer.Context) -> None:
    """Run the sources: pollers (one replica at a time) and the push endpoints."""
    _serve(ctx, worker=False, http=True, sources=True)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run only the HTTP listeners: public (router push) and admin (/healthz, /readyz, ...)."""
    _serve(ctx, worker=False, http=True)


# --- events -----------------------------------------------------------------------------


@app.command()
def emit(
    ctx: typer.Context,
    type: Annotated[str, typer.Argument(help="Event type, e.g. ip.changed")],
    site: Annotated[str, typer.Option("--site", help="Site name")],
    data: Annotated[str | None, typer.Option("--data", help="JSON object")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key")] = None,
    confirm_destructive: Annotated[
        bool,
        typer.Option(
            "--confirm-destructive",
            help="playbook.requested: run a destructive playbook the site's policy does not allow",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put an event on the queue, as a source would (checked like every other entry point).

    ip.changed records the address as the site's observed address (the same checks as a
    router push) and publishes the hint; playbook.requested is checked like playbook run;
    other types are published as given.

    Event types: ip.changed (data: ip, family "v4" or "v6"), site.reconcile, tunnel.down,
    tunnel.up, tunnel.degraded, probe.failed, probe.recovered, failover.check, path.failed,
    failback.needed, ip.rejected, playbook.requested (data: playbook, params), test.noop,
    test.sleep, test.fail (fails on every delivery, then reaches the dead letters: see
    dead-letters). An unknown type is refused; nothing is queued."""
    import handlers
    import playbooks
    from bot.events import Event, parse_data
    from bot.gate import REQUESTED, Refused, event_data

    settings = _settings(ctx)
    try:
        payload = parse_data(data)
    except ValueError as exc:
        _fail(f"--data: {exc}")
    try:
        checked = event_data(
            settings,
            handlers.builtin(),
            type,
            site,
            payload,
            playbooks=playbooks.builtin(),
            confirm_destructive=confirm_destructive,
        )
        if type == REQUESTED:  # the gate's normalised parameters and confirmation
            payload = checked.model_dump(mode="json")
        event = Event.new(type, site, source="cli", data=payload, idempotency_key=key)
    except Refused as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))

    async def publish(services: Services) -> dict[str, Any]:
        if type == "ip.changed":
            from bot.sources.report import IpReporter

            ip = str(getattr(checked, "ip", ""))
            family = getattr(checked, "family", None)
            reporter = IpReporter(services, allow_documentation=settings.allow_documentation_ips)
            seen = await reporter.observe(site, ip, family, source="cli")
            return {
                "result": seen.status,
                "event_id": seen.event_id,
                "seq": seen.seq,
                "reason": seen.reason,
                "message": seen.message,
                "reconcile": seen.reconcile,
            }
        if type == REQUESTED:
            from bot.sources.report import keep_manual_address

            params = payload.get("params")
            given = params if isinstance(params, dict) else {}
            await keep_manual_address(services, site, str(payload.get("playbook")), given, "cli")
        entry_id = await services.queue.publish(event)
        return {"result": "queued", "entry_id": entry_id, "event": json.loads(event.to_wire())}

    doc = _with_services(ctx, publish)
    if as_json:
        _print_json(doc)
    elif doc["result"] == "rejected":
        _fail(f"{doc.get('message')} ({doc.get('reason')}); nothing queued")
    elif doc["result"] == "good":
        out.print(
            f"queued ip.changed for {site}: observation {doc['seq']}, event {doc['event_id']}",
            highlight=False,
        )
    elif doc["result"] == "nochg":
        more = "; site not converged: reconcile asked for" if doc["reconcile"] else ""
        out.print(f"nochg: already the desired address of {site}{more}", highlight=False)
    else:
        out.print(
            f"queued {event.type} for {event.site}: event {event.id} (entry {doc['entry_id']})",
            highlight=False,
        )
        if event.type == "test.fail":
            out.print(_dead_letter_eta(settings), highlight=False)
    if doc["result"] == "rejected":
        raise typer.Exit(2)


def _dead_letter_eta(settings: Settings) -> str:
    """When a poison event reaches the dead letters: it is taken back from the worker that
    failed it after ``visibility_timeout`` (looked for every ``reclaim_interval``) until it has
    been delivered ``max_deliveries`` times."""
    w = settings.worker
    seconds = w.max_deliveries * (w.visibility_timeout + w.reclaim_interval)
    return (
        f"it fails on each of {w.max_deliveries} deliveries and reaches the dead letters in "
        f"about {_span(seconds)} (worker.max_deliveries x (worker.visibility_timeout + "
        "worker.reclaim_interval)); see: tunnelwarden dead-letters"
    )


def _span(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fail(message: str, code: int = EXIT_USAGE, hint: str | None = None) -> NoReturn:
    """One line on stderr (``error: ...``), an optional ``hint:`` line, exit ``code``."""
    _print_error(message, hint)
    raise typer.Exit(code)


def _flatten(message: str) -> str:
    """Several lines (a pydantic message, say) as one, without the documentation links."""
    import re

    text = re.sub(r"\s*For further information visit https://errors\.pydantic\.dev\S*", "", message)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


# --- playbooks --------------------------------------------------------------------------


@playbook_app.command("list")
def playbook_list(as_json: JsonOpt = False) -> None:
    """The playbooks this build ships."""
    import playbooks

    found = playbooks.builtin()
    if as_json:
        _print_json(
            [
                {
                    "name": p.name,
                    "summary": p.summary,
                    "destructive": p.destructive,
                    "params": p.params_model.model_json_schema().get("properties", {}),
                }
                for p in found.values()
            ]
        )
        return
    table = Table("playbook", "summary", "params", "destructive")
    table.columns[0].no_wrap = True  # the name you type: never cut
    table.columns[2].overflow = "fold"
    for p in found.values():
        params = ", ".join(p.params_model.model_fields) or "-"
        table.add_row(p.name, p.summary, params, "yes" if p.destructive else "")
    out.print(table)


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are strings, and pydantic converts them to the parameter's type
    (numbers, booleans), so ``message=123`` stays the text "123"."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--param: expected k=v, got {item!r}")
        params[name] = value
    return params


@playbook_app.command("run")
def playbook_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Playbook name (see: playbook list)")],
    site: Annotated[str, typer.Option("--site", help="Site name")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="K=V",
            help="a parameter, repeatable; text unless the playbook's parameter is a number "
            "or a boolean (see: playbook list)",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing")
    ] = False,
    confirm_destructive: Annotated[
        bool,
        typer.Option(
            "--confirm-destructive",
            help="Run a destructive playbook where the site's policy does not allow it",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result")] = 900,
    as_json: JsonOpt = False,
) -> None:
    """Run a playbook now (through the queue, so it is locked, journaled and recorded).

    update-local-gateway with an ip also records that address as the site's desired one, so
    the reconciler keeps it (until the site reports another)."""
    import playbooks
    from bot.gate import Refused, playbook_call

    settings = _settings(ctx)
    try:
        call = playbook_call(
            settings,
            playbooks.builtin(),
            site,
            name,
            _parse_params(param or []),
            confirm_destructive=confirm_destructive,
            dry_run=dry_run,
        )
    except Refused as exc:
        _fail(str(exc))
    if dry_run:
        _dry_run(ctx, site, call, as_json)
        return
    record = _with_services(ctx, lambda s: _request_and_wait(s, site, call, timeout, as_json))
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        _print_record(record)
    raise typer.Exit(0 if record.outcome in ("ok", "no_changes") else 1)


def _dry_run(ctx: typer.Context, site: str, call: Any, as_json: bool) -> None:
    from bot.retry import PermanentError, describe_error

    async def plan(services: Services) -> Any:
        from bot.app import build_worker

        return await build_worker(services, "cli-dry-run").runner.plan(site, call)

    try:
        result = _with_services(ctx, plan)
    except PermanentError as exc:
        code, message = describe_error(exc)
        _fail(f"{code}: {message}")
    if as_json:
        _print_json(
            {
                "playbook": call.name,
                "site": site,
                "dry_run": True,
                "converged": result.converged,
                "changes": [c.model_dump(mode="json") for c in result.changes],
                "notes": result.notes,
            }
        )
        return
    out.print(f"plan for [bold]{call.name}[/bold] on [bold]{site}[/bold] (dry-run):")
    out.print(escape(result.render()), highlight=False)
    for note in result.notes:
        out.print(f"  note: {escape(note)}", highlight=False)


async def _request_and_wait(
    services: Services, site: str, call: Any, wait_s: float, quiet: bool
) -> RunRecord:
    import uuid

    from bot.events import Event
    from bot.sources.report import keep_manual_address

    await keep_manual_address(services, site, call.name, call.params, "cli")
    event = Event.new(
        "playbook.requested",
        site,
        source="cli",
        data={
            "playbook": call.name,
            "params": call.params,
            "requested_by": "cli",
            "confirm_destructive": call.confirmed,
        },
        idempotency_key=f"cli:{uuid.uuid4().hex}",
    )
    await services.queue.publish(event)
    stop = asyncio.Event()
    local = None
    if not await services.state.live_workers():
        # Nobody is consuming: run a worker here until our event is done.
        from bot.app import build_worker

        local = build_worker(services)
        local_task = asyncio.create_task(local.run(stop))
    deadline = time.monotonic() + wait_s
    status = None if quiet else err.status(f"running {call.name} on {site}...")
    try:
        if status is not None:
            status.start()
        while time.monotonic() < deadline:
            record = await services.state.recorded(site, event.id)
            if record is not None:
                return record
            if local is not None and local_task.done():
                local_task.result()
            await asyncio.sleep(0.1)
        err.print(f"no result within {wait_s:.0f}s; see: tunnelwarden history --site {site}")
        raise typer.Exit(3)
    finally:
        if status is not None:
            status.stop()
        if local is not None:
            stop.set()
            await local_task


def _print_record(record: RunRecord) -> None:
    colour = {"ok": "green", "no_changes": "green", "skipped": "yellow"}.get(record.outcome, "red")
    out.print(
        f"[{colour}]{record.outcome}[/{colour}] {record.event_type} on {record.site} "
        f"in {record.duration_s:.2f}s (run {record.run_id}, attempt {record.attempt})"
    )
    if record.reason:
        out.print(f"  reason: {escape(record.reason)}", highlight=False)
    for result in record.playbooks:
        out.print(f"  {result.playbook}: {result.outcome} {escape(result.detail)}", highlight=False)
        for change in result.changes:
            out.print(f"    {escape(str(change))}", highlight=False)
        if result.error:
            first = next((ln for ln in result.error.splitlines() if ln.strip()), result.error)
            out.print(f"    [red]{result.error_code}:[/red] {escape(first)}", highlight=False)


# --- inspection -------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Queue, workers and sites at a glance."""

    from bot.scheduler import RECONCILE

    async def gather(services: Services) -> dict[str, Any]:
        state = services.state
        stats = await services.queue.stats()
        stats["dead_letters"] = await services.queue.dead_count()
        settings = services.settings
        names = sorted(set(settings.sites) | set(await state.known_sites()))
        sites = []
        for name in names:
            last = await state.history(name, 1)
            site_state = await state.site_state(name)
            sites.append(
                {
                    "name": name,
                    "configured": name in settings.sites,
                    "paused": settings.policy_for(name).paused or site_state.get("paused") == "1",
                    "state": site_state,
                    "active_runs": await state.active_runs(name),
                    "last_run": last[0].model_dump(mode="json") if last else None,
                    "next_check": await services.scheduler.due_at(RECONCILE, name),
                    "changes_last_hour": await state.changes_since(name, 3600),
                }
            )
        workers = [{"name": n, "last_seen": ts} for n, ts in await state.live_workers(within=60)]
        from bot.http import redis_persistence

        redis = {"persistence": await redis_persistence(services)}
        budget = services.azure.budget
        arm = await budget.snapshot() if budget is not None else None
        return {"queue": stats, "workers": workers, "sites": sites, "redis": redis, "budget": arm}

    doc = _with_services(ctx, gather, lenient=True)
    settings = _settings(ctx, lenient=True)
    embedded = not (ctx.obj.redis_url or settings.redis.url)
    doc["state_dir"] = str(settings.redis.state_dir.resolve())
    doc["redis"]["embedded"] = embedded
    if as_json:
        _print_json(doc)
        return
    q = doc["queue"]
    out.print(
        f"queue: {q['length']} entries, {q['lag']} waiting, {q['pending']} in flight, "
        f"{q['dead_letters']} dead letters; workers alive: {len(doc['workers'])}"
    )
    persistence = doc["redis"]["persistence"]
    if persistence == "none":
        err.print(
            "[yellow]warning:[/yellow] Redis keeps nothing on disk (no AOF, no RDB): a restart "
            "loses queued events, history and site state; see docs/operations.md",
            highlight=False,
        )
    else:
        out.print(f"redis persistence: {persistence}", highlight=False)
    where = "the embedded Redis's data" if embedded else "not used: Redis is external"
    out.print(f"state directory: {doc['state_dir']} ({where})", highlight=False)
    if doc.get("budget"):
        b = doc["budget"]
        left = ", ".join(f"{op} {b['tokens'][op]:g}/{b['size'][op]:g}" for op in b["tokens"])
        out.print(
            f"ARM budget: {left}; deferred {sum(b['deferred'].values())}, "
            f"429s received {sum(b['throttled'].values())}",
            highlight=False,
        )
    table = Table(
        "site",
        "reconcile",
        "tunnel",
        "probes",
        "paused",
        "active runs",
        "last run",
        "outcome",
        "next check",
    )
    table.columns[0].no_wrap = True  # site names are typed: never cut
    for s in doc["sites"]:
        last = s["last_run"]
        st = s["state"]
        reconcile = st.get("reconcile.status", "-")
        if reconcile == "retrying":
            reconcile += f" ({st.get('reconcile.attempt')})"
        tunnel = st.get("tunnel.status", "-")
        if st.get("tunnel.since") and tunnel != "-":
            tunnel += f" {_ago(float(st['tunnel.since'])).removesuffix(' ago')}"
        probes = [k.split(".")[1] for k in st if k.startswith("probe.") and k.endswith(".state")]
        down = [p for p in probes if st.get(f"probe.{p}.state") == "down"]
        table.add_row(
            s["name"] + ("" if s["configured"] else " (not configured)"),
            reconcile,
            tunnel,
            (f"{len(probes) - len(down)}/{len(probes)} up" if probes else "-")
            + (f" (down: {', '.join(sorted(down))})" if down else ""),
            "yes" if s["paused"] else "",
            str(len(s["active_runs"])),
            _ago(last["finished_at"]) if last else "-",
            last["outcome"] if last else "-",
            _in(s["next_check"]) if s["next_check"] else "-",
        )
    out.print(table)


def _in(ts: float) -> str:
    """A time to come, as ``in 4m`` (``now`` when it is due)."""
    secs = int(ts - time.time())
    if secs <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"in {secs // size}{unit}"
    return f"in {secs}s"


def _ago(ts: float) -> str:
    secs = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


@app.command()
def history(
    ctx: typer.Context,
    site: Annotated[str | None, typer.Option("--site", help="Only this site")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recorded runs, newest first."""
    records = _with_services(ctx, lambda s: s.state.history(site, limit), lenient=True)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
        return
    table = Table("when", "site", "event", "outcome", "playbooks", "took")
    table.add_column("run", no_wrap=True, min_width=12)  # the whole id when there is room
    for column in table.columns[1:5]:
        column.overflow = "fold"  # names are typed again: folded, never cut with "…"
    wide = out.width >= 150
    for r in records:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.finished_at)),
            r.site,
            r.event_type,
            r.outcome,
            escape(", ".join(f"{p.playbook}:{p.outcome}" for p in r.playbooks) or r.reason),
            f"{r.duration_s:.2f}s",
            r.run_id if wide else r.run_id[:12],
        )
    out.print(table)


@app.command("dead-letters")
def dead_letters(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Entries the worker could not handle, with the reason (newest first)."""
    rows = _with_services(ctx, lambda s: s.queue.dead_letters(limit), lenient=True)
    if as_json:
        _print_json([{**r.as_json(), "delivered": _delivered(r)} for r in rows])
        return
    table = Table("dead since", "entry", "delivered", "reason")
    table.columns[1].no_wrap = True
    table.columns[3].overflow = "fold"
    for r in rows:
        table.add_row(_ago(r.dead_at), r.entry_id, str(_delivered(r)), escape(r.reason))
    out.print(table)


def _delivered(row: Any) -> int:
    """How often the entry was handed to a handler: a give-up is noticed on the delivery after
    the last one, which is counted in ``deliveries`` but never ran."""
    given_up = str(row.reason).startswith("gave up after")
    return int(row.deliveries) - 1 if given_up and row.deliveries > 0 else int(row.deliveries)


# --- probes -----------------------------------------------------------------------------


@probe_app.command("list")
def probe_list(
    ctx: typer.Context,
    site: Annotated[str | None, typer.Option("--site", help="Only this site")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The configured probes, with what the last runs found (from Redis)."""
    settings = _settings(ctx, lenient=True)
    if site is not None and site not in settings.sites:
        _fail(f"unknown site {site!r}")
    names = [site] if site else sorted(settings.sites)

    async def gather(services: Services) -> list[dict[str, Any]]:
        rows = []
        for name in names:
            state = await services.state.site_state(name)
            for spec in settings.sites[name].probes:
                p = f"probe.{spec.name}"
                rows.append(
                    {
                        "site": name,
                        "probe": spec.name,
                        "kind": spec.kind,
                        "through_tunnel": spec.through_tunnel,
                        "interval": spec.interval,
                        "state": state.get(f"{p}.state") or "unknown",
                        "since": float(state.get(f"{p}.since") or 0) or None,
                        "last": state.get(f"{p}.reason"),
                        "detail": state.get(f"{p}.detail"),
                        "checked": float(state.get(f"{p}.checked") or 0) or None,
                    }
                )
        return rows

    rows = _with_services(ctx, gather, lenient=True)
    if as_json:
        _print_json(rows)
        return
    table = Table("site", "probe", "kind", "through tunnel", "state", "last result", "checked")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    table.columns[5].overflow = "fold"
    for r in rows:
        table.add_row(
            r["site"],
            r["probe"],
            r["kind"],
            "yes" if r["through_tunnel"] else "",
            r["state"],
            escape(f"{r['last'] or '-'}: {r['detail'] or ''}"),
            _ago(r["checked"]) if r["checked"] else "never",
        )
    out.print(table)


@probe_app.command("run")
def probe_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Probe name (see: probe list)")],
    site: Annotated[str, typer.Option("--site", help="Site name")],
    as_json: JsonOpt = False,
) -> None:
    """Run one probe now and show its result (records nothing)."""
    from bot.probes import probe

    settings = _settings(ctx)
    if site not in settings.sites:
        _fail(f"unknown site {site!r}")
    specs = {p.name: p for p in settings.sites[site].probes}
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none configured"
        _fail(f"site {site} has no probe {name!r} (probes: {known})")
    spec = specs[name]
    result = asyncio.run(probe(spec))
    if as_json:
        from dataclasses import asdict  # ProbeResult has slots: no __dict__

        _print_json({"site": site, "probe": name, "kind": spec.kind, **asdict(result)})
    else:
        colour = "green" if result.ok else "red"
        latency = f" in {result.latency_s * 1000:.1f} ms" if result.latency_s is not None else ""
        out.print(
            f"[{colour}]{'up' if result.ok else 'down'}[/{colour}] {site}/{name} ({spec.kind})"
            f"{latency}: {escape(result.reason)}: {escape(result.detail)}"
        )
    raise typer.Exit(0 if result.ok else 1)


# --- config -----------------------------------------------------------------------------


@config_app.command("check")
def config_check(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Validate the config; print one line per problem (key path: problem)."""
    from bot.config import ConfigError, config_path, load_config

    g: Globals = ctx.obj
    path = config or g.config
    try:
        settings = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            sys.stdout.write(line + "\n")
        raise typer.Exit(1) from None
    where = config_path(path) or "defaults"
    for line in settings.warnings():  # accepted, but worth a second look
        sys.stdout.write(f"warning: {line}\n")
    out.print(f"ok: {where} ({len(settings.sites)} site(s))", highlight=False)


@config_app.command("new-key")
def config_new_key() -> None:
    """Print a new journal encryption key (for security.journal_key)."""
    from cryptography.fernet import Fernet

    sys.stdout.write(Fernet.generate_key().decode() + "\n")


# --- demo -------------------------------------------------------------------------------


@app.command()
def demo(
    changes: Annotated[int, typer.Option(min=1, max=50, help="IP changes to play")] = 4,
    tunnel_delay: Annotated[
        float, typer.Option(min=0, help="Seconds a tunnel takes to come up")
    ] = 1.5,
    state_dir: Annotated[Path, typer.Option(help="Where the private Redis keeps its data")] = Path(
        ".state/demo"
    ),
) -> None:
    """Watch the whole loop on your machine: no cloud account, no Redis set-up."""
    from bot.demo import run_demo

    code = asyncio.run(run_demo(out, changes, tunnel_delay, state_dir))
    raise typer.Exit(code)


# --- simulators -------------------------------------------------------------------------


@sim_app.command("arm")
def sim_arm(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free one)")] = 8443,
    world: Annotated[Path | None, typer.Option(help="Seed file (TOML/JSON)")] = None,
    retry_after: Annotated[int | None, typer.Option(help="Retry-After on LROs (s)")] = None,
    tunnel_delay: Annotated[float | None, typer.Option(help="Connecting -> Connected (s)")] = None,
) -> None:
    """Run the Azure Resource Manager simulator (Microsoft.Network) until Ctrl-C."""
    import contextlib

    from bot.sim.arm import main as arm_main

    if world is not None:  # a bad seed file is one line, before anything listens
        from bot.sim.world import World

        try:
            World.from_file(world)
        except OSError as exc:
            _fail(f"--world {world}: cannot read: {exc.strerror}")
        except ValueError as exc:
            _fail(f"--world {world}: {exc}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            arm_main("127.0.0.1", port, world, retry_after=retry_after, tunnel_delay=tunnel_delay)
        )


@sim_app.command("sites")
def sim_sites(
    port: Annotated[int, typer.Option(help="Control API port on 127.0.0.1 (0 = any)")] = 0,
    config: Annotated[
        Path | None, typer.Option("--sites", help="Responders (TOML); default: a demo site")
    ] = None,
    arm: Annotated[
        str | None, typer.Option(help="ARM simulator URL whose tunnels the responders follow")
    ] = None,
    tie: Annotated[
        list[str] | None,
        typer.Option(help="site=connection: the site's behind-the-tunnel responders follow it"),
    ] = None,
) -> None:
    """Per-site probe responders (TCP, HTTP, IKEv2, DNS) on loopback until Ctrl-C."""
    import contextlib

    from bot.sim.sites import main as sites_main

    ties = {}
    for item in tie or []:
        site_name, sep, connection = item.partition("=")
        if not sep or not site_name or not connection:
            _fail(f"--tie: expected site=connection, got {item!r}")
        ties[site_name] = connection
    if ties and not arm:
        _fail("--tie needs --arm (the ARM simulator whose tunnels to follow)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sites_main("127.0.0.1", port, config, arm_url=arm, ties=ties))


@sim_app.command("slack")
def sim_slack(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free one)")] = 0,
    signing_secret_env: Annotated[
        str | None,
        typer.Option(help="Variable holding the signing secret its HTTP-mode helper signs with"),
    ] = None,
) -> None:
    """A loopback Slack: the Web API the bot calls, Socket Mode, /_sim/messages (Ctrl-C)."""
    import contextlib
    import os

    from bot.sim.slack import main as slack_main

    secret = os.environ.get(signing_secret_env) if signing_secret_env else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(slack_main("127.0.0.1", port, signing_secret=secret))


@sim_app.command("devices")
def sim_devices(
    host: Annotated[str, typer.Option(help="127.0.0.1 or ::1 (nothing else)")] = "127.0.0.1",
    sonicos_port: Annotated[int, typer.Option(help="SonicOS API port (0 = any)")] = 0,
    barracuda_port: Annotated[int, typer.Option(help="Barracuda REST API port (0 = any)")] = 0,
    kemp_port: Annotated[int, typer.Option(help="KEMP LoadMaster API port (0 = any)")] = 0,
    arm: Annotated[
        str | None,
        typer.Option(help="ARM simulator URL whose tunnels follow the SonicOS gateway in use"),
    ] = None,
) -> None:
    """SonicOS, Barracuda and KEMP device simulators on loopback until Ctrl-C (prints URLs)."""
    import contextlib

    from bot.sim.devices import main as devices_main
    from bot.sim.devices.common import require_loopback

    try:
        require_loopback(host)
    except ValueError as exc:
        _fail(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            devices_main(
                host,
                sonicos_port=sonicos_port,
                barracuda_port=barracuda_port,
                kemp_port=kemp_port,
                arm_url=arm,
            )
        )


# --- failover ---------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` in seconds; ValueError with a one-line reason."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h, 1d)") from None
    if not 0 < value <= 365 * 86400:
        raise ValueError(f"duration out of range: {text!r} (more than 0, at most 365d)")
    return value


def _failover_site(ctx: typer.Context, site: str, *, lenient: bool = False) -> Settings:
    settings = _settings(ctx, lenient=lenient)
    config = settings.sites.get(site)
    if config is None:
        known = ", ".join(sorted(settings.sites)) or "none configured"
        _fail(f"unknown site {site!r} (sites: {known})")
    if config.failover is None:
        _fail(f"site {site!r} has no [sites.{site}.failover] pair")
    return settings


async def _nudge(services: Services, site: str, fields: dict[str, str]) -> str:
    """Write ``fields`` into the site's state and ask its failover reconciler to look now."""
    from bot.events import Event
    from bot.scheduler import FAILOVER

    await services.state.set_site_state(site, fields)
    stamp = f"{time.time():.6f}"  # each nudge is a run of its own, not a duplicate
    event = Event.new(FAILOVER, site, source="cli", idempotency_key=f"cli:{FAILOVER}:{stamp}")
    await services.queue.publish(event)
    return event.id


@failover_app.command("hold")
def failover_hold(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site name")],
    for_: Annotated[
        str | None,
        typer.Option("--for", help="how long, e.g. 30m, 2h, 1d (default: until released)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Hold failback (research C5's 'nopreempt'): traffic stays where it is; failback happens
    only by hand (e.g. ``playbook run sonicwall-preempt --param enabled=true``)."""
    _failover_site(ctx, site)
    try:
        until = None if for_ is None else time.time() + parse_duration(for_)
    except ValueError as exc:
        _fail(str(exc))
    value = "indefinite" if until is None else f"{until:.3f}"
    event_id = _with_services(ctx, lambda s: _nudge(s, site, {"failover.hold": value}))
    shown = "until released" if until is None else "until " + _clock(until)
    if as_json:
        _print_json({"site": site, "hold": value, "event_id": event_id})
    else:
        out.print(f"failback held for {site} {shown} (event {event_id})", highlight=False)


@failover_app.command("release")
def failover_release(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site name")],
    as_json: JsonOpt = False,
) -> None:
    """End a hold: the damping decides failback again."""
    _failover_site(ctx, site)
    event_id = _with_services(ctx, lambda s: _nudge(s, site, {"failover.hold": ""}))
    if as_json:
        _print_json({"site": site, "hold": None, "event_id": event_id})
    else:
        out.print(f"failback hold released for {site} (event {event_id})", highlight=False)


@failover_app.command("status")
def failover_status(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site name")],
    as_json: JsonOpt = False,
) -> None:
    """The pair's damping state: active path, penalty, suppression, probation, hold."""
    _failover_site(ctx, site, lenient=True)

    async def read(services: Services) -> dict[str, str]:
        return await services.state.site_state(site)

    state = _with_services(ctx, read, lenient=True)
    fields = {
        k: v
        for k, v in sorted(state.items())
        if k.startswith(("damping.", "failover.", "path.")) and v != ""
    }
    if as_json:
        _print_json({"site": site, "state": fields})
        return
    table = Table("field", "value", box=None)
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    for key, value in fields.items():
        table.add_row(key, escape(value))
    out.print(table if fields else f"no failover state recorded for {site} yet")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- chat's command layer (bot/commands.py): the same functions chat calls -------------


def _command(ctx: typer.Context, line: list[str], as_json: bool) -> None:
    """Run one command of the shared command layer as the CLI user (no chat roles)."""
    from bot.commands import Caller, context, dispatch

    _settings(ctx)  # a bad config fails here, with its problems listed
    text = " ".join(shlex.quote(word) for word in line)

    async def go(services: Services) -> Any:
        return await dispatch(context(services, Caller.cli(), cli=True), text)

    reply = _with_services(ctx, go)
    if as_json:
        _print_json({"ok": reply.ok, "text": reply.text, "lines": reply.lines})
    elif reply.ok:
        out.print(escape(reply.plain()), highlight=False)
    else:  # one line, the rest (a usage line, say) as the hint
        first, *rest = [line for line in reply.plain().splitlines() if line.strip()] or ["failed"]
        _print_error(first, "; ".join(rest) or None)
    raise typer.Exit(0 if reply.ok else 1)


@app.command(
    "command",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def command_(
    ctx: typer.Context,
    words: Annotated[
        list[str] | None, typer.Argument(metavar="COMMAND [ARGS]...", help="e.g. status home")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Any chat command from the CLI, through the same command layer chat uses
    (``tunnelwarden command help`` lists them): a command added once works in both."""
    _command(ctx, list(words or []) or ["help"], as_json)


@app.command()
def pause(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site name")],
    for_: Annotated[
        str | None, typer.Option("--for", help="how long, e.g. 30m, 2h (default: until resumed)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a site: no handler changes it until resume (or --for runs out)."""
    _command(ctx, ["pause", site, *([for_] if for_ else [])], as_json)


@app.command()
def resume(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site name")],
    as_json: JsonOpt = False,
) -> None:
    """End a site's pause and ask for a reconcile."""
    _command(ctx, ["resume", site], as_json)


@app.command()
def approve(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(metavar="ID", help="Approval request id")],
    as_json: JsonOpt = False,
) -> None:
    """Approve a waiting destructive run (not your own); it is queued at once."""
    _command(ctx, ["approve", approval_id], as_json)


@app.command()
def deny(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(metavar="ID", help="Approval request id")],
    as_json: JsonOpt = False,
) -> None:
    """Deny (or withdraw) a waiting destructive run."""
    _command(ctx, ["deny", approval_id], as_json)


def _classify(exc: BaseException) -> tuple[str, int, str | None]:
    """An unexpected exception as (one line, exit code, hint)."""
    import errno

    module = type(exc).__module__
    text = _one_line(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return (
            f"cannot listen: {exc.strerror or text}",
            EXIT_LISTEN,
            "another process holds the port: stop it, or set http.port / admin.port",
        )
    if module.startswith("redis"):
        return f"redis: {type(exc).__name__}: {text}", EXIT_REDIS, None
    if module.startswith(("azure", "aiohttp", "bot.azure", "bot.retry")):
        return f"azure: {text}", EXIT_AZURE, "is the ARM endpoint up, and the subscription right?"
    return (
        f"internal error: {type(exc).__name__}: {text}",
        EXIT_INTERNAL,
        "run again with --debug for the traceback",
    )


def _quiet_asyncio() -> None:
    """No 'Task exception was never retrieved' dumps after an error we report in one line."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> None:
    """The console script: every error is one line (``--debug``: with its traceback) and an
    exit code from the table in README.md."""
    from typer import Abort, Exit

    try:
        from typer._click import exceptions as click  # newer typers vendor their click
    except ImportError:  # older ones use click itself
        from click import exceptions as click  # type: ignore[no-redef,unused-ignore]
    no_args: Any = getattr(click, "NoArgsIsHelpError", ())  # click >= 8.2 (or typer's own)

    args = sys.argv[1:] if argv is None else argv
    _DEBUG["on"] = "--debug" in args or bool(os.environ.get("TUNNELWARDEN_DEBUG"))
    command = typer.main.get_command(app)
    try:
        code = command.main(args, prog_name="tunnelwarden", standalone_mode=False)
    except no_args as exc:  # a group without its command: its help
        if exc.ctx is not None:
            sys.stdout.write(exc.ctx.get_help() + "\n")
        code = EXIT_USAGE
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "tunnelwarden"
        message = exc.format_message()
        if _DEBUG["on"]:
            traceback.print_exc()
        _print_error(message, f"see: {path} --help")
        code = EXIT_USAGE
    except Exit as exc:
        code = exc.exit_code
    except (Abort, KeyboardInterrupt):
        _print_error("interrupted", None)
        code = EXIT_INTERRUPTED
    except click.ClickException as exc:
        _print_error(exc.format_message(), None)
        code = exc.exit_code
    except Exception as exc:
        if _DEBUG["on"]:
            traceback.print_exc()
        message, code, hint = _classify(exc)
        _print_error(message, hint)
    if code:
        _quiet_asyncio()
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str, hint: str | None) -> None:
    err.print(f"[red]error:[/red] {escape(_flatten(message))}", highlight=False)
    if hint:
        err.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False)


if __name__ == "__main__":
    main()
