"""Wiring a pod's CNI interfaces into its VM, inside the pod's network namespace (pyroute2, no ``ip``/``tc``).

Guest NIC ``index`` gets the MAC the CNI plugin gave the pod interface ``ifname`` (``eth0``…), so the
cluster network, which learnt that MAC, reaches the guest unchanged. Two shapes (``Mode``):

``tc-redirect`` (the default; Kata's shape, :mod:`qmprt.net.wiring_tc`)
    A persistent tap ``qmtap<index>`` with ifname's MTU, and an ingress qdisc on ifname and on the tap,
    each with a u32 match-all filter whose mirred action redirects every frame to the other's egress.
    ifname keeps its MAC and addresses; they are inert, as nothing it receives reaches its own stack.
    On the tap's ingress a filter before the redirect drops IPv4 UDP to port 67: the guest's DHCP
    client is answered by a responder reading an ``ETH_P_ALL`` packet socket on the tap (those see a
    frame before tc ingress), and its requests must not reach the cluster network. While no QEMU
    holds the tap its carrier is off and mirred drops what ifname receives, with a rate-limited
    "tc mirred to Houston" kernel notice.

``macvtap`` (:mod:`qmprt.net.wiring_macvtap`)
    ifname's global addresses and routes are saved in the ``Link`` and removed, with its IPv6
    link-local addresses (the kernel keeps the one derived from the old MAC when the MAC changes: it
    would answer NDP for the guest's own link-local), and it gets a random locally administered MAC
    (``moved_mac``): its stack answers no ARP/NDP for the pod's addresses. A bridge-mode macvtap
    ``qmvtap<index>`` on ifname takes the original MAC. When ifname is itself a macvlan (the CNI
    ``macvlan`` plugin) the kernel puts new macvlans on the real lower device, in the node's
    namespace; passthru mode is impossible there, hence the bridge mode and the MAC move. A
    bridge-mode macvlan ``qmdhcp<index>`` beside it is where a DHCP responder talks to the guest
    (bridge-mode macvlans of one lower reach each other). The guest's DHCP broadcasts also leave
    through the lower device in this mode: nothing on the macvtap's path can drop them without
    keeping them from the sibling too.

The tap, the macvtap and the helper get IPv6 address generation "none" before they come up, so the
pod's stack sends nothing of its own through them.

Unwiring restores ifname: its MAC; a link-local address the kernel derives again; the addresses
(IPv6 with ``IFA_F_NODAD`` so they work at once; IPv4 with the broadcast address CNI's netlink
library adds below /31; without a connected route where a saved route sends that prefix via a
gateway, as ``ptp`` leaves it); then on-link routes, then routes via gateways, with protocol ``boot``
as CNI and ``ip route`` add them. Route metrics and preferred sources are not kept.

``wire`` refuses (FailedPrecondition) before changing anything when an interface is missing or not
Ethernet, when a device name it would use is taken, or when ifname already has an ingress qdisc; so
undoing a later failure removes only what ``wire`` made.

Each call runs in one throwaway thread inside the namespace (:func:`qmprt.net.netns.run_in`), on its
own event loop with a fresh ``AsyncIPRoute``: a netlink socket works in the namespace of the thread
that created it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute

from qmprt.errors import FailedPrecondition, InternalError, InvalidArgument, best_effort
from qmprt.net import netns, wiring_macvtap, wiring_tc
from qmprt.net.wiring_netlink import ARPHRD_ETHER, RT_SCOPE_UNIVERSE, Interface, addresses, failing, has_ingress
from qmprt.net.wiring_netlink import interface as find_interface
from qmprt.net.wiring_netlink import routes as find_routes
from qmprt.net.wiring_record import MODES, Link, Mode, RouteInfo, device_name, dhcp_device_name

__all__ = ["MODES", "Link", "Mode", "RouteInfo", "device_name", "dhcp_device_name", "open_queue", "unwire", "verify", "wire"]

log = logging.getLogger(__name__)

_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

T = TypeVar("T")


def wire(netns_path: str, ifnames: Sequence[str], mode: Mode) -> tuple[Link, ...]:
    """Wire each interface (in order); on any failure undo everything done so far, then raise."""
    if mode not in MODES:
        raise InvalidArgument(f"network wiring mode {mode!r}: give one of {', '.join(MODES)}")
    for ifname in ifnames:
        if not isinstance(ifname, str) or not _IFNAME.match(ifname):
            raise InvalidArgument(f"{ifname!r} is not an interface name")
    if len(set(ifnames)) != len(ifnames):
        raise InvalidArgument(f"interface names repeat in {list(ifnames)}")
    if not ifnames:
        return ()
    _require_netns(netns_path)
    return _in_netns(netns_path, lambda: _wire_all(netns_path, list(ifnames), mode))


def unwire(netns_path: str, links: Sequence[Link]) -> None:
    """Undo ``wire``: repeatable, best effort per step (a failed step is logged and the rest still
    run), quiet about devices or a namespace already gone. ifname ends with its MAC, addresses and
    routes, and without qdiscs of qmprt's."""
    if not links or not os.path.exists(netns_path):
        return
    try:
        _in_netns(netns_path, lambda: _unwire_all(links))
    except InternalError as err:  # the namespace went away under us, or netlink itself failed
        log.warning("restoring the interfaces in %s failed: %s", netns_path, err)


