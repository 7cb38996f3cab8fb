"""The wiring record, argument checks, and the DHCP drop program (run here by a small classic BPF
interpreter). The wiring itself is tested for real in tests/integration/test_wiring.py."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from qmprt.errors import InvalidArgument
from qmprt.net import wiring
from qmprt.net.wiring import MODES, Link, RouteInfo
from qmprt.net.wiring_macvtap import random_mac
from qmprt.net.wiring_tc import DHCP_DROP_PROGRAM

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC = 0, 2, 0xFFFFFFFF
MISSING_NETNS = "/var/run/netns/qmprt-never-made"


def link(**changes: Any) -> Link:
    fields: dict[str, Any] = {
        "index": 1,
        "ifname": "eth1",
        "mode": "macvtap",
        "mac": "0a:58:0a:f4:01:05",
        "mtu": 1450,
        "device": "qmvtap1",
        "dhcp_device": "qmdhcp1",
        "addresses": ("10.244.1.5/24", "fd00:10:244:1::5/64"),
        "routes": (RouteInfo("0.0.0.0/0", "10.244.1.1"), RouteInfo("10.244.1.1/32"), RouteInfo("::/0", "fe80::1")),
        "moved_mac": "06:11:22:33:44:55",
    }
    fields.update(changes)
    return Link(**fields)


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_the_record_round_trips_through_json(mode: wiring.Mode) -> None:
    record = link(mode=mode, moved_mac="" if mode == "tc-redirect" else "06:11:22:33:44:55")
    assert Link.from_json(record.to_json()) == record
    assert record.to_json()["routes"][1] == {"destination": "10.244.1.1/32", "gateway": ""}


@pytest.mark.parametrize(
    "change",
    [{"mode": "bridge"}, {"index": "1"}, {"mtu": True}, {"mac": None}, {"addresses": [1]}, {"routes": [{"gateway": "x"}]}],
    ids=["mode", "index", "mtu", "mac", "addresses", "routes"],
)
def test_a_malformed_record_is_invalid(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="malformed network wiring record"):
        Link.from_json(link().to_json() | change)
    document = link().to_json()
    del document["device"]
    with pytest.raises(InvalidArgument):
        Link.from_json(document)


@pytest.mark.parametrize(
    ("ifnames", "mode", "message"),
    [
        (["eth0"], "passthru", "wiring mode"),
        (["eth0", "eth0"], "macvtap", "repeat"),
        (["eth0/x"], "tc-redirect", "not an interface name"),
        (["a-name-far-too-long"], "tc-redirect", "not an interface name"),
    ],
    ids=["mode", "repeated", "slash", "long"],
)
def test_wire_checks_its_arguments_before_entering_the_namespace(ifnames: list[str], mode: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        wiring.wire(MISSING_NETNS, ifnames, mode)


def test_a_missing_namespace() -> None:
    assert wiring.wire(MISSING_NETNS, [], "macvtap") == ()
    wiring.unwire(MISSING_NETNS, [link()])  # nothing left to undo
    assert wiring.verify(MISSING_NETNS, [link()]) == [f"network namespace {MISSING_NETNS} does not exist"]


def test_device_names_fit_ifnamsiz() -> None:
    assert (wiring.device_name("tc-redirect", 3), wiring.dhcp_device_name("tc-redirect", 3)) == ("qmtap3", "qmtap3")
    assert (wiring.device_name("macvtap", 3), wiring.dhcp_device_name("macvtap", 3)) == ("qmvtap3", "qmdhcp3")
    assert all(len(wiring.dhcp_device_name(mode, 99999)) <= 15 for mode in MODES)


def test_moved_macs_are_random_local_unicast() -> None:
    macs = {random_mac() for _ in range(64)}
    assert len(macs) == 64
    assert all(int(mac[:2], 16) & 0x03 == 0x02 for mac in macs)


# ---------------------------------------------------------------------------------------------------
# The DHCP drop program


def run_classic_bpf(program: tuple[bytes, ...], frame: bytes) -> int:
    """The opcodes the program uses; a load past the end ends it with 0, as in the kernel."""
    accumulator = index = pc = 0
    while True:
        code, jt, jf, k = struct.unpack("=HBBI", program[pc])
        pc += 1
        if code in (0x28, 0x30, 0x48):  # ldh abs, ldb abs, ldh ind
            offset = k + (index if code == 0x48 else 0)
            size = 1 if code == 0x30 else 2
            if offset + size > len(frame):
                return 0
            accumulator = int.from_bytes(frame[offset : offset + size], "big")
        elif code == 0xB1:  # ldxb 4*([k]&0xf)
            if k >= len(frame):
                return 0
            index = 4 * (frame[k] & 0x0F)
        elif code in (0x15, 0x45):  # jeq, jset
            taken = accumulator == k if code == 0x15 else bool(accumulator & k)
            pc += jt if taken else jf
        elif code == 0x06:
            return int(k)
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")


def ipv4_udp(destination_port: int, options: bytes = b"", fragment: int = 0, protocol: int = 17) -> bytes:
    header_length = 20 + len(options)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | header_length // 4, 0, 0, 0, fragment, 64, protocol, 0, bytes(4), b"\xff" * 4)
    udp = struct.pack("!HHHH", 68, destination_port, 8, 0)
    return b"\xff" * 6 + bytes(6) + b"\x08\x00" + header + options + udp + bytes(300)


@pytest.mark.parametrize(
    ("frame", "verdict"),
    [
        (ipv4_udp(67), TC_ACT_SHOT),
        (ipv4_udp(67, options=bytes(8)), TC_ACT_SHOT),
        (ipv4_udp(68), TC_ACT_UNSPEC),
        (ipv4_udp(53), TC_ACT_UNSPEC),
        (ipv4_udp(67, protocol=6), TC_ACT_UNSPEC),
        (ipv4_udp(67, fragment=0x0010), TC_ACT_UNSPEC),
        (b"\xff" * 6 + bytes(6) + b"\x08\x06" + bytes(28), TC_ACT_UNSPEC),
        (b"\x33\x33\x00\x00\x00\x01" + bytes(6) + b"\x86\xdd" + bytes(60), TC_ACT_UNSPEC),
        (bytes(6), TC_ACT_OK),
    ],
    ids=["dhcp", "dhcp-with-ip-options", "udp-68", "dns", "tcp-67", "later-fragment", "arp", "ipv6", "runt"],
)
def test_the_dhcp_drop_program(frame: bytes, verdict: int) -> None:
    assert run_classic_bpf(DHCP_DROP_PROGRAM, frame) == verdict
