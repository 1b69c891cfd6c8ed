"""``tunnelwarden worker``, counting the Redis round trips it makes (for bench.throughput).

redis-py's asyncio client sends every request — one command, or a whole pipeline or MULTI —
with one ``send_packed_command`` call and then waits for the reply, so the number of calls is
the number of round trips. The count is written to ``$BENCH_RTT_FILE`` at exit.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from redis.asyncio.connection import AbstractConnection

COUNT = [0]
_original = AbstractConnection.send_packed_command


async def _counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    COUNT[0] += 1
    await _original(self, command, check_health)


def _write() -> None:
    Path(os.environ["BENCH_RTT_FILE"]).write_text(str(COUNT[0]))


def main() -> None:
    AbstractConnection.send_packed_command = _counted  # type: ignore[method-assign]
    atexit.register(_write)
    from bot.cli import main as cli

    sys.argv = ["tunnelwarden", "worker"]
    cli()


if __name__ == "__main__":
    main()