def verify(netns_path: str, links: Sequence[Link]) -> list[str]:
    """Human-readable problems with the wiring (missing tap/macvtap/qdisc/filter…); [] when intact."""
    if not links:
        return []
    if not os.path.exists(netns_path):
        return [f"network namespace {netns_path} does not exist"]
    return _in_netns(netns_path, lambda: _verify_all(links))


def open_queue(netns_path: str, link: Link, scratch_dir: str) -> int:
    """A new fd for QEMU's ``-netdev tap,fd=N,vhost=off`` (the caller closes it once QEMU has it).

    ``scratch_dir``: a private 0700 directory of qmprt's, for a transient device node (macvtap: no
    udev makes ``/dev/tapN`` here). The fd expects and delivers a virtio-net header before each frame
    (``IFF_VNET_HDR``).
    """
    _require_netns(netns_path)
    if link.mode == "tc-redirect":
        return netns.run_in(netns_path, lambda: wiring_tc.attach(link.device))
    return wiring_macvtap.open_queue(netns_path, link, scratch_dir)


def _require_netns(netns_path: str) -> None:
    if not os.path.exists(netns_path):
        raise FailedPrecondition(f"network namespace {netns_path} does not exist")


def _in_netns(netns_path: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return netns.run_in(netns_path, lambda: asyncio.run(work()))
    except OSError as err:  # entering the namespace failed
        raise InternalError(f"cannot work in network namespace {netns_path}: {err}") from err


async def _wire_all(netns_path: str, ifnames: list[str], mode: Mode) -> tuple[Link, ...]:
    async with AsyncIPRoute() as ipr:
        found = [await _precheck(ipr, netns_path, index, ifname, mode) for index, ifname in enumerate(ifnames)]
        links: list[Link] = []
        try:
            for index, cni_interface in enumerate(found):
                link = await _snapshot(ipr, index, cni_interface, mode)
                links.append(link)  # before any change, so a half-wired link is undone too
                if mode == "tc-redirect":
                    await wiring_tc.wire(ipr, link, cni_interface)
                else:
                    await wiring_macvtap.wire(ipr, link, cni_interface)
        except BaseException:
            for link in reversed(links):
                with best_effort(log, f"undoing the wiring of {link.ifname}"):
                    await _unwire_link(ipr, link)
            raise
        return tuple(links)


async def _precheck(ipr: Any, netns_path: str, index: int, ifname: str, mode: Mode) -> Interface:
    cni_interface = await find_interface(ipr, ifname)
    if cni_interface is None:
        raise FailedPrecondition(f"no interface {ifname} in network namespace {netns_path}: did CNI ADD make it?")
    if cni_interface.arp_type != ARPHRD_ETHER or not _MAC.match(cni_interface.mac):
        raise FailedPrecondition(
            f"{ifname} in {netns_path} is not an Ethernet interface (link type {cni_interface.arp_type})"
        )
    for name in {device_name(mode, index), dhcp_device_name(mode, index)}:
        if await find_interface(ipr, name) is not None:
            raise FailedPrecondition(f"{name} already exists in {netns_path}: unwire the earlier wiring first")
    if mode == "tc-redirect" and await has_ingress(ipr, cni_interface.index):
        raise FailedPrecondition(f"{ifname} in {netns_path} already has an ingress qdisc: something else shapes it")
    return cni_interface


async def _snapshot(ipr: Any, index: int, cni_interface: Interface, mode: Mode) -> Link:
    with failing(f"reading the addresses and routes of {cni_interface.name}"):
        found = await addresses(ipr, cni_interface.index)
        routes = await find_routes(ipr, cni_interface.index)
    return Link(
        index=index,
        ifname=cni_interface.name,
        mode=mode,
        mac=cni_interface.mac,
        mtu=cni_interface.mtu,
        device=device_name(mode, index),
        dhcp_device=dhcp_device_name(mode, index),
        addresses=tuple(str(address) for address, scope in found if scope == RT_SCOPE_UNIVERSE),
        routes=tuple(routes),
        moved_mac=wiring_macvtap.random_mac() if mode == "macvtap" else "",
    )


async def _unwire_all(links: Sequence[Link]) -> None:
    async with AsyncIPRoute() as ipr:
        for link in reversed(links):
            await _unwire_link(ipr, link)


async def _unwire_link(ipr: Any, link: Link) -> None:
    if link.mode == "tc-redirect":
        await wiring_tc.unwire(ipr, link)
    else:
        await wiring_macvtap.unwire(ipr, link)


async def _verify_all(links: Sequence[Link]) -> list[str]:
    problems: list[str] = []
    async with AsyncIPRoute() as ipr:
        for link in links:
            with failing(f"checking the wiring of {link.ifname}"):
                if link.mode == "tc-redirect":
                    problems += await wiring_tc.problems(ipr, link)
                else:
                    problems += await wiring_macvtap.problems(ipr, link)
    return problems
