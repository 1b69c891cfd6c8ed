"""Table tests for bot.sources.ipcheck."""

from __future__ import annotations

import ipaddress

import pytest

from bot.sources.ipcheck import IpReason, check_ip

R = IpReason


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        # accepted public unicast
        ("8.8.8.8", R.OK),
        ("1.1.1.1", R.OK),
        ("2a00:1450:4001:80b::200e", R.OK),
        ("2606:4700:4700::1111", R.OK),
        # IPv4 special ranges
        ("0.0.0.0", R.UNSPECIFIED),
        ("0.1.2.3", R.THIS_NETWORK),
        ("127.0.0.1", R.LOOPBACK),
        ("10.1.2.3", R.PRIVATE),
        ("172.16.0.1", R.PRIVATE),
        ("172.31.255.254", R.PRIVATE),
        ("192.168.178.1", R.PRIVATE),
        ("100.64.0.1", R.CGNAT),
        ("100.127.255.254", R.CGNAT),
        ("169.254.1.1", R.LINK_LOCAL),
        ("192.0.0.9", R.IETF_PROTOCOL),
        ("192.0.2.1", R.DOCUMENTATION),
        ("198.51.100.200", R.DOCUMENTATION),
        ("203.0.113.9", R.DOCUMENTATION),
        ("198.18.0.1", R.BENCHMARK),
        ("198.19.255.1", R.BENCHMARK),
        ("192.88.99.1", R.SIX_TO_FOUR),
        ("224.0.0.1", R.MULTICAST),
        ("239.255.255.250", R.MULTICAST),
        ("255.255.255.255", R.BROADCAST),
        ("240.0.0.1", R.RESERVED),
        # IPv6 special ranges
        ("::", R.UNSPECIFIED),
        ("::1", R.LOOPBACK),
        ("::2", R.RESERVED),
        ("::ffff:8.8.8.8", R.IPV4_MAPPED),
        ("64:ff9b::808:808", R.NAT64),
        ("100::1", R.DISCARD),
        ("2001:db8::1", R.DOCUMENTATION),
        ("3fff::1", R.DOCUMENTATION),
        ("2001:0:4136:e378::1", R.TEREDO),
        ("2001:2::1", R.BENCHMARK),
        ("2001:10::1", R.IETF_PROTOCOL),
        ("2002:c000:204::1", R.SIX_TO_FOUR),
        ("fd12:3456::1", R.PRIVATE),
        ("fc00::1", R.PRIVATE),
        ("fe80::1", R.LINK_LOCAL),
        ("fec0::1", R.SITE_LOCAL),
        ("ff02::1", R.MULTICAST),
        ("4000::1", R.RESERVED),
        # malformed input never raises
        ("", R.MALFORMED),
        ("not-an-ip", R.MALFORMED),
        ("1.2.3", R.MALFORMED),
        ("1.2.3.4.5", R.MALFORMED),
        ("01.2.3.4", R.MALFORMED),
        (" 8.8.8.8", R.MALFORMED),
        ("8.8.8.8\n", R.MALFORMED),
        ("<html>8.8.8.8</html>", R.MALFORMED),
        ("fe80::1%eth0", R.MALFORMED),
        ("1" * 1000, R.MALFORMED),
        (None, R.MALFORMED),
        (12345, R.MALFORMED),
        (b"8.8.8.8", R.MALFORMED),
    ],
)
def test_classification(candidate: object, reason: IpReason) -> None:
    result = check_ip(candidate)
    assert result.reason is reason, result.message
    assert result.ok is (reason is R.OK)
    assert result.message


def test_documentation_allowed_only_with_flag() -> None:
    for ip in ("192.0.2.10", "198.51.100.10", "203.0.113.10", "2001:db8:1::10", "3fff::10"):
        assert not check_ip(ip).ok
        allowed = check_ip(ip, allow_documentation=True)
        assert allowed.ok and allowed.reason is R.OK, ip
        assert "documentation" in allowed.message
    # the flag opens documentation ranges only, nothing else
    for ip in ("10.0.0.1", "100.64.0.1", "127.0.0.1", "fd00::1", "198.18.0.1"):
        assert not check_ip(ip, allow_documentation=True).ok, ip


def test_cgnat_message_explains_tunnel_impossible() -> None:
    result = check_ip("100.100.1.1")
    assert result.reason is R.CGNAT
    assert "carrier-grade NAT" in result.message
    assert "cannot host the tunnel" in result.message
    assert "100.100.1.1" in result.message


def test_family_filter_and_normalization() -> None:
    ok6 = check_ip("2606:4700:4700:0000:0000:0000:0000:1111", family="v6")
    assert ok6.ok and ok6.family == "v6"
    assert ok6.normalized == "2606:4700:4700::1111"
    wrong = check_ip("8.8.8.8", family="v6")
    assert wrong.reason is R.WRONG_FAMILY and not wrong.ok
    assert wrong.family == "v4" and wrong.normalized == "8.8.8.8"
    assert check_ip("2606:4700::1", family="v4").reason is R.WRONG_FAMILY


def test_accepts_ipaddress_objects() -> None:
    assert check_ip(ipaddress.IPv4Address("8.8.4.4")).ok
    assert check_ip(ipaddress.IPv6Address("fe80::2")).reason is R.LINK_LOCAL


def test_rejected_result_keeps_parsed_ip_for_logging() -> None:
    result = check_ip("192.168.1.1")
    assert result.ip == ipaddress.IPv4Address("192.168.1.1")
    assert result.family == "v4"
    assert "192.168.1.1" in result.message
    assert "RFC 1918" in result.message
