"""The peers: ``saq`` and ``arq`` running an equivalent no-op job on the same Redis.

Parent side: ``enqueue_*`` fills the queue, ``*_remaining`` reads how many jobs are not yet
finished (one cheap command, like our ``XINFO GROUPS`` probe). Worker side: ``python -m
bench.peers saq|arq URL [options]`` is the one worker process whose drain time is measured.

Settings (documented in docs/benchmarks.md): saq ``Worker(concurrency=10)`` (its default),
``burst=True, dequeue_timeout=1``; arq ``Worker(max_jobs=10, poll_delay=0.5)`` (its
defaults), ``burst=True``. Both use redis-py with hiredis, as we do, and run with Python's
default logging (no per-job log lines).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
from typing import Any

SAQ_QUEUE = "default"
ARQ_QUEUE = "arq:queue"


def available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------- the job


async def noop(ctx: Any) -> int:
    """The equivalent of our converged playbook: nothing to do, a result to record."""
    return 1


# --------------------------------------------------------------------------- saq


def _saq_queue(url: str) -> Any:
    """saq's ``Queue.from_url`` takes redis:// and postgres:// only; build it on a unix socket."""
    from redis.asyncio import Redis
    from saq.queue.redis import RedisQueue

    return RedisQueue(Redis(unix_socket_path=url.removeprefix("unix://")), name=SAQ_QUEUE)


async def enqueue_saq(url: str, n: int) -> None:
    queue = _saq_queue(url)
    try:
        for start in range(0, n, 200):
            await asyncio.gather(
                *(queue.enqueue("noop") for _ in range(start, min(n, start + 200)))
            )
    finally:
        await queue.disconnect()


def saq_remaining(client: Any) -> int:
    """Jobs enqueued and not finished (saq keeps them in its ``incomplete`` sorted set)."""
    return int(client.zcard(f"saq:{SAQ_QUEUE}:incomplete"))


async def run_saq_worker(url: str, concurrency: int) -> None:
    from saq import Worker

    queue = _saq_queue(url)
    worker = Worker(queue, [noop], concurrency=concurrency, burst=True, dequeue_timeout=1.0)
    try:
        await worker.start()
    finally:
        await queue.disconnect()


# --------------------------------------------------------------------------- arq


def _arq_settings(url: str) -> Any:
    from arq.connections import RedisSettings

    return RedisSettings(unix_socket_path=url.removeprefix("unix://"))


async def enqueue_arq(url: str, n: int) -> None:
    from arq import create_pool

    pool = await create_pool(_arq_settings(url))
    try:
        for start in range(0, n, 10):  # arq's pool holds few connections
            await asyncio.gather(
                *(pool.enqueue_job("noop") for _ in range(start, min(n, start + 10)))
            )
    finally:
        await pool.aclose()


def arq_remaining(client: Any) -> int:
    """Jobs not finished: arq removes a job from its queue sorted set when it finishes it."""
    return int(client.zcard(ARQ_QUEUE))


async def run_arq_worker(url: str, max_jobs: int, poll_delay: float) -> None:
    from arq.worker import Worker

    worker = Worker(
        functions=[noop],
        redis_settings=_arq_settings(url),
        burst=True,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        handle_signals=False,
    )
    try:
        await worker.main()
    finally:
        await worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="run one peer worker process (burst mode)")
    parser.add_argument("peer", choices=["saq", "arq"])
    parser.add_argument("url", help="unix:// URL of the bench Redis")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--poll-delay", type=float, default=0.5)
    args = parser.parse_args()
    if args.peer == "saq":
        asyncio.run(run_saq_worker(args.url, args.concurrency))
    else:
        asyncio.run(run_arq_worker(args.url, args.concurrency, args.poll_delay))


if __name__ == "__main__":
    main()
