"""Wiring CNI interfaces to guest NICs, for real, in network namespaces this test creates.

No VM: the test plays the guest through the queue fd ``open_queue`` returns (what QEMU would hold,
frames behind a virtio-net header), and the rest of the cluster through packet sockets in a "node"
namespace. The pod is joined to the node by a veth set up the way CNI ``ptp`` leaves it (the
connected route replaced by one via the gateway), or by a macvlan on a node-side veth the way the CNI
``macvlan`` plugin leaves it. Nothing happens in the machine's own namespace: the fixture checks its
link list is unchanged. The ``ip``/``tc`` commands here only build and inspect the namespaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qmprt.errors import FailedPrecondition, InternalError
from qmprt.net import netns, wiring, wiring_macvtap, wiring_tc
from qmprt.net.wiring import MODES, Link, RouteInfo

pytestmark = pytest.mark.skipif(
    not Path("/dev/net/tun").exists() or not shutil.which("ip") or not shutil.which("tc"),
    reason="needs /dev/net/tun and iproute2 to build and inspect the namespaces",
)

SHAPES = ("veth", "macvlan")
POD_IP, NODE_IP = "10.99.0.2", "10.99.0.1"
ETH_P_ALL, ETH_P_ARP, ETH_P_IP, ETH_P_MARK = 0x0003, 0x0806, 0x0800, 0x88B5  # 0x88b5: IEEE local experimental
PACKET_OUTGOING = 4
TUNGETVNETHDRSZ = 0x800454D7
BROADCAST = b"\xff" * 6


@dataclass
class Pod:
    shape: str
    name: str
    path: str
    node: str
    node_path: str
    wire: str  # the node-side interface the pod's frames pass

    def ip(self, *argv: str, node: bool = False) -> str:
        namespace = self.node if node else self.name
        return subprocess.run(["ip", "-n", namespace, *argv], capture_output=True, text=True, check=True, timeout=10).stdout

    def tc(self, *argv: str) -> str:
        return subprocess.run(["tc", "-n", self.name, *argv], capture_output=True, text=True, check=True, timeout=10).stdout

    def link(self, name: str) -> dict[str, Any]:
        document: list[dict[str, Any]] = json.loads(self.ip("-j", "-d", "link", "show", "dev", name))
        return document[0]

    def addresses(self, name: str) -> list[tuple[str, str]]:
        document = json.loads(self.ip("-j", "addr", "show", "dev", name))
        return [(f"{entry['local']}/{entry['prefixlen']}", entry["scope"]) for entry in document[0]["addr_info"]]

    def mac(self, name: str = "eth0") -> str:
        return str(self.link(name)["address"])

    def state(self) -> dict[str, Any]:
        """The pod namespace as unwiring has to leave it: links, addresses, every route, qdiscs."""
        links = [
            (entry["ifname"], entry.get("address"), entry["mtu"], entry.get("linkinfo", {}).get("info_kind"), entry["flags"])
            for entry in json.loads(self.ip("-j", "-d", "link"))
        ]
        addresses = {entry["ifname"]: self.addresses(entry["ifname"]) for entry in json.loads(self.ip("-j", "link"))}
        routes = [
            {key: value for key, value in route.items() if key not in ("flags", "expires")}
            for family in ("-4", "-6")
            for route in json.loads(self.ip("-j", family, "route", "show", "table", "all"))
        ]
        qdiscs = [(entry["dev"], entry["kind"], entry["handle"]) for entry in json.loads(self.tc("-j", "qdisc", "show"))]
        return {"links": links, "addresses": addresses, "routes": routes, "qdiscs": qdiscs}


def host_links() -> list[str]:
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in shown.stdout.splitlines())


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def build(pod: Pod) -> None:
    node, name = pod.node, pod.name
    for namespace in (node, name):
        run("ip", "-n", namespace, "link", "set", "lo", "up")
    if pod.shape == "veth":
        run("ip", "-n", node, "link", "add", "veth-n", "type", "veth", "peer", "name", "eth0", "netns", name)
    else:
        run("ip", "-n", node, "link", "add", "uplink0", "type", "veth", "peer", "name", "wire0")
        run("ip", "-n", node, "link", "set", "uplink0", "up")
        run("ip", "-n", node, "link", "add", "mv0", "link", "uplink0", "type", "macvlan", "mode", "bridge")
        run("ip", "-n", node, "link", "set", "mv0", "netns", name)
        run("ip", "-n", name, "link", "set", "mv0", "name", "eth0")
    run("ip", "-n", node, "link", "set", pod.wire, "up")
    run("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", pod.wire)
    run("ip", "-n", name, "link", "set", "eth0", "up")
    run("ip", "-n", name, "addr", "add", f"{POD_IP}/24", "brd", "+", "dev", "eth0")
    run("ip", "-n", name, "addr", "add", "fd99::2/64", "dev", "eth0", "nodad")
    if pod.shape == "veth":  # as ptp leaves it
        run("ip", "-n", name, "route", "del", "10.99.0.0/24", "dev", "eth0")
        run("ip", "-n", name, "route", "add", NODE_IP, "dev", "eth0", "scope", "link")
        run("ip", "-n", name, "route", "add", "10.99.0.0/24", "via", NODE_IP, "dev", "eth0")
    else:
        run("ip", "-n", name, "route", "add", "10.100.0.0/16", "dev", "eth0")
    run("ip", "-n", name, "route", "add", "default", "via", NODE_IP, "dev", "eth0")
    run("ip", "-n", name, "-6", "route", "add", "default", "via", "fd99::1", "dev", "eth0")


def expected_routes(pod: Pod) -> set[RouteInfo]:
    common = {RouteInfo("0.0.0.0/0", NODE_IP), RouteInfo("::/0", "fd99::1")}
    if pod.shape == "veth":
        return common | {RouteInfo(f"{NODE_IP}/32"), RouteInfo("10.99.0.0/24", NODE_IP)}
    return common | {RouteInfo("10.100.0.0/16")}


@pytest.fixture(params=SHAPES, ids=SHAPES)
def pod(request: pytest.FixtureRequest) -> Iterator[Pod]:
    tag = os.urandom(3).hex()
    shape = request.param
    node, name = f"qmprt-tw{tag}n", f"qmprt-tw{tag}p"
    links_before = host_links()
    node_path = netns.create(node)
    try:
        path = netns.create(name)
        try:
            the_pod = Pod(shape, name, str(path), node, str(node_path), "veth-n" if shape == "veth" else "wire0")
            build(the_pod)
            yield the_pod
        finally:
            netns.remove(name)
    finally:
        netns.remove(node)
    assert not netns.exists(node) and not netns.exists(name)
    assert host_links() == links_before, "the machine's own namespace was touched"


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "scratch"
    directory.mkdir(mode=0o700)
    return directory


# ---------------------------------------------------------------------------------------------------
# Frames


class Guest:
    """The guest's end of a queue fd: frames behind a virtio-net header of the size the fd reports."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = bytearray(4)
        fcntl.ioctl(fd, TUNGETVNETHDRSZ, size)
        self.header_size = struct.unpack("i", size)[0]
        assert self.header_size in (10, 12)
        os.set_blocking(fd, False)

    def send(self, frame: bytes) -> None:
        os.write(self.fd, bytes(self.header_size) + frame)  # an all-zero header: no offloads

    def receive(self, wanted: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                frame = os.read(self.fd, 65536)[self.header_size :]
                if wanted(frame):
                    return frame
        raise AssertionError("the guest did not receive the frame")


def packet_socket(netns_path: str, ifname: str) -> socket.socket:
    def open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, ETH_P_ALL))
        return sock

    return netns.run_in(netns_path, open_socket)


