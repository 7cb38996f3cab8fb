"""The guest's view of a pod network: addresses, routes, leases and the record's round trip."""

from __future__ import annotations

import json

import pytest

from qmprt.cloudinit import DNSConfig
from qmprt.cloudinit import Route as SeedRoute
from qmprt.net.cni import parse_result
from qmprt.net.wiring import Link, RouteInfo
from qmprt.pod.model import DNSSettings, SandboxMetadata, SandboxSpec
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
