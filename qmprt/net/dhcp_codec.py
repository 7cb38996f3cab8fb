"""DHCPv4 on the wire (RFC 2131/2132): messages, options, and the Ethernet/IPv4/UDP frames around them.

Pure functions over bytes; anything that is not a well-formed frame raises ``MalformedPacket`` (a
ValueError). Encodings with their own RFC: option 121 classless static routes (RFC 3442), option 119
domain search (RFC 3397, RFC 1035 names with suffix compression), long options split into and joined
from consecutive instances (RFC 3396), option overload into ``file``/``sname`` when decoding.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SERVER_PORT = 67
CLIENT_PORT = 68
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
MIN_BOOTP_SIZE = 300  # RFC 1542: some clients drop shorter replies
ETH_P_IP = 0x0800
UNSPECIFIED = "0.0.0.0"
BROADCAST_IP = "255.255.255.255"

# Option codes used here (RFC 2132 unless noted).
OPT_PAD, OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_MTU = 0, 1, 3, 6, 12, 15, 26
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 52, 53, 54
OPT_MESSAGE, OPT_RENEWAL_TIME, OPT_REBINDING_TIME = 56, 58, 59
OPT_DOMAIN_SEARCH, OPT_CLASSLESS_ROUTES, OPT_END = 119, 121, 255  # RFC 3397, RFC 3442

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class MalformedPacket(ValueError):
    """Bytes that are not a well-formed DHCP frame; the responder drops them."""


def dns_name(text: str, what: str = "name") -> str:
    """``text`` without a trailing dot, or ValueError when it is not a DNS name (labels of 1-63 characters)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{what} {text!r} is not a DNS name")
    return name


