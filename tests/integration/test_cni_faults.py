"""CNI faults: a hanging plugin, and ``qmprt serve`` SIGKILLed in the middle of CNI ADD and DEL.

``qmprt serve`` runs in a node namespace of this module's (as in ``test_pod_network``), on a bridge +
host-local network whose bridge step is slowed down by a wrapper, so a kill lands inside the plugin.
After each restart kubelet's retries (StopPodSandbox, RemovePodSandbox of what the list shows) must
leave no pod namespace, no veth on the node, no IPAM address and no plugin still running. Addresses
are in 10.97.0.0/16, inside the test's namespaces only.
"""

from __future__ import annotations

import random
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt.net import netns

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .test_pod_network import BIN_DIR, Node, host_local, node_with_server

PLUGIN_TIMEOUT = 4
SLOW_SECONDS = 6.0  # ADD: longer than a restart of qmprt serve (~2 s here)
SLOW_DEL_SECONDS = 1.5
SEED = 1204
HANG_SECONDS = "3597"  # what the hanging plugin sleeps: also how the test finds a leftover one

pytestmark = pytest.mark.skipif(
    not (BIN_DIR / "bridge").exists() or not shutil.which("nsenter"), reason="needs containernetworking-plugins and nsenter"
)


@pytest.fixture(scope="module")
def node(tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_server(
        tiny, tmp_path_factory.mktemp("cnifaults"), f"{TEST_CGROUP_ROOT}/cnifaults",
        f"plugin_timeout_seconds = {PLUGIN_TIMEOUT}", log_level="info",
    ) as the_node:
        # The bridge plugin, late in ADD or DEL by what slow-ADD or slow-DEL says, so a kill lands inside it.
        bin_dir = the_node.bin_dir
        slow_down(bin_dir, 0, 0)
        slow = bin_dir / "qmprt-test-slow-bridge"
        slow.write_text(f'#!/bin/sh\nsleep $(cat {bin_dir}/slow-$CNI_COMMAND || echo 0)\nexec {BIN_DIR / "bridge"}\n')
        slow.chmod(0o755)
        the_node.server.start()
        yield the_node


def slow_down(bin_dir: Path, add: float, delete: float) -> None:
    (bin_dir / "slow-ADD").write_text(str(add))
    (bin_dir / "slow-DEL").write_text(str(delete))


def network(node: Node, *plugins: dict[str, Any]) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "faults",
        "plugins": [
            {
                "type": "qmprt-test-slow-bridge", "bridge": "cni9", "isGateway": True, "ipMasq": False,
                "ipam": host_local(node.ipam_dir, [{"subnet": "10.97.1.0/24"}]),
            },
            *plugins,
        ],
    }


def pod_config(name: str) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(6), namespace="faults"))


def stub_of(node: Node) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(node.server.address)
    return channel, api_pb2_grpc.RuntimeServiceStub(channel)


def remove_all(stub: Any) -> None:
    """What kubelet does with every pod it lists after a restart: stop, then remove (both retried)."""
    for pod in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items:
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def plugin_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if (any("qmprt-test-" in part for part in cmdline) or cmdline[-1:] == [HANG_SECONDS]
                or cmdline[:1] == [str(BIN_DIR / "bridge")]):
            found.append(process)
    return found


def assert_clean(node: Node, namespaces_before: set[Path], context: object) -> None:
    """No pod namespace, no veth left on the node (the bridge itself stays, as Flannel's), no
    address held in host-local, no plugin run still alive."""
    deadline = time.monotonic() + 5
    while plugin_processes() and time.monotonic() < deadline:
        time.sleep(0.1)  # a timed-out plugin is being killed
    assert not plugin_processes(), (context, [p.info["cmdline"] for p in plugin_processes()])
    assert set(netns.NETNS_DIR.iterdir()) == namespaces_before, context
    assert [link for link in node.links() if link != "cni9"] == ["lo"], (context, node.links())
    assert node.allocations() == [], (context, node.allocations())
    assert not list((node.server.state_dir / "pods").iterdir()), context


def kill_server(node: Node) -> None:
    assert node.server.process is not None
    node.server.process.kill()
    node.server.process.wait(30)
    node.server.process = None


