"""A generated campaign of hostile requests against a real ``qmprt serve``.

Every field of the requests that create or change something gets random and boundary values (empty,
NUL and control characters, path tricks, 1 MiB strings, huge maps, out-of-range numbers and enum
values), seeded so a failure replays. The rule: no INTERNAL or UNKNOWN answer, no call that hangs,
the server answers Version to another client within a second throughout, and once everything is
removed through the CRI nothing is left (no QEMU, netns, cgroup, state or temp file).
No VM boots here (StartContainer is not in the mix), so the campaign is fast.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups
from qmprt.net import netns

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import ServerProcess, served

IMAGE_NAME = "images.qmprt.test/tiny:1"
ITERATIONS = 400
SEED = 20261203
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OUT_OF_RANGE,
}

STRINGS = [
    "", "\x00", "a\x00b", "\n", "name\n", "\x1b[31m", "../../../etc", "/", "//", "/etc/passwd", "..", ".",
    "ü✓日本🚀", "a" * 254, "a" * 70_000, "b" * (1 << 20), " leading", "x/../../y", "-", "%s%n", "\\", "'\"`$(id)",
]
NUMBERS = [0, 1, -1, 2, 65535, 65536, 1 << 31, -(1 << 31), (1 << 62), (1 << 63) - 1, -(1 << 63), 99]


def text(rng: random.Random) -> str:
    return rng.choice(STRINGS) if rng.random() < 0.8 else secrets.token_hex(rng.randrange(1, 40))


def number(rng: random.Random, low: int = -(1 << 63), high: int = (1 << 63) - 1) -> int:
    return max(low, min(high, rng.choice(NUMBERS)))


def string_map(rng: random.Random) -> dict[str, str]:
    shape = rng.randrange(5)
    if shape == 0:
        return {f"k{i}": "v" for i in range(rng.choice([1100, 5000]))}
    if shape == 1:
        return {"big": "x" * rng.choice([200_000, 300_000])}
    return {text(rng): text(rng) for _ in range(rng.randrange(3))}


def sandbox_config(rng: random.Random, log_root: Path) -> cri.PodSandboxConfig:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="h", uid=secrets.token_hex(8), namespace="hostile"),
        log_directory=str(log_root),
    )
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice(["name", "uid", "namespace", "attempt", "hostname", "log_directory", "labels",
                            "annotations", "cgroup_parent", "port", "sysctls", "dns", "resources", "namespaces"])
        if field in ("name", "uid", "namespace"):
            setattr(config.metadata, field, text(rng))
        elif field == "attempt":
            config.metadata.attempt = number(rng, 0, (1 << 32) - 1)
        elif field in ("hostname", "log_directory"):
            setattr(config, field, text(rng))
        elif field in ("labels", "annotations"):
            getattr(config, field).update(string_map(rng))
        elif field == "cgroup_parent":
            config.linux.cgroup_parent = text(rng)
        elif field == "port":
            config.port_mappings.add(
                protocol=number(rng, 0, 200), container_port=number(rng, -(1 << 31), (1 << 31) - 1),
                host_port=number(rng, -(1 << 31), (1 << 31) - 1), host_ip=text(rng),
            )
        elif field == "sysctls":
            config.linux.sysctls.update({text(rng): text(rng)})
        elif field == "dns":
            config.dns_config.servers.append(text(rng))
            config.dns_config.options.append(text(rng))
        elif field == "resources":
            config.linux.overhead.memory_limit_in_bytes = number(rng)
        else:
            config.linux.security_context.namespace_options.network = number(rng, 0, 200)
    return config


def container_config(rng: random.Random) -> cri.ContainerConfig:
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=f"c{secrets.token_hex(4)}"),
                                 image=cri.ImageSpec(image=IMAGE_NAME))
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice(["name", "image", "log_path", "working_dir", "command", "envs", "mounts", "devices",
                            "labels", "annotations", "resources", "qmprt", "security"])
        if field == "name":
            config.metadata.name = text(rng)
        elif field == "image":
            config.image.image = text(rng)
        elif field in ("log_path", "working_dir"):
            setattr(config, field, text(rng))
        elif field == "command":
            config.command.extend([text(rng) for _ in range(rng.choice([1, 2, 5000]))])
        elif field == "envs":
            config.envs.add(key=text(rng), value=text(rng))
        elif field == "mounts":
            config.mounts.add(container_path=text(rng), host_path=rng.choice(["/dev/zero", "/proc/self/environ",
                              "/etc/shadow", "relative", "", text(rng)]), propagation=number(rng, 0, 50))
        elif field == "devices":
            config.devices.add(container_path=text(rng), host_path=text(rng), permissions=text(rng))
        elif field in ("labels", "annotations"):
            getattr(config, field).update(string_map(rng))
        elif field == "resources":
            resources = config.linux.resources
            for name in ("cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes"):
                setattr(resources, name, number(rng))
            resources.cpuset_cpus = text(rng)
            resources.unified.update({text(rng): text(rng)})
        elif field == "qmprt":
            key = rng.choice(["qmprt.io/data-volumes", "qmprt.io/root-volume-size", "qmprt.io/vcpus",
                              "qmprt.io/rbd-volumes", "qmprt.io/command-exit", "qmprt.io/nonsense"])
            config.annotations[key] = rng.choice(["1x1Ei", "16x64Ti", "99999999999x1Mi", "[{}]", "poweroff\n",
                                                  "-1", "1e999", text(rng)])
        else:
            config.linux.security_context.readonly_rootfs = rng.random() < 0.5
            config.linux.security_context.run_as_group.value = number(rng)
    return config


@pytest.fixture(scope="module")
def server(
    tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with served(tmp_path_factory.mktemp("hostile"), tiny, f"{TEST_CGROUP_ROOT}/hostile", IMAGE_NAME,
                log_level="info") as server:
        yield server


@pytest.fixture
async def stubs(server: ServerProcess) -> AsyncIterator[tuple[Any, Any]]:
    channel = aio.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    yield api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel)
    await channel.close()


async def test_hostile_requests_get_clear_codes_and_leave_nothing(
    server: ServerProcess, stubs: tuple[Any, Any], tmp_path: Path, cgroup_driver: cgroups.CgroupDriver
) -> None:
    runtime, images = stubs
    rng = random.Random(SEED)
    log_root = tmp_path / "logs"
    log_root.mkdir()
    await images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=120)
    valid = await runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name="base", uid="base-uid", namespace="hostile"),
            log_directory=str(log_root),
        )), timeout=60,
    )
    pod_id = valid.pod_sandbox_id
    netns_before = set(netns_names())

    slowest_version = 0.0
    stop = asyncio.Event()

    async def ping_version() -> None:
        nonlocal slowest_version
        channel = aio.insecure_channel(server.address)
        other = api_pb2_grpc.RuntimeServiceStub(channel)
        try:
            while not stop.is_set():
                started = asyncio.get_running_loop().time()
                await other.Version(cri.VersionRequest(), timeout=5)
                slowest_version = max(slowest_version, asyncio.get_running_loop().time() - started)
                await asyncio.sleep(0.05)
        finally:
            await channel.close()

    calls: list[Callable[[], Any]] = [
        lambda: runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=sandbox_config(rng, log_root),
                                                               runtime_handler=rng.choice(["", "qmprt", text(rng)]))),
        lambda: runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=rng.choice([pod_id, pod_id[:5], text(rng)]), config=container_config(rng))),
        lambda: runtime.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest(runtime_config=cri.RuntimeConfig(
            network_config=cri.NetworkConfig(pod_cidr=rng.choice(["10.0.0.0/33", "x", "", "fd00::/64,10.1.0.0/16",
                                                                   text(rng)]))))),
        lambda: runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=text(rng), verbose=True)),
        lambda: runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=text(rng))),
        lambda: runtime.ExecSync(cri.ExecSyncRequest(container_id=text(rng), cmd=[text(rng)], timeout=number(rng, -5, 5))),
        lambda: runtime.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
            container_id=text(rng), linux=cri.LinuxContainerResources(memory_limit_in_bytes=number(rng)))),
        lambda: runtime.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
            id=text(rng), state=cri.ContainerStateValue(state=number(rng, 0, 100)), label_selector=string_map(rng)))),
        lambda: runtime.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
            state=cri.PodSandboxStateValue(state=number(rng, 0, 100))))),
        lambda: runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=text(rng))),
        lambda: images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=text(rng)))),
        lambda: images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=text(rng)))),
    ]
    pinger = asyncio.create_task(ping_version())
    codes: dict[str, dict[str, int]] = {}
    bad: list[str] = []
    try:
        for iteration in range(ITERATIONS):
            index = rng.randrange(len(calls))
            call = calls[index]()
            try:
                await asyncio.wait_for(call, 30)
                code = grpc.StatusCode.OK
            except aio.AioRpcError as err:
                code = err.code()
                if code not in ALLOWED:
                    bad.append(f"#{iteration} call {index}: {code.name}: {err.details()[:300]}")
            except asyncio.TimeoutError:
                bad.append(f"#{iteration} call {index}: no answer within 30 s")
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            codes.setdefault(str(index), {}).setdefault(code.name, 0)
            codes[str(index)][code.name] += 1
    finally:
        stop.set()
        await pinger
    names = ["RunPodSandbox", "CreateContainer", "UpdateRuntimeConfig", "PodSandboxStatus", "ContainerStatus",
             "ExecSync", "UpdateContainerResources", "ListContainers", "ListPodSandbox", "ReopenContainerLog",
             "ImageStatus", "RemoveImage"]
    assert len(names) == len(calls)
    print("hostile requests, codes by call:", {names[int(index)]: by_code for index, by_code in sorted(codes.items())})
    assert not bad, "\n".join(bad)
    assert slowest_version < 1.0, f"Version took {slowest_version:.2f} s while hostile requests ran"
    assert any("OK" in by_code for by_code in codes.values()), codes
    refused = sum(by_code.get("INVALID_ARGUMENT", 0) for by_code in codes.values())
    assert refused > ITERATIONS // 4, codes  # the campaign reached the checks, not only lookups

    for pod in (await runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30)).items:
        await runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
    assert not (await runtime.ListContainers(cri.ListContainersRequest(), timeout=30)).containers
    assert set(netns_names()) <= netns_before - {netns.netns_name(pod_id)}, "a pod namespace was left behind"
    pods_dir = server.state_dir / "pods"
    assert not list(pods_dir.iterdir()), f"state left behind: {list(pods_dir.iterdir())}"
    leftovers = [p for p in server.state_dir.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert not [path for path in cgroup_paths(cgroup_driver) if "hostile/" in path], "a cgroup was left behind"


def netns_names() -> list[str]:
    directory = Path("/run/netns")
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def cgroup_paths(driver: cgroups.CgroupDriver) -> list[str]:
    root = Path("/sys/fs/cgroup/memory") if Path("/sys/fs/cgroup/memory").is_dir() else Path("/sys/fs/cgroup")
    base = root / TEST_CGROUP_ROOT
    return [str(p.relative_to(root)) for p in base.rglob("*") if p.is_dir()] if base.is_dir() else []
