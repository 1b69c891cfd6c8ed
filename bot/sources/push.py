"""Router push: the dyndns2 endpoint (``/nic/update``) for sites with ``[sites.X.push]``.

Routers (FRITZ!Box custom DynDNS, OPNsense, pfSense, UniFi) and DDNS clients (ddclient,
inadyn) push their new address the moment they get it: no polling delay at all.
"""

from __future__ import annotations

from aiohttp import web

from bot.config import Settings
from bot.sources.dyndns2 import (
    DynDns2Config,
    DynDnsAccount,
    UpdateResult,
    add_dyndns2_routes,
    make_dyndns2_handler,
)
from bot.sources.ipcheck import Family
from bot.sources.report import IpReporter


def push_config(settings: Settings) -> DynDns2Config | None:
    """The dyndns2 receiver's config for every site with ``[sites.X.push]``, or None.

    The secret comes from a file or the environment and is in memory anyway, so accounts
    hold it as-is (a ``SecretStr``): checks are a constant-time compare, no PBKDF2. Hashing
    it in memory would only make each push cost CPU without protecting anything.
    """
    accounts = [
        DynDnsAccount(
            site=name,
            username=site.push.username,
            password=site.push.password,
            hostnames=tuple(site.push.hostnames),
        )
        for name, site in settings.sites.items()
        if site.push is not None
    ]
    if not accounts:
        return None
    return DynDns2Config(
        accounts=tuple(accounts), allow_documentation=settings.allow_documentation_ips
    )


def add_push_routes(app: web.Application, settings: Settings, reporter: IpReporter) -> bool:
    """Serve ``/nic/update`` if any site is set up for push; True if it is."""
    config = push_config(settings)
    if config is None:
        return False

    async def on_update(site: str, ip: str, family: Family) -> UpdateResult:
        outcome = await reporter.report(site, ip, family, source="dyndns2")
        return "nochg" if outcome == "nochg" else "good"

    async def on_reject(site: str | None, code: str, detail: str, ip: str | None) -> None:
        if site is not None and ip is not None:
            await reporter.report(site, ip, None, source="dyndns2")  # publishes ip.rejected

    add_dyndns2_routes(app, make_dyndns2_handler(config, on_update, on_reject=on_reject))
    return True
