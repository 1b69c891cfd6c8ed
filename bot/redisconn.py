"""Opening the Redis connection the config names (or the embedded one).

Supported URLs: ``redis://`` and ``rediss://`` (TLS; ``tls_ca_file`` for a private CA),
``unix://``, and ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]``
(``rediss+sentinel://`` for TLS to the master). ACL users come from the URL or from
``redis.username`` / ``redis.password``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from bot.config import RedisConfig
from bot.embedded import EmbeddedRedis


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return url


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel master's pool, bounded and *waiting* like the plain URL path's: a caller
    that finds every connection taken waits up to ``timeout`` seconds for one (then
    ``ConnectionError("No connection available.")``) instead of failing at once with
    ``MaxConnectionsError``. Sentinel's part finds the master; the blocking part hands out
    connections."""


def _client_options(cfg: RedisConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {"health_check_interval": 30, "socket_connect_timeout": 5}
    if cfg.username:
        opts["username"] = cfg.username
    if cfg.password is not None:
        opts["password"] = cfg.password.get_secret_value()
    return opts


def from_url(url: str, cfg: RedisConfig) -> Redis:
    """A client whose pool is bounded and *waits* (up to ``pool_timeout``) for a connection
    instead of failing, so a burst of requests queues rather than erroring."""
    opts = _client_options(cfg)
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        return _sentinel_master(url, opts, cfg)
    if url.startswith("rediss://") and cfg.tls_ca_file:
        opts["ssl_ca_certs"] = str(cfg.tls_ca_file)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=cfg.max_connections, timeout=cfg.pool_timeout, **opts
    )
    client: Redis = Redis.from_pool(pool)  # the client owns (and closes) the pool
    return client


def _sentinel_master(url: str, opts: dict[str, Any], cfg: RedisConfig) -> Redis:
    parts = urlsplit(url)
    hosts_part = parts.netloc.rsplit("@", 1)[-1]
    sentinels = []
    for host_port in hosts_part.split(","):
        host, _, port = host_port.rpartition(":")
        sentinels.append((host.strip("[]") or host_port, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs the service name: .../mymaster[/db]")
    service = path[0]
    if len(path) > 1:
        opts["db"] = int(path[1])
    if parts.username:
        opts["username"] = unquote(parts.username)
    if parts.password:
        opts["password"] = unquote(parts.password)
    if url.startswith("rediss+"):
        opts["ssl"] = True
        if cfg.tls_ca_file:
            opts["ssl_ca_certs"] = str(cfg.tls_ca_file)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        sentinels, sentinel_kwargs={"socket_connect_timeout": 5}, **opts
    )
    master: Redis = sentinel.master_for(
        service,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=cfg.max_connections,
        timeout=cfg.pool_timeout,
    )
    return master


@asynccontextmanager
async def open_redis(cfg: RedisConfig, url: str | None = None) -> AsyncIterator[Redis]:
    """Yield a client; start (and afterwards stop) the embedded server when no URL is set."""
    embedded: EmbeddedRedis | None = None
    target = url or cfg.url
    if not target:
        embedded = EmbeddedRedis(cfg.state_dir)
        target = await embedded.start()
    client = from_url(target, cfg)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
