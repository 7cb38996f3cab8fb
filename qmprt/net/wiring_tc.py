"""``tc-redirect`` wiring: a persistent tap and tc mirred redirects between it and the CNI interface.

See :mod:`qmprt.net.wiring` for the shape. Here: the tap (made with TUNSETIFF + TUNSETPERSIST on
``/dev/net/tun``, owner root), the ingress qdiscs and filters, and the DHCP drop filter.

This kernel has no ``act_gact``, so the filter that keeps the guest's DHCP requests off the pod
network cannot be a u32 match with a drop action. It is a classic BPF program in a direct-action
``cls_bpf`` filter: ``TC_ACT_SHOT`` for IPv4 UDP to port 67, ``TC_ACT_UNSPEC`` ("ask the next
filter") for anything else. A frame too short for one of the program's loads ends it with verdict 0
(``TC_ACT_OK``) and reaches the pod's own stack instead of the cluster; only malformed frames are
that short. pyroute2 knows cls_bpf only with eBPF fds, so that one filter is a hand-built message.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_NEWTFILTER

from qmprt.errors import FailedPrecondition, InternalError, best_effort
from qmprt.net.wiring_netlink import (
    INGRESS_HANDLE, Interface, bring_up, delete_device, device_problems, failing, has_ingress, interface,
)
from qmprt.net.wiring_record import Link

log = logging.getLogger(__name__)

TUN_DEVICE = "/dev/net/tun"
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x1000, 0x4000, 0x8000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
TUNSETIFF, TUNSETPERSIST, TUNSETOWNER = 0x400454CA, 0x400454CB, 0x400454CC

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
DHCP_DROP_PRIO, REDIRECT_PRIO = 1, 2
TCA_EGRESS_REDIR = 1
TCA_BPF_FLAG_ACT_DIRECT = 1


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


# Offsets count from the Ethernet header (cls_bpf pushes it back at ingress). The same program as
# ``tcpdump -dd 'ip and udp dst port 67'``, with tc verdicts for return values.
DHCP_DROP_PROGRAM = (
    _bpf(0x28, 0, 0, 12),  # ldh [12]            ethertype
    _bpf(0x15, 0, 8, ETH_P_IP),  # jeq #0x800
    _bpf(0x30, 0, 0, 23),  # ldb [23]            IP protocol
    _bpf(0x15, 0, 6, socket.IPPROTO_UDP),  # jeq #17
    _bpf(0x28, 0, 0, 20),  # ldh [20]            flags and fragment offset
    _bpf(0x45, 4, 0, 0x1FFF),  # jset #0x1fff       a later fragment: no UDP header
    _bpf(0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    _bpf(0x48, 0, 0, 16),  # ldh [x+16]          UDP destination port
    _bpf(0x15, 0, 1, 67),  # jeq #67
    _bpf(0x06, 0, 0, 2),  # ret #TC_ACT_SHOT
    _bpf(0x06, 0, 0, 0xFFFFFFFF),  # ret #TC_ACT_UNSPEC
)


class _ClassicBPFFilter(nlmsg):  # type: ignore[misc]
    """A tcmsg for ``cls_bpf`` carrying classic BPF bytecode in ``TCA_BPF_OPS``.

    Not a subclass of pyroute2's tcmsg: pyroute2 caches a compiled NLA table on each message class,
    and a subclass would find and use tcmsg's (which encodes ``TCA_BPF_OPS`` as a u32).
    """

    fields = (
        ("family", "B"), ("pad1", "B"), ("pad2", "H"), ("index", "i"), ("handle", "I"), ("parent", "I"), ("info", "I"),
    )
    nla_map = (("TCA_UNSPEC", "none"), ("TCA_KIND", "asciiz"), ("TCA_OPTIONS", "options"))

    class options(nla):  # type: ignore[misc]
        nla_map = (
            ("TCA_BPF_UNSPEC", "none"),
            ("TCA_BPF_ACT", "none"),
            ("TCA_BPF_POLICE", "none"),
            ("TCA_BPF_CLASSID", "uint32"),
            ("TCA_BPF_OPS_LEN", "uint16"),
            ("TCA_BPF_OPS", "cdata"),
            ("TCA_BPF_FD", "uint32"),
            ("TCA_BPF_NAME", "asciiz"),
            ("TCA_BPF_FLAGS", "uint32"),
        )


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)  # struct ifreq: name, ifr_flags, rest of the union


def _create_tap(name: str) -> None:
    """A persistent tap owned by root, in the calling thread's namespace."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, TAP_FLAGS | IFF_TUN_EXCL))  # EXCL: never take over a tap
        fcntl.ioctl(fd, TUNSETOWNER, 0)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


async def wire(ipr: Any, link: Link, cni_interface: Interface) -> None:
    with failing(f"creating tap {link.device}"):
        _create_tap(link.device)
    tap = await bring_up(ipr, link.device, link.mtu)
    with failing(f"adding ingress qdiscs to {link.ifname} and {link.device}"):
        await ipr.tc("add", "ingress", cni_interface.index)
        await ipr.tc("add", "ingress", tap.index)
    with failing(f"adding the filter that keeps the guest's DHCP requests on {link.device}"):
        await _add_dhcp_drop(ipr, tap.index)
    with failing(f"adding the redirect filters between {link.ifname} and {link.device}"):
        await add_redirect(ipr, tap.index, cni_interface.index)
        await add_redirect(ipr, cni_interface.index, tap.index)