def test_sigkill_inside_cni_add_and_del_leaves_nothing(node: Node, chaos_iterations: int) -> None:
    rng = random.Random(SEED)
    node.write_config(network(node))
    namespaces_before = set(netns.NETNS_DIR.iterdir())
    channel, stub = stub_of(node)
    for iteration in range(chaos_iterations):
        cut_del = iteration % 2 == 1
        # An ADD slower than a restart of the server: a plugin run that outlived the kill would
        # finish after the restart's clean-up DEL (leaving its veth and address) unless it died
        # with qmprt. A DEL cut half way is simply run again.
        slow_down(node.bin_dir, 0 if cut_del else SLOW_SECONDS, SLOW_DEL_SECONDS if cut_del else 0)
        pod_id = ""
        if cut_del:
            pod_id = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config(f"d{iteration}")), timeout=30).pod_sandbox_id

        def call() -> None:
            try:
                if cut_del:
                    stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
                else:
                    stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config(f"a{iteration}")), timeout=30)
            except grpc.RpcError:
                pass

        worker = threading.Thread(target=call)
        worker.start()
        # Inside the slowed bridge step, which starts ~0.05 s into the call.
        time.sleep(rng.uniform(0.1, SLOW_DEL_SECONDS if cut_del else 3.0))
        kill_server(node)
        # The plugin run dies with the server: left running, it would go on changing the node
        # while the restarted server cleans up after it.
        deadline = time.monotonic() + 1
        while plugin_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not plugin_processes(), (iteration, [p.info["cmdline"] for p in plugin_processes()])
        worker.join(30)
        channel.close()
        node.server.start()
        channel, stub = stub_of(node)
        remove_all(stub)
        assert_clean(node, namespaces_before, (iteration, "DEL" if cut_del else "ADD"))
    slow_down(node.bin_dir, 0, 0)
    channel.close()


def hanging_plugin(node: Node) -> Path:
    """A chained plugin that hangs in the command its mode file names ("ADD", "DEL") and otherwise
    passes ``prevResult`` on; returns the mode file."""
    mode = node.bin_dir / "hang-mode"
    mode.write_text("none")
    plugin = node.bin_dir / "qmprt-test-hang"
    plugin.write_text(
        "#!/usr/bin/python3\n"
        "import json, os, sys\n"
        "config = json.load(sys.stdin)\n"
        f"if os.environ['CNI_COMMAND'] == open({str(mode)!r}).read().strip():\n"
        f"    os.execv('/bin/sleep', ['sleep', {HANG_SECONDS!r}])\n"
        "if os.environ['CNI_COMMAND'] == 'ADD':\n"
        "    print(json.dumps(config['prevResult']))\n"
    )
    plugin.chmod(0o755)
    return mode


def test_a_hanging_plugin_times_out_while_others_are_served(node: Node) -> None:
    mode = hanging_plugin(node)
    mode.write_text("ADD")
    node.write_config(network(node, {"type": "qmprt-test-hang"}))
    namespaces_before = set(netns.NETNS_DIR.iterdir())
    channel, stub = stub_of(node)
    answered: list[float] = []
    outcome: list[grpc.RpcError] = []

    def run() -> None:
        try:
            stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("hang")), timeout=60)
        except grpc.RpcError as err:
            outcome.append(err)

    started = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    while worker.is_alive():
        began = time.monotonic()
        stub.Version(cri.VersionRequest(), timeout=5)
        stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
        answered.append(time.monotonic() - began)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert outcome and outcome[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED, outcome
    assert f"qmprt-test-hang ADD did not finish in {PLUGIN_TIMEOUT}s" in outcome[0].details()
    # The ADD's timeout, then the clean-up DEL (which does not hang here): a bounded wait.
    assert elapsed < PLUGIN_TIMEOUT + 4, elapsed
    assert len(answered) >= 5 and max(answered) < 1.0, answered
    assert_clean(node, namespaces_before, "hanging ADD")

    # A plugin that hangs in DEL: StopPodSandbox answers DEADLINE_EXCEEDED within the bound and keeps
    # the pod, so kubelet's retry (once the plugin behaves) finishes the teardown.
    mode.write_text("none")
    pod_id = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("hang-del")), timeout=30).pod_sandbox_id
    mode.write_text("DEL")
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert time.monotonic() - began < PLUGIN_TIMEOUT + 4
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    assert "qmprt-test-hang DEL" in caught.value.details()
    assert [p.id for p in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items] == [pod_id]
    mode.write_text("none")
    remove_all(stub)
    assert_clean(node, namespaces_before, "hanging DEL")
    channel.close()
