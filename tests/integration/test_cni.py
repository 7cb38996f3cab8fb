"""CNI with Debian's real plugins, run inside a "node" network namespace this test creates.

Every plugin process is exec'd through ``nsenter --net=<node netns>``, so the bridges, host-side
veths, routes and portmap rules the plugins make land in the node namespace, never in the machine's.
Pod addresses come from 10.99.0.0/16; host-local keeps its allocations in a temp directory.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qmprt.errors import QmprtError
from qmprt.net import netns
from qmprt.net.cni import CNI, K8sArgs, PortMapping

BIN_DIR = Path("/usr/lib/cni")

pytestmark = pytest.mark.skipif(
    not (BIN_DIR / "bridge").exists() or not shutil.which("nsenter") or not shutil.which("busybox"),
    reason="needs containernetworking-plugins, nsenter and busybox",
)


@dataclass
class Node:
    name: str
    path: Path
    conf_dir: Path
    ipam_dir: Path
    cache_dir: Path
    pods: list[str]

    def cni(self) -> CNI:
        return CNI(self.conf_dir, [BIN_DIR], self.cache_dir, exec_prefix=["nsenter", f"--net={self.path}", "--"], timeout=20)

    def write_config(self, name: str, document: dict[str, Any]) -> None:
        (self.conf_dir / name).write_text(json.dumps(document))

    def pod_netns(self) -> tuple[str, str]:
        name = f"qmprt-tp{secrets.token_hex(4)}"
        self.pods.append(name)
        return name, str(netns.create(name))

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, check=check, timeout=10)

    def allocations(self) -> list[str]:
        """host-local's files for allocated addresses (it also keeps last_reserved_ip.* and a lock)."""
        return sorted(
            entry.name
            for entry in self.ipam_dir.rglob("*")
            if entry.is_file() and (entry.name[0].isdigit() or ":" in entry.name)
        )


def host_links() -> list[str]:
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in shown.stdout.splitlines())


def addresses(pod_ns: str, ifname: str = "eth0") -> list[str]:
    shown = subprocess.run(["ip", "-n", pod_ns, "-o", "addr", "show", "dev", ifname, "scope", "global"], capture_output=True, text=True)
    if shown.returncode != 0:
        return []
    return [fields[3] for fields in (line.split() for line in shown.stdout.splitlines()) if fields[2] in ("inet", "inet6")]


def links(pod_ns: str) -> list[str]:
    shown = subprocess.run(["ip", "-n", pod_ns, "-o", "link"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in shown.stdout.splitlines()]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    name = f"qmprt-tn{secrets.token_hex(4)}"
    path = netns.create(name)
    conf_dir, ipam_dir, cache_dir = tmp_path / "net.d", tmp_path / "ipam", tmp_path / "cache"
    conf_dir.mkdir()
    the_node = Node(name, path, conf_dir, ipam_dir, cache_dir, [])
    links_before = host_links()
    try:
        the_node.run("ip", "link", "set", "lo", "up")
        yield the_node
    finally:
        for pod in the_node.pods:
            netns.remove(pod)
        netns.remove(name)
        for directory in (conf_dir, ipam_dir, cache_dir):
            shutil.rmtree(directory, ignore_errors=True)
    assert not any(directory.exists() for directory in (conf_dir, ipam_dir, cache_dir))
    assert not any(netns.exists(ns) for ns in [name, *the_node.pods])
    assert host_links() == links_before, "a plugin touched the machine's own namespace"


def host_local(node: Node, subnet: str, **extra: Any) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(node.ipam_dir), "ranges": [[{"subnet": subnet, **extra}]]}


def flannel_like(node: Node) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "cbr",
        # Debian's portmap fails CHECK for IPv4-only pods (containernetworking/plugins#819), and a
        # conflist naming it would break every CHECK; the other layouts run CHECK for real.
        "disableCheck": True,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": host_local(node, "10.99.1.0/24") | {"routes": [{"dst": "0.0.0.0/0"}]},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
        ],
    }


def calico_like(node: Node) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "routed",
        "plugins": [{"type": "ptp", "ipMasq": False, "mtu": 1400, "ipam": host_local(node, "10.99.2.0/24")}],
    }


def macvlan(node: Node) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "mv",
        "type": "macvlan",
        "master": "uplink0",
        "mode": "bridge",
        "ipam": host_local(node, "10.99.3.0/24", rangeStart="10.99.3.10"),
    }


def host_port_answers(node: Node, pod_ns: str, gateway: str) -> bool:
    """A connection to the node's own address on hostPort 18080 reaches port 80 in the pod (portmap DNAT)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod_ns, "busybox", "nc", "-l", "-p", "80"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        assert server.stdin is not None
        server.stdin.write(b"hello from the pod\n")
        server.stdin.close()
        for _ in range(50):
            if ":80 " in subprocess.run(["ip", "netns", "exec", pod_ns, "busybox", "netstat", "-ltn"], capture_output=True, text=True).stdout:
                break
            time.sleep(0.05)
        reply = node.run("busybox", "nc", "-w", "2", gateway, "18080", check=False).stdout
        return "hello from the pod" in reply
    finally:
        server.kill()
        server.wait()


def prepare_macvlan_master(node: Node) -> None:
    # The node talks to macvlan children through a sibling macvlan of its own (the parent cannot).
    node.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")  # no dummy module here
    node.run("ip", "link", "set", "uplink0p", "up")
    node.run("ip", "link", "set", "uplink0", "up")
    node.run("ip", "link", "add", "shim0", "link", "uplink0", "type", "macvlan", "mode", "bridge")
    node.run("ip", "addr", "add", "10.99.3.2/24", "dev", "shim0")
    node.run("ip", "link", "set", "shim0", "up")


LAYOUTS = {"bridge+portmap": (flannel_like, "10.99.1."), "ptp": (calico_like, "10.99.2."), "macvlan": (macvlan, "10.99.3.")}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
async def test_add_check_delete_with_real_plugins(node: Node, layout: str) -> None:
    make_config, prefix = LAYOUTS[layout]
    if layout == "macvlan":
        prepare_macvlan_master(node)
    node.write_config("10-test.conflist" if layout != "macvlan" else "10-test.conf", make_config(node))
    cni = node.cni()
    pod_ns, pod_path = node.pod_netns()
    container_id = f"sandbox{secrets.token_hex(8)}"
    k8s = K8sArgs("default", "web", "uid-1", container_id)
    mappings = [PortMapping("tcp", 80, 18080)]

    result = await cni.add(container_id, pod_path, k8s=k8s, port_mappings=mappings)

    (pod_ip,) = result.pod_ips()
    assert pod_ip.startswith(prefix)
    assert [interface.name for interface in result.sandbox_interfaces()] == ["eth0"]
    assert addresses(pod_ns) == [f"{pod_ip}/{result.ips[0].address.split('/')[1]}"]
    node.run("busybox", "ping", "-c1", "-W2", pod_ip)
    assert node.allocations() == [pod_ip]
    if layout == "bridge+portmap":
        rules = node.run("iptables-save", check=False).stdout + node.run("nft", "list", "ruleset", check=False).stdout
        assert "18080" in rules
        assert "cni0" in node.run("ip", "-o", "link").stdout
        assert host_port_answers(node, pod_ns, gateway=result.ips[0].gateway)
    if layout == "ptp":
        assert f"{pod_ip} dev veth" in node.run("ip", "route").stdout  # a /32 host route, as Calico lays it out

    await cni.check(container_id)
    restarted = node.cni()  # a new process reads the cache from disk
    assert restarted.cached_result(container_id) == result
    await restarted.delete(container_id, pod_path)

    assert "eth0" not in links(pod_ns)
    assert node.allocations() == []
    assert not list(node.cache_dir.rglob("*.json"))
    if layout == "bridge+portmap":
        rules = node.run("iptables-save", check=False).stdout + node.run("nft", "list", "ruleset", check=False).stdout
        assert "18080" not in rules
    await restarted.delete(container_id, pod_path)  # repeatable


async def test_exhausted_range_fails_and_leaves_nothing(node: Node) -> None:
    config = flannel_like(node)
    config["plugins"][0]["ipam"] = host_local(node, "10.99.4.0/30")  # one usable address besides the gateway
    node.write_config("10-test.conflist", config)
    cni = node.cni()
    first_ns, first_path = node.pod_netns()
    await cni.add("first", first_path)
    second_ns, second_path = node.pod_netns()

    with pytest.raises(QmprtError, match="host-local|no IP addresses available|range"):
        await cni.add("second", second_path)

    assert links(second_ns) == ["lo"]
    assert len(node.allocations()) == 1
    await cni.delete("first", first_path)
    assert node.allocations() == [] and links(first_ns) == ["lo"]


async def test_missing_later_plugin_rolls_back_the_first(node: Node) -> None:
    config = flannel_like(node)
    config["plugins"][1]["type"] = "no-such-plugin"
    node.write_config("10-test.conflist", config)
    cni = node.cni()
    pod_ns, pod_path = node.pod_netns()

    with pytest.raises(QmprtError, match="no-such-plugin"):
        await cni.add("pod", pod_path)

    assert links(pod_ns) == ["lo"]
    assert node.allocations() == []
    assert not list(node.cache_dir.rglob("*.json"))


async def test_dual_stack_pod_ips_put_ipv4_first(node: Node) -> None:
    config = calico_like(node)
    config["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "fd99:2::/64"}], [{"subnet": "10.99.5.0/24"}]]
    node.write_config("10-test.conflist", config)
    cni = node.cni()
    pod_ns, pod_path = node.pod_netns()

    result = await cni.add("dual", pod_path)

    ipv4, ipv6 = result.pod_ips()
    assert ipv4.startswith("10.99.5.") and ipv6.startswith("fd99:2::")
    assert {address.split("/")[0] for address in addresses(pod_ns)} == {ipv4, ipv6}
    node.run("busybox", "ping", "-c1", "-W2", ipv4)
    await cni.check("dual")
    await cni.delete("dual")
    assert node.allocations() == [] and links(pod_ns) == ["lo"]
