"""The one way a source turns an observed public address into an event.

Every source (router push, echo-service poller, FRITZ!Box poller) calls ``IpReporter.report``.
It validates the address, compares it with the site's last known one and publishes
``ip.changed`` only for a real change — so a push and a poll seeing the same new address make
one event, not two. A rejected address (private, CGNAT, ...) becomes ``ip.rejected`` so that
people hear about it.

The event's idempotency key carries a per-site change counter (``ip.changed:home:v4:7:...``),
so an address that comes back later (A → B → A) is a new change, while the same change
reported twice is one. The event is published before the state is updated: a crash in
between makes the next report publish the same key again, which the worker de-duplicates.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from bot.events import Event
from bot.services import Services
from bot.sources.ipcheck import Family, check_ip

log = logging.getLogger("tunnelwarden.sources")

Reported = Literal["good", "nochg", "rejected"]

# Compare-and-set of the site's address: only the reporter that saw the old counter moves it.
_ADVANCE = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""


class IpReporter:
    def __init__(self, services: Services, *, allow_documentation: bool = False) -> None:
        self.services = services
        self.allow_documentation = allow_documentation

    async def report(self, site: str, ip: str, family: Family | None, source: str) -> Reported:
        """``family`` None: whatever the address is."""
        check = check_ip(ip, family=family, allow_documentation=self.allow_documentation)
        family = check.family or family or ("v6" if ":" in ip else "v4")
        queue, state = self.services.queue, self.services.state
        current = await state.site_state(site)
        if not check.ok:
            log.warning(
                "site %s: %s rejected %s: %s",
                site,
                source,
                ip,
                check.message,
                extra={"site": site, "reason": str(check.reason)},
            )
            if current.get(f"rejected.{family}") == ip:
                return "rejected"  # people were told already
            await queue.publish(
                Event.new(
                    "ip.rejected",
                    site,
                    source=source,
                    data={
                        "ip": ip,
                        "family": family,
                        "reason": str(check.reason),
                        "message": check.message,
                    },
                    idempotency_key=f"ip.rejected:{site}:{family}:{ip}",
                )
            )
            await state.set_site_state(site, {f"rejected.{family}": ip})
            return "rejected"
        address = check.normalized or ip
        field = f"ip.{family}"
        if current.get(f"rejected.{family}"):
            await self.services.redis.hdel(self.services.keys.state(site), f"rejected.{family}")
        if current.get(field) == address:
            return "nochg"
        seq = int(current.get(f"{field}.seq", "0"))
        event = Event.new(
            "ip.changed",
            site,
            source=source,
            data={"ip": address, "family": family, "previous": current.get(field)},
            idempotency_key=f"ip.changed:{site}:{family}:{seq + 1}:{address}",
        )
        await queue.publish(event)
        await self.services.redis.eval(
            _ADVANCE,
            1,
            self.services.keys.state(site),
            f"{field}.seq",
            str(seq),
            str(seq + 1),
            field,
            address,
            f"{field}.since",
            f"{time.time():.3f}",
        )
        await self.services.redis.sadd(self.services.keys.sites, site)
        log.info(
            "site %s: %s saw %s (was %s)",
            site,
            source,
            address,
            current.get(field),
            extra={"site": site, "event": event.id},
        )
        return "good"