# ---- options ----


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options in order, then END; a value over 255 bytes is split into consecutive instances (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        if not 0 < code < OPT_END:
            raise ValueError(f"option code {code} cannot carry a value")
        chunks = [value[start:start + 255] for start in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    return bytes(out + bytes((OPT_END,)))


def decode_options(data: bytes) -> dict[int, bytes]:
    """Options up to END (or the end of data); repeated options are concatenated (RFC 3396)."""
    options: dict[int, bytes] = {}
    index = 0
    while index < len(data):
        code = data[index]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            index += 1
            continue
        if index + 2 > len(data) or index + 2 + data[index + 1] > len(data):
            raise MalformedPacket(f"option {code} runs past the end of the options")
        length = data[index + 1]
        options[code] = options.get(code, b"") + data[index + 2:index + 2 + length]
        index += 2 + length
    return options


def encode_classless_routes(routes: Iterable[tuple[str, str]]) -> bytes:
    """RFC 3442: per route the prefix length, the significant octets of the destination, the router."""
    out = bytearray()
    for destination, via in routes:
        network = ipaddress.IPv4Network(destination)
        significant = (network.prefixlen + 7) // 8
        out += bytes((network.prefixlen,)) + network.network_address.packed[:significant]
        out += ipaddress.IPv4Address(via).packed
    return bytes(out)


def decode_classless_routes(data: bytes) -> list[tuple[str, str]]:
    routes = []
    index = 0
    while index < len(data):
        width = data[index]
        significant = (width + 7) // 8
        if width > 32 or index + 1 + significant + 4 > len(data):
            raise MalformedPacket("option 121 is truncated or has a prefix longer than 32")
        destination = data[index + 1:index + 1 + significant].ljust(4, b"\0")
        via = data[index + 1 + significant:index + 5 + significant]
        routes.append((f"{ipaddress.IPv4Address(destination)}/{width}", str(ipaddress.IPv4Address(via))))
        index += 5 + significant
    return routes


def encode_domain_search(names: Iterable[str]) -> bytes:
    """RFC 3397: names in RFC 1035 wire form, a suffix seen before replaced by a pointer to it."""
    out = bytearray()
    seen: dict[tuple[str, ...], int] = {}
    for name in names:
        labels = dns_name(name, "search domain").split(".")
        for index in range(len(labels)):
            suffix = tuple(label.lower() for label in labels[index:])
            if suffix in seen:
                out += struct.pack("!H", 0xC000 | seen[suffix])
                break
            if len(out) < 0x4000:  # a pointer has 14 bits
                seen[suffix] = len(out)
            label = labels[index].encode("ascii")
            out += bytes((len(label),)) + label
        else:
            out += b"\0"
    return bytes(out)


def decode_domain_search(data: bytes) -> list[str]:
    names = []
    index = 0
    while index < len(data):
        labels: list[str] = []
        position, jumps, end = index, 0, -1
        while True:
            if position >= len(data):
                raise MalformedPacket("option 119 ends inside a name")
            length = data[position]
            if length & 0xC0 == 0xC0:
                if position + 2 > len(data):
                    raise MalformedPacket("option 119 ends inside a compression pointer")
                target = struct.unpack_from("!H", data, position)[0] & 0x3FFF
                if target >= position or jumps > 127:  # only backwards, so no loops
                    raise MalformedPacket("option 119 has a bad compression pointer")
                if end < 0:
                    end = position + 2
                position, jumps = target, jumps + 1
            elif length & 0xC0:
                raise MalformedPacket("option 119 has a reserved label type")
            elif length == 0:
                if end < 0:
                    end = position + 1
                break
            else:
                if position + 1 + length > len(data):
                    raise MalformedPacket("option 119 ends inside a label")
                labels.append(data[position + 1:position + 1 + length].decode("ascii", "replace"))
                position += 1 + length
        names.append(".".join(labels))
        index = end
    return names


# ---- messages ----


@dataclass(frozen=True)
class Message:
    """One BOOTP/DHCP message; ``options`` keep their order (END is implicit)."""

    op: int
    xid: int
    chaddr: str  # the client's MAC, lower case
    flags: int = 0
    ciaddr: str = UNSPECIFIED
    yiaddr: str = UNSPECIFIED
    siaddr: str = UNSPECIFIED
    giaddr: str = UNSPECIFIED
    secs: int = 0
    hops: int = 0
    options: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(OPT_MESSAGE_TYPE, b"")
        try:
            return MessageType(value[0]) if len(value) == 1 else None
        except ValueError:
            return None

    def address_option(self, code: int) -> str | None:
        value = self.options.get(code)
        return str(ipaddress.IPv4Address(value)) if value is not None and len(value) == 4 else None


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def encode_message(message: Message) -> bytes:
    addresses = (message.ciaddr, message.yiaddr, message.siaddr, message.giaddr)
    header = _BOOTP.pack(
        message.op, 1, 6, message.hops, message.xid, message.secs, message.flags,
        *(ipaddress.IPv4Address(address).packed for address in addresses),
        mac_bytes(message.chaddr).ljust(16, b"\0"), b"", b"",
    )
    encoded = header + MAGIC_COOKIE + encode_options(message.options.items())
    return encoded.ljust(MIN_BOOTP_SIZE, b"\0")


def decode_message(data: bytes) -> Message:
    if len(data) < _BOOTP.size + len(MAGIC_COOKIE):
        raise MalformedPacket(f"{len(data)} bytes is too short for BOOTP")
    op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, boot_file = (
        _BOOTP.unpack_from(data)
    )
    if htype != 1 or hlen != 6:
        raise MalformedPacket(f"hardware type {htype}/length {hlen} is not Ethernet")
    if data[_BOOTP.size:_BOOTP.size + 4] != MAGIC_COOKIE:
        raise MalformedPacket("no DHCP magic cookie")
    options = decode_options(data[_BOOTP.size + 4:])
    overload = options.get(OPT_OVERLOAD, b"\0")[0]
    for bit, extra in ((1, boot_file), (2, sname)):  # RFC 3396 order: options, file, sname
        if overload & bit:
            for code, value in decode_options(extra).items():
                options[code] = options.get(code, b"") + value
    return Message(
        op=op, xid=xid, chaddr=mac_text(chaddr[:6]), flags=flags, secs=secs, hops=hops,
        ciaddr=str(ipaddress.IPv4Address(ciaddr)), yiaddr=str(ipaddress.IPv4Address(yiaddr)),
        siaddr=str(ipaddress.IPv4Address(siaddr)), giaddr=str(ipaddress.IPv4Address(giaddr)), options=options,
    )


# ---- frames ----


def ipv4_checksum(header: bytes) -> int:
    """The one's complement sum of RFC 791; 0 over a header whose checksum field is right."""
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_frame(
    source_mac: str, destination_mac: str, source_ip: str, destination_ip: str, payload: bytes,
    source_port: int = SERVER_PORT, destination_port: int = CLIENT_PORT,
) -> bytes:
    """Ethernet + IPv4 (TTL 64, no options) + UDP with checksum 0 (no checksum, allowed over IPv4)."""
    udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        ipaddress.IPv4Address(source_ip).packed, ipaddress.IPv4Address(destination_ip).packed,
    )
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return mac_bytes(destination_mac) + mac_bytes(source_mac) + struct.pack("!H", ETH_P_IP) + header + udp


@dataclass(frozen=True)
class Datagram:
    source_mac: str
    destination_mac: str
    source_ip: str
    destination_ip: str
    source_port: int
    destination_port: int
    payload: bytes


def decode_frame(frame: bytes) -> Datagram:
    """An Ethernet frame carrying an unfragmented IPv4 UDP datagram; MalformedPacket otherwise.

    The UDP checksum is not checked: with checksum offload it may be incomplete in a frame a guest sent.
    """
    if len(frame) < 14 + 20 + 8:
        raise MalformedPacket(f"{len(frame)} bytes is too short for Ethernet/IPv4/UDP")
    if struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        raise MalformedPacket("not IPv4")
    version_ihl, protocol = frame[14], frame[23]
    (total_length,) = struct.unpack_from("!H", frame, 16)
    (fragment,) = struct.unpack_from("!H", frame, 20)
    header_length = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_length < 20 or not header_length + 8 <= total_length <= len(frame) - 14:
        raise MalformedPacket("bad IPv4 header or length")
    if ipv4_checksum(frame[14:14 + header_length]) != 0:
        raise MalformedPacket("bad IPv4 header checksum")
    if protocol != socket.IPPROTO_UDP or fragment & 0x3FFF:
        raise MalformedPacket("not an unfragmented UDP datagram")
    udp = 14 + header_length
    source_port, destination_port, udp_length = struct.unpack_from("!HHH", frame, udp)
    if not 8 <= udp_length <= total_length - header_length:
        raise MalformedPacket("bad UDP length")
    return Datagram(
        source_mac=mac_text(frame[6:12]), destination_mac=mac_text(frame[0:6]),
        source_ip=str(ipaddress.IPv4Address(frame[26:30])), destination_ip=str(ipaddress.IPv4Address(frame[30:34])),
        source_port=source_port, destination_port=destination_port, payload=frame[udp + 8:udp + udp_length],
    )
