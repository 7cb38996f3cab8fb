"""``qmprt proxy`` in front of a real qmprt and a real containerd, as on a node that runs both.

A node network namespace holds a Flannel-like bridge network; ``qmprt serve`` and Debian's containerd
(+ runc, private socket, root and state; the benchmark's ``Containerd``) both run in it with the same
CNI config and IPAM directory. Through the proxy's socket only: a busybox container pod (handler "",
so the default: containerd; its image imported from a tar built from busybox-static) and a VM pod
(handler ``qmprt``) get addresses on the one bridge and reach each other's HTTP servers both ways.
Then the proxy restarts with both running, and containerd is killed (its daemon's PID only: the shim
and the container live on, as in a containerd crash) and started again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import ROOT, TinyGuest
from .serverproc import ProxyProcess
from .test_pod_network import (
    BIN_DIR, BOOT_TIMEOUT, GUEST_PORT, IMAGE_NAME, Node, flannel_like, node_with_server, wait_for_log,
)

sys.path.insert(0, str(ROOT / "tools" / "bench"))
from containerd import BUSYBOX, Containerd  # noqa: E402  (the benchmark's private containerd)

pytestmark = pytest.mark.skipif(
    not (shutil.which("containerd") and shutil.which("runc") and (BIN_DIR / "bridge").exists()),
    reason="needs containerd, runc and containernetworking-plugins (tools/install.sh installs them)",
)

BUSYBOX_PORT = 8081


@dataclass
class Side:
    node: Node
    containerd: Containerd
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def side(tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    directory = tmp_path_factory.mktemp("proxy")
    with node_with_server(tiny, directory, f"{TEST_CGROUP_ROOT}/proxy", "plugin_timeout_seconds = 20",
                          (["sysctl", "-qw", "net.ipv4.ip_forward=1"],)) as node:
        node.write_config(flannel_like(node))
        node.server.start()
        ctrd_dir = Path(f"/tmp/qmprt-ctrd-{secrets.token_hex(4)}")  # containerd's socket path must be short
        containerd = Containerd(ctrd_dir, cni=(BIN_DIR, node.server.cni_dir), exec_prefix=("nsenter", f"--net={node.path}", "--"))
        proxy = ProxyProcess(directory, node.server.socket.parent, {
            "containerd": (containerd.socket, ["runc"]), "qmprt": (node.server.socket, ["qmprt"]),
        })
        try:
            containerd.start()
            proxy.start()
            yield Side(node, containerd, proxy)
        finally:
            with Kubelet(proxy.address) as kubelet:
                kubelet.remove_all()
            proxy.stop()
            containerd.stop()


class Kubelet:
    """What kubelet does through its one CRI endpoint, here the proxy's."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *_: object) -> None:
        self.channel.close()

    def run(self, name: str, handler: str, image: str, command: str, log_dir: Path, cgroup_parent: str = "") -> Pod:
        (log_dir / "c").mkdir(parents=True, exist_ok=True)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="default"),
            hostname=name, log_directory=str(log_dir), labels={"app": name},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption()),
            ),
        )
        sandbox_id = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=120).pod_sandbox_id
        # As kubelet (IfNotPresent): ImageStatus, then a pull for the sandbox if it is absent; neither
        # names a handler (RuntimeClassInImageCriApi is off by default).
        spec = cri.ImageSpec(image=image)
        if not self.images.ImageStatus(cri.ImageStatusRequest(image=spec), timeout=30).HasField("image"):
            self.images.PullImage(cri.PullImageRequest(image=spec, sandbox_config=config), timeout=120)
        container_id = self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, sandbox_config=config,
            config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image=image),
                command=["/bin/sh", "-c", command], log_path="c/0.log",
            ),
        ), timeout=120).container_id
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=120)
        status = self.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10).status
        return Pod(name, sandbox_id, container_id, log_dir / "c" / "0.log", status.network.ip)

    def exec(self, pod: Pod, *argv: str, timeout: int = 30) -> cri.ExecSyncResponse:
        return self.runtime.ExecSync(cri.ExecSyncRequest(container_id=pod.container_id, cmd=list(argv), timeout=timeout), timeout=timeout + 10)

    def remove_all(self) -> None:
        for pod in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items:
            self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)


@dataclass
class Pod:
    name: str
    sandbox_id: str
    container_id: str
    log_path: Path
    ip: str

    def wait_for(self, text: str, timeout: float = BOOT_TIMEOUT) -> None:
        wait_for_log(self.name, self.log_path, text, timeout)


@pytest.fixture(scope="module")
def pods(side: Side, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pod]]:
    logs = tmp_path_factory.mktemp("proxy-logs")
    with Kubelet(side.proxy.address) as kubelet:
        vm = kubelet.run(
            "vm-pod", "qmprt", IMAGE_NAME,
            f"mkdir -p /www && echo hello from the vm > /www/index.html && httpd -p {GUEST_PORT} -h /www && echo httpd-up",
            logs / "vm",
        )
        box = kubelet.run(
            "box-pod", "", BUSYBOX,
            f"mkdir -p /www && echo hello from busybox > /www/index.html && echo httpd-up && exec httpd -f -p {BUSYBOX_PORT} -h /www",
            logs / "box", cgroup_parent="/" + side.containerd.cgroup_parent,
        )
        vm.wait_for("httpd-up")
        box.wait_for("httpd-up", 60)
        yield {"vm": vm, "box": box}


