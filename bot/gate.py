"""One gate for every entry point: what may be queued, decided before anything is queued.

Router push and the pollers go through ``IpReporter`` (addresses: ``ipcheck``'s rules and
reason codes); the CLI (and later chat) come here, and addresses they carry go through the
same ``ipcheck``. An unknown site, event type, playbook or parameter is refused with one line,
for a dry-run and a real run alike, so nothing malformed is ever queued and recorded as a
failed run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from bot.config import Settings
from bot.models import PlaybookCall
from bot.sources.ipcheck import Family, check_ip
from handlers.base import Handler
from playbooks.base import Playbook

REQUESTED = "playbook.requested"


class Refused(ValueError):
    """A request the gate refuses; ``str()`` is the one line to show, ``code`` a short reason."""

    def __init__(self, message: str, code: str = "Refused") -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: ValidationError) -> str:
    """Pydantic errors as one line: ``field: problem; field: problem`` (no doc links)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def address(settings: Settings, ip: str, family: Family | None = None) -> str:
    """A public address the bot may point Azure at (``ipcheck``'s rules), normalised."""
    check = check_ip(ip, family=family, allow_documentation=settings.allow_documentation_ips)
    if not check.ok:
        raise Refused(f"{ip}: {check.message} ({check.reason})", str(check.reason))
    return check.normalized or ip


def known_site(settings: Settings, site: str) -> None:
    if site not in settings.sites:
        names = ", ".join(sorted(settings.sites)) or "none configured"
        raise Refused(f"unknown site {site!r} (sites: {names})", "UnknownSite")


def playbook_call(
    settings: Settings,
    playbooks: Mapping[str, Playbook[Any]],
    site: str,
    name: str,
    params: dict[str, Any],
    *,
    confirm_destructive: bool = False,
    dry_run: bool = False,
) -> PlaybookCall:
    """A request to run ``name`` on ``site``: checked, with its parameters normalised."""
    known_site(settings, site)
    playbook = playbooks.get(name)
    if playbook is None:
        raise Refused(
            f"unknown playbook {name!r} (known: {', '.join(sorted(playbooks))})",
            "UnknownPlaybook",
        )
    try:
        parsed = playbook.parse(params, allow_documentation=settings.allow_documentation_ips)
    except ValidationError as exc:
        raise Refused(f"{name}: {one_line(exc)}", "BadParams") from None
    if (
        playbook.destructive
        and not dry_run
        and not confirm_destructive
        and not settings.policy_for(site).allow_destructive
    ):
        raise Refused(
            f"{name} is destructive; site {site} does not allow destructive playbooks: "
            "add --confirm-destructive to run it anyway (try --dry-run first)",
            "DestructiveRefused",
        )
    return PlaybookCall(
        name=name,
        params=parsed.model_dump(mode="json", exclude_none=True),
        confirmed=confirm_destructive,
    )


def event_data(
    settings: Settings,
    handlers: Mapping[str, Handler],
    event_type: str,
    site: str,
    data: dict[str, Any],
    *,
    playbooks: Mapping[str, Playbook[Any]] | None = None,
    confirm_destructive: bool = False,
) -> BaseModel:
    """An event a person wants to emit: known type and site, data valid for its handler.

    A ``playbook.requested`` passes the same checks as ``playbook run`` (known playbook, its
    parameters, the address rules, the destructive marker) and carries the normalised
    parameters; only ``confirm_destructive`` (the CLI's ``--confirm-destructive``) confirms a
    destructive playbook, never the event's data.
    """
    handler = handlers.get(event_type)
    if handler is None:
        raise Refused(
            f"unknown event type {event_type!r} (known: {', '.join(sorted(handlers))})",
            "UnknownEventType",
        )
    known_site(settings, site)
    try:
        checked = handler.data_model.model_validate(data)
    except ValidationError as exc:
        raise Refused(f"{event_type}: {one_line(exc)}", "BadData") from None
    ip = getattr(checked, "ip", None)
    if event_type == "ip.changed" and isinstance(ip, str):
        address(settings, ip, getattr(checked, "family", None))
    if event_type == REQUESTED:
        if "confirm_destructive" in data:
            raise Refused(
                f"{REQUESTED}: confirm_destructive cannot be set in the event's data; "
                "use --confirm-destructive",
                "BadData",
            )
        if playbooks is None:
            import playbooks as shipped

            playbooks = shipped.builtin()
        call = playbook_call(
            settings,
            playbooks,
            site,
            str(getattr(checked, "playbook", "")),
            dict(getattr(checked, "params", None) or {}),
            confirm_destructive=confirm_destructive,
        )
        update = {"params": call.params, "confirm_destructive": call.confirmed}
        return handler.data_model.model_validate({**checked.model_dump(), **update})
    if confirm_destructive:
        raise Refused(
            f"--confirm-destructive is for {REQUESTED} (or playbook run), not {event_type}",
            "BadData",
        )
    return checked
