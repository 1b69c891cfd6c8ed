"""Handlers: event type → decision."""

from __future__ import annotations

from handlers.base import Handler


def builtin() -> dict[str, Handler]:
    from handlers import failover, ip, playbook, site, testing

    found = [*site.HANDLERS, *failover.HANDLERS, *ip.HANDLERS, playbook.HANDLER, *testing.HANDLERS]
    return {h.event_type: h for h in found}
