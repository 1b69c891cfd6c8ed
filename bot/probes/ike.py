"""IKEv2 messages for the liveness probe (RFC 7296), built and parsed by hand with ``struct``.

Only what a probe and a test responder need: the IKE header, generic payload chaining, the SA
payload (proposals, transforms, the key-length attribute), KE, Nonce and Notify. Everything here
is a pure function on bytes, so it is tested without a network.

Wire layout (RFC 7296 §3.1-3.10, all integers big-endian)::

    header (28 B)   SPIi(8) SPIr(8) next(1) version(1) exchange(1) flags(1) message-id(4) length(4)
    payload header  next(1) critical-bit+reserved(1) length(2)       -- length includes these 4 B
    proposal        last(1) reserved(1) length(2) number(1) protocol(1) spi-size(1) count(1) SPI
    transform       last(1) reserved(1) length(2) type(1) reserved(1) id(2) attributes
    KE body         DH group(2) reserved(2) public value
    Notify body     protocol(1) spi-size(1) type(2) SPI data

The default request (:func:`build_sa_init`) offers AES-CBC-256 / PRF-HMAC-SHA2-256 /
HMAC-SHA2-256-128 / MODP-2048 (group 14) with a random 256-byte public value and a 32-byte
nonce: 376 bytes, which a real responder (strongSwan, Windows RRAS, Azure) parses as a valid
IKE_SA_INIT.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "DEFAULT_PROPOSAL",
    "EXCHANGE_IKE_SA_INIT",
    "FLAG_INITIATOR",
    "FLAG_RESPONSE",
    "HEADER_LEN",
    "IKE_PORT",
    "VERSION_2",
    "IkeParseError",
    "Message",
    "Notify",
    "NotifyType",
    "PayloadType",
    "Proposal",
    "Transform",
    "build_message",
    "build_notify_reply",
    "build_sa_init",
    "build_sa_init_reply",
    "decode_sa",
    "describe_reply",
    "encode_sa",
    "parse_message",
    "parse_notify",
]

IKE_PORT = 500
HEADER_LEN = 28
VERSION_2 = 0x20  # major 2, minor 0
EXCHANGE_IKE_SA_INIT = 34
FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20

PROTOCOL_IKE = 1
TRANSFORM_ENCR = 1
TRANSFORM_PRF = 2
TRANSFORM_INTEG = 3
TRANSFORM_DH = 4
ENCR_AES_CBC = 12
PRF_HMAC_SHA2_256 = 5
AUTH_HMAC_SHA2_256_128 = 12
DH_MODP_2048 = 14
ATTR_KEY_LENGTH = 14
ATTR_TV = 0x8000  # attribute format bit: type/value, 2-byte value inline

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
_PROPOSAL = struct.Struct("!BBHBBBB")
_TRANSFORM = struct.Struct("!BBHBBH")
_ATTR = struct.Struct("!HH")
_KE = struct.Struct("!HH")
_NOTIFY = struct.Struct("!BBH")

#: Modulus length in bytes of the MODP groups a responder may ask for (RFC 3526 / 2409).
MODP_BYTES = {1: 96, 2: 128, 5: 192, 14: 256, 15: 384, 16: 512}


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48


class NotifyType(IntEnum):
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    TEMPORARY_FAILURE = 43
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    MULTIPLE_AUTH_SUPPORTED = 16404
    CHILDLESS_IKEV2_SUPPORTED = 16418


class IkeParseError(ValueError):
    """The bytes are not a well-formed IKEv2 message."""


@dataclass(frozen=True, slots=True)
class Transform:
    type: int
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    number: int
    protocol: int
    transforms: tuple[Transform, ...]
    spi: bytes = b""


DEFAULT_PROPOSAL = Proposal(
    number=1,
    protocol=PROTOCOL_IKE,
    transforms=(
        Transform(TRANSFORM_ENCR, ENCR_AES_CBC, key_length=256),
        Transform(TRANSFORM_PRF, PRF_HMAC_SHA2_256),
        Transform(TRANSFORM_INTEG, AUTH_HMAC_SHA2_256_128),
        Transform(TRANSFORM_DH, DH_MODP_2048),
    ),
)


@dataclass(frozen=True, slots=True)
class Payload:
    type: int
    body: bytes
    critical: bool = False


@dataclass(frozen=True, slots=True)
class Notify:
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    @property
    def name(self) -> str:
        try:
            return NotifyType(self.type).name
        except ValueError:
            return f"NOTIFY_{self.type}"


@dataclass(frozen=True, slots=True)
class Message:
    spi_i: bytes
    spi_r: bytes
    version: int
    exchange: int
    flags: int
    message_id: int
    payloads: tuple[Payload, ...]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & FLAG_INITIATOR)

    def payload(self, kind: int) -> Payload | None:
        """The first payload of this type, if any."""
        return next((p for p in self.payloads if p.type == kind), None)

    def notifies(self) -> list[Notify]:
        return [parse_notify(p.body) for p in self.payloads if p.type == PayloadType.NOTIFY]


# ---------------------------------------------------------------------------- encoding
def build_message(
    spi_i: bytes,
    spi_r: bytes,
    payloads: Sequence[Payload],
    *,
    exchange: int = EXCHANGE_IKE_SA_INIT,
    flags: int = FLAG_INITIATOR,
    message_id: int = 0,
) -> bytes:
    """Header plus chained payloads; every next-payload and length field is filled in."""
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes")
    body = bytearray()
    for index, payload in enumerate(payloads):
        following = payloads[index + 1].type if index + 1 < len(payloads) else PayloadType.NONE
        length = _GENERIC.size + len(payload.body)
        if length > 0xFFFF:
            raise ValueError(f"payload {payload.type} too long ({length} bytes)")
        body += _GENERIC.pack(following, 0x80 if payload.critical else 0, length) + payload.body
    first = payloads[0].type if payloads else PayloadType.NONE
    total = HEADER_LEN + len(body)
    header = _HEADER.pack(spi_i, spi_r, first, VERSION_2, exchange, flags, message_id, total)
    return header + bytes(body)


def encode_sa(proposals: Sequence[Proposal]) -> bytes:
    """The body of an SA payload (without its generic header)."""
    out = bytearray()
    for p_index, proposal in enumerate(proposals):
        transforms = bytearray()
        for t_index, transform in enumerate(proposal.transforms):
            attrs = b""
            if transform.key_length is not None:
                attrs = _ATTR.pack(ATTR_TV | ATTR_KEY_LENGTH, transform.key_length)
            last = 0 if t_index == len(proposal.transforms) - 1 else 3
            length = _TRANSFORM.size + len(attrs)
            transforms += _TRANSFORM.pack(last, 0, length, transform.type, 0, transform.id) + attrs
        last = 0 if p_index == len(proposals) - 1 else 2
        length = _PROPOSAL.size + len(proposal.spi) + len(transforms)
        out += _PROPOSAL.pack(
            last,
            0,
            length,
            proposal.number,
            proposal.protocol,
            len(proposal.spi),
            len(proposal.transforms),
        )
        out += proposal.spi + transforms
    return bytes(out)


def _ke_body(group: int, public: bytes) -> bytes:
    return _KE.pack(group, 0) + public


def build_sa_init(
    spi_i: bytes | None = None,
    *,
    proposal: Proposal = DEFAULT_PROPOSAL,
    ke_data: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """An IKE_SA_INIT request (HDR, SAi1, KEi, Ni) from the initiator.

    ``spi_i`` defaults to 8 random bytes (read it back with ``msg[:8]``), ``ke_data`` to a
    random public value of the proposal's DH group size, ``nonce`` to 32 random bytes.
    """
    spi_i = spi_i if spi_i is not None else _random_spi()
    group = next((t.id for t in proposal.transforms if t.type == TRANSFORM_DH), DH_MODP_2048)
    if ke_data is None:
        ke_data = os.urandom(MODP_BYTES.get(group, 256))
    nonce = nonce if nonce is not None else os.urandom(32)
    if not 16 <= len(nonce) <= 256:
        raise ValueError("an IKEv2 nonce is 16 to 256 bytes")
    payloads = [
        Payload(PayloadType.SA, encode_sa([proposal])),
        Payload(PayloadType.KE, _ke_body(group, ke_data)),
        Payload(PayloadType.NONCE, nonce),
    ]
    return build_message(spi_i, bytes(8), payloads, flags=FLAG_INITIATOR)


def build_sa_init_reply(request: Message, spi_r: bytes | None = None) -> bytes:
    """The responder's acceptance (HDR, SAr1, KEr, Nr): first offered proposal, same DH group."""
    sa = request.payload(PayloadType.SA)
    ke = request.payload(PayloadType.KE)
    if sa is None or ke is None:
        raise IkeParseError("IKE_SA_INIT request without SA or KE payload")
    proposals = decode_sa(sa.body)
    if not proposals:
        raise IkeParseError("SA payload without proposals")
    group, public = _parse_ke(ke.body)
    payloads = [
        Payload(PayloadType.SA, encode_sa([proposals[0]])),
        Payload(PayloadType.KE, _ke_body(group, os.urandom(len(public)))),
        Payload(PayloadType.NONCE, os.urandom(32)),
    ]
    spi_r = spi_r if spi_r is not None else _random_spi()
    return build_message(request.spi_i, spi_r, payloads, flags=FLAG_RESPONSE)


