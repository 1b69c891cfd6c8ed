"""The hand-built IKE_SA_INIT (RFC 7296) is well formed and parses back to what was built."""

from __future__ import annotations

import struct

import pytest

from bot.probes import ike

SPI = bytes.fromhex("df002c64530a4518")


def test_sa_init_header_fields() -> None:
    packet = ike.build_sa_init(SPI)
    spi_i, spi_r, nxt, version, exchange, flags, msg_id, length = struct.unpack_from(
        "!8s8sBBBBII", packet
    )
    assert (spi_i, spi_r) == (SPI, bytes(8))
    assert nxt == 0x21 and ike.PayloadType.SA.value == 0x21
    assert version == 0x20
    assert exchange == 34
    assert flags == ike.FLAG_INITIATOR == 0x08
    assert msg_id == 0
    assert length == len(packet) == 376  # MODP-2048 KE, 32-byte nonce (research note H)
    assert packet[:28].hex() == "df002c64530a4518" + "00" * 8 + "2120220800000000" + "00000178"


def test_sa_init_payload_chain_and_lengths_are_consistent() -> None:
    packet = ike.build_sa_init(SPI)
    offset, nxt, seen = 28, packet[16], []
    while nxt:
        following, critical, length = struct.unpack_from("!BBH", packet, offset)
        assert critical == 0 and length >= 4
        seen.append((nxt, length))
        offset += length
        nxt = following
    assert offset == len(packet)
    assert seen == [(33, 48), (34, 4 + 4 + 256), (40, 4 + 32)]


def test_sa_init_round_trips_through_the_parser() -> None:
    nonce = bytes(range(32))
    ke = bytes(256)
    packet = ike.build_sa_init(SPI, ke_data=ke, nonce=nonce)
    message = ike.parse_message(packet)
    assert message.spi_i == SPI and message.spi_r == bytes(8)
    assert message.is_initiator and not message.is_response
    assert [p.type for p in message.payloads] == [33, 34, 40]
    sa, ke_payload, nonce_payload = message.payloads
    assert ike.decode_sa(sa.body) == (ike.DEFAULT_PROPOSAL,)
    assert ike.encode_sa(ike.decode_sa(sa.body)) == sa.body
    assert ke_payload.body == struct.pack("!HH", 14, 0) + ke
    assert nonce_payload.body == nonce
    rebuilt = ike.build_message(message.spi_i, message.spi_r, message.payloads, flags=message.flags)
    assert rebuilt == packet


def test_proposal_encodes_aes256_sha256_group14() -> None:
    (proposal,) = ike.decode_sa(ike.parse_message(ike.build_sa_init()).payloads[0].body)
    assert proposal.number == 1 and proposal.protocol == 1 and proposal.spi == b""
    assert [(t.type, t.id, t.key_length) for t in proposal.transforms] == [
        (1, 12, 256),  # ENCR_AES_CBC, key length attribute 0x800E0100
        (2, 5, None),  # PRF_HMAC_SHA2_256
        (3, 12, None),  # AUTH_HMAC_SHA2_256_128
        (4, 14, None),  # DH group 14
    ]
    assert bytes.fromhex("800e0100") in ike.build_sa_init()


def test_modp1024_request_is_248_bytes() -> None:
    proposal = ike.Proposal(
        1, 1, (*ike.DEFAULT_PROPOSAL.transforms[:3], ike.Transform(ike.TRANSFORM_DH, 2))
    )
    assert len(ike.build_sa_init(proposal=proposal)) == 248


def test_random_initiator_spis() -> None:
    spis = {ike.build_sa_init()[:8] for _ in range(20)}
    assert len(spis) == 20 and bytes(8) not in spis


def test_replies_are_recognised_for_our_spi_only() -> None:
    request = ike.parse_message(ike.build_sa_init(SPI))
    accept = ike.build_sa_init_reply(request)
    no_proposal = ike.build_notify_reply(SPI, ike.NotifyType.NO_PROPOSAL_CHOSEN)
    invalid_ke = ike.build_notify_reply(SPI, ike.NotifyType.INVALID_KE_PAYLOAD, b"\x00\x02")
    cookie = ike.build_notify_reply(SPI, ike.NotifyType.COOKIE, bytes(24))
    assert len(no_proposal) == 36 and len(invalid_ke) == 38  # the strongSwan shapes
    assert ike.describe_reply(accept, SPI) == "SA, KE, Nonce"
    assert ike.describe_reply(no_proposal, SPI) == "NO_PROPOSAL_CHOSEN"
    assert ike.describe_reply(invalid_ke, SPI) == "INVALID_KE_PAYLOAD (wants group 2)"
    assert ike.describe_reply(cookie, SPI) == "COOKIE"

    other = bytes(8 * [0x11])
    assert ike.describe_reply(ike.build_notify_reply(other, 14), SPI) is None
    assert ike.describe_reply(ike.build_sa_init(SPI), SPI) is None  # our own request echoed
    assert ike.describe_reply(no_proposal[:-1], SPI) is None  # truncated
    assert ike.describe_reply(SPI + bytes(20), SPI) is None  # right SPI, garbage
    assert ike.describe_reply(b"", SPI) is None


def test_accept_reply_echoes_the_proposal_and_group() -> None:
    request = ike.parse_message(ike.build_sa_init(SPI))
    reply = ike.parse_message(ike.build_sa_init_reply(request, spi_r=b"R" * 8))
    assert reply.is_response and not reply.is_initiator
    assert reply.spi_i == SPI and reply.spi_r == b"R" * 8
    sa, ke, _ = reply.payloads
    assert ike.decode_sa(sa.body) == (ike.DEFAULT_PROPOSAL,)
    assert struct.unpack_from("!H", ke.body)[0] == 14 and len(ke.body) == 4 + 256


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda p: p[:20], "shorter than an IKE header"),
        (lambda p: p[:-1], "header length"),
        (lambda p: p + b"\x00", "header length"),
        (lambda p: p[:17] + b"\x10" + p[18:], "not IKEv2"),
        (lambda p: p[:30] + b"\x01\x00" + p[32:], "bad length"),  # SA payload length 256
    ],
)
def test_parser_rejects_malformed_messages(mangle: object, error: str) -> None:
    packet = ike.build_sa_init(SPI)
    assert callable(mangle)
    with pytest.raises(ike.IkeParseError, match=error):
        ike.parse_message(mangle(packet))
