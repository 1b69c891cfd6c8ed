#!/usr/bin/env python3
"""Container healthcheck: GET /healthz on the admin listener; exit 0 when it answers 200.

The port comes from TUNNELWARDEN_ADMIN__PORT (the variable wins over the config file, so it is
the port the bot really listens on), the host from TUNNELWARDEN_ADMIN__HOST (a wildcard
address is reached on loopback). Usage: tunnelwarden-healthcheck [PATH] (default /healthz).
"""

from __future__ import annotations

import os
import sys
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def admin_url(path: str = "/healthz") -> str:
    host = os.environ.get("TUNNELWARDEN_ADMIN__HOST", "127.0.0.1").strip()
    port = os.environ.get("TUNNELWARDEN_ADMIN__PORT", "9108").strip() or "9108"
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def main(argv: list[str]) -> int:
    url = admin_url(argv[1] if len(argv) > 1 else "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