def build_notify_reply(spi_i: bytes, notify_type: int, data: bytes = b"") -> bytes:
    """A responder's IKE_SA_INIT answer carrying a single Notify (responder SPI zero).

    ``build_notify_reply(spi, NotifyType.NO_PROPOSAL_CHOSEN)`` is the 36-byte message
    strongSwan sends to a peer it has no configuration for.
    """
    body = _NOTIFY.pack(0, 0, notify_type) + data
    return build_message(spi_i, bytes(8), [Payload(PayloadType.NOTIFY, body)], flags=FLAG_RESPONSE)


def _random_spi() -> bytes:
    spi = os.urandom(8)
    while spi == bytes(8):  # an all-zero initiator SPI is invalid
        spi = os.urandom(8)
    return spi


# ---------------------------------------------------------------------------- decoding
def parse_message(data: bytes) -> Message:
    """Decode header and payload chain, checking every length; :class:`IkeParseError` if not."""
    if len(data) < HEADER_LEN:
        raise IkeParseError(f"{len(data)} bytes is shorter than an IKE header")
    spi_i, spi_r, next_type, version, exchange, flags, message_id, length = _HEADER.unpack_from(
        data
    )
    if version >> 4 != 2:
        raise IkeParseError(f"not IKEv2 (version byte {version:#04x})")
    if length != len(data):
        raise IkeParseError(f"header length {length} != datagram length {len(data)}")
    payloads: list[Payload] = []
    offset = HEADER_LEN
    while next_type != PayloadType.NONE:
        if offset + _GENERIC.size > len(data):
            raise IkeParseError(f"payload {next_type} header runs past the end")
        following, critical, plen = _GENERIC.unpack_from(data, offset)
        if plen < _GENERIC.size or offset + plen > len(data):
            raise IkeParseError(f"payload {next_type} has a bad length {plen}")
        payloads.append(Payload(next_type, data[offset + 4 : offset + plen], bool(critical & 0x80)))
        offset += plen
        if next_type == PayloadType.SK:  # encrypted: the inner chain is not ours to read
            break
        next_type = following
    if offset != len(data):
        raise IkeParseError(f"{len(data) - offset} trailing bytes after the last payload")
    return Message(spi_i, spi_r, version, exchange, flags, message_id, tuple(payloads))


