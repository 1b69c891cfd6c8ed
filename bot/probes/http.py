"""``http`` probe: one request; up when the status is in ``expect`` and the body matches.

TLS is verified by default (system trust store, or ``ca_file`` alone when given). Redirects
are not followed, so the status judged is the one the target sent.
"""

from __future__ import annotations

import re
import ssl
import time
from urllib.parse import urlsplit

import aiohttp

from bot.probes.models import HttpProbe
from bot.probes.result import ProbeResult, from_os_error

__all__ = ["BODY_LIMIT", "probe_http"]

BODY_LIMIT = 1 << 20  # bytes of the body searched by ``body_match``


def _ssl_setting(spec: HttpProbe) -> ssl.SSLContext | bool:
    if not spec.verify_tls:
        return False
    if spec.ca_file is not None:
        return ssl.create_default_context(cafile=str(spec.ca_file))
    return True


def _where(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


async def probe_http(spec: HttpProbe) -> ProbeResult:
    where = _where(spec.url)
    try:
        tls = _ssl_setting(spec)
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult.down("tls_error", f"cannot load CA file {str(spec.ca_file)!r}: {exc}")
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    started = time.perf_counter()
    headers_seen = False
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(spec.method, spec.url, ssl=tls, allow_redirects=False) as response,
        ):
            latency = time.perf_counter() - started
            headers_seen = True
            status = response.status
            body = b""
            if spec.body_match is not None:
                body = await response.content.read(BODY_LIMIT)
    except TimeoutError:
        if headers_seen:
            return ProbeResult.down("timeout", f"{where}: body not read within {spec.timeout:g}s")
        return ProbeResult.down("timeout", f"no HTTP answer from {where} in {spec.timeout:g}s")
    except aiohttp.ClientConnectorCertificateError as exc:
        return ProbeResult.down(
            "tls_error", f"{where}: certificate not trusted: {exc.certificate_error}"
        )
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        return ProbeResult.down("tls_error", f"{where}: TLS failed: {exc}")
    except aiohttp.ClientConnectorDNSError:
        return ProbeResult.down("resolve_failed", f"cannot resolve {urlsplit(spec.url).hostname}")
    except aiohttp.ClientConnectorError as exc:
        return from_os_error(exc.os_error, where)
    except aiohttp.ServerDisconnectedError:
        return ProbeResult.down("reset", f"{where} closed the connection without answering")
    except aiohttp.ClientOSError as exc:
        return from_os_error(exc, where)
    except aiohttp.ClientError as exc:
        return ProbeResult.down("error", f"{where}: {type(exc).__name__}: {exc}")

    summary = f"{spec.method} {spec.url} -> {status}"
    if not spec.accepts_status(status):
        return ProbeResult.down(
            "unexpected_status", f"{summary}, expected {spec.expect}", latency_s=latency
        )
    if spec.body_match is not None:
        text = body.decode("utf-8", errors="replace")
        if not re.search(spec.body_match, text):
            return ProbeResult.down(
                "body_mismatch", f"{summary}, body does not match {spec.body_match!r}", latency
            )
    return ProbeResult.up(latency, f"{summary} in {latency * 1000:.1f} ms")
