"""What the device drivers share: the error hierarchy, URL/TLS rules, one HTTP helper.

Errors. Every driver failure is a :class:`DeviceError` with ``transient`` saying whether
another try may succeed, a short ``code``, the device's name, and (for HTTP replies) the
``status``. Transient ones (timeouts, refused or reset connections, 408/429/5xx, a session
held by someone else) derive from :class:`bot.retry.TransientError`, permanent ones (401,
403, 404, other 4xx, bad configuration, a certificate that does not verify, a reply we do not
understand) from :class:`bot.retry.PermanentError`, so the runtime's retry policy treats them
right without knowing about devices. ``retry_after`` carries a device's ``Retry-After``.

Transport rules (:func:`check_url`, :func:`tls_context`):

- ``https://`` with certificate verification on by default; ``ca_file`` names a PEM bundle
  to trust for this device (appliances mostly use self-signed certificates). Turning
  verification off is possible (``verify_tls=False``) and logged as a warning.
- ``http://`` only to the loopback literals ``127.0.0.1`` and ``::1`` (the simulators);
  anything else is refused with :class:`DeviceConfigError` before a byte is sent.
- Credentials never go in URLs (a URL with ``user:password@`` is refused, and the refusal
  does not repeat them), and never appear in log lines, exception messages or reprs: device
  text that ends up in a message is scrubbed of the device's secrets first.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from yarl import URL

from bot.redact import Redactor, process_redactor
from bot.retry import PermanentError, TransientError, parse_retry_after

__all__ = [
    "AccessDenied",
    "AuthenticationFailed",
    "DeviceConfigError",
    "DeviceError",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DeviceUnreachable",
    "HttpDevice",
    "NotFound",
    "PermanentDeviceError",
    "ProtocolError",
    "Reply",
    "RequestRejected",
    "SessionBusy",
    "TlsVerificationFailed",
    "TransientDeviceError",
    "basic_auth",
    "check_url",
    "quote_segment",
    "secret",
    "tls_context",
]

log = logging.getLogger("tunnelwarden.devices")
LOOPBACK_HTTP_HOSTS = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_MESSAGE = 300  # characters of device text quoted in an error


class DeviceError(Exception):
    """A device operation failed; ``transient`` says whether retrying may help."""

    def __init__(
        self,
        message: str,
        transient: bool,
        *,
        code: str | None = None,
        device: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        Exception.__init__(self, f"{device}: {message}" if device else message)
        self.message = message
        self.transient = transient
        self.code = code or type(self).__name__
        self.device = device
        self.status = status
        self.retry_after = retry_after


class TransientDeviceError(DeviceError, TransientError):
    """A failure that may pass: retry with backoff."""

    default_code: ClassVar[str] = "DeviceTransient"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", self.default_code)
        DeviceError.__init__(self, message, True, **kwargs)


class PermanentDeviceError(DeviceError, PermanentError):
    """A failure another try will not fix."""

    default_code: ClassVar[str] = "DeviceError"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", self.default_code)
        DeviceError.__init__(self, message, False, **kwargs)


class DeviceTimeout(TransientDeviceError):
    default_code = "DeviceTimeout"


class DeviceUnreachable(TransientDeviceError):
    default_code = "DeviceUnreachable"


class DeviceUnavailable(TransientDeviceError):
    """408, 429 or 5xx from the device."""

    default_code = "DeviceUnavailable"


class SessionBusy(TransientDeviceError):
    """Someone else holds the device's (single) management session."""

    default_code = "SessionBusy"


class AuthenticationFailed(PermanentDeviceError):
    default_code = "AuthenticationFailed"


class AccessDenied(PermanentDeviceError):
    default_code = "AccessDenied"


class NotFound(PermanentDeviceError):
    default_code = "NotFound"


class RequestRejected(PermanentDeviceError):
    """Another 4xx: the device refused what we sent."""

    default_code = "RequestRejected"


class DeviceConfigError(PermanentDeviceError):
    """The device is configured wrongly on our side (URL, TLS settings, missing keys)."""

    default_code = "DeviceConfigError"


class TlsVerificationFailed(PermanentDeviceError):
    default_code = "TlsVerificationFailed"


class ProtocolError(PermanentDeviceError):
    """The device answered something we do not understand."""

    default_code = "UnexpectedReply"


def secret(value: str | SecretStr | None) -> SecretStr | None:
    """Hold a credential so that ``repr``/``str`` never show it."""
    if value is None or isinstance(value, SecretStr):
        return value
    return SecretStr(value)


def basic_auth(username: str, password: SecretStr) -> dict[str, str]:
    """An ``Authorization: Basic`` header (RFC 7617, UTF-8) - keep it out of logs."""
    if ":" in username:
        raise DeviceConfigError("a user name for HTTP Basic authentication cannot contain ':'")
    raw = f"{username}:{password.get_secret_value()}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def check_url(url: str | URL) -> URL:
    """The device's base URL, if it may be used: https anywhere, http only to loopback."""
    parsed = URL(url) if isinstance(url, str) else url
    shown = str(parsed.with_user(None)) if parsed.is_absolute() else "<relative URL>"
    if parsed.user is not None or parsed.password is not None:
        raise DeviceConfigError(
            f"credentials must not be part of the device URL ({shown}); "
            "configure username/password (or a token) instead"
        )
    if not parsed.is_absolute() or not parsed.host:
        raise DeviceConfigError(f"device URL must be absolute (https://host[:port]): {shown}")
    if parsed.scheme == "https":
        return parsed
    if parsed.scheme == "http":
        try:
            address = ipaddress.ip_address(parsed.host)
        except ValueError:
            address = None
        if address in LOOPBACK_HTTP_HOSTS:
            return parsed
        raise DeviceConfigError(
            f"plain http is only allowed to 127.0.0.1 or ::1 (the simulators), not {shown}; "
            "use https"
        )
    raise DeviceConfigError(f"unsupported URL scheme {parsed.scheme!r} in {shown}")