def receive(sock: socket.socket, wanted: Callable[[bytes], bool], timeout: float = 3.0) -> list[bytes]:
    """Frames ``sock`` received (not sent) up to and including the first ``wanted`` one."""
    seen = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            frame, address = sock.recvfrom(65536)
            if address[2] == PACKET_OUTGOING:
                continue
            seen.append(frame)
            if wanted(frame):
                return seen
    raise AssertionError(f"no such frame among the {len(seen)} received")


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ethernet(destination: bytes, source: bytes, ethertype: int, payload: bytes) -> bytes:
    return destination + source + struct.pack("!H", ethertype) + payload


def arp_request(source_mac: bytes, source_ip: str, target_ip: str) -> bytes:
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + source_mac + socket.inet_aton(source_ip)
    body += bytes(6) + socket.inet_aton(target_ip)
    return ethernet(BROADCAST, source_mac, ETH_P_ARP, body)


def is_arp_reply(frame: bytes, to_mac: bytes, from_ip: str) -> bool:
    return (
        frame[:6] == to_mac
        and frame[12:14] == struct.pack("!H", ETH_P_ARP)
        and frame[20:22] == b"\x00\x02"
        and frame[28:32] == socket.inet_aton(from_ip)
    )


def dhcp_request(source_mac: bytes, tag: bytes) -> bytes:
    """What a DHCP client broadcasts: IPv4 UDP 0.0.0.0:68 -> 255.255.255.255:67 (``tag`` as payload)."""
    udp = struct.pack("!HHHH", 68, 67, 8 + len(tag), 0) + tag
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, bytes(4), b"\xff" * 4)
    checksum = sum(struct.unpack("!10H", header))
    checksum = ~((checksum & 0xFFFF) + (checksum >> 16)) & 0xFFFF
    return ethernet(BROADCAST, source_mac, ETH_P_IP, header[:10] + struct.pack("!H", checksum) + header[12:] + udp)


