"""The DHCP responder against busybox ``udhcpc``, across network namespaces this test creates.

A "pod" namespace holds the responder's interface, a "guest" namespace the client's (MAC =
``lease.client_mac``); every address lives in those namespaces (192.0.2.0/24 and 198.51.100.0/24,
documentation ranges) and the machine's own links are checked unchanged. Wirings:

- ``veth``: a plain veth pair, responder on the pod end;
- ``tc-redirect``: the same, with qmprt's default wiring on the pod end (tc ingress + mirred redirect
  of everything the guest sends to another interface), which hides the guest's frames from
  ``ETH_P_IP`` packet sockets;
- ``macvlan``: the macvtap analogue: the guest's NIC and the responder's interface are bridge-mode
  macvlans of one lower device.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qmprt.errors import FailedPrecondition, NotFound
from qmprt.net import netns
from qmprt.net.dhcp import DHCPResponder, Lease

pytestmark = pytest.mark.skipif(
    not shutil.which("busybox") or not shutil.which("tc"), reason="needs busybox (udhcpc) and tc"
)

CLIENT_MAC = "02:42:c0:00:02:0a"
LEASE = Lease(
    client_mac=CLIENT_MAC,
    address="192.0.2.10/24",
    gateway="192.0.2.1",
    routes=(("198.51.100.0/24", "192.0.2.254"),),
    dns_servers=("192.0.2.53", "192.0.2.54"),
    search=("example.test", "svc.example.test"),
    domain="example.test",
    mtu=1400,
    hostname="pod-a",
    lease_seconds=3600,
)
WIRINGS = ("veth", "tc-redirect", "macvlan")
DUMP_SCRIPT = '#!/bin/sh\nenv > "$DUMP_DIR/$1.env"\n'


def host_links() -> list[str]:
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in shown.stdout.splitlines())


def socket_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
    return found


@dataclass
class Link:
    pod_path: Path  # the responder's namespace
    pod: str
    guest: str  # the client's namespace
    responder_if: str
    client_if: str = "g0"

    def ip(self, namespace: str, *argv: str) -> None:
        subprocess.run(["ip", "-n", namespace, *argv], check=True, capture_output=True, text=True, timeout=10)


def lower_device(link: Link) -> None:
    """An "eth0" in the pod namespace (a veth whose peer stays there too: this kernel may lack dummy)."""
    link.ip(link.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    link.ip(link.pod, "link", "set", "eth0-peer", "up")
    link.ip(link.pod, "link", "set", "eth0", "up")


@contextlib.contextmanager
def wired(kind: str) -> Iterator[Link]:
    tag = secrets.token_hex(4)
    pod, guest = f"qmprt-td{tag}p", f"qmprt-td{tag}g"
    links_before = host_links()
    try:
        pod_path = netns.create(pod)
        netns.create(guest)
        link = Link(pod_path, pod, guest, "vm0" if kind != "macvlan" else "dhcp0")
        if kind == "macvlan":
            lower_device(link)
            link.ip(pod, "link", "add", "link", "eth0", "name", "dhcp0", "type", "macvlan", "mode", "bridge")
            link.ip(pod, "link", "add", "link", "eth0", "name", "g0", "address", CLIENT_MAC, "type", "macvlan",
                    "mode", "bridge")
            link.ip(pod, "link", "set", "g0", "netns", guest)
        else:
            link.ip(pod, "link", "add", "vm0", "type", "veth", "peer", "name", "g0", "netns", guest)
            link.ip(guest, "link", "set", "g0", "address", CLIENT_MAC)
        if kind == "tc-redirect":
            lower_device(link)
            tc = ["ip", "netns", "exec", pod, "tc"]
            subprocess.run([*tc, "qdisc", "add", "dev", "vm0", "ingress"], check=True, timeout=10)
            subprocess.run(
                [*tc, "filter", "add", "dev", "vm0", "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0",
                 "0", "action", "mirred", "egress", "redirect", "dev", "eth0"],
                check=True, timeout=10,
            )
        link.ip(pod, "link", "set", link.responder_if, "up")
        link.ip(guest, "link", "set", "g0", "up")
        yield link
    finally:
        netns.remove(pod)
        netns.remove(guest)
        assert not netns.exists(pod) and not netns.exists(guest)
        assert host_links() == links_before, "the test touched the machine's own namespace"


@pytest.fixture(params=WIRINGS, ids=list(WIRINGS))
def link(request: pytest.FixtureRequest) -> Iterator[Link]:
    with wired(request.param) as the_link:
        yield the_link


@pytest.fixture
def veth() -> Iterator[Link]:
    with wired("veth") as the_link:
        yield the_link


@pytest.fixture
async def responders() -> AsyncIterator[list[DHCPResponder]]:
    started: list[DHCPResponder] = []
    yield started
    for responder in started:
        responder.close()


async def udhcpc(link: Link, tmp_path: Path, *options: str) -> dict[str, str] | None:
    """One busybox udhcpc run in the guest namespace; the environment of its ``bound`` call, or None."""
    dump_dir = tmp_path / f"udhcpc-{secrets.token_hex(3)}"
    dump_dir.mkdir()
    script = dump_dir / "dump.sh"
    script.write_text(DUMP_SCRIPT)
    script.chmod(0o755)
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", link.guest, "busybox", "udhcpc", "-i", link.client_if, "-f", "-q", "-n",
        "-s", str(script), *(options or ("-t", "3", "-T", "1")),
        env={"PATH": os.environ["PATH"], "DUMP_DIR": str(dump_dir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    bound = dump_dir / "bound.env"
    if not bound.exists():
        assert process.returncode != 0, output.decode()
        return None
    assert process.returncode == 0, output.decode()
    return dict(line.split("=", 1) for line in bound.read_text().splitlines() if "=" in line)


async def test_udhcpc_gets_the_whole_lease(link: Link, tmp_path: Path, responders: list[DHCPResponder]) -> None:
    responder = DHCPResponder(str(link.pod_path), link.responder_if, LEASE)
    responders.append(responder)
    await responder.start()
    env = await udhcpc(link, tmp_path)
    assert env is not None
    assert env["ip"] == "192.0.2.10"
    assert env["subnet"] == "255.255.255.0"
    assert env["mask"] == "24"
    assert env["router"].split() == ["192.0.2.1"]
    assert env["mtu"] == "1400"
    assert env["dns"].split() == ["192.0.2.53", "192.0.2.54"]
    assert env["domain"] == "example.test"
    assert env["search"].split() == ["example.test", "svc.example.test"]
    assert env["staticroutes"].split() == ["198.51.100.0/24", "192.0.2.254", "0.0.0.0/0", "192.0.2.1"]
    assert env["hostname"] == "pod-a"
    assert env["serverid"] == "192.0.2.1"
    assert env["lease"] == "3600"
    assert responder.answered == 2  # OFFER and ACK


async def test_another_mac_gets_nothing(veth: Link, tmp_path: Path, responders: list[DHCPResponder]) -> None:
    veth.ip(veth.guest, "link", "set", "g0", "address", "02:42:c0:00:02:99")
    responder = DHCPResponder(str(veth.pod_path), veth.responder_if, LEASE)
    responders.append(responder)
    await responder.start()
    assert await udhcpc(veth, tmp_path, "-t", "2", "-T", "1") is None
    assert responder.answered == 0


async def test_close_leaves_no_fd_and_a_restart_serves_the_same_lease(veth: Link, tmp_path: Path) -> None:
    sockets_before = socket_fds()
    responder = DHCPResponder(str(veth.pod_path), veth.responder_if, LEASE)
    try:
        await responder.start()
        with pytest.raises(FailedPrecondition):
            await responder.start()
        first = await udhcpc(veth, tmp_path)
        assert first is not None and first["ip"] == "192.0.2.10"
        responder.close()
        responder.close()
        assert not responder.serving and socket_fds() == sockets_before
        assert await udhcpc(veth, tmp_path, "-t", "1", "-T", "1") is None  # nobody answers now

        await responder.start()  # the same object again
        again = await udhcpc(veth, tmp_path)
        assert again == {**first, "DUMP_DIR": again["DUMP_DIR"]}
        responder.close()

        fresh = DHCPResponder(str(veth.pod_path), veth.responder_if, Lease.from_json(LEASE.to_json()))
        await fresh.start()  # what a restarted qmprt does
        try:
            after_restart = await udhcpc(veth, tmp_path)
            assert after_restart is not None and after_restart["ip"] == "192.0.2.10"
            assert fresh.answered == 2
        finally:
            fresh.close()
        assert responder.answered == 4
    finally:
        responder.close()
    assert socket_fds() == sockets_before


async def test_the_link_going_down_and_up_does_not_stop_the_responder(
    veth: Link, tmp_path: Path, responders: list[DHCPResponder]
) -> None:
    veth.ip(veth.pod, "link", "set", "vm0", "down")
    responder = DHCPResponder(str(veth.pod_path), veth.responder_if, LEASE)
    responders.append(responder)
    await responder.start()  # bound to a link that is down: ENETDOWN is reported once
    veth.ip(veth.pod, "link", "set", "vm0", "up")
    assert (await udhcpc(veth, tmp_path) or {}).get("ip") == "192.0.2.10"
    veth.ip(veth.pod, "link", "set", "vm0", "down")
    await asyncio.sleep(0.1)
    veth.ip(veth.pod, "link", "set", "vm0", "up")
    assert (await udhcpc(veth, tmp_path) or {}).get("ip") == "192.0.2.10"
    assert responder.serving and responder.answered == 4


async def test_a_missing_namespace_or_interface_is_not_found(veth: Link) -> None:
    sockets_before = socket_fds()
    with pytest.raises(NotFound, match="network namespace"):
        await DHCPResponder("/var/run/netns/qmprt-td-missing", "vm0", LEASE).start()
    with pytest.raises(NotFound, match="no interface eth9"):
        await DHCPResponder(str(veth.pod_path), "eth9", LEASE).start()
    assert socket_fds() == sockets_before


# ---- the tiny guest's hook (images/tiny/udhcpc.script) with busybox's own sh and ip ----

GUEST_HOOK = Path(__file__).resolve().parents[2] / "images" / "tiny" / "udhcpc.script"
IPROUTE2 = shutil.which("ip") or "ip"  # busybox's ip has no "netns exec"
SECOND_MAC = "02:42:cb:00:71:07"
ON_LINK_LEASE = Lease(  # no default route; its router is outside the subnet, so 121 adds it on-link
    client_mac=SECOND_MAC,
    address="203.0.113.7/24",
    routes=(("198.18.0.0/15", "169.254.1.1"),),
    dns_servers=("203.0.113.53", "192.0.2.53"),
    search=("other.test", "example.test"),
)


def busybox_path(directory: Path) -> str:
    """A PATH where the hook's commands are busybox applets, as in the guest."""
    directory.mkdir()
    for applet in ("sh", "ip", "mkdir", "rmdir", "mv", "grep", "usleep", "cat"):
        (directory / applet).symlink_to(shutil.which("busybox") or "busybox")
    return f"{directory}:{os.environ['PATH']}"