def tls_context(url: URL, verify_tls: bool, ca_file: str | Path | None) -> ssl.SSLContext | bool:
    """The ``ssl`` argument for aiohttp: a verifying context, or ``False`` when turned off."""
    if url.scheme != "https":
        return True  # unused for http
    if not verify_tls:
        log.warning(
            "TLS certificate verification is off for %s: anyone on the path can impersonate "
            "the device. Prefer ca_file with the device's certificate.",
            url.host,
        )
        return False
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    if not path.is_file():
        raise DeviceConfigError(f"ca_file {str(path)!r} is not a readable file")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise DeviceConfigError(
            f"ca_file {str(path)!r} holds no usable certificate: {exc}"
        ) from None


@dataclass
class Reply:
    """An HTTP reply from a device, already read."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body.strip() else None
        except ValueError:
            return None


class HttpDevice:
    """Base of the HTTP drivers: URL/TLS checks, timeouts, error classification, scrubbing."""

    kind: ClassVar[str] = "device"

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        verify_tls: bool = True,
        ca_file: str | Path | None = None,
        timeout: float = 30.0,
        secrets: Iterable[str | SecretStr | None] = (),
        redact: Redactor | None = None,
    ) -> None:
        self.base_url = check_url(url)
        self.name = name or f"{self.kind} {self.base_url.host}"
        self._ssl = tls_context(self.base_url, verify_tls, ca_file)
        self.timeout = timeout
        # The process's one redactor (``Services.redact``), told this device's secrets, so
        # they are masked in logs, history and chat too, not only in this driver's messages.
        self._redact = redact or process_redactor()
        for value in secrets:
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if plain:
                self._redact.add(plain)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={str(self.base_url)!r})"

    # ------------------------------------------------------------------ plumbing
    def scrub(self, text: str) -> str:
        """Device-provided text with our secrets (and secret-shaped strings) masked."""
        return self._redact(text)[:MAX_MESSAGE]

    def url(self, path: str) -> URL:
        """``path`` (already percent-encoded, see :func:`quote_segment`) under the base URL."""
        return URL(str(self.base_url).rstrip("/") + path, encoded=True)

    def new_session(self, **kwargs: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            raise_for_status=False,
            **kwargs,
        )

    async def send(
        self, session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
    ) -> Reply:
        """One request; transport failures become :class:`DeviceError`, replies are returned."""
        what = f"{method} {path}"
        limit = kwargs["timeout"].total if "timeout" in kwargs else self.timeout
        try:
            async with session.request(method, self.url(path), **kwargs) as response:
                body = await response.read()
                return Reply(response.status, dict(response.headers), body)
        except TimeoutError:
            raise DeviceTimeout(
                f"{what} got no reply within {limit:g}s", device=self.name
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TlsVerificationFailed(
                f"the device's TLS certificate does not verify ({exc.certificate_error}); "
                "set ca_file to the certificate that signed it",
                device=self.name,
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise TlsVerificationFailed(
                f"TLS handshake failed: {type(exc).__name__}", device=self.name
            ) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise DeviceUnreachable(
                f"{what} failed: {type(exc).__name__}: {self.scrub(str(exc))}", device=self.name
            ) from None
        except aiohttp.ClientError as exc:
            raise ProtocolError(
                f"{what} failed: {type(exc).__name__}: {self.scrub(str(exc))}", device=self.name
            ) from None

    def fail(self, reply: Reply, what: str, detail: str | None = None) -> DeviceError:
        """The error for an unsuccessful reply (4xx/5xx), by status."""
        text = self.scrub(detail if detail is not None else reply.text().strip())
        message = f"{what}: HTTP {reply.status}" + (f": {text}" if text else "")
        kwargs: dict[str, Any] = {"device": self.name, "status": reply.status}
        status = reply.status
        if status in TRANSIENT_STATUS:
            return DeviceUnavailable(
                message, retry_after=parse_retry_after(_header(reply, "Retry-After")), **kwargs
            )
        if status == 401:
            return AuthenticationFailed(message, **kwargs)
        if status == 403:
            return AccessDenied(message, **kwargs)
        if status == 404:
            return NotFound(message, **kwargs)
        if 400 <= status < 500:
            return RequestRejected(message, **kwargs)
        return ProtocolError(message, **kwargs)


def _header(reply: Reply, name: str) -> str | None:
    """A reply header, whatever its case (``Reply.headers`` is a plain dict)."""
    wanted = name.lower()
    return next((v for k, v in reply.headers.items() if k.lower() == wanted), None)


def quote_segment(value: str) -> str:
    """One path segment, percent-encoded (a ``/`` in a name stays inside the segment)."""
    return quote(value, safe="")


async def shielded(coro: Any) -> Any:
    """Run ``coro`` to completion even if the caller is being cancelled."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise
