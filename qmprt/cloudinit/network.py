"""A seed's network: interfaces, routes and DNS, rendered as network-config v1 and cc_resolv_conf.

- ``network-config``: version 1; one ``physical`` entry per interface (matched by MAC, named,
  optional MTU) with one ``static`` subnet per address, the gateway of each family on its first
  subnet, routes on the first subnet of their family; a ``nameserver`` entry when there are DNS
  servers.
- ``resolv_conf``: the whole DNS configuration in cloud-config's cc_resolv_conf form, the only place
  for resolver options (``qmprt.cloudinit.seed`` puts it in user-data).

Every invalid input is a ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from qmprt.cloudinit import _yaml

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_DOMAIN = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_DNS_OPTION = re.compile(r"([A-Za-z0-9_-]+)(?::([A-Za-z0-9._-]+))?")

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


@dataclass(frozen=True)
class Route:
    destination: str  # CIDR, IPv4 or IPv6
    gateway: str


@dataclass(frozen=True)
class NetworkInterface:
    mac: str
    name: str | None = None  # None: eth<index in SeedSpec.interfaces>
    addresses: tuple[str, ...] = ()  # CIDR, IPv4 or IPv6
    gateway4: str | None = None
    gateway6: str | None = None
    routes: tuple[Route, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # resolv.conf style: "ndots:5", "edns0"


def check_dns(dns: DNSConfig) -> None:
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError as err:
            raise ValueError(f"DNS server {server!r} is not an IP address") from err
    for domain in dns.searches:
        if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
            raise ValueError(f"DNS search domain {domain!r} is not a domain name")


def _interface_entry(index: int, interface: NetworkInterface) -> dict[str, _yaml.Node]:
    mac = interface.mac.lower()
    if not _MAC.fullmatch(mac):
        raise ValueError(f"MAC address {interface.mac!r} must look like 52:54:00:12:34:56")
    name = interface.name if interface.name is not None else f"eth{index}"
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"interface name {name!r}: at most 15 of letters, digits, '_', '.', '-'")
    entry: dict[str, _yaml.Node] = {"type": "physical", "name": name, "mac_address": mac}
    if interface.mtu is not None:
        if not 68 <= interface.mtu <= 65535:
            raise ValueError(f"MTU {interface.mtu} of {name} is out of range")
        entry["mtu"] = interface.mtu

    subnets: list[dict[str, _yaml.Node]] = []
    first_of_family: dict[int, dict[str, _yaml.Node]] = {}
    for address in interface.addresses:
        try:
            parsed: IPInterface = ipaddress.ip_interface(address)
        except ValueError as err:
            raise ValueError(f"address {address!r} of {name} is not an IP address in CIDR form") from err
        if "/" not in address:
            raise ValueError(f"address {address!r} of {name} needs a prefix length")
        subnet: dict[str, _yaml.Node] = {"type": "static", "address": str(parsed)}
        subnets.append(subnet)
        first_of_family.setdefault(parsed.version, subnet)

    for version, gateway in ((4, interface.gateway4), (6, interface.gateway6)):
        if gateway is None:
            continue
        try:
            parsed_gateway = ipaddress.ip_address(gateway)
        except ValueError as err:
            raise ValueError(f"gateway {gateway!r} of {name} is not an IP address") from err
        if parsed_gateway.version != version or version not in first_of_family:
            raise ValueError(f"gateway{version} {gateway} of {name} needs an IPv{version} address on it")
        first_of_family[version]["gateway"] = str(parsed_gateway)

    routes_of_family: dict[int, list[_yaml.Node]] = {}
    for route in interface.routes:
        try:
            destination = ipaddress.ip_network(route.destination, strict=False)
            via = ipaddress.ip_address(route.gateway)
        except ValueError as err:
            raise ValueError(f"route {route.destination} via {route.gateway} of {name}: {err}") from err
        if destination.version != via.version or destination.version not in first_of_family:
            raise ValueError(
                f"route {route.destination} via {route.gateway} of {name} needs an"
                f" IPv{destination.version} address and gateway on the interface"
            )
        routes_of_family.setdefault(destination.version, []).append(
            {"network": str(destination), "gateway": str(via)}
        )
    for version, routes in routes_of_family.items():
        first_of_family[version]["routes"] = routes

    if subnets:
        entry["subnets"] = list(subnets)
    return entry


def interface_entries(interfaces: Sequence[NetworkInterface]) -> list[dict[str, _yaml.Node]]:
    """The checked network-config v1 ``physical`` entries of ``interfaces`` (ConfigDrive reuses them)."""
    entries = [_interface_entry(index, interface) for index, interface in enumerate(interfaces)]
    names = [entry["name"] for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"interface names are not unique: {names}")
    macs = [entry["mac_address"] for entry in entries]
    if len(set(macs)) != len(macs):
        raise ValueError(f"MAC addresses are not unique: {macs}")
    return entries


def network_config(interfaces: Sequence[NetworkInterface], dns: DNSConfig | None) -> bytes | None:
    """network-config version 1, or ``None`` when there are neither interfaces nor DNS."""
    config: list[_yaml.Node] = list(interface_entries(interfaces))
    if dns is not None:
        check_dns(dns)
        if dns.servers:
            nameserver: dict[str, _yaml.Node] = {
                "type": "nameserver",
                "address": list(dns.servers),
            }
            if dns.searches:
                nameserver["search"] = list(dns.searches)
            config.append(nameserver)
    if not config:
        return None
    return _yaml.dump({"version": 1, "config": config})


def _dns_options(options: tuple[str, ...]) -> dict[str, _yaml.Node]:
    rendered: dict[str, _yaml.Node] = {}
    for option in options:
        match = _DNS_OPTION.fullmatch(option)
        if not match:
            raise ValueError(f"DNS option {option!r} must look like 'name' or 'name:value'")
        name, value = match.group(1), match.group(2)
        rendered[name] = True if value is None else value
    return rendered


def resolv_conf(dns: DNSConfig | None) -> dict[str, _yaml.Node]:
    """The whole DNS configuration in cc_resolv_conf's form: network-config has no DNS options."""
    if dns is None:
        return {}
    check_dns(dns)
    resolv_conf: dict[str, _yaml.Node] = {}
    if dns.servers:
        resolv_conf["nameservers"] = list(dns.servers)
    if dns.searches:
        resolv_conf["searchdomains"] = list(dns.searches)
    if dns.options:
        resolv_conf["options"] = _dns_options(dns.options)
    return resolv_conf