async def add_redirect(ipr: Any, source: int, target: int) -> None:
    """Everything interface ``source`` receives leaves through interface ``target``."""
    await ipr.tc(
        "add-filter", "u32", source, parent=INGRESS_HANDLE, prio=REDIRECT_PRIO, protocol=ETH_P_ALL,
        target=0x10000, keys=["0x0/0x0+0"],
        action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target},
    )


async def _add_dhcp_drop(ipr: Any, index: int) -> None:
    message = _ClassicBPFFilter()
    message["index"] = index
    message["parent"] = INGRESS_HANDLE
    message["handle"] = 1
    message["info"] = (DHCP_DROP_PRIO << 16) | socket.htons(ETH_P_ALL)
    options = [
        ["TCA_BPF_OPS_LEN", len(DHCP_DROP_PROGRAM)],
        ["TCA_BPF_OPS", b"".join(DHCP_DROP_PROGRAM)],
        ["TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT],
    ]
    message["attrs"] = [["TCA_KIND", "bpf"], ["TCA_OPTIONS", {"attrs": options}]]
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    # IPRoute.nlm_request is broken in pyroute2 0.9.7 (it sends no message type); a request is not.
    request = NetlinkRequest(ipr, message, msg_type=RTM_NEWTFILTER, msg_flags=flags)
    await request.send()
    async for _ in request.response():
        pass


async def unwire(ipr: Any, link: Link) -> None:
    """Remove ifname's ingress qdisc (its filters go with it) and the tap; each step best effort."""
    with best_effort(log, f"removing the ingress qdisc of {link.ifname}"):
        cni_interface = await interface(ipr, link.ifname)
        if cni_interface is not None and await has_ingress(ipr, cni_interface.index):
            await ipr.tc("del", "ingress", cni_interface.index)
    with best_effort(log, f"removing tap {link.device}"):
        await delete_device(ipr, link.device, "tun")


async def problems(ipr: Any, link: Link) -> list[str]:
    cni_interface = await interface(ipr, link.ifname)
    tap = await interface(ipr, link.device)
    found = device_problems(tap, f"tap {link.device}", "tun", link.mtu)
    if cni_interface is None:
        return [f"{link.ifname} is missing", *found]
    if cni_interface.mac != link.mac:
        found.append(f"{link.ifname} has MAC {cni_interface.mac}, the guest has {link.mac}")
    if not cni_interface.up:
        found.append(f"{link.ifname} is down")
    if not await has_ingress(ipr, cni_interface.index):
        found.append(f"{link.ifname} has no ingress qdisc")
    elif tap is not None and not await _redirects(ipr, cni_interface.index, tap.index):
        found.append(f"no filter redirects what {link.ifname} receives to {link.device}")
    if tap is not None:
        if not await has_ingress(ipr, tap.index):
            found.append(f"tap {link.device} has no ingress qdisc")
        else:
            if not await _redirects(ipr, tap.index, cni_interface.index):
                found.append(f"no filter redirects what the guest sends on {link.device} to {link.ifname}")
            if not await _drops_dhcp(ipr, tap.index):
                found.append(f"no filter on {link.device} keeps the guest's DHCP requests off the pod network")
    return found


async def _ingress_filters(ipr: Any, index: int) -> list[Any]:
    return [message async for message in await ipr.get_filters(index=index, parent=INGRESS_HANDLE)]


async def _redirects(ipr: Any, source: int, target: int) -> bool:
    for message in await _ingress_filters(ipr, source):
        options = message.get_attr("TCA_OPTIONS") if message.get_attr("TCA_KIND") == "u32" else None
        actions = options.get_attr("TCA_U32_ACT") if options is not None else None
        for _, action in actions["attrs"] if actions is not None else []:
            if action.get_attr("TCA_ACT_KIND") != "mirred":
                continue
            parameters = action.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
            if parameters["eaction"] == TCA_EGRESS_REDIR and parameters["ifindex"] == target:
                return True
    return False


async def _drops_dhcp(ipr: Any, index: int) -> bool:
    for message in await _ingress_filters(ipr, index):
        options = message.get_attr("TCA_OPTIONS")
        if message.get_attr("TCA_KIND") != "bpf" or options is None or message["info"] >> 16 != DHCP_DROP_PRIO:
            continue
        if options.get_attr("TCA_BPF_OPS_LEN") == len(DHCP_DROP_PROGRAM) and options.get_attr("TCA_BPF_FLAGS"):
            return True
    return False


def attach(name: str) -> int:
    """A queue fd of the persistent tap ``name``; runs in the pod namespace's thread (the tun device
    finds taps by name in the namespace of the thread that opened it)."""
    try:
        socket.if_nametoindex(name)  # TUNSETIFF on a name that is gone would make a new, unwired tap
    except OSError as err:
        raise FailedPrecondition(f"tap {name} is missing from the pod's network namespace: the wiring is gone") from err
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, TAP_FLAGS))
    except OSError as err:
        os.close(fd)
        if err.errno == errno.EBUSY:
            raise FailedPrecondition(f"tap {name} is already open: does an earlier QEMU of this pod still run?") from err
        raise InternalError(f"cannot attach to tap {name}: {err}") from err
    return fd
