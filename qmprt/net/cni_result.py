"""CNI results (spec 0.3.0 to 1.0.0) as frozen dataclasses, parsed from and rendered to plugin JSON.

A result is parsed once from the last plugin's stdout; ``to_json`` gives back the plugin's own
document so it can be cached and passed on unchanged as ``prevResult``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from qmprt.errors import InternalError


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for interfaces inside the pod; empty for host-side ones


@dataclass(frozen=True)
class IPConfig:
    address: str  # CIDR, e.g. "10.99.0.5/24"
    gateway: str = ""
    interface: int | None = None  # index into CNIResult.interfaces

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class CNIResult:
    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def sandbox_interfaces(self) -> tuple[Interface, ...]:
        return tuple(interface for interface in self.interfaces if interface.sandbox)

    def sandbox_ips(self) -> tuple[IPConfig, ...]:
        """The addresses of interfaces in the pod (or of no named interface), in result order."""
        return tuple(
            ip
            for ip in self.ips
            if ip.interface is None
            or not 0 <= ip.interface < len(self.interfaces)
            or self.interfaces[ip.interface].sandbox
        )

    def pod_ips(self) -> tuple[str, ...]:
        """Pod addresses as kubelet wants them: IPv4 before IPv6, each family in result order.

        The first is the primary ``network.ip``; the rest are ``additional_ips``.
        """
        ips = self.sandbox_ips()
        return tuple(ip.ip for ip in ips if ip.version == 4) + tuple(ip.ip for ip in ips if ip.version == 6)

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InternalError(f"CNI result: {what} is not a list of strings")
    return tuple(value)


def _text(entry: dict[str, Any], key: str, what: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise InternalError(f"CNI result: {what}.{key} is not a string")
    return value


def _objects(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = document.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InternalError(f"CNI result: {key} is not a list of objects")
    return value


def _parse_ip(entry: dict[str, Any]) -> IPConfig:
    address = _text(entry, "address", "ips[]")
    try:
        ipaddress.ip_interface(address)
    except ValueError as err:
        raise InternalError(f"CNI result: bad address {address!r}") from err
    index = entry.get("interface")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise InternalError("CNI result: ips[].interface is not an integer")
    return IPConfig(address=address, gateway=_text(entry, "gateway", "ips[]"), interface=index)


def parse_result(document: Any) -> CNIResult:
    """Parse a 0.3.x/0.4.0/1.0.0 result (0.4.0 carries ``ips[].version``, 1.0.0 drops it)."""
    if not isinstance(document, dict):
        raise InternalError("CNI result is not a JSON object")
    version = document.get("cniVersion", "")
    if not isinstance(version, str):
        raise InternalError("CNI result: cniVersion is not a string")
    if version.startswith(("0.1.", "0.2.")):
        raise InternalError(f"CNI result version {version} is not supported (0.3.0 or later)")
    interfaces = tuple(
        Interface(
            name=_text(entry, "name", "interfaces[]"),
            mac=_text(entry, "mac", "interfaces[]"),
            sandbox=_text(entry, "sandbox", "interfaces[]"),
        )
        for entry in _objects(document, "interfaces")
    )
    ips = tuple(_parse_ip(entry) for entry in _objects(document, "ips"))
    routes = tuple(
        Route(dst=_text(entry, "dst", "routes[]"), gw=_text(entry, "gw", "routes[]"))
        for entry in _objects(document, "routes")
    )
    dns_document = document.get("dns") or {}
    if not isinstance(dns_document, dict):
        raise InternalError("CNI result: dns is not an object")
    dns = DNS(
        nameservers=_strings(dns_document.get("nameservers"), "dns.nameservers"),
        domain=_text(dns_document, "domain", "dns"),
        search=_strings(dns_document.get("search"), "dns.search"),
        options=_strings(dns_document.get("options"), "dns.options"),
    )
    return CNIResult(cni_version=version, interfaces=interfaces, ips=ips, routes=routes, dns=dns, raw=dict(document))
