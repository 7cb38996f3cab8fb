"""Benchmark of qmprt through its CRI socket, as kubelet drives it.

1. VM pod start: RunPodSandbox + CreateContainer + StartContainer through the socket, until the
   guest's ready marker is in the container's CRI log (the log file is polled every 5 ms). Median and
   p95 over --pods pods, each removed before the next starts; the split into runp / create / start /
   guest boot is reported too.
2. Relist: with --present pods running, the latency of ListPodSandbox + ListContainers + one
   ContainerStatus per container (what kubelet's PLEG relist does every second), p50 and p99 over
   --lists rounds.

``Client`` speaks to any CRI socket (tools/bench/run also points it at containerd's), and
``qmprt_server`` runs a private ``qmprt serve`` with the tiny guest as an image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from common import OutputWatch, environment, format_table, headline, percentile, summaries
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt import cgroups
from qmprt.image import ImageConfig, ImageStore
from tests.integration.guests import TinyGuest, tiny_guest
from tests.integration.serverproc import ServerProcess

IMAGE = "bench.qmprt.local/tiny:1"


@dataclass(frozen=True)
class PodTemplate:
    """What a benchmark pod runs: one container of ``image`` whose log is ``log_name``."""

    image: str = IMAGE
    log_name: str = "vm.log"
    command: tuple[str, ...] = ()
    namespace_options: bool = False  # containerd wants linux.security_context.namespace_options set
    cgroup_parent: str = ""
    annotations: tuple[tuple[str, str], ...] = ()
    sandbox_annotations: tuple[tuple[str, str], ...] = ()  # the pod's own (qmprt.io/network-wiring)
    handler: str = ""  # RuntimeClass handler (through qmprt proxy: "qmprt" for a VM pod)


VM_POD = PodTemplate()
DIRECT_POD = PodTemplate(annotations=(("qmprt.io/boot", "direct"),))
MICROVM_POD = PodTemplate(annotations=(("qmprt.io/boot", "microvm"),))
TEMPLATE_POD = PodTemplate(annotations=(("qmprt.io/boot", "template"),))  # a clone of a template


@dataclass
class StartedPod:
    pod_id: str
    container_id: str
    log_path: Path
    timings: dict[str, float] = field(default_factory=dict)  # runp/create/start/ready/total, ms
    ready_at: float = 0.0  # monotonic time the ready marker was seen in the CRI log


class Client:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def version(self) -> str:
        answer = self.runtime.Version(cri.VersionRequest(), timeout=30)
        return f"{answer.runtime_name} {answer.runtime_version}"

    def pull(self, image: str) -> None:
        self.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=300)

    def start_pod(
        self,
        index: int,
        log_dir: Path,
        ready_marker: str,
        template: PodTemplate = VM_POD,
        on_created: Callable[[str, str], None] | None = None,
        timeout: float = 180,
    ) -> StartedPod:
        """runp + create + start, then wait for ``ready_marker`` in the container's CRI log.

        ``on_created(pod_id, container_id)`` runs between CreateContainer and StartContainer.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        linux = cri.LinuxPodSandboxConfig(cgroup_parent=template.cgroup_parent)
        if template.namespace_options:
            linux.security_context.CopyFrom(cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption()))
        pod_config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=f"bench-{index}", namespace="bench", uid=f"uid-{index}"),
            hostname=f"bench-{index}",
            log_directory=str(log_dir),
            linux=linux,
            annotations=dict(template.sandbox_annotations),
        )
        container_config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="main"),
            image=cri.ImageSpec(image=template.image),
            command=list(template.command),
            log_path=template.log_name,
            annotations=dict(template.annotations),
        )
        log_path = log_dir / template.log_name
        t0 = time.monotonic()
        run = cri.RunPodSandboxRequest(config=pod_config, runtime_handler=template.handler)
        pod_id = self.runtime.RunPodSandbox(run, timeout=240).pod_sandbox_id
        t1 = time.monotonic()
        container_id = self.runtime.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container_config, sandbox_config=pod_config), timeout=120
        ).container_id
        t2 = time.monotonic()
        started = StartedPod(pod_id, container_id, log_path)
        watch = OutputWatch(log_path, ready_marker).start()
        try:
            if on_created is not None:
                on_created(pod_id, container_id)
            self.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=120)
            t3 = time.monotonic()
            t4 = watch.wait(timeout)
        finally:
            watch.stop()
        started.ready_at = t4
        started.timings = {
            "runp_ms": (t1 - t0) * 1000, "create_ms": (t2 - t1) * 1000, "start_ms": (t3 - t2) * 1000,
            "ready_ms": (t4 - t3) * 1000, "total_ms": (t4 - t0) * 1000,
        }
        return started

    def started_at_ns(self, container_id: str) -> int:
        return int(self.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id), timeout=10).status.started_at)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)

    def remove_all(self) -> None:
        """Remove every pod the runtime lists (this client's runtime is private to the benchmark)."""
        for sandbox in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items:
            with contextlib.suppress(grpc.RpcError):
                self.remove_pod(sandbox.id)

    def relist_ms(self, statuses: bool = True) -> float:
        """kubelet's relist: ListPodSandbox + ListContainers (+ ContainerStatus of each container)."""
        t0 = time.perf_counter()
        self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10)
        containers = self.runtime.ListContainers(cri.ListContainersRequest(), timeout=10).containers
        if statuses:
            for container in containers:
                self.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container.id), timeout=10)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.channel.close()