def decode_sa(body: bytes) -> tuple[Proposal, ...]:
    """The proposals of an SA payload body."""
    proposals: list[Proposal] = []
    offset = 0
    while offset < len(body):
        if offset + _PROPOSAL.size > len(body):
            raise IkeParseError("truncated proposal")
        last, _, plen, number, protocol, spi_size, count = _PROPOSAL.unpack_from(body, offset)
        end = offset + plen
        if plen < _PROPOSAL.size + spi_size or end > len(body):
            raise IkeParseError(f"proposal {number} has a bad length {plen}")
        cursor = offset + _PROPOSAL.size
        spi = body[cursor : cursor + spi_size]
        cursor += spi_size
        transforms: list[Transform] = []
        for _ in range(count):
            if cursor + _TRANSFORM.size > end:
                raise IkeParseError(f"proposal {number}: truncated transform")
            _, _, tlen, ttype, _, tid = _TRANSFORM.unpack_from(body, cursor)
            if tlen < _TRANSFORM.size or cursor + tlen > end:
                raise IkeParseError(f"proposal {number}: transform with bad length {tlen}")
            key_length = _key_length(body[cursor + _TRANSFORM.size : cursor + tlen])
            transforms.append(Transform(ttype, tid, key_length))
            cursor += tlen
        if cursor != end:
            raise IkeParseError(f"proposal {number}: length does not match its transforms")
        proposals.append(Proposal(number, protocol, tuple(transforms), spi))
        offset = end
        if last == 0:
            break
        if last != 2:
            raise IkeParseError(f"proposal {number}: bad 'last substructure' value {last}")
    if offset != len(body):
        raise IkeParseError("bytes after the last proposal")
    return tuple(proposals)


