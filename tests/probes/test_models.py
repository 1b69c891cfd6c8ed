"""Probe configuration: defaults, validation with one-line errors, warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.probes import DnsProbe, HttpProbe, Ikev2Probe, ProbeConfigError, TcpProbe, parse_probe
from bot.probes.models import parse_status_ranges, split_host_port


def test_defaults() -> None:
    tcp = parse_probe({"name": "kms", "kind": "tcp", "target": "10.1.0.4:1688"})
    assert isinstance(tcp, TcpProbe)
    assert (tcp.interval, tcp.timeout, tcp.fail_after, tcp.recover_after) == (30, 5, 3, 2)
    assert tcp.through_tunnel is False
    assert (tcp.host, tcp.port) == ("10.1.0.4", 1688)

    ike = parse_probe({"name": "vpn", "kind": "ikev2", "target": "vpn.example.net"})
    assert isinstance(ike, Ikev2Probe)
    assert ike.interval == 60 and ike.target == "vpn.example.net:500" and ike.warnings() == []

    http = parse_probe({"name": "portal", "kind": "http", "url": "https://vpn.example.net/"})
    assert isinstance(http, HttpProbe)
    assert (http.method, http.expect, http.verify_tls, http.ca_file) == (
        "GET",
        "200-299",
        True,
        None,
    )

    dns = parse_probe({"name": "dc1", "kind": "dns", "query": "dc1.corp", "server": "10.1.0.10"})
    assert isinstance(dns, DnsProbe)
    assert (dns.type, dns.server, dns.server_port, dns.expect) == ("A", "10.1.0.10:53", 53, None)


def test_status_ranges() -> None:
    assert parse_status_ranges("200-299,401") == ((200, 299), (401, 401))
    probe = parse_probe(
        {"name": "p", "kind": "http", "url": "http://127.0.0.1/", "expect": "200-204, 301,401"}
    )
    assert isinstance(probe, HttpProbe)
    assert [probe.accepts_status(s) for s in (200, 204, 205, 301, 401, 500)] == [
        True,
        True,
        False,
        True,
        True,
        False,
    ]


def test_host_port_forms() -> None:
    assert split_host_port("[::1]:500") == ("::1", 500)
    assert split_host_port("::1", 500) == ("::1", 500)
    assert split_host_port("vpn.example.net", 500) == ("vpn.example.net", 500)
    ike = parse_probe({"name": "v6", "kind": "ikev2", "target": "[::1]"})
    assert isinstance(ike, Ikev2Probe)
    assert (ike.target, ike.host, ike.port) == ("[::1]:500", "::1", 500)


def test_short_ikev2_interval_is_accepted_with_a_warning() -> None:
    probe = parse_probe({"name": "vpn", "kind": "ikev2", "target": "h:500", "interval": 10})
    (warning,) = probe.warnings()
    assert "interval 10s" in warning and "half-open SA" in warning and "use 60s" in warning
    assert (
        parse_probe({"name": "vpn", "kind": "ikev2", "target": "h:500", "interval": 30}).warnings()
        == []
    )


def test_ca_file_without_verification_warns(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    probe = parse_probe(
        {"name": "p", "kind": "http", "url": "https://h/", "verify_tls": False, "ca_file": str(ca)}
    )
    assert probe.warnings() == [f"ca_file {str(ca)!r} is ignored because verify_tls = false"]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (
            {"name": "p", "kind": "http", "url": "http://h/", "expect": "200-"},
            ["probe 'p': expect: bad status code or range '200-'", "'200-299,401'"],
        ),
        (
            {"name": "p", "kind": "http", "url": "http://h/", "expect": "299-200"},
            ["expect: bad status range '299-200'"],
        ),
        ({"name": "p", "kind": "http", "url": "ftp://h/"}, ["url: 'ftp://h/': use an http://"]),
        ({"name": "p", "kind": "http", "url": "http://h/", "body_match": "("}, ["body_match"]),
        ({"name": "p", "kind": "http", "url": "http://h/", "ca_file": "/nonexistent"}, ["CA file"]),
        ({"name": "Bad Name", "kind": "tcp", "target": "h:1"}, ["name: 'Bad Name' is not"]),
        ({"name": "p", "kind": "tcp", "target": "h"}, ["target: 'h': missing port"]),
        ({"name": "p", "kind": "tcp", "target": "h:70000"}, ["port must be 1-65535"]),
        ({"name": "p", "kind": "tcp", "target": "h:1", "extra": 1}, ["extra: unknown key"]),
        ({"name": "p", "kind": "tcp"}, ["target: required"]),
        ({"name": "p", "kind": "smtp"}, ["unknown kind 'smtp'"]),
        ({"name": "p"}, ["missing `kind`"]),
        ({"name": "p", "kind": "tcp", "target": "h:1", "timeout": 60}, ["must not exceed"]),
        ({"name": "p", "kind": "tcp", "target": "h:1", "fail_after": 0}, ["fail_after"]),
        ({"name": "p", "kind": "dns", "query": "a.b", "server": "ns.corp"}, ["use an IP address"]),
        ({"name": "p", "kind": "dns", "query": "a.b", "server": "10.0.0.1", "type": "XX"}, ["XX"]),
        ({"name": "dc1.corp", "kind": "dns", "server": "10.0.0.1"}, ["`query`"]),
        ({"name": "p", "kind": "icmp", "target": "not a host"}, ["neither an IP"]),
    ],
)
def test_errors_are_one_line(data: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ProbeConfigError) as caught:
        parse_probe(data)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
