"""The guest's view of a pod network: addresses, routes, leases and the record's round trip."""

from __future__ import annotations

import json

import pytest

from qmprt.cloudinit import DNSConfig
from qmprt.cloudinit import Route as SeedRoute
from qmprt.net.cni import parse_result
from qmprt.net.wiring import Link, RouteInfo
from qmprt.pod.specs import DNSSettings, SandboxMetadata, SandboxSpec
from qmprt.pod.network import Attachment, PodNetwork, dhcp_lease, guest_dns, guest_interface

BRIDGE = Link(
    index=0, ifname="eth0", mode="tc-redirect", mac="0a:58:0a:62:01:05", mtu=1450, device="qmtap0",
    dhcp_device="qmtap0", addresses=("10.98.1.5/24",), routes=(RouteInfo("0.0.0.0/0", "10.98.1.1"),),
)
# ptp replaces the connected route of the pod's subnet with one via the gateway, and adds an on-link
# route to the gateway itself.
PTP = Link(
    index=0, ifname="eth0", mode="macvtap", mac="0a:58:0a:62:02:07", mtu=1400, device="qmvtap0",
    dhcp_device="qmdhcp0", addresses=("10.98.2.7/24", "fd98:2::7/64"),
    routes=(
        RouteInfo("10.98.2.1/32"), RouteInfo("10.98.2.0/24", "10.98.2.1"), RouteInfo("0.0.0.0/0", "10.98.2.1"),
        RouteInfo("fd98:2::/64", "fd98:2::1"), RouteInfo("::/0", "fd98:2::1"),
    ),
    moved_mac="02:11:22:33:44:55",
)
RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "eth0", "mac": "0a:58:0a:62:01:05", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "fd98:1::5/64", "interface": 1}, {"address": "10.98.1.5/24", "gateway": "10.98.1.1", "interface": 1}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
}


def sandbox(**changes: object) -> SandboxSpec:
    return SandboxSpec(metadata=SandboxMetadata(name="web", uid="u", namespace="default"), **changes)  # type: ignore[arg-type]


def test_a_bridged_interface_keeps_its_prefix_and_gateway() -> None:
    interface = guest_interface(BRIDGE)
    assert (interface.mac, interface.name, interface.mtu) == ("0a:58:0a:62:01:05", "eth0", 1450)
    assert interface.addresses == ("10.98.1.5/24",)
    assert (interface.gateway4, interface.gateway6, interface.routes) == ("10.98.1.1", None, ())


def test_a_routed_subnet_becomes_a_host_address_that_goes_through_the_gateway() -> None:
    interface = guest_interface(PTP)
    assert interface.addresses == ("10.98.2.7/32", "fd98:2::7/128")
    assert (interface.gateway4, interface.gateway6) == ("10.98.2.1", "fd98:2::1")
    assert interface.routes == (SeedRoute("10.98.2.0/24", "10.98.2.1"), SeedRoute("fd98:2::/64", "fd98:2::1"))


def test_the_lease_carries_the_same_view_with_on_link_routes() -> None:
    lease = dhcp_lease(PTP, "web", DNSConfig(servers=("10.96.0.10", "fd00::10"), searches=("svc.cluster.local",)))
    assert lease is not None
    assert (lease.client_mac, lease.address, lease.gateway, lease.mtu, lease.hostname) == (
        "0a:58:0a:62:02:07", "10.98.2.7/32", "10.98.2.1", 1400, "web",
    )
    assert lease.routes == (("10.98.2.1/32", "0.0.0.0"), ("10.98.2.0/24", "10.98.2.1"), ("0.0.0.0/0", "10.98.2.1"))
    assert lease.dns_servers == ("10.96.0.10",)  # DHCPv4 carries IPv4 servers only
    assert dhcp_lease(BRIDGE, "web", None) is not None


def test_an_ipv6_only_interface_has_no_dhcpv4_lease() -> None:
    v6_only = Link(
        index=0, ifname="eth0", mode="tc-redirect", mac="0a:58:0a:62:01:06", mtu=1500, device="qmtap0",
        dhcp_device="qmtap0", addresses=("fd98:1::6/64",), routes=(),
    )
    assert dhcp_lease(v6_only, "web", None) is None


def test_record_round_trip_pod_ips_and_dns() -> None:
    record = PodNetwork("/var/run/netns/x", "tc-redirect", (Attachment("cbr", "eth0", parse_result(RESULT)),), (BRIDGE,))
    again = PodNetwork.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert again.pod_ips() == ("10.98.1.5", "fd98:1::5")
    assert [nic.mac for nic in again.nics()] == ["0a:58:0a:62:01:05"]
    # kubelet's DNS wins; the CNI result's is the fallback.
    assert guest_dns(sandbox(), again) == DNSConfig(servers=("10.96.0.10",), searches=("svc.cluster.local",))
    kubelet_dns = DNSSettings(servers=("10.0.0.10",), searches=("a.b",), options=("ndots:5",))
    assert guest_dns(sandbox(dns=kubelet_dns), again) == DNSConfig(("10.0.0.10",), ("a.b",), ("ndots:5",))
    assert guest_dns(sandbox(), None) is None