def _key_length(attrs: bytes) -> int | None:
    key_length: int | None = None
    offset = 0
    while offset < len(attrs):
        if offset + _ATTR.size > len(attrs):
            raise IkeParseError("truncated transform attribute")
        kind, value = _ATTR.unpack_from(attrs, offset)
        if kind & ATTR_TV:
            if kind & 0x7FFF == ATTR_KEY_LENGTH:
                key_length = value
            offset += _ATTR.size
        else:  # type/length/value: ``value`` is the length of what follows
            offset += _ATTR.size + value
    if offset != len(attrs):
        raise IkeParseError("transform attribute runs past the transform")
    return key_length


def _parse_ke(body: bytes) -> tuple[int, bytes]:
    if len(body) < _KE.size:
        raise IkeParseError("truncated KE payload")
    group, _ = _KE.unpack_from(body)
    return group, body[_KE.size :]


def parse_notify(body: bytes) -> Notify:
    if len(body) < _NOTIFY.size:
        raise IkeParseError("truncated Notify payload")
    protocol, spi_size, kind = _NOTIFY.unpack_from(body)
    if _NOTIFY.size + spi_size > len(body):
        raise IkeParseError("Notify SPI runs past the payload")
    spi = body[_NOTIFY.size : _NOTIFY.size + spi_size]
    return Notify(kind, body[_NOTIFY.size + spi_size :], protocol, spi)


def describe_reply(data: bytes, spi_i: bytes) -> str | None:
    """What a datagram says if it is a valid IKE_SA_INIT answer to our SPI, else ``None``.

    Any well-formed response for our initiator SPI proves the IKE service alive, whether it
    accepts (``"SA, KE, Nonce"``) or refuses (``"NO_PROPOSAL_CHOSEN"``, ``"INVALID_KE_PAYLOAD
    (wants group 2)"``, ``"COOKIE"``, ...). Other datagrams (another SPI, a request, garbage)
    give ``None`` and are to be ignored.
    """
    if len(data) < HEADER_LEN or data[:8] != spi_i:
        return None
    try:
        message = parse_message(data)
        notifies = message.notifies()
    except IkeParseError:
        return None
    if message.exchange != EXCHANGE_IKE_SA_INIT or not message.is_response:
        return None
    if message.is_initiator or message.message_id != 0:
        return None
    errors = [n for n in notifies if n.type < 16384]  # 1-16383 are error types (RFC 7296 §3.10.1)
    if errors:
        return ", ".join(_notify_text(n) for n in errors)
    kinds = {p.type for p in message.payloads}
    if {PayloadType.SA, PayloadType.KE, PayloadType.NONCE} <= kinds:
        return "SA, KE, Nonce"
    if notifies:
        return ", ".join(_notify_text(n) for n in notifies)
    names = ", ".join(_payload_name(p.type) for p in message.payloads)
    return names or "empty response"


def _notify_text(notify: Notify) -> str:
    if notify.type == NotifyType.INVALID_KE_PAYLOAD and len(notify.data) == 2:
        return f"{notify.name} (wants group {int.from_bytes(notify.data, 'big')})"
    return notify.name


def _payload_name(kind: int) -> str:
    try:
        return PayloadType(kind).name
    except ValueError:
        return f"payload {kind}"
