"""Netlink look-ups and small changes shared by both wiring modes (see :mod:`qmprt.net.wiring`).

Everything here runs inside the pod's network namespace, on the event loop of a throwaway thread,
with an ``AsyncIPRoute`` that thread created (``ipr``; pyroute2 is untyped, hence ``Any``).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from qmprt.errors import InternalError
from qmprt.net.wiring_record import RouteInfo

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

ARPHRD_ETHER = 1
IFF_UP, IFF_RUNNING = 0x1, 0x40
IN6_ADDR_GEN_MODE_NONE = 1
RT_TABLE_MAIN, RTN_UNICAST, RTPROT_KERNEL = 254, 1, 2
RT_SCOPE_UNIVERSE = 0
INGRESS_HANDLE = 0xFFFF0000  # "ffff:", the handle of every ingress qdisc and the parent of its filters


@contextlib.contextmanager
def failing(what: str) -> Iterator[None]:
    """The kernel's errors (through pyroute2 or a syscall) as InternalError saying which step failed."""
    try:
        yield
    except NetlinkError as err:
        raise InternalError(f"{what}: {os.strerror(err.code) if err.code > 0 else err}") from err
    except OSError as err:
        raise InternalError(f"{what}: {err}") from err


@dataclass(frozen=True)
class Interface:
    index: int
    name: str
    mac: str  # lower-case, "" without a link-layer address
    mtu: int
    up: bool
    running: bool  # up with a carrier
    kind: str  # IFLA_INFO_KIND: "veth", "macvlan", "tun", "macvtap"…; "" for a plain device
    arp_type: int
    lower: tuple[int | None, int | None]  # IFLA_LINK and IFLA_LINK_NETNSID (None when absent)

    @classmethod
    def from_message(cls, message: Any) -> Interface:
        return cls(
            index=int(message["index"]),
            name=str(message.get_attr("IFLA_IFNAME")),
            mac=str(message.get_attr("IFLA_ADDRESS") or "").lower(),
            mtu=int(message.get_attr("IFLA_MTU")),
            up=bool(message["flags"] & IFF_UP),
            running=bool(message["flags"] & IFF_RUNNING),
            kind=str(message.get(("linkinfo", "kind")) or ""),
            arp_type=int(message["ifi_type"]),
            lower=(message.get_attr("IFLA_LINK"), message.get_attr("IFLA_LINK_NETNSID")),
        )


async def interface(ipr: Any, name: str) -> Interface | None:
    """The interface called ``name``, or None."""
    try:
        messages = await ipr.link("get", ifname=name)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise InternalError(f"looking up {name}: {os.strerror(err.code)}") from err
    return Interface.from_message(messages[0])


async def addresses(ipr: Any, index: int) -> list[tuple[IPInterface, int]]:
    """(address, scope) of every address on interface ``index``, IPv4 first, each in kernel order."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        async for message in await ipr.addr("dump", family=family):
            if message["index"] != index or message["family"] != family:
                continue
            # IFA_LOCAL is an IPv4 interface's own address (IFA_ADDRESS is the peer on point-to-point).
            text = (message.get_attr("IFA_LOCAL") if family == socket.AF_INET else None) or message.get_attr("IFA_ADDRESS")
            found.append((ipaddress.ip_interface(f"{text}/{message['prefixlen']}"), int(message["scope"])))
    return found


async def routes(ipr: Any, index: int) -> list[RouteInfo]:
    """Main-table unicast routes out of interface ``index`` that the kernel did not make for an
    address, and that are not link-local or multicast. A multipath route names no single interface
    and is not among them."""
    found = []
    for family, unspecified in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        async for message in await ipr.route("dump", family=family):
            table = message.get_attr("RTA_TABLE") or message["table"]
            if (
                table != RT_TABLE_MAIN
                or message["type"] != RTN_UNICAST
                or message["proto"] == RTPROT_KERNEL
                or message.get_attr("RTA_OIF") != index
            ):
                continue
            network = ipaddress.ip_network(f"{message.get_attr('RTA_DST') or unspecified}/{message['dst_len']}")
            if network.is_link_local or network.is_multicast:
                continue
            found.append(RouteInfo(str(network), str(message.get_attr("RTA_GATEWAY") or "")))
    return found


def route_arguments(route: RouteInfo, oif: int) -> dict[str, Any]:
    """pyroute2 ``route()`` keywords naming ``route`` out of interface ``oif`` in the main table."""
    network = ipaddress.ip_network(route.destination)
    arguments: dict[str, Any] = {
        "family": socket.AF_INET if network.version == 4 else socket.AF_INET6,
        "dst_len": network.prefixlen,
        "oif": oif,
        "table": RT_TABLE_MAIN,
    }
    if network.prefixlen:
        arguments["dst"] = str(network.network_address)
    if route.gateway:
        arguments["gateway"] = route.gateway
    return arguments


async def no_ipv6_addresses(ipr: Any, index: int) -> None:
    """IPv6 address generation "none" on a device qmprt made, set before it comes up: the pod's stack
    then sends nothing of its own (DAD, router solicitations, MLD) through it."""
    spec = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]}
    await ipr.link("set", index=index, IFLA_AF_SPEC=spec)


async def bring_up(ipr: Any, name: str, mtu: int) -> Interface:
    """MTU, address generation off, then up, for the device ``name`` that was just made."""
    device = await interface(ipr, name)
    if device is None:
        raise InternalError(f"{name} vanished right after it was made")
    with failing(f"bringing {name} up"):
        await ipr.link("set", index=device.index, mtu=mtu)
        await no_ipv6_addresses(ipr, device.index)
        await ipr.link("set", index=device.index, state="up")
    return device


async def has_ingress(ipr: Any, index: int) -> bool:
    """Whether interface ``index`` has an ingress qdisc (or a clsact, which takes the same place)."""
    async for message in await ipr.get_qdiscs(index):
        if message["index"] == index and message.get_attr("TCA_KIND") in ("ingress", "clsact"):
            return True
    return False


async def delete_device(ipr: Any, name: str, kind: str) -> None:
    """Remove the ``kind`` device ``name`` qmprt made; gone already is fine, another kind is left alone."""
    device = await interface(ipr, name)
    if device is None:
        return
    if device.kind != kind:
        raise InternalError(f"not removing {name}: it is a {device.kind or 'plain device'}, not the {kind} qmprt made")
    try:
        await ipr.link("del", index=device.index)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise


def device_problems(device: Interface | None, what: str, kind: str, mtu: int) -> list[str]:
    """What is wrong with a device qmprt made (``what`` names it in the messages)."""
    if device is None:
        return [f"{what} is missing"]
    problems = []
    if device.kind != kind:
        problems.append(f"{what} is a {device.kind or 'plain device'}, not a {kind}")
    if not device.up:
        problems.append(f"{what} is down")
    if device.mtu != mtu:
        problems.append(f"{what} has MTU {device.mtu} instead of {mtu}")
    return problems