def test_a_record_of_another_version_is_refused() -> None:
    from qmprt.errors import InternalError

    with pytest.raises(InternalError, match="version"):
        PodNetwork.from_json({"version": 99})


# -- setup and teardown order, with a fake CNI and fake wiring (the real twins are in
# tests/integration/test_pod_network.py) ---------------------------------------------------------------


class FakeCNI:
    def __init__(self, networks: int) -> None:
        self.calls: list[tuple[str, str]] = []
        self.count = networks

    def ready(self) -> bool:
        return True

    def networks(self, limit: int) -> list[object]:
        from qmprt.net.cni import parse_config

        return [
            parse_config({"cniVersion": "1.0.0", "name": f"net{i}", "plugins": [{"type": "bridge"}]})
            for i in range(min(limit, self.count))
        ]

    async def add(self, container_id: str, netns_path: str, ifname: str, k8s: object, mappings: object, network: object) -> object:
        self.calls.append(("ADD", ifname))
        result = dict(RESULT)
        result["interfaces"] = [{"name": ifname, "mac": "0a:58:0a:62:01:05", "sandbox": netns_path}]
        result["ips"] = [{"address": "10.98.1.5/24", "interface": 0}]
        return parse_result(result)

    async def delete(self, container_id: str, netns_path: str, ifname: str) -> None:
        self.calls.append(("DEL", ifname))


def networks_with(fake: FakeCNI, tmp_path: object) -> object:
    from pathlib import Path

    from qmprt.config import CNIConfig
    from qmprt.pod.network import PodNetworks

    base = Path(str(tmp_path))
    networks = PodNetworks(CNIConfig(max_networks=2), base / "cache", base / "scratch")
    networks.cni = fake  # type: ignore[assignment]
    return networks


async def test_a_wiring_failure_undoes_every_add_in_reverse(tmp_path, monkeypatch) -> None:
    from qmprt.errors import FailedPrecondition
    from qmprt.net import wiring

    def refuse(netns_path: str, ifnames: list[str], mode: str) -> tuple[Link, ...]:
        raise FailedPrecondition("eth1 is not an Ethernet interface")

    monkeypatch.setattr(wiring, "wire", refuse)
    fake = FakeCNI(networks=2)
    networks = networks_with(fake, tmp_path)
    with pytest.raises(FailedPrecondition, match="Ethernet"):
        await networks.setup("a" * 64, sandbox(), tmp_path, "/var/run/netns/x", "tc-redirect")  # type: ignore[attr-defined]
    assert fake.calls == [("ADD", "eth0"), ("ADD", "eth1"), ("DEL", "eth1"), ("DEL", "eth0")]
    assert not (tmp_path / "network.json").exists()


async def test_teardown_restores_then_deletes_and_forgets_the_record(tmp_path, monkeypatch) -> None:
    from qmprt.net import wiring

    undone: list[str] = []
    monkeypatch.setattr(wiring, "wire", lambda path, ifnames, mode: tuple(
        Link(index=i, ifname=name, mode="tc-redirect", mac=f"0a:58:0a:62:01:0{i}", mtu=1500, device=f"qmtap{i}",
             dhcp_device=f"qmtap{i}", addresses=(), routes=()) for i, name in enumerate(ifnames)))
    monkeypatch.setattr(wiring, "unwire", lambda path, links: undone.extend(link.device for link in links))
    fake = FakeCNI(networks=2)
    networks = networks_with(fake, tmp_path)
    record = await networks.setup("b" * 64, sandbox(), tmp_path, "/var/run/netns/y", "tc-redirect")  # type: ignore[attr-defined]
    assert [link.ifname for link in record.links] == ["eth0", "eth1"]
    assert PodNetwork.load(tmp_path) == record
    await networks.teardown("b" * 64, tmp_path, record)  # type: ignore[attr-defined]
    assert undone == ["qmtap0", "qmtap1"]
    assert fake.calls[-2:] == [("DEL", "eth1"), ("DEL", "eth0")]
    assert PodNetwork.load(tmp_path) is None
    # repeatable: a second StopPodSandbox finds no record left
    await networks.teardown("b" * 64, tmp_path, PodNetwork.load(tmp_path))  # type: ignore[attr-defined]
    assert len(fake.calls) == 4
