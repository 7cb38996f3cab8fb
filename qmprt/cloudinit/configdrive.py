"""The same seed in OpenStack's ConfigDrive form, for images whose cloud-init only reads that.

Files (under ``openstack/latest/``, on an ISO 9660 volume labelled ``config-2``):

- ``meta_data.json``: ``uuid`` (cloud-init's instance-id), ``hostname`` and ``name`` (the pod's
  hostname), ``public_keys`` (``key-0``, ``key-1``… → the SSH keys), ``launch_index`` 0;
- ``user_data``: exactly NoCloud's user-data (qmprt's ``#cloud-config``, merged or replaced);
- ``network_data.json``: one ``phy`` link per interface (MAC, name, MTU), one ``ipv4``/``ipv6`` network
  per address with its routes (the default route from the interface's gateway), one ``dns`` service
  per server. Search domains and resolver options have no place there: they reach cloud-init through
  user-data's ``resolv_conf``. Written only when the spec has interfaces or DNS servers.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from qmprt.cloudinit.network import check_dns, interface_entries
from qmprt.cloudinit.seed import SeedSpec, check_hostname, check_instance_id, check_ssh_keys, render_user_data

CONFIG_DRIVE_LABEL = "config-2"
META_DATA = "openstack/latest/meta_data.json"
USER_DATA = "openstack/latest/user_data"
NETWORK_DATA = "openstack/latest/network_data.json"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def render_meta_data_json(spec: SeedSpec) -> bytes:
    hostname = check_hostname(spec.hostname)
    document: dict[str, Any] = {
        "uuid": check_instance_id(spec.instance_id),
        "hostname": hostname,
        "name": hostname,
        "launch_index": 0,
    }
    if spec.ssh_authorized_keys:
        keys = check_ssh_keys(spec.ssh_authorized_keys)
        document["public_keys"] = {f"key-{index}": key for index, key in enumerate(keys)}
    return _json(document)


def _route(destination: str, gateway: str) -> dict[str, str]:
    network = ipaddress.ip_network(destination)
    netmask = str(network.netmask) if network.version == 4 else str(network.netmask.exploded)
    return {"network": str(network.network_address), "netmask": netmask, "gateway": gateway}


def render_network_data_json(spec: SeedSpec) -> bytes | None:
    """OpenStack network_data.json, or ``None`` when the spec has neither interfaces nor DNS servers."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for entry in interface_entries(spec.interfaces):
        name = str(entry["name"])
        link: dict[str, Any] = {"id": name, "name": name, "type": "phy", "ethernet_mac_address": entry["mac_address"]}
        if "mtu" in entry:
            link["mtu"] = entry["mtu"]
        links.append(link)
        for subnet in entry.get("subnets", ()):  # type: ignore[union-attr]
            assert isinstance(subnet, dict)
            address = ipaddress.ip_interface(str(subnet["address"]))
            routes = []
            if "gateway" in subnet:
                default = "0.0.0.0/0" if address.version == 4 else "::/0"
                routes.append(_route(default, str(subnet["gateway"])))
            for route in subnet.get("routes", ()):
                routes.append(_route(route["network"], route["gateway"]))
            netmask = address.network.netmask
            networks.append(
                {
                    "id": f"network{len(networks)}",
                    "link": name,
                    "type": f"ipv{address.version}",
                    "ip_address": str(address.ip),
                    "netmask": str(netmask) if address.version == 4 else netmask.exploded,
                    "routes": routes,
                }
            )
    services: list[dict[str, str]] = []
    if spec.dns is not None:
        check_dns(spec.dns)
        services = [{"type": "dns", "address": server} for server in spec.dns.servers]
    if not links and not services:
        return None
    return _json({"links": links, "networks": networks, "services": services})


def config_drive_files(spec: SeedSpec) -> dict[str, bytes]:
    """The ConfigDrive's files by path; ``network_data.json`` only when there is network config."""
    files = {META_DATA: render_meta_data_json(spec), USER_DATA: render_user_data(spec)}
    network_data = render_network_data_json(spec)
    if network_data is not None:
        files[NETWORK_DATA] = network_data
    return files
