"""What qmprt records about one wired CNI interface (``Link``), and the names of the devices it makes.

The record is kept in the sandbox's network metadata, so ``unwire`` and ``verify`` work from it after
a restart; ``to_json``/``from_json`` are its on-disk form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qmprt.errors import InvalidArgument

Mode = Literal["tc-redirect", "macvtap"]
MODES: tuple[Mode, ...] = ("tc-redirect", "macvtap")


@dataclass(frozen=True)
class RouteInfo:
    destination: str  # CIDR; "0.0.0.0/0" or "::/0" for a default route
    gateway: str = ""  # "" for an on-link route


@dataclass(frozen=True)
class Link:
    index: int  # position among the pod's CNI interfaces = guest NIC order
    ifname: str  # the CNI interface in the pod netns, e.g. "eth0"
    mode: Mode
    mac: str  # the guest NIC's MAC: ifname's MAC as CNI left it, lower-case "aa:bb:.."
    mtu: int  # ifname's MTU
    device: str  # the tap (tc-redirect) or macvtap (macvtap) in the pod netns
    dhcp_device: str  # where a DHCP responder binds its packet socket to talk to the guest
    addresses: tuple[str, ...]  # global-scope CIDRs found on ifname before wiring, IPv4 first
    # Main-table routes out of ifname found before wiring, but for the kernel's connected-prefix routes
    # (proto kernel) and link-local/multicast ones.
    routes: tuple[RouteInfo, ...]
    moved_mac: str = ""  # macvtap: the MAC ifname carries while wired ("" for tc-redirect)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "ifname": self.ifname,
            "mode": self.mode,
            "mac": self.mac,
            "mtu": self.mtu,
            "device": self.device,
            "dhcp_device": self.dhcp_device,
            "addresses": list(self.addresses),
            "routes": [{"destination": route.destination, "gateway": route.gateway} for route in self.routes],
            "moved_mac": self.moved_mac,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Link:
        try:
            mode = document["mode"]
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is none of {', '.join(MODES)}")
            numbers = {key: document[key] for key in ("index", "mtu")}
            texts = {key: document[key] for key in ("ifname", "mac", "device", "dhcp_device")}
            moved_mac = document.get("moved_mac", "")
            addresses = list(document["addresses"])
            routes = [RouteInfo(route["destination"], route.get("gateway", "")) for route in document["routes"]]
            if not all(isinstance(value, int) and not isinstance(value, bool) for value in numbers.values()):
                raise ValueError("index and mtu must be integers")
            strings = [*texts.values(), moved_mac, *addresses]
            strings += [text for route in routes for text in (route.destination, route.gateway)]
            if not all(isinstance(value, str) for value in strings):
                raise ValueError("names, MACs, addresses and routes must be strings")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidArgument(f"malformed network wiring record {dict(document)!r}: {err}") from err
        return cls(mode=mode, addresses=tuple(addresses), routes=tuple(routes), moved_mac=moved_mac, **numbers, **texts)


def device_name(mode: Mode, index: int) -> str:
    """The tap or macvtap that is guest NIC ``index``."""
    return f"qmtap{index}" if mode == "tc-redirect" else f"qmvtap{index}"


def dhcp_device_name(mode: Mode, index: int) -> str:
    """Where a DHCP responder for guest NIC ``index`` listens: the tap itself, or a macvlan sibling."""
    return device_name(mode, index) if mode == "tc-redirect" else f"qmdhcp{index}"