def marked(tag: bytes) -> Callable[[bytes], bool]:
    return lambda frame: tag in frame


# ---------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_wire_verify_and_break(pod: Pod, mode: wiring.Mode) -> None:
    before = pod.state()
    mac, mtu = pod.mac(), pod.link("eth0")["mtu"]
    (link,) = wiring.wire(pod.path, ["eth0"], mode)

    assert (link.index, link.ifname, link.mode, link.mac, link.mtu) == (0, "eth0", mode, mac, mtu)
    assert link.addresses == (f"{POD_IP}/24", "fd99::2/64")
    assert set(link.routes) == expected_routes(pod) and len(link.routes) == len(expected_routes(pod))
    assert Link.from_json(json.loads(json.dumps(link.to_json()))) == link
    if mode == "tc-redirect":
        assert (link.device, link.dhcp_device, link.moved_mac) == ("qmtap0", "qmtap0", "")
        tap = pod.link("qmtap0")
        assert tap["linkinfo"]["info_kind"] == "tun" and tap["mtu"] == mtu and "UP" in tap["flags"]
        assert tap["linkinfo"]["info_data"] == tap["linkinfo"]["info_data"] | {
            "type": "tap", "pi": False, "vnet_hdr": True, "persist": True, "user": "root",
        }
        assert pod.addresses("qmtap0") == []
        assert pod.mac() == mac and [a for a, _ in pod.addresses("eth0")][:2] == [f"{POD_IP}/24", "fd99::2/64"]
        for device, peer in (("eth0", "qmtap0"), ("qmtap0", "eth0")):
            assert "ingress" in pod.tc("qdisc", "show", "dev", device)
            assert f"mirred (Egress Redirect to device {peer})" in pod.tc("filter", "show", "dev", device, "ingress")
        tap_filters = pod.tc("filter", "show", "dev", "qmtap0", "ingress")
        assert "pref 1 bpf" in tap_filters and "direct-action" in tap_filters
    else:
        assert (link.device, link.dhcp_device) == ("qmvtap0", "qmdhcp0")
        macvtap, helper = pod.link("qmvtap0"), pod.link("qmdhcp0")
        assert macvtap["linkinfo"]["info_kind"] == "macvtap" and macvtap["linkinfo"]["info_data"]["mode"] == "bridge"
        assert macvtap["address"] == mac and macvtap["mtu"] == mtu and "UP" in macvtap["flags"]
        assert helper["linkinfo"]["info_kind"] == "macvlan" and helper["linkinfo"]["info_data"]["mode"] == "bridge"
        assert "UP" in helper["flags"] and helper["address"] not in (mac, link.moved_mac)
        assert pod.addresses("qmvtap0") == [] and pod.addresses("qmdhcp0") == []
        moved = mac_bytes(link.moved_mac)
        assert pod.mac() == link.moved_mac != mac and moved[0] & 0x03 == 0x02  # unicast, locally administered
        assert pod.addresses("eth0") == [], "eth0 would answer ARP/NDP for the guest"
        assert "ingress" not in pod.tc("qdisc", "show")
    assert wiring.verify(pod.path, [link]) == []

    if mode == "tc-redirect":
        pod.tc("filter", "del", "dev", "qmtap0", "ingress", "pref", "1")
        assert wiring.verify(pod.path, [link]) == [
            "no filter on qmtap0 keeps the guest's DHCP requests off the pod network"
        ]
        pod.tc("qdisc", "del", "dev", "eth0", "ingress")
        assert "eth0 has no ingress qdisc" in wiring.verify(pod.path, [link])
    else:
        pod.ip("link", "del", "qmdhcp0")
        assert wiring.verify(pod.path, [link]) == ["DHCP helper qmdhcp0 is missing"]
        pod.ip("link", "set", "qmvtap0", "down")
        pod.ip("addr", "add", "fd99::2/64", "dev", "eth0", "nodad")
        assert wiring.verify(pod.path, [link]) == [
            "macvtap qmvtap0 is down",
            "DHCP helper qmdhcp0 is missing",
            "eth0 holds fd99::2/64 and answers ARP/NDP for it instead of the guest",
        ]
        pod.ip("addr", "del", "fd99::2/64", "dev", "eth0")

    wiring.unwire(pod.path, [link])  # from the broken state
    assert pod.state() == before
    assert f"{'tap qmtap0' if mode == 'tc-redirect' else 'macvtap qmvtap0'} is missing" in wiring.verify(pod.path, [link])


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_frames_reach_both_ways(pod: Pod, mode: wiring.Mode, scratch_dir: Path) -> None:
    before = pod.state()
    (link,) = wiring.wire(pod.path, ["eth0"], mode)
    guest_mac = mac_bytes(link.mac)
    fd = wiring.open_queue(pod.path, link, str(scratch_dir))
    node = packet_socket(pod.node_path, pod.wire)
    responder = packet_socket(pod.path, link.dhcp_device)
    try:
        assert list(scratch_dir.iterdir()) == []  # the device node and the sysfs mount point went again
        assert str(scratch_dir) not in Path("/proc/self/mountinfo").read_text()
        guest = Guest(fd)

        # A ping-like exchange: the guest asks for the gateway's MAC, the node's stack answers.
        guest.send(arp_request(guest_mac, POD_IP, NODE_IP))
        request = receive(node, lambda frame: frame[6:12] == guest_mac and frame[12:14] == b"\x08\x06")[-1]
        assert request[28:32] == socket.inet_aton(POD_IP)
        guest.receive(lambda frame: is_arp_reply(frame, guest_mac, NODE_IP))

        # The node sends straight to the guest's MAC.
        node_mac = mac_bytes(json.loads(pod.ip("-j", "link", "show", pod.wire, node=True))[0]["address"])
        node.send(ethernet(guest_mac, node_mac, ETH_P_MARK, b"node to guest"))
        guest.receive(marked(b"node to guest"))

        # The guest's DHCP request reaches the responder's socket; with tc-redirect, not the node. The
        # frame after it takes the same path, so once it arrived the request would have too.
        guest.send(dhcp_request(guest_mac, b"dhcp from guest"))
        guest.send(ethernet(BROADCAST, guest_mac, ETH_P_MARK, b"after dhcp"))
        receive(responder, marked(b"dhcp from guest"))
        at_node = receive(node, marked(b"after dhcp"))
        if mode == "tc-redirect":
            assert not any(b"dhcp from guest" in frame for frame in at_node)

        # The responder's answer reaches the guest.
        responder.send(ethernet(guest_mac, mac_bytes(pod.mac(link.dhcp_device)), ETH_P_MARK, b"dhcp reply"))
        guest.receive(marked(b"dhcp reply"))

        if mode == "tc-redirect":
            with pytest.raises(FailedPrecondition, match="already open"):
                wiring.open_queue(pod.path, link, str(scratch_dir))
    finally:
        os.close(fd)
        node.close()
        responder.close()
    wiring.unwire(pod.path, [link])
    assert pod.state() == before
    wiring.unwire(pod.path, [link])
    assert pod.state() == before
    with pytest.raises(FailedPrecondition, match="the wiring is gone"):
        wiring.open_queue(pod.path, link, str(scratch_dir))


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_a_failed_wire_leaves_the_namespace_as_it_was(pod: Pod, mode: wiring.Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    pod.ip("link", "add", "veth-n1", "type", "veth", "peer", "name", "eth1", "netns", pod.name, node=True)
    pod.ip("link", "set", "eth1", "up")
    pod.ip("addr", "add", "10.98.0.2/24", "dev", "eth1")
    before = pod.state()

    with pytest.raises(FailedPrecondition, match="no interface eth9"):
        wiring.wire(pod.path, ["eth0", "eth9"], mode)
    assert pod.state() == before

    # A failure on the second interface, after the first is wired and the second half way.
    if mode == "tc-redirect":
        real_add_redirect = wiring_tc.add_redirect
        calls: list[int] = []

        async def add_redirect(ipr: Any, source: int, target: int) -> None:
            calls.append(source)
            if len(calls) == 4:
                raise InternalError("injected: the second link's last filter")
            await real_add_redirect(ipr, source, target)

        monkeypatch.setattr(wiring_tc, "add_redirect", add_redirect)
    else:
        real_bring_up = wiring_macvtap.bring_up

        async def bring_up(ipr: Any, name: str, mtu: int) -> Any:
            if name == "qmdhcp1":
                raise InternalError("injected: the second link's helper")
            return await real_bring_up(ipr, name, mtu)

        monkeypatch.setattr(wiring_macvtap, "bring_up", bring_up)
    with pytest.raises(InternalError, match="injected"):
        wiring.wire(pod.path, ["eth0", "eth1"], mode)
    assert pod.state() == before


def test_wire_refuses_what_it_cannot_undo(pod: Pod) -> None:
    pod.tc("qdisc", "add", "dev", "eth0", "ingress")
    with pytest.raises(FailedPrecondition, match="already has an ingress qdisc"):
        wiring.wire(pod.path, ["eth0"], "tc-redirect")
    assert "ingress" in pod.tc("qdisc", "show", "dev", "eth0")
    pod.tc("qdisc", "del", "dev", "eth0", "ingress")
    pod.ip("link", "add", "qmvtap0", "type", "veth", "peer", "name", "qmvtap0-peer")
    with pytest.raises(FailedPrecondition, match="qmvtap0 already exists"):
        wiring.wire(pod.path, ["eth0"], "macvtap")
    assert "qmvtap0" in pod.ip("link")
    assert ipaddress.ip_interface(f"{POD_IP}/24") in [ipaddress.ip_interface(a) for a, _ in pod.addresses("eth0")]
