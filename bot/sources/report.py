"""The one way an observed public address enters the bot: the site's desired state.

Every source (router push, echo-service poller, FRITZ!Box poller, the CLI) calls
``IpReporter.observe``. It validates the address (``ipcheck``: the same rules and reasons for
every entry point) and, in one atomic script, compares it with the site's desired address,
advances the site's observation sequence number, stores the address, and publishes an
``ip.changed`` hint carrying that number. The worker never applies the hint's address: it
reads the latest desired state under the site lock, and a hint older than the state is
``superseded``. So concurrent pushes, redeliveries and out-of-order events can never leave
Azure on an older address.

An address that is already the desired one is ``nochg`` for the router; if the site is not
converged (its last reconcile failed, or has not caught up with the latest sequence number)
the same script asks the scheduler for a reconcile now, or when a ``Retry-After`` or a held
change allows. A rejected address (private, CGNAT, ...) becomes ``ip.rejected`` once, so that
people hear about it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.events import Event
from bot.scheduler import RECONCILE, member
from bot.services import Services
from bot.sources.ipcheck import Family, check_ip

log = logging.getLogger("tunnelwarden.sources")

Reported = Literal["good", "nochg", "rejected"]

# KEYS: state, stream, sites, schedule
# ARGV: family, address, now, source, event JSON, stream maxlen, site, publish (1/0), member
_OBSERVE = """
local field = 'ip.' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], field)
redis.call('HDEL', KEYS[1], 'rejected.' .. ARGV[1])
redis.call('SADD', KEYS[3], ARGV[7])
if cur == ARGV[2] then
  local seq = redis.call('HGET', KEYS[1], field .. '.seq') or '0'
  local status = redis.call('HGET', KEYS[1], 'reconcile.status')
  local done = redis.call('HGET', KEYS[1], 'reconcile.seq')
  if ARGV[8] == '1' and (status ~= 'converged' or done ~= seq) then
    local nb = tonumber(redis.call('HGET', KEYS[1], 'reconcile.not_before') or '0') or 0
    redis.call('ZADD', KEYS[4], 'LT', math.max(tonumber(ARGV[3]), nb), ARGV[9])
    return {'nochg', seq, '', 'reconcile'}
  end
  return {'nochg', seq, '', ''}
end
local seq = redis.call('HINCRBY', KEYS[1], field .. '.seq', 1)
redis.call('HSET', KEYS[1], field, ARGV[2], field .. '.since', ARGV[3],
           field .. '.source', ARGV[4], field .. '.previous', cur or '')
local entry = ''
if ARGV[8] == '1' then
  local ev = cjson.decode(ARGV[5])
  ev.data.seq = seq
  ev.data.previous = cur or cjson.null
  ev.idempotency_key = 'ip.changed:' .. ARGV[7] .. ':' .. ARGV[1] .. ':' .. seq
  entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'event', cjson.encode(ev))
end
return {'good', seq, entry, ''}
"""


@dataclass(frozen=True)
class Observation:
    status: Reported
    address: str  # normalised (or as given, when rejected)
    family: Family
    seq: int = 0  # the site's observation number for this family after the call
    event_id: str = ""  # the ip.changed hint published (good), if any
    reconcile: bool = False  # nochg, and a reconcile was asked for (site not converged)
    reason: str = ""  # ipcheck's reason code when rejected
    message: str = ""


class IpReporter:
    def __init__(self, services: Services, *, allow_documentation: bool = False) -> None:
        self.services = services
        self.allow_documentation = allow_documentation

    async def report(self, site: str, ip: str, family: Family | None, source: str) -> Reported:
        """``family`` None: whatever the address is."""
        return (await self.observe(site, ip, family, source)).status

    async def observe(
        self, site: str, ip: str, family: Family | None, source: str, *, hint: bool = True
    ) -> Observation:
        """Record what ``source`` saw; ``hint=False`` records without publishing (a person's
        manual run applies the address itself)."""
        check = check_ip(ip, family=family, allow_documentation=self.allow_documentation)
        family = check.family or family or ("v6" if ":" in ip else "v4")
        if not check.ok:
            await self._rejected(site, ip, family, source, str(check.reason), check.message)
            return Observation("rejected", ip, family, reason=str(check.reason),
                               message=check.message)  # fmt: skip
        address = check.normalized or ip
        keys = self.services.keys
        template = Event.new(
            "ip.changed", site, source=source, data={"ip": address, "family": family}
        )
        script = self.services.redis.register_script(_OBSERVE)
        reply = await script(
            keys=[keys.state(site), keys.stream, keys.sites, keys.schedule],
            args=[
                family,
                address,
                f"{time.time():.3f}",
                source,
                template.to_wire(),
                self.services.settings.redis.stream_maxlen,
                site,
                int(hint),
                member(RECONCILE, site),
            ],
        )
        status = _text(reply[0])
        seq = int(_text(reply[1]) or 0)
        if status == "nochg":
            asked = _text(reply[3]) == "reconcile"
            if asked:
                log.info(
                    "site %s: %s confirms %s; site not converged, reconcile asked for",
                    site,
                    source,
                    address,
                    extra={"site": site},
                )
            return Observation("nochg", address, family, seq, reconcile=asked)
        log.info(
            "site %s: %s saw %s (observation %d)",
            site,
            source,
            address,
            seq,
            extra={"site": site, "event": template.id if hint else ""},
        )
        return Observation("good", address, family, seq, event_id=template.id if hint else "")

    async def _rejected(
        self, site: str, ip: str, family: Family, source: str, reason: str, message: str
    ) -> None:
        log.warning(
            "site %s: %s rejected %s: %s",
            site,
            source,
            ip,
            message,
            extra={"site": site, "reason": reason},
        )
        state = self.services.state
        current = await state.site_state(site)
        if current.get(f"rejected.{family}") == ip:
            return  # people were told already
        await self.services.queue.publish(
            Event.new(
                "ip.rejected",
                site,
                source=source,
                data={"ip": ip, "family": family, "reason": reason, "message": message},
                idempotency_key=f"ip.rejected:{site}:{family}:{ip}",
            )
        )
        await state.set_site_state(site, {f"rejected.{family}": ip})


async def keep_manual_address(
    services: Services, site: str, playbook: str, params: Mapping[str, Any], source: str
) -> None:
    """A person's ``update-local-gateway`` with an ``ip`` (CLI ``playbook run``, ``emit
    playbook.requested``, chat): that address becomes the site's desired one, recorded
    without a hint, so the reconciler keeps it (a resync does not undo it) until the site
    reports another. Every entry point that queues a person's request calls this."""
    ip = params.get("ip")
    if playbook != "update-local-gateway" or not ip:
        return
    reporter = IpReporter(services, allow_documentation=services.settings.allow_documentation_ips)
    await reporter.observe(site, str(ip), "v4", source=source, hint=False)


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