@dataclass
class QmprtUnderTest:
    server: ServerProcess
    client: Client
    guest: TinyGuest
    work: Path

    def container_dir(self, pod_id: str, container_id: str) -> Path:
        return self.server.state_dir / "pods" / pod_id / container_id

    def qemu_processes(self) -> list[psutil.Process]:
        return self.server.qemu_processes()

    def server_rss_bytes(self) -> int:
        assert self.server.process is not None
        return int(psutil.Process(self.server.process.pid).memory_info().rss)


@contextlib.contextmanager
def qmprt_server(
    log_level: str = "warning", cni_settings: str = "", exec_prefix: Sequence[str] = (), extra_config: str = ""
) -> Iterator[QmprtUnderTest]:
    """A private ``qmprt serve`` (temp state, unix socket, own cgroup root) with the tiny guest pulled.

    ``cni_settings``, ``exec_prefix`` and ``extra_config`` go to ``ServerProcess`` (network.py runs the
    server inside a node network namespace with ``nsenter``; containerdisk.py adds its registry's
    ``[image.registry."HOST"]`` table); the CNI config directory is ``server.cni_dir``, empty.

    On the way out every pod is removed, the server stopped by PID, any QEMU it left killed, and the
    state, socket directory and cgroup root deleted, whatever happened inside.
    """
    guest = tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-cri-"))
    socket_dir = Path(tempfile.mkdtemp(prefix="qbc-", dir="/tmp"))
    cgroup_root = f"qmprt-bench-{os.getpid()}"
    server = ServerProcess(
        work, socket_dir, guest, cgroup_root, IMAGE, log_level=log_level, cni_settings=cni_settings,
        exec_prefix=exec_prefix, extra_config=extra_config,
    )
    client: Client | None = None
    try:
        server.start()
        client = Client(server.address)
        client.pull(IMAGE)
        # The pulled image gets the tiny guest's kernel, so pods may boot it directly (qmprt.io/boot);
        # the store is safe to change beside the running server.
        store = ImageStore(server.state_dir / "images", ImageConfig())
        store.set_boot_files(IMAGE, guest.kernel, guest.initrd, " ".join(guest.cmdline("q35")))
        store.close()
        yield QmprtUnderTest(server, client, guest, work)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.remove_all()
            client.close()
        if server.process is not None:
            server.stop()
        for process in server.qemu_processes():
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
        driver = cgroups.detect()
        if driver.exists(cgroup_root):
            driver.open(cgroup_root).delete()


def start_many(client: Client, count: int, first_index: int, log_root: Path, ready_marker: str) -> tuple[float, list[StartedPod]]:
    """``count`` VM pods started at once (a thread each): seconds until all are ready, and the pods."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
        futures = [
            pool.submit(client.start_pod, first_index + i, log_root / f"pod-{first_index + i}", ready_marker, timeout=600)
            for i in range(count)
        ]
        pods = [future.result() for future in futures]
    return time.monotonic() - t0, pods


def remove_many(client: Client, pods: list[StartedPod]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(pods))) as pool:
        list(pool.map(lambda pod: client.remove_pod(pod.pod_id), pods))


def relist_summary(client: Client, rounds: int) -> dict[str, float]:
    samples = [client.relist_ms() for _ in range(rounds)]
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), "rounds": rounds}


def run(pods: int, present: int, lists: int) -> dict[str, object]:
    with qmprt_server() as qmprt:
        samples = []
        for index in range(pods):
            started = qmprt.client.start_pod(index, qmprt.work / "logs" / f"start-{index}", qmprt.guest.ready_marker)
            qmprt.client.remove_pod(started.pod_id)
            samples.append(started.timings)
        _, running = start_many(qmprt.client, present, 1000, qmprt.work / "logs", qmprt.guest.ready_marker)
        relist = relist_summary(qmprt.client, lists)
        server_rss = qmprt.server_rss_bytes()
        remove_many(qmprt.client, running)
    return {
        **environment(),
        "start": summaries(samples),
        "pods_started": pods,
        "present": present,
        "relist_ms": relist,
        "server_rss_mib": server_rss / (1 << 20),
    }


def table(report: dict[str, object]) -> str:
    start = report["start"]
    relist = report["relist_ms"]
    assert isinstance(start, dict) and isinstance(relist, dict)
    rows = [(key[:-3], start[key]["median"], start[key]["p95"]) for key in ("runp_ms", "create_ms", "start_ms", "ready_ms", "total_ms")]
    return "\n".join([
        f"CRI benchmark: {headline(report)}",
        f"VM pod start through the socket, {report['pods_started']} pods, tiny guest from its QCOW2 disk (q35):",
        format_table(("phase", "median ms", "p95 ms"), rows),
        f"ListPodSandbox+ListContainers+ContainerStatus with {report['present']} pods running: "
        f"p50 {relist['p50']:.2f} ms, p99 {relist['p99']:.2f} ms over {relist['rounds']} rounds; "
        f"qmprt serve RSS {report['server_rss_mib']:.0f} MiB",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10, help="pods started one after another for the start figures")
    parser.add_argument("--present", type=int, default=20, help="pods running while relist latency is measured")
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    report = run(args.pods, args.present, args.lists)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
