"""DHCP wire format, the answers one lease gives, and lease validation (no sockets here)."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

import pytest

from qmprt.errors import InvalidArgument
from qmprt.net.dhcp import (
    Lease, LeaseError, MalformedPacket, Message, MessageType, answer_frame, decode_classless_routes,
    decode_domain_search, decode_frame, decode_message, decode_options, encode_classless_routes, encode_domain_search,
    encode_frame, encode_message, encode_options, ipv4_checksum, reply_destination, reply_for,
)

CLIENT = "52:54:00:12:34:56"
SERVER_MAC = "fe:54:00:00:00:01"
LEASE = Lease(
    client_mac=CLIENT,
    address="10.88.0.5/24",
    gateway="10.88.0.1",
    routes=(("10.96.0.0/12", "10.88.0.254"),),
    dns_servers=("10.96.0.10",),
    search=("default.svc.cluster.local", "svc.cluster.local", "cluster.local"),
    domain="cluster.local",
    mtu=1450,
    hostname="web-0",
)


def request(kind: MessageType, mac: str = CLIENT, ciaddr: str = "0.0.0.0", flags: int = 0,
            **options: bytes) -> Message:
    codes = {"requested": 50, "server_id": 54, "parameters": 55}
    return Message(
        op=1, xid=0x1234ABCD, chaddr=mac, flags=flags, ciaddr=ciaddr,
        options={53: bytes((kind,)), **{codes[name]: value for name, value in options.items()}},
    )


def frame_of(message: Message, source_ip: str = "0.0.0.0") -> bytes:
    return encode_frame(message.chaddr, "ff:ff:ff:ff:ff:ff", source_ip, "255.255.255.255", encode_message(message),
                        source_port=68, destination_port=67)


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


# ---- codecs ----


def test_message_round_trip_keeps_every_field_and_option_order() -> None:
    message = Message(
        op=2, xid=0xDEADBEEF, chaddr=CLIENT, flags=0x8000, ciaddr="10.0.0.1", yiaddr="10.0.0.2",
        siaddr="10.0.0.3", giaddr="10.0.0.4", secs=7, hops=1, options={53: b"\x02", 54: ip("10.0.0.3"), 12: b"x" * 300},
    )
    encoded = encode_message(message)
    assert len(encoded) >= 300 and encoded[236:240] == b"\x63\x82\x53\x63"
    decoded = decode_message(encoded)
    assert decoded == message
    assert list(decoded.options) == [53, 54, 12]


def test_long_options_are_split_and_joined_again() -> None:
    encoded = encode_options([(12, b"a" * 300), (6, b"")])
    assert encoded[:2] == bytes((12, 255)) and encoded[257:259] == bytes((12, 45))
    assert encoded[-3:] == bytes((6, 0, 255))
    assert decode_options(b"\x00\x00" + encoded + b"\x01\x04junk") == {12: b"a" * 300, 6: b""}


def test_option_overload_reads_options_from_file_then_sname() -> None:
    header = bytearray(encode_message(request(MessageType.DISCOVER))[:240])
    header[44:44 + 5] = bytes((12, 2)) + b"-b" + b"\xff"  # sname
    header[108:108 + 5] = bytes((12, 2)) + b"vm" + b"\xff"  # file
    decoded = decode_message(bytes(header) + encode_options([(53, b"\x01"), (52, b"\x03")]))
    assert decoded.options[12] == b"vm-b" and decoded.message_type == MessageType.DISCOVER


def test_rfc3442_destination_descriptors() -> None:
    """The table in RFC 3442 section 2, each with router 10.0.0.1."""
    examples = {
        "0.0.0.0/0": b"\x00",
        "10.0.0.0/8": b"\x08\x0a",
        "10.0.0.0/24": b"\x18\x0a\x00\x00",
        "10.17.0.0/16": b"\x10\x0a\x11",
        "10.27.129.0/24": b"\x18\x0a\x1b\x81",
        "10.229.0.128/25": b"\x19\x0a\xe5\x00\x80",
        "10.198.122.47/32": b"\x20\x0a\xc6\x7a\x2f",
    }
    router = b"\x0a\x00\x00\x01"
    for destination, descriptor in examples.items():
        assert encode_classless_routes([(destination, "10.0.0.1")]) == descriptor + router, destination
    joined = b"".join(descriptor + router for descriptor in examples.values())
    assert encode_classless_routes([(d, "10.0.0.1") for d in examples]) == joined
    assert decode_classless_routes(joined) == [(d, "10.0.0.1") for d in examples]


def test_rfc3397_search_list_example() -> None:
    """RFC 3397 section 3: "eng.apple.com." and "marketing.apple.com.", the second compressed."""
    expected = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert encode_domain_search(["eng.apple.com.", "marketing.apple.com"]) == expected
    # The RFC sends it as three option 119 instances of 9 bytes; they are concatenated (RFC 3396).
    options = b"".join(bytes((119, 9)) + expected[start:start + 9] for start in range(0, 27, 9)) + b"\xff"
    assert decode_options(options)[119] == expected
    assert decode_domain_search(expected) == ["eng.apple.com", "marketing.apple.com"]


def test_search_list_compression_reuses_every_suffix() -> None:
    encoded = encode_domain_search(LEASE.search)
    assert encoded == b"\x07default\x03svc\x07cluster\x05local\x00\xc0\x08\xc0\x0c"
    assert decode_domain_search(encoded) == list(LEASE.search)


@pytest.mark.parametrize(
    "data",
    [b"\x03abc", b"\xc0", b"\xc0\x00", b"\x01a\xc0\x05", b"\x40", b"\x05ab"],
    ids=["unterminated", "half-pointer", "self-pointer", "forward-pointer", "reserved-label", "short-label"],
)
def test_bad_search_lists_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode_domain_search(data)


def test_ipv4_checksum_of_a_known_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ipv4_checksum(header) == 0xB861
    assert ipv4_checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0


def test_frame_round_trip() -> None:
    frame = encode_frame(SERVER_MAC, CLIENT, "10.88.0.1", "10.88.0.5", b"payload")
    datagram = decode_frame(frame + b"\0" * 10)  # Ethernet padding is ignored
    assert (datagram.source_mac, datagram.destination_mac) == (SERVER_MAC, CLIENT)
    assert (datagram.source_ip, datagram.destination_ip) == ("10.88.0.1", "10.88.0.5")
    assert (datagram.source_port, datagram.destination_port, datagram.payload) == (67, 68, b"payload")
    assert frame[12:14] == b"\x08\x00" and frame[22] == 64 and frame[40:42] == b"\0\0"  # TTL, UDP checksum 0


# ---- answers ----


def test_discover_gets_an_offer_with_every_option() -> None:
    offer = reply_for(LEASE, request(MessageType.DISCOVER))
    assert offer is not None and offer.message_type == MessageType.OFFER
    assert (offer.op, offer.xid, offer.chaddr, offer.yiaddr, offer.ciaddr) == (2, 0x1234ABCD, CLIENT, "10.88.0.5", "0.0.0.0")
    assert list(offer.options) == [53, 54, 51, 58, 59, 1, 3, 121, 6, 15, 119, 26, 12]
    options = offer.options
    assert options[54] == ip("10.88.0.1")
    assert struct.unpack("!III", options[51] + options[58] + options[59]) == (86400, 43200, 75600)
    assert options[1] == ip("255.255.255.0") and options[3] == ip("10.88.0.1")
    assert decode_classless_routes(options[121]) == [("10.96.0.0/12", "10.88.0.254"), ("0.0.0.0/0", "10.88.0.1")]
    assert options[6] == ip("10.96.0.10") and options[15] == b"cluster.local"
    assert decode_domain_search(options[119]) == list(LEASE.search)
    assert options[26] == struct.pack("!H", 1450) and options[12] == b"web-0"


def test_request_for_the_lease_is_acked_and_anything_else_naked() -> None:
    ack = reply_for(LEASE, request(MessageType.REQUEST, requested=ip("10.88.0.5"), server_id=ip("10.88.0.1")))
    assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == "10.88.0.5"
    assert 51 in ack.options and 121 in ack.options

    wrong = request(MessageType.REQUEST, requested=ip("10.88.0.6"))
    nak = reply_for(LEASE, wrong)
    assert nak is not None and nak.message_type == MessageType.NAK
    assert nak.yiaddr == "0.0.0.0" and set(nak.options) == {53, 54, 56}
    assert reply_destination(wrong, nak) == "255.255.255.255"


def test_renewal_by_ciaddr_is_acked_unicast_and_a_wrong_one_naked() -> None:
    renewal = request(MessageType.REQUEST, ciaddr="10.88.0.5")
    ack = reply_for(LEASE, renewal)
    assert ack is not None and ack.message_type == MessageType.ACK and ack.ciaddr == "10.88.0.5"
    assert reply_destination(renewal, ack) == "10.88.0.5"
    other = reply_for(LEASE, request(MessageType.REQUEST, ciaddr="10.88.0.9"))
    assert other is not None and other.message_type == MessageType.NAK
    nothing = reply_for(LEASE, request(MessageType.REQUEST))
    assert nothing is not None and nothing.message_type == MessageType.NAK


def test_a_request_for_another_servers_offer_is_left_alone() -> None:
    assert reply_for(LEASE, request(MessageType.REQUEST, requested=ip("10.88.0.5"), server_id=ip("10.88.0.2"))) is None


def test_inform_gets_an_ack_without_address_or_lease_time() -> None:
    inform = request(MessageType.INFORM, ciaddr="10.88.0.5")
    ack = reply_for(LEASE, inform)
    assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == "0.0.0.0"
    assert not {51, 58, 59} & set(ack.options) and 1 in ack.options
    assert reply_destination(inform, ack) == "10.88.0.5"


@pytest.mark.parametrize("kind", [MessageType.RELEASE, MessageType.DECLINE, MessageType.OFFER], ids=["release", "decline", "offer"])
def test_release_decline_and_nonsense_get_no_answer(kind: MessageType) -> None:
    assert reply_for(LEASE, request(kind, ciaddr="10.88.0.5")) is None


def test_the_broadcast_flag_makes_the_reply_broadcast() -> None:
    discover = request(MessageType.DISCOVER, flags=0x8000)
    offer = reply_for(LEASE, discover)
    assert offer is not None and offer.flags == 0x8000
    assert reply_destination(discover, offer) == "255.255.255.255"
    plain = request(MessageType.DISCOVER)
    assert reply_destination(plain, reply_for(LEASE, plain)) == "10.88.0.5"  # type: ignore[arg-type]


def test_answer_frame_replies_unicast_to_the_client_mac() -> None:
    answer = answer_frame(LEASE, frame_of(request(MessageType.DISCOVER)), SERVER_MAC)
    assert answer is not None
    reply, frame = answer
    datagram = decode_frame(frame)
    assert (datagram.destination_mac, datagram.source_mac) == (CLIENT, SERVER_MAC)
    assert (datagram.source_ip, datagram.destination_ip) == ("10.88.0.1", "10.88.0.5")
    assert (datagram.source_port, datagram.destination_port) == (67, 68)
    assert ipv4_checksum(frame[14:34]) == 0 and frame[40:42] == b"\0\0"
    assert decode_message(datagram.payload) == reply and reply.message_type == MessageType.OFFER


def test_answer_frame_ignores_other_macs_outgoing_frames_and_wrong_ports() -> None:
    discover = request(MessageType.DISCOVER)
    assert answer_frame(LEASE, frame_of(request(MessageType.DISCOVER, mac="52:54:00:12:34:57")), SERVER_MAC) is None
    assert answer_frame(LEASE, frame_of(discover), SERVER_MAC, socket.PACKET_OUTGOING) is None
    assert answer_frame(LEASE, frame_of(discover), SERVER_MAC, socket.PACKET_OTHERHOST) is not None
    wrong_port = encode_frame(CLIENT, "ff:ff:ff:ff:ff:ff", "0.0.0.0", "255.255.255.255", encode_message(discover),
                              source_port=67, destination_port=67)
    assert answer_frame(LEASE, wrong_port, SERVER_MAC) is None
    reply = reply_for(LEASE, discover)
    assert reply is not None
    assert answer_frame(LEASE, encode_frame(SERVER_MAC, CLIENT, "10.88.0.1", "10.88.0.5", encode_message(reply)),
                        SERVER_MAC) is None


def test_malformed_frames_are_dropped_without_raising() -> None:
    good = frame_of(request(MessageType.DISCOVER))
    broken = [
        b"", good[:40], good[:14 + 28 + 100],
        good[:12] + b"\x86\xdd" + good[14:],  # not IPv4
        good[:24] + b"\0\0" + good[26:],  # bad IP checksum
        good[:20] + b"\x20\x00" + good[22:],  # a fragment
        good[:14 + 28 + 236] + b"\0\0\0\0" + good[14 + 28 + 240:],  # no cookie
        good[:14 + 28 + 240] + b"\x35\xff",  # an option longer than the packet
    ]
    for frame in broken:
        assert answer_frame(LEASE, frame, SERVER_MAC) is None
    generator = random.Random(3442)
    for _ in range(2000):
        frame = bytearray(good)
        for _ in range(generator.randint(1, 8)):
            frame[generator.randrange(len(frame))] = generator.randrange(256)
        answer_frame(LEASE, bytes(frame[: generator.randint(0, len(frame))]), SERVER_MAC)


# ---- the lease ----


def test_lease_json_round_trip_and_defaults() -> None:
    assert Lease.from_json(LEASE.to_json()) == LEASE
    minimal = Lease.from_json({"client_mac": "52:54:00:AB:CD:EF", "address": "10.0.0.2/8"})
    assert minimal.client_mac == "52:54:00:ab:cd:ef" and minimal.lease_seconds == 86400 and minimal.mtu is None


def test_server_identifier_defaults() -> None:
    assert LEASE.server_identifier == "10.88.0.1"
    assert Lease(CLIENT, "10.88.0.5/24", server_ip="10.88.0.2").server_identifier == "10.88.0.2"
    assert Lease(CLIENT, "10.88.0.5/24").server_identifier == "10.88.0.1"
    assert Lease(CLIENT, "10.88.0.1/24").server_identifier == "10.88.0.2"
    assert Lease(CLIENT, "10.88.0.5/32").server_identifier == "10.88.0.4"


def test_option_121_only_when_needed_and_with_on_link_gateways() -> None:
    assert Lease(CLIENT, "10.88.0.5/24", gateway="10.88.0.1").classless_routes() == ()
    calico = Lease(CLIENT, "10.88.0.5/32", gateway="169.254.1.1", routes=(("10.96.0.0/12", ""),))
    assert calico.classless_routes() == (
        ("169.254.1.1/32", "0.0.0.0"), ("10.96.0.0/12", "169.254.1.1"), ("0.0.0.0/0", "169.254.1.1"),
    )
    explicit_default = Lease(CLIENT, "10.88.0.5/24", gateway="10.88.0.1", routes=(("0.0.0.0/0", "10.88.0.1"),))
    assert explicit_default.classless_routes() == (("0.0.0.0/0", "10.88.0.1"),)
    no_gateway = Lease(CLIENT, "10.88.0.5/24", routes=(("192.168.0.0/16", "10.88.0.9"),))
    assert no_gateway.classless_routes() == (("192.168.0.0/16", "10.88.0.9"),)
    assert 3 not in reply_for(no_gateway, request(MessageType.DISCOVER)).options  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "changes",
    [
        {"client_mac": "52:54:00:12:34"}, {"client_mac": "52-54-00-12-34-56"}, {"address": "10.88.0.5"},
        {"address": "fd00::5/64"}, {"address": "10.88.0.0/24"}, {"address": "10.88.0.255/24"},
        {"address": "224.0.0.5/24"}, {"gateway": "10.88.0.5"}, {"gateway": "gw"}, {"server_ip": "10.88.0.5"},
        {"routes": (("10.96.0.1/12", "10.88.0.1"),)}, {"routes": (("10.96.0.0/12", "fd00::1"),)},
        {"routes": (("10.96.0.0/12", ""),), "gateway": ""}, {"dns_servers": ("fd00::10",)},
        {"search": ("bad..name",)}, {"search": ("a" * 64 + ".local",)}, {"domain": "under score-.local"},
        {"hostname": "web 0"}, {"mtu": 67}, {"mtu": 65536}, {"lease_seconds": 0}, {"lease_seconds": 2**32},
    ],
    ids=[
        "short-mac", "dashed-mac", "no-prefix", "ipv6", "network-address", "broadcast-address", "multicast",
        "gateway-is-client", "gateway-not-ip", "server-is-client", "route-host-bits", "route-v6-gateway",
        "route-without-any-gateway", "v6-dns", "empty-label", "long-label", "bad-domain", "bad-hostname",
        "mtu-low", "mtu-high", "lease-zero", "lease-huge",
    ],
)
def test_bad_leases_are_refused(changes: dict[str, object]) -> None:
    document = {**LEASE.to_json(), **changes}
    if "routes" in changes:
        document["routes"] = [{"destination": d, "gateway": g} for d, g in changes["routes"]]  # type: ignore[attr-defined]
    for key in ("dns_servers", "search"):
        if key in changes:
            document[key] = list(changes[key])  # type: ignore[call-overload]
    with pytest.raises(LeaseError):
        Lease.from_json(document)


@pytest.mark.parametrize(
    "document",
    [
        [], {"address": "10.0.0.2/8"}, {"client_mac": CLIENT}, {"client_mac": CLIENT, "address": "10.0.0.2/8", "ttl": 1},
        {"client_mac": CLIENT, "address": 5}, {"client_mac": CLIENT, "address": "10.0.0.2/8", "mtu": "1500"},
        {"client_mac": CLIENT, "address": "10.0.0.2/8", "mtu": True},
        {"client_mac": CLIENT, "address": "10.0.0.2/8", "lease_seconds": None},
        {"client_mac": CLIENT, "address": "10.0.0.2/8", "dns_servers": "10.0.0.1"},
        {"client_mac": CLIENT, "address": "10.0.0.2/8", "routes": [["10.1.0.0/16", "10.0.0.1"]]},
        {"client_mac": CLIENT, "address": "10.0.0.2/8", "routes": [{"destination": "10.1.0.0/16", "via": "x"}]},
    ],
    ids=[
        "not-an-object", "no-mac", "no-address", "unknown-key", "address-not-string", "mtu-string", "mtu-bool",
        "lease-null", "dns-not-list", "route-as-list", "route-unknown-key",
    ],
)
def test_bad_lease_documents_are_refused(document: object) -> None:
    with pytest.raises(LeaseError):
        Lease.from_json(document)  # type: ignore[arg-type]


def test_lease_error_is_a_value_error_and_invalid_argument() -> None:
    with pytest.raises(ValueError):
        Lease(CLIENT, "10.88.0.5")
    with pytest.raises(InvalidArgument):
        Lease(CLIENT, "10.88.0.5")


def test_lists_become_tuples() -> None:
    from_lists = Lease(CLIENT, "10.88.0.5/24", gateway="10.88.0.1", routes=[["10.96.0.0/12", ""]],  # type: ignore[arg-type]
                       dns_servers=["10.96.0.10"], search=["cluster.local"])  # type: ignore[arg-type]
    assert from_lists == Lease(CLIENT, "10.88.0.5/24", gateway="10.88.0.1", routes=(("10.96.0.0/12", ""),),
                               dns_servers=("10.96.0.10",), search=("cluster.local",))
    assert hash(from_lists)