async def test_the_guest_hook_applies_leases_of_two_nics_and_reports_a_third_without_server(
    veth: Link, tmp_path: Path, responders: list[DHCPResponder]
) -> None:
    veth.ip(veth.pod, "link", "add", "vm1", "type", "veth", "peer", "name", "g1", "netns", veth.guest)
    veth.ip(veth.pod, "link", "add", "vm2", "type", "veth", "peer", "name", "g2", "netns", veth.guest)
    veth.ip(veth.guest, "link", "set", "g1", "address", SECOND_MAC)
    for device in ("vm1", "vm2"):
        veth.ip(veth.pod, "link", "set", device, "up")
    for device, lease in (("vm0", LEASE), ("vm1", ON_LINK_LEASE)):
        responder = DHCPResponder(str(veth.pod_path), device, lease)
        responders.append(responder)
        await responder.start()
    state_dir, console, resolv_conf = tmp_path / "dhcp", tmp_path / "console", tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 192.0.2.99\noptions ndots:5 timeout:2\n")
    hook = tmp_path / "hook"
    hook.write_text(f'#!{shutil.which("busybox")} sh\nexec busybox sh {GUEST_HOOK} "$@"\n')
    hook.chmod(0o755)
    env = {
        "PATH": busybox_path(tmp_path / "bin"), "QMPRT_DHCP_DIR": str(state_dir), "QMPRT_CONSOLE": str(console),
        "QMPRT_RESOLV_CONF": str(resolv_conf),
    }

    async def rcs_udhcpc(device: str) -> int:
        """As rcS runs it, but without the kernel log."""
        process = await asyncio.create_subprocess_exec(
            IPROUTE2, "netns", "exec", veth.guest, "busybox", "udhcpc", "-i", device, "-f", "-q", "-n", "-t", "3", "-T",
            "1", "-O", "mtu", "-O", "search", "-O", "staticroutes", "-s", str(hook), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(process.wait(), 30)

    loop = asyncio.get_running_loop()
    started = loop.time()
    codes = await asyncio.gather(*(rcs_udhcpc(device) for device in ("g0", "g1", "g2")))
    elapsed = loop.time() - started
    assert codes == [0, 0, 1]
    assert elapsed < 6, f"a NIC without a DHCP server cost {elapsed:.1f} s"

    def shown(*argv: str) -> str:
        return subprocess.run(["ip", "-n", veth.guest, *argv], capture_output=True, text=True, check=True).stdout

    assert "inet 192.0.2.10/24" in shown("-4", "-o", "addr", "show", "dev", "g0")
    assert "inet 203.0.113.7/24" in shown("-4", "-o", "addr", "show", "dev", "g1")
    assert "inet " not in shown("-4", "-o", "addr", "show", "dev", "g2")
    assert "mtu 1400" in shown("-o", "link", "show", "g0")
    routes = [" ".join(line.split()) for line in shown("-4", "route").splitlines()]
    assert "default via 192.0.2.1 dev g0" in routes
    assert "198.51.100.0/24 via 192.0.2.254 dev g0" in routes
    assert "169.254.1.1 dev g1 scope link" in routes
    assert "198.18.0.0/15 via 169.254.1.1 dev g1" in routes
    assert resolv_conf.read_text().splitlines() == [
        "nameserver 192.0.2.53", "nameserver 192.0.2.54", "nameserver 203.0.113.53",
        "search example.test svc.example.test other.test", "options ndots:5 timeout:2",
    ]
    assert sorted(console.read_text().splitlines()) == [
        "qmprt-init: dhcp g0 192.0.2.10/24", "qmprt-init: dhcp g1 203.0.113.7/24", "qmprt-init: dhcp g2: no lease",
    ]
    assert not (state_dir / "lock").exists()


async def test_the_kernel_filter_passes_only_dhcp_requests_that_arrive(veth: Link) -> None:
    """The BPF program the responder attaches, checked frame by frame."""
    from qmprt.net.dhcp import _open_packet_socket, encode_frame, encode_message, Message

    def client_socket() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind(("g0", 0))
        return sock

    def udp(destination_port: int, fragment: bool = False) -> bytes:
        discover = Message(op=1, xid=7, chaddr=CLIENT_MAC, options={53: b"\x01"})
        frame = bytearray(encode_frame(CLIENT_MAC, "ff:ff:ff:ff:ff:ff", "0.0.0.0", "255.255.255.255",
                                       encode_message(discover), source_port=68, destination_port=destination_port))
        if fragment:
            frame[20:22] = b"\x20\x00"  # more fragments (checksum no longer matters to the filter)
        return bytes(frame)

    arp = bytes.fromhex("ffffffffffff" + CLIENT_MAC.replace(":", "") + "0806") + bytes(28)
    filtered = netns.run_in(str(veth.pod_path), lambda: _open_packet_socket("vm0"))
    sender = netns.run_in(netns.netns_path(veth.guest), client_socket)
    try:
        filtered.settimeout(0.3)
        for frame in (arp, udp(68), udp(67, fragment=True), udp(67)):
            sender.send(frame)
        received = filtered.recvfrom(65536)
        assert received[0][:len(udp(67))] == udp(67) and received[1][2] == socket.PACKET_BROADCAST
        filtered.send(udp(67))  # what this host sends itself is not read back
        with pytest.raises(TimeoutError):
            filtered.recvfrom(65536)
    finally:
        filtered.close()
        sender.close()