def fetch(kubelet: Kubelet, client: Pod, server: Pod, port: int) -> str:
    """``GET /`` of ``server`` from inside ``client``, with busybox's nc (Debian's static busybox wget
    crashes), or why it failed."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {server.ip} {port}"
    answer = kubelet.exec(client, "sh", "-c", request)
    return f"exit {answer.exit_code}: " + answer.stdout.decode(errors="replace") + answer.stderr.decode(errors="replace")


def test_a_vm_pod_and_a_container_pod_on_one_network(side: Side, pods: dict[str, Pod]) -> None:
    vm, box = pods["vm"], pods["box"]
    with Kubelet(side.proxy.address) as kubelet:
        assert vm.ip.startswith("10.98.1.") and box.ip.startswith("10.98.1.") and vm.ip != box.ip
        assert "hello from busybox" in fetch(kubelet, vm, box, BUSYBOX_PORT)
        assert "hello from the vm" in fetch(kubelet, box, vm, GUEST_PORT)
        # Each pod is its runtime's: the VM runs its own kernel, the container the node's.
        assert kubelet.exec(vm, "uname", "-r").stdout.strip().endswith(b"-cloud-amd64")  # Debian's cloud kernel
        assert kubelet.exec(box, "uname", "-r").stdout.strip() == os.uname().release.encode()
        listed = kubelet.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items
        assert {item.id for item in listed} >= {vm.sandbox_id, box.sandbox_id}
        assert {item.runtime_handler for item in listed if item.id in (vm.sandbox_id, box.sandbox_id)} == {"qmprt", ""}
        only_box = kubelet.runtime.ListPodSandbox(cri.ListPodSandboxRequest(
            filter=cri.PodSandboxFilter(label_selector={"app": "box-pod"})), timeout=10).items
        assert [item.id for item in only_box] == [box.sandbox_id]
        of_vm = kubelet.runtime.ListContainers(cri.ListContainersRequest(
            filter=cri.ContainerFilter(pod_sandbox_id=vm.sandbox_id)), timeout=10).containers
        assert [item.id for item in of_vm] == [vm.container_id]
        stats = kubelet.runtime.ListContainerStats(cri.ListContainerStatsRequest(), timeout=30).stats
        assert {stat.attributes.id for stat in stats} >= {vm.container_id, box.container_id}
        version = kubelet.runtime.Version(cri.VersionRequest(), timeout=10)
        assert "qmprt=qmprt" in version.runtime_version and f"containerd=containerd {side.containerd.version}" in version.runtime_version


def test_a_proxy_restart_loses_neither_pod(side: Side, pods: dict[str, Pod]) -> None:
    assert side.proxy.stop() == 0
    side.proxy.start()
    with Kubelet(side.proxy.address) as kubelet:
        listed = {item.id for item in kubelet.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items}
        assert {pods["vm"].sandbox_id, pods["box"].sandbox_id} <= listed
        for pod in pods.values():
            status = kubelet.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=pod.container_id), timeout=10)
            assert status.status.state == cri.CONTAINER_RUNNING, pod.name
        assert kubelet.exec(pods["vm"], "hostname").stdout.strip() == b"vm-pod"
        assert kubelet.exec(pods["box"], "hostname").stdout.strip() == b"box-pod"


def test_a_killed_containerd_is_named_and_the_vm_pod_keeps_working(side: Side, pods: dict[str, Pod]) -> None:
    vm, box = pods["vm"], pods["box"]
    process = side.containerd.daemon.process
    assert process is not None
    process.kill()  # the daemon's PID only; the shim keeps the container
    process.wait(10)
    try:
        with Kubelet(side.proxy.address) as kubelet:
            with pytest.raises(grpc.RpcError) as raised:
                kubelet.exec(box, "true")
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "containerd" in (raised.value.details() or "")
            assert kubelet.exec(vm, "hostname").stdout.strip() == b"vm-pod"
            assert "hello from busybox" in fetch(kubelet, vm, box, BUSYBOX_PORT)  # its container still runs
            listed = {item.id for item in kubelet.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items}
            assert box.sandbox_id in listed, "a runtime that is down must not make its pods vanish from the lists"
            conditions = {c.type: c for c in kubelet.runtime.Status(cri.StatusRequest(), timeout=10).status.conditions}
            assert not conditions["containerd:RuntimeReady"].status and conditions["qmprt:RuntimeReady"].status
    finally:
        side.containerd.daemon.start(lambda: side.containerd.socket.exists() and bool(side.containerd.ctr("version")), timeout=60)
    with Kubelet(side.proxy.address) as kubelet:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = kubelet.exec(box, "hostname")
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert answer.stdout.strip() == b"box-pod"
        assert "hello from the vm" in fetch(kubelet, box, vm, GUEST_PORT)


def test_calls_for_ids_and_handlers_no_runtime_has(side: Side) -> None:
    with Kubelet(side.proxy.address) as kubelet:
        with pytest.raises(grpc.RpcError) as raised:
            kubelet.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="0" * 64), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as raised:
            kubelet.runtime.RunPodSandbox(cri.RunPodSandboxRequest(
                config=cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="x", uid="x", namespace="d")),
                runtime_handler="kata"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "qmprt" in (raised.value.details() or "") and "runc" in (raised.value.details() or "")

