"""``macvtap`` wiring: the CNI interface's MAC and addresses move to a bridge-mode macvtap.

See :mod:`qmprt.net.wiring` for the shape. Here: moving the addresses and MAC off ifname and back,
the macvtap and its DHCP helper macvlan, and opening a queue of the macvtap without udev.

Opening a queue: the macvtap's character device (``/dev/tap<ifindex>``) has numbers the kernel shows
only in sysfs, and the host's /sys shows the network devices of the namespace that mounted it, not
the pod's. So a throwaway thread enters the pod's namespace, unshares its mount namespace
(``unshare(CLONE_NEWNS)`` also unshares CLONE_FS, which is what lets one thread of a process do it),
makes "/" rslave so nothing propagates back, mounts a fresh sysfs on a temporary directory, reads
``class/net/<macvtap>/macvtap/tap<ifindex>/dev`` and unmounts; the thread's mount namespace ends
with it. The device node is made 0600 in qmprt's private scratch directory, opened and unlinked at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from qmprt.errors import FailedPrecondition, InternalError, best_effort
from qmprt.net import netns
from qmprt.net.wiring_netlink import (
    IN6_ADDR_GEN_MODE_NONE, RT_SCOPE_UNIVERSE, Interface, IPInterface, addresses, bring_up, delete_device,
    device_problems, failing, interface, route_arguments,
)
from qmprt.net.wiring_record import Link

IFF_ALLMULTI = 0x200

log = logging.getLogger(__name__)

IFA_F_NODAD, IFA_F_NOPREFIXROUTE = 0x02, 0x200
RTN_UNICAST, RTPROT_BOOT, RT_SCOPE_LINK = 1, 3, 253

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_SLAVE = 0x1, 0x2, 0x4, 0x8, 0x4000, 0x80000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def random_mac() -> str:
    """A random unicast, locally administered MAC."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


async def wire(ipr: Any, link: Link, cni_interface: Interface) -> None:
    index = cni_interface.index
    with failing(f"taking the addresses and routes off {link.ifname}"):
        for text in link.addresses:
            address = ipaddress.ip_interface(text)
            await ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        for route in link.routes:  # most went with the addresses
            with contextlib.suppress(NetlinkError):
                await ipr.route("del", **route_arguments(route, index))
    with failing(f"giving {link.ifname} a new MAC"):
        await ipr.link("set", index=index, address=link.moved_mac)
    # After the MAC moved: the kernel keeps the link-local address of the old MAC, the guest's own.
    with failing(f"removing the IPv6 link-local addresses of {link.ifname}"):
        for address, _ in await addresses(ipr, index):
            if address.version == 6 and address.ip.is_link_local:
                await ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    with failing(f"creating macvtap {link.device} on {link.ifname}"):
        await ipr.link("add", ifname=link.device, kind="macvtap", link=index, macvtap_mode="bridge", address=link.mac)
    with failing(f"creating the DHCP helper macvlan {link.dhcp_device} on {link.ifname}"):
        await ipr.link("add", ifname=link.dhcp_device, kind="macvlan", link=index, macvlan_mode="bridge")
    macvtap = await bring_up(ipr, link.device, link.mtu)
    # QEMU does not pass the guest's multicast filter on to a macvtap it did not open, so without
    # allmulti the guest never hears the node's IPv6 neighbour solicitations (solicited-node multicast).
    with failing(f"letting multicast through {link.device}"):
        await ipr.link("set", index=macvtap.index, flags=IFF_ALLMULTI, change=IFF_ALLMULTI)
    await bring_up(ipr, link.dhcp_device, link.mtu)


async def unwire(ipr: Any, link: Link) -> None:
    """Remove the macvtap and the helper, then give ifname back its MAC, addresses and routes."""
    with best_effort(log, f"removing the DHCP helper {link.dhcp_device}"):
        await delete_device(ipr, link.dhcp_device, "macvlan")
    with best_effort(log, f"removing macvtap {link.device}"):
        await delete_device(ipr, link.device, "macvtap")
    cni_interface = await interface(ipr, link.ifname)
    if cni_interface is None:
        log.info("%s is gone: nothing to give back to it", link.ifname)
        return
    index = cni_interface.index
    if cni_interface.mac != link.mac:
        with best_effort(log, f"restoring the MAC of {link.ifname}"):
            await ipr.link("set", index=index, address=link.mac)
    with failing(f"reading the addresses of {link.ifname}"):
        present = dict(await addresses(ipr, index))
    # Without a carrier there is no link-local yet; the kernel makes it when the carrier comes.
    if cni_interface.running and not any(address.version == 6 and address.ip.is_link_local for address in present):
        with best_effort(log, f"regenerating the IPv6 link-local address of {link.ifname}"):
            _regenerate_link_local(link.ifname)
    routed = {ipaddress.ip_network(route.destination) for route in link.routes if route.gateway}
    for text in link.addresses:
        address = ipaddress.ip_interface(text)
        if address not in present:
            with best_effort(log, f"restoring address {text} on {link.ifname}"):
                await ipr.addr("add", **_address_arguments(address, index, routed))
    for route in sorted(link.routes, key=lambda route: bool(route.gateway)):  # on-link ones first
        with best_effort(log, f"restoring the route to {route.destination} via {route.gateway or 'the link'}"):
            network = ipaddress.ip_network(route.destination)
            scope = RT_SCOPE_LINK if network.version == 4 and not route.gateway else RT_SCOPE_UNIVERSE
            try:
                await ipr.route("add", **route_arguments(route, index), proto=RTPROT_BOOT, scope=scope, type=RTN_UNICAST)
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise


