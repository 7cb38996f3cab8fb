"""Benchmark of qmprt through its CRI socket, as kubelet drives it.

1. VM pod start: RunPodSandbox + CreateContainer + StartContainer through the socket, until the
   guest's ready marker is in the container's CRI log (the log file is polled every 10 ms). Median and
   p95 over --pods pods, each removed before the next starts; the split into runp / create / start /
   guest boot is reported too.
2. Relist: with --present pods running, the latency of ListPodSandbox + ListContainers (what
   kubelet's PLEG does every second), p50 and p99 over --lists rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cri_api.v1 import api_pb2 as cri  # noqa: E402
from cri_api.v1 import api_pb2_grpc  # noqa: E402

from qmprt import cgroups  # noqa: E402
from qmprt.vm import accel  # noqa: E402
from tests.integration.guests import tiny_guest  # noqa: E402
from tests.integration.serverproc import ServerProcess  # noqa: E402

IMAGE = "bench.qmprt.local/tiny:1"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Client:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def start_pod(self, index: int, log_dir: Path, ready_marker: str) -> dict[str, float]:
        log_dir.mkdir(parents=True, exist_ok=True)
        pod_config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=f"bench-{index}", namespace="bench", uid=f"uid-{index}"),
            hostname=f"bench-{index}",
            log_directory=str(log_dir),
            linux=cri.LinuxPodSandboxConfig(),
        )
        container_config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="vm"),
            image=cri.ImageSpec(image=IMAGE),
            log_path="vm.log",
        )
        t0 = time.monotonic()
        pod = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config), timeout=240).pod_sandbox_id
        t1 = time.monotonic()
        container = self.runtime.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=pod, config=container_config, sandbox_config=pod_config), timeout=120
        ).container_id
        t2 = time.monotonic()
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=container), timeout=120)
        t3 = time.monotonic()
        log = log_dir / "vm.log"
        deadline = t3 + 180
        while not (log.exists() and ready_marker in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"pod {index} did not become ready")
            time.sleep(0.01)
        t4 = time.monotonic()
        return {"pod": pod, "runp_ms": (t1 - t0) * 1000, "create_ms": (t2 - t1) * 1000,  # type: ignore[dict-item]
                "start_ms": (t3 - t2) * 1000, "boot_ms": (t4 - t3) * 1000, "total_ms": (t4 - t0) * 1000}

    def remove_pod(self, pod: str) -> None:
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)

    def relist_ms(self) -> float:
        t0 = time.perf_counter()
        self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10)
        self.runtime.ListContainers(cri.ListContainersRequest(), timeout=10)
        return (time.perf_counter() - t0) * 1000


def run(pods: int, present: int, lists: int) -> dict[str, object]:
    guest = tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-cri-"))
    socket_dir = Path(tempfile.mkdtemp(prefix="qbc-", dir="/tmp"))
    cgroup_root = f"qmprt-bench-{os.getpid()}"
    server = ServerProcess(work, socket_dir, guest, cgroup_root, IMAGE, log_level="warning")
    server.start()
    client = Client(server.address)
    try:
        client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE)), timeout=300)
        samples = []
        for index in range(pods):
            sample = client.start_pod(index, work / "logs" / f"start-{index}", guest.ready_marker)
            client.remove_pod(str(sample.pop("pod")))
            samples.append(sample)
        started = []
        for index in range(present):
            started.append(str(client.start_pod(1000 + index, work / "logs" / f"present-{index}", guest.ready_marker)["pod"]))
        relists = [client.relist_ms() for _ in range(lists)]
        server_rss = psutil.Process(server.process.pid).memory_info().rss if server.process else 0
        for pod in started:
            client.remove_pod(pod)
    finally:
        client.channel.close()
        server.stop()
        for process in server.qemu_processes():
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
        driver = cgroups.detect()
        if driver.exists(cgroup_root):
            driver.open(cgroup_root).delete()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    choice = accel.detect()
    return {
        "accelerator": choice.accel,
        "qemu": qemu,
        "machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total >> 30} GiB",
        "start": {key: {"median": statistics.median(s[key] for s in samples), "p95": percentile([s[key] for s in samples], 0.95)}
                  for key in samples[0]},
        "pods_started": pods,
        "present": present,
        "relist_ms": {"p50": percentile(relists, 0.5), "p99": percentile(relists, 0.99), "rounds": lists},
        "server_rss_mib": server_rss / (1 << 20),
    }


def table(report: dict[str, object]) -> str:
    start = report["start"]
    relist = report["relist_ms"]
    assert isinstance(start, dict) and isinstance(relist, dict)
    lines = [
        f"CRI benchmark: {report['accelerator']}, {report['qemu']}, {report['machine']}",
        f"VM pod start through the socket, {report['pods_started']} pods, tiny guest from its QCOW2 disk (q35):",
        f"  {'phase':<10}{'median ms':>11}{'p95 ms':>9}",
    ]
    for key in ("runp_ms", "create_ms", "start_ms", "boot_ms", "total_ms"):
        lines.append(f"  {key[:-3]:<10}{start[key]['median']:>11.1f}{start[key]['p95']:>9.1f}")
    lines.append(
        f"ListPodSandbox+ListContainers with {report['present']} pods running: "
        f"p50 {relist['p50']:.2f} ms, p99 {relist['p99']:.2f} ms over {relist['rounds']} rounds; "
        f"qmprt serve RSS {report['server_rss_mib']:.0f} MiB"
    )
    return "\n".join(lines)


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
