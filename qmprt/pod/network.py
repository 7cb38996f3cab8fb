"""A pod's network: CNI ADD into its namespace, the wiring of each CNI interface to a guest NIC, the
guest's view of it (network-config, DHCP leases) and the teardown.

Order of a setup (each step undone in reverse if a later one fails): CNI ADD of every network (one
interface each, ``eth0``, ``eth1``…, results cached on disk by :mod:`qmprt.net.cni`), the wiring
(:mod:`qmprt.net.wiring`), then ``network.json`` in the sandbox directory, written atomically before
the sandbox's own metadata. So a sandbox that recovery finds complete always has its network record,
and one found half-created only needs a CNI DEL (from the cache) and the removal of its namespace,
which takes every tap, macvtap and qdisc in it along.

The DHCP responders live in this process: they are started after setup and again by recovery.

The guest sees what the CNI plugins left on each interface, read from the namespace before wiring:
addresses, routes and MTU. A plugin that routes the pod's own subnet through the gateway (``ptp``
does: the connected route is replaced by one ``via`` the gateway) gets that address as a host
address (/32, /128) in the guest, so the guest sends everything to the gateway as the plugin meant.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qmprt import state
from qmprt.cloudinit import DNSConfig, NetworkInterface
from qmprt.cloudinit import Route as SeedRoute
from qmprt.config import CNIConfig
from qmprt.errors import InternalError, QmprtError, best_effort
from qmprt.net import wiring
from qmprt.net.cni import CNI, DNS, CNIResult, K8sArgs, PortMapping, parse_result
from qmprt.net.dhcp import DHCPResponder, Lease
from qmprt.net.wiring import Link
from qmprt.pod.specs import SandboxSpec
from qmprt.vm.config import NICConfig

log = logging.getLogger(__name__)

NETWORK_FILE = "network.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class Attachment:
    """One CNI network ADDed to the pod as ``ifname``."""

    network: str
    ifname: str
    result: CNIResult


@dataclass(frozen=True)
class PodNetwork:
    """What ``network.json`` holds: enough to rebuild the guest's view and to undo everything."""

    netns_path: str
    wiring: wiring.Mode
    attachments: tuple[Attachment, ...]
    links: tuple[Link, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "netns_path": self.netns_path,
            "wiring": self.wiring,
            "attachments": [
                {"network": a.network, "ifname": a.ifname, "result": a.result.to_json()} for a in self.attachments
            ],
            "links": [link.to_json() for link in self.links],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> PodNetwork:
        if document.get("version") != RECORD_VERSION:
            raise InternalError(f"network record version {document.get('version')!r} is not {RECORD_VERSION}")
        return cls(
            netns_path=document["netns_path"],
            wiring=document["wiring"],
            attachments=tuple(
                Attachment(entry["network"], entry["ifname"], parse_result(entry["result"]))
                for entry in document["attachments"]
            ),
            links=tuple(Link.from_json(entry) for entry in document["links"]),
        )

    @classmethod
    def load(cls, sandbox_dir: Path) -> PodNetwork | None:
        path = sandbox_dir / NETWORK_FILE
        if not path.exists():
            return None
        return cls.from_json(state.read_json(path))

    def save(self, sandbox_dir: Path) -> None:
        state.write_json_atomic(sandbox_dir / NETWORK_FILE, self.to_json())

    # -- what the pod and the guest see ------------------------------------------------------------
    def pod_ips(self) -> tuple[str, ...]:
        """IPv4 before IPv6, the first attachment's first: ``network.ip`` then ``additional_ips``."""
        ips: list[str] = []
        for attachment in self.attachments:
            ips += [ip for ip in attachment.result.pod_ips() if ip not in ips]
        return tuple(ip for ip in ips if ":" not in ip) + tuple(ip for ip in ips if ":" in ip)

    def dns(self) -> DNS:
        for attachment in self.attachments:
            if attachment.result.dns.nameservers or attachment.result.dns.search:
                return attachment.result.dns
        return DNS()

    def nics(self) -> tuple[NICConfig, ...]:
        return tuple(NICConfig(link.mac, link.mtu) for link in self.links)

    def guest_interfaces(self) -> tuple[NetworkInterface, ...]:
        return tuple(guest_interface(link) for link in self.links)


def _routed_subnets(link: Link) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return {
        ipaddress.ip_network(route.destination, strict=False)
        for route in link.routes
        if route.gateway and route.destination not in ("0.0.0.0/0", "::/0")
    }


def guest_addresses(link: Link) -> tuple[str, ...]:
    """The CIDRs the guest holds: host addresses where the plugin routes the subnet via the gateway."""
    routed = _routed_subnets(link)
    addresses = []
    for text in link.addresses:
        address = ipaddress.ip_interface(text)
        if address.network in routed:
            addresses.append(f"{address.ip}/{address.max_prefixlen}")
        else:
            addresses.append(str(address))
    return tuple(addresses)


def _default_gateway(link: Link, version: int) -> str | None:
    default = "0.0.0.0/0" if version == 4 else "::/0"
    for route in link.routes:
        if route.destination == default and route.gateway:
            return route.gateway
    return None


def guest_interface(link: Link) -> NetworkInterface:
    families = {ipaddress.ip_interface(address).version for address in link.addresses}
    routes = tuple(
        SeedRoute(route.destination, route.gateway)
        for route in link.routes
        # On-link routes need no entry: the guest adds gateways outside its prefix on-link itself.
        if route.gateway
        and route.destination not in ("0.0.0.0/0", "::/0")
        and ipaddress.ip_network(route.destination, strict=False).version in families
    )
    return NetworkInterface(
        mac=link.mac,
        name=link.ifname,
        addresses=guest_addresses(link),
        gateway4=_default_gateway(link, 4) if 4 in families else None,
        gateway6=_default_gateway(link, 6) if 6 in families else None,
        routes=routes,
        mtu=link.mtu,
    )


def dhcp_lease(link: Link, hostname: str, dns: DNSConfig | None) -> Lease | None:
    """The IPv4 lease the DHCP responder hands the guest on ``link``; None without an IPv4 address."""
    v4 = [address for address in guest_addresses(link) if ipaddress.ip_interface(address).version == 4]
    if not v4:
        return None
    gateway = _default_gateway(link, 4) or ""
    routes = tuple(
        (route.destination, route.gateway or "0.0.0.0")  # "0.0.0.0": on-link (RFC 3442)
        for route in link.routes
        if ipaddress.ip_network(route.destination, strict=False).version == 4
    )
    return Lease(
        client_mac=link.mac,
        address=v4[0],
        gateway=gateway,
        routes=routes,
        dns_servers=tuple(s for s in (dns.servers if dns else ()) if ":" not in s),
        search=tuple(dns.searches) if dns else (),
        mtu=link.mtu,
        hostname=hostname,
    )


def guest_dns(sandbox: SandboxSpec, network: PodNetwork | None) -> DNSConfig | None:
    """kubelet's DNS settings win; the CNI result's are the fallback (a pod without cluster DNS)."""
    if sandbox.dns.servers or sandbox.dns.searches or sandbox.dns.options:
        return DNSConfig(servers=sandbox.dns.servers, searches=sandbox.dns.searches, options=sandbox.dns.options)
    if network is not None:
        dns = network.dns()
        if dns.nameservers or dns.search:
            return DNSConfig(servers=dns.nameservers, searches=dns.search or ((dns.domain,) if dns.domain else ()))
    return None


def port_mappings(sandbox: SandboxSpec) -> tuple[PortMapping, ...]:
    return tuple(
        PortMapping(m.protocol.lower(), m.container_port, m.host_port, m.host_ip)
        for m in sandbox.port_mappings
        if m.host_port > 0
    )


def k8s_args(sandbox_id: str, sandbox: SandboxSpec) -> K8sArgs:
    metadata = sandbox.metadata
    return K8sArgs(namespace=metadata.namespace, name=metadata.name, uid=metadata.uid, infra_container_id=sandbox_id)


class PodNetworks:
    """Sets up, re-adopts and tears down pod networks; owns the DHCP responders of this process."""

    def __init__(self, config: CNIConfig, cache_dir: Path, scratch_dir: Path) -> None:
        self.config = config
        self.cni = CNI(config.conf_dir, config.bin_dirs, cache_dir, timeout=config.plugin_timeout_seconds)
        self.scratch_dir = scratch_dir
        self._responders: dict[str, list[DHCPResponder]] = {}

    def ready(self) -> bool:
        return self.cni.ready()

    async def setup(
        self, sandbox_id: str, sandbox: SandboxSpec, sandbox_dir: Path, netns_path: str, mode: wiring.Mode
    ) -> PodNetwork | None:
        """ADD, wire and record the pod's networks; None (a pod without NICs) while no CNI config exists."""
        if not self.cni.ready():
            log.warning("sandbox %s: no CNI config in %s; the pod gets no network", sandbox_id[:12], self.config.conf_dir)
            return None
        networks = self.cni.networks(self.config.max_networks)
        k8s = k8s_args(sandbox_id, sandbox)
        mappings = port_mappings(sandbox)
        attachments: list[Attachment] = []
        try:
            for index, network in enumerate(networks):
                ifname = f"eth{index}"
                result = await self.cni.add(sandbox_id, netns_path, ifname, k8s, mappings, network=network)
                attachments.append(Attachment(network.name, ifname, result))
                if not any(interface.name == ifname for interface in result.sandbox_interfaces()):
                    raise InternalError(
                        f"CNI network {network.name} returned no interface {ifname} in the pod's namespace"
                    )
            links = await asyncio.to_thread(wiring.wire, netns_path, [a.ifname for a in attachments], mode)
            try:
                record = PodNetwork(netns_path, mode, tuple(attachments), links)
                record.save(sandbox_dir)
            except BaseException:
                await asyncio.to_thread(wiring.unwire, netns_path, links)
                raise
        except BaseException:
            # A failed ADD rolled itself back; the ones before it are undone here.
            await self._delete(sandbox_id, netns_path, [a.ifname for a in reversed(attachments)])
            raise
        return record

    async def start_responders(self, sandbox_id: str, sandbox: SandboxSpec, network: PodNetwork) -> None:
        """(Re)start the DHCP responders of a pod; a failure is logged (network-config still works)."""
        self.stop_responders(sandbox_id)
        hostname = sandbox.guest_hostname
        dns = guest_dns(sandbox, network)
        responders = []
        for link in network.links:
            try:
                lease = dhcp_lease(link, hostname, dns)
                if lease is None:
                    continue
                responder = DHCPResponder(network.netns_path, link.dhcp_device, lease)
                await responder.start()
            except QmprtError as err:
                log.warning("sandbox %s: no DHCP responder on %s: %s", sandbox_id[:12], link.dhcp_device, err)
                continue
            responders.append(responder)
        self._responders[sandbox_id] = responders

    def stop_responders(self, sandbox_id: str) -> None:
        for responder in self._responders.pop(sandbox_id, []):
            responder.close()

    async def readopt(self, sandbox_id: str, sandbox: SandboxSpec, network: PodNetwork) -> list[str]:
        """After a restart: check the wiring, CNI CHECK the attachments, bring the DHCP responders back.

        Returns the wiring's problems (a tap, macvtap, qdisc or filter gone: the VM has lost its
        network, and only a new sandbox gets it back). A failed CNI CHECK is only logged: plugins
        disagree on CHECK (portmap fails it for IPv4-only pods, containernetworking/plugins#819), and
        a pod must not be recreated for that.
        """
        problems = await asyncio.to_thread(wiring.verify, network.netns_path, network.links)
        for problem in problems:
            log.warning("sandbox %s: network wiring: %s", sandbox_id[:12], problem)
        for attachment in network.attachments:
            try:
                await self.cni.check(sandbox_id, attachment.ifname)  # skipped where the config disables it
            except QmprtError as err:
                log.warning("sandbox %s: CNI CHECK of %s (%s): %s", sandbox_id[:12], attachment.network, attachment.ifname, err)
        await self.start_responders(sandbox_id, sandbox, network)
        return problems

    def open_queues(self, network: PodNetwork) -> list[int]:
        """One fresh tap fd per guest NIC, for QEMU; the caller closes them once QEMU has its copies."""
        state.ensure_private_dir(self.scratch_dir)
        fds: list[int] = []
        try:
            for link in network.links:
                fds.append(wiring.open_queue(network.netns_path, link, str(self.scratch_dir)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    async def teardown(self, sandbox_id: str, sandbox_dir: Path, network: PodNetwork | None) -> None:
        """Undo ``setup`` of ``network`` (the sandbox's record; None: nothing to undo): responders,
        wiring, CNI DEL in reverse, then the record. Raises when DEL failed (kubelet retries
        StopPodSandbox), keeping the record so the retry can finish."""
        self.stop_responders(sandbox_id)
        if network is None:
            return
        with best_effort(log, f"restoring the network namespace of sandbox {sandbox_id[:12]}"):
            await asyncio.to_thread(wiring.unwire, network.netns_path, network.links)
        ifnames = [a.ifname for a in reversed(network.attachments)]
        await self._delete(sandbox_id, network.netns_path, ifnames, strict=True)
        (sandbox_dir / NETWORK_FILE).unlink(missing_ok=True)
        state.fsync_dir(sandbox_dir)

    async def forget_half_created(self, sandbox_id: str, netns_path: str) -> None:
        """CNI DEL for a sandbox whose creation crashed (its cache tells what ADD did)."""
        ifnames = [f"eth{index}" for index in range(self.config.max_networks)]
        await self._delete(sandbox_id, netns_path, list(reversed(ifnames)))

    async def _delete(self, sandbox_id: str, netns_path: str, ifnames: Sequence[str], strict: bool = False) -> None:
        failures: list[QmprtError] = []
        for ifname in ifnames:
            try:
                await self.cni.delete(sandbox_id, netns_path, ifname)
            except QmprtError as err:
                log.warning("sandbox %s: CNI DEL of %s: %s", sandbox_id[:12], ifname, err)
                failures.append(err)
        if strict and failures:
            raise failures[0]

    def close(self) -> None:
        for sandbox_id in list(self._responders):
            self.stop_responders(sandbox_id)