def _address_arguments(address: IPInterface, index: int, routed: set[Any]) -> dict[str, Any]:
    flags = IFA_F_NODAD if address.version == 6 else 0
    if address.network in routed:
        flags |= IFA_F_NOPREFIXROUTE  # the plugin had replaced the connected route by one via a gateway
    arguments: dict[str, Any] = {
        "index": index, "address": str(address.ip), "prefixlen": address.network.prefixlen, "flags": flags,
    }
    if address.version == 4 and address.network.prefixlen < 31:
        arguments["broadcast"] = str(address.network.broadcast_address)  # as CNI's netlink library sets it
    return arguments


def _regenerate_link_local(ifname: str) -> None:
    """Have the kernel derive ifname's link-local address again, from the MAC it has now.

    Only a change of the ``addr_gen_mode`` sysctl does that (the netlink attribute of the same name
    just stores the value), so it goes to "none" and back. /proc/sys/net shows the namespace of the
    calling thread, the pod's.
    """
    directory = Path("/proc/sys/net/ipv6/conf") / ifname
    if not directory.is_dir() or (directory / "disable_ipv6").read_text().strip() != "0":
        return
    mode = (directory / "addr_gen_mode").read_text().strip()
    if mode != str(IN6_ADDR_GEN_MODE_NONE):
        (directory / "addr_gen_mode").write_text(str(IN6_ADDR_GEN_MODE_NONE))
        (directory / "addr_gen_mode").write_text(mode)


async def problems(ipr: Any, link: Link) -> list[str]:
    cni_interface = await interface(ipr, link.ifname)
    macvtap = await interface(ipr, link.device)
    helper = await interface(ipr, link.dhcp_device)
    found = device_problems(macvtap, f"macvtap {link.device}", "macvtap", link.mtu)
    found += device_problems(helper, f"DHCP helper {link.dhcp_device}", "macvlan", link.mtu)
    if macvtap is not None and macvtap.mac != link.mac:
        found.append(f"macvtap {link.device} has MAC {macvtap.mac}, the guest has {link.mac}")
    if cni_interface is None:
        return [f"{link.ifname} is missing", *found]
    if not cni_interface.up:
        found.append(f"{link.ifname} is down")
    if cni_interface.mac != link.moved_mac:
        found.append(f"{link.ifname} has MAC {cni_interface.mac}; while wired it carries {link.moved_mac}")
    # On ifname itself, or, when ifname is a macvlan, on the same real lower device as ifname.
    lowers = ((cni_interface.index, None), cni_interface.lower)
    for name, device in ((link.device, macvtap), (link.dhcp_device, helper)):
        if device is not None and device.lower not in lowers:
            found.append(f"{name} is not on {link.ifname} or its lower device")
    for address, scope in await addresses(ipr, cni_interface.index):
        if scope == RT_SCOPE_UNIVERSE or (address.version == 6 and address.ip.is_link_local):
            found.append(f"{link.ifname} holds {address} and answers ARP/NDP for it instead of the guest")
    return found


def open_queue(netns_path: str, link: Link, scratch_dir: str) -> int:
    major, minor = netns.run_in(netns_path, lambda: _device_numbers(link.device, scratch_dir))
    node = os.path.join(scratch_dir, f"{link.device}-{secrets.token_hex(4)}")
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        try:
            return os.open(node, os.O_RDWR | os.O_CLOEXEC)
        finally:
            os.unlink(node)
    except OSError as err:
        raise InternalError(f"cannot open macvtap {link.device} (char {major}:{minor}) through {node}: {err}") from err


def _device_numbers(name: str, scratch_dir: str) -> tuple[int, int]:
    """(major, minor) of macvtap ``name``'s character device, from a sysfs of the thread's namespace."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise InternalError(f"unshare(CLONE_NEWNS) to read {name}'s sysfs: {os.strerror(ctypes.get_errno())}")
    if _libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
        raise InternalError(f"making / rslave for a private sysfs: {os.strerror(ctypes.get_errno())}")
    mount_point = tempfile.mkdtemp(prefix="sysfs-", dir=scratch_dir)
    try:
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _libc.mount(b"sysfs", mount_point.encode(), b"sysfs", flags, None) != 0:
            raise InternalError(f"mounting a sysfs of the pod's namespace: {os.strerror(ctypes.get_errno())}")
        try:
            device = Path(mount_point) / "class" / "net" / name
            ifindex = int((device / "ifindex").read_text())
            numbers = (device / "macvtap" / f"tap{ifindex}" / "dev").read_text().strip()
        except FileNotFoundError as err:
            raise FailedPrecondition(f"{name} is no macvtap in the pod's network namespace: the wiring is gone") from err
        finally:
            _libc.umount2(mount_point.encode(), MNT_DETACH)
    finally:
        os.rmdir(mount_point)
    major, minor = numbers.split(":")
    return int(major), int(minor)
