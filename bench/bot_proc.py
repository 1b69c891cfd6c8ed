"""``tunnelwarden run`` for the latency benchmark, with the dyndns2 rate limit lifted.

Every simulated router pushes from 127.0.0.1, and the endpoint's per-client token bucket
(5 requests, then 6 a minute) would answer ``abuse`` after the fifth change. Nothing else is
changed: this is the real CLI entry point.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from bot.config import Settings
    from bot.sources import push
    from bot.sources.ratelimit import RateLimitConfig

    original = push.push_config

    def generous(settings: Settings) -> Any:
        config = original(settings)
        if config is None:
            return None
        limit = RateLimitConfig(burst=1_000_000, per_minute=1_000_000)
        return config.model_copy(update={"rate_limit": limit})

    push.push_config = generous
    from bot.cli import main as cli

    sys.argv = ["tunnelwarden", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
