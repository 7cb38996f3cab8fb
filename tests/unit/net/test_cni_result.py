"""Parsing CNI results of spec 0.4.0 and 1.0.0, and the pod IPs kubelet is given."""

from __future__ import annotations

from typing import Any

import pytest

from qmprt.errors import InternalError
from qmprt.net.cni_result import DNS, Interface, IPConfig, Route, parse_result

NETNS = "/var/run/netns/qmprt-abc"

# As the bridge plugin prints them: host-side bridge and veth first, the pod's eth0 last.
RESULT_040: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:00:00:00:00:01"},
        {"name": "veth1234", "mac": "aa:00:00:00:00:02"},
        {"name": "eth0", "mac": "0a:58:0a:63:01:02", "sandbox": NETNS},
    ],
    "ips": [
        {"version": "6", "interface": 2, "address": "fd99::2/64", "gateway": "fd99::1"},
        {"version": "4", "interface": 2, "address": "10.99.1.2/24", "gateway": "10.99.1.1"},
        {"version": "4", "interface": 0, "address": "10.99.1.1/24"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.1.1"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["default.svc.cluster.local"], "options": ["ndots:5"]},
}

RESULT_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:02:05", "sandbox": NETNS}],
    "ips": [{"address": "10.99.2.5/32", "gateway": "10.99.2.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.2.1"}],
    "dns": {},
}


def test_parse_040_dual_stack() -> None:
    parsed = parse_result(RESULT_040)

    assert parsed.cni_version == "0.4.0"
    assert parsed.sandbox_interfaces() == (Interface("eth0", "0a:58:0a:63:01:02", NETNS),)
    assert parsed.ips[0] == IPConfig("fd99::2/64", "fd99::1", 2)
    assert parsed.routes == (Route("0.0.0.0/0", "10.99.1.1"), Route("::/0", ""))
    assert parsed.dns == DNS(("10.96.0.10",), "cluster.local", ("default.svc.cluster.local",), ("ndots:5",))
    # IPv4 first although the plugin listed IPv6 first; the bridge's own address is not the pod's.
    assert parsed.pod_ips() == ("10.99.1.2", "fd99::2")
    assert parsed.to_json() == RESULT_040


def test_parse_100() -> None:
    parsed = parse_result(RESULT_100)

    assert parsed.pod_ips() == ("10.99.2.5",)
    assert parsed.ips[0].version == 4 and parsed.ips[0].ip == "10.99.2.5"
    assert parsed.dns == DNS()
    assert parsed.to_json() == RESULT_100


def test_ips_without_interface_index_count_as_the_pod_s() -> None:
    parsed = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "fd99::5/64"}, {"address": "10.99.0.5/24"}]})
    assert parsed.pod_ips() == ("10.99.0.5", "fd99::5")


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"cniVersion": "0.2.0", "ip4": {"ip": "10.99.0.5/24"}},
        {"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.5/24", "interface": "0"}]},
        {"cniVersion": "1.0.0", "interfaces": {"name": "eth0"}},
        {"cniVersion": "1.0.0", "dns": {"nameservers": "10.96.0.10"}},
    ],
    ids=["not-object", "v0.2.0", "bad-address", "index-type", "interfaces-type", "nameservers-type"],
)
def test_malformed_results(document: Any) -> None:
    with pytest.raises(InternalError):
        parse_result(document)
