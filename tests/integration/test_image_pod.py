"""Images end to end through a real ``qmprt serve``: a VM pod booting from an image pulled over HTTP
with a grown root disk, and ``qmprt ctl image import`` into the store of the running server.

The image server is Python's ``http.server`` on 127.0.0.1 in a thread, serving the tiny guest's qcow2;
a translation rule in the server's config maps a name to it. The module boots ONE VM (the machine is
small and shared): every refusal is checked before it, and refusals never boot anything.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from grpc import aio

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import ROOT, TinyGuest
from .serverproc import ServerProcess, served
from .test_cri_server import wait_for_log

PULLED = "http.qmprt.test/tiny:1"
IMPORTED = "import.qmprt.test/tiny:1"
GROWN = "qmprt.io/root-volume-size"
SECTOR = 512


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def image_url(tiny: TinyGuest) -> Iterator[tuple[str, list[str]]]:
    """The tiny guest's disk over http on loopback, and the paths the server was asked for."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tiny.directory)))
    server.daemon_threads = True
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{tiny.disk.name}", server.paths  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(
    tiny: TinyGuest,
    cgroup_driver: cgroups.CgroupDriver,
    image_url: tuple[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    rules = [(PULLED.rsplit(":", 1)[0], image_url[0])]
    with served(tmp_path_factory.mktemp("img"), tiny, f"{TEST_CGROUP_ROOT}/img", "unused.qmprt.test/x:1",
                image_rules=rules) as server:
        yield server


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


async def image_status(images: Any, name: str) -> cri.Image | None:
    response = await images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=name)))
    return response.image if response.HasField("image") else None


def ctl_import(server: ServerProcess, path: Path, name: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "qmprt.cli", "ctl", "image", "import", str(path), "--name", name]
    return subprocess.run([*argv, "--config", str(server.config)], cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_ctl_import_into_the_store_of_a_running_server(
    server: ServerProcess, stubs: tuple[Any, Any], tiny: TinyGuest, tmp_path: Path
) -> None:
    _, images = stubs
    assert await image_status(images, IMPORTED) is None  # the server has looked at its index already
    imported = ctl_import(server, tiny.disk, IMPORTED)
    assert imported.returncode == 0, imported.stderr
    assert f"as {IMPORTED}: {sha256_of(tiny.disk)}" in imported.stdout
    found = await image_status(images, IMPORTED)  # no restart, no pull
    assert found is not None and found.id == sha256_of(tiny.disk) and IMPORTED in found.repo_tags
    listed = (await images.ListImages(cri.ListImagesRequest())).images
    assert [image.id for image in listed] == [found.id]

    hostile = tmp_path / "backing.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(hostile)], check=True
    )
    refused = ctl_import(server, hostile, "import.qmprt.test/evil:1")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"{hostile} was not imported: the image has a backing file" in refused.stderr
    assert await image_status(images, "import.qmprt.test/evil:1") is None
    assert list((server.state_dir / "images" / "tmp").iterdir()) == []

    await images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=IMPORTED)))
    assert (await images.ListImages(cri.ListImagesRequest())).images == []


def pod_config(tmp_path: Path, size: str) -> cri.PodSandboxConfig:
    (tmp_path / "logs" / "vm").mkdir(parents=True, exist_ok=True)  # kubelet's part
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="grown", uid=secrets.token_hex(8), namespace="default"),
        log_directory=str(tmp_path / "logs"),
        annotations={GROWN: size},  # the pod's default; the container's own annotation wins
    )


def container_config(annotations: dict[str, str]) -> cri.ContainerConfig:
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=PULLED), log_path="vm/0.log",
        annotations=annotations,
    )


async def refusal(runtime: Any, request: cri.CreateContainerRequest) -> tuple[grpc.StatusCode, str]:
    try:
        await runtime.CreateContainer(request)
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError(f"CreateContainer with {dict(request.config.annotations)} was accepted")


async def test_a_pod_boots_from_an_image_pulled_over_http_with_a_grown_root_disk(
    server: ServerProcess, stubs: tuple[Any, Any], tiny: TinyGuest, image_url: tuple[str, list[str]], tmp_path: Path
) -> None:
    runtime, images = stubs
    url, served_paths = image_url
    digest = sha256_of(tiny.disk)
    pulled = await images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=PULLED)), timeout=120)
    assert pulled.image_ref == digest and served_paths == [f"/{tiny.disk.name}"]
    status = await image_status(images, PULLED)
    assert status is not None and status.id == digest and status.size == tiny.disk.stat().st_size

    config = pod_config(tmp_path, "512Mi")
    pod_id = (await runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    refused = {
        "malformed": ({GROWN: "1GB"}, ["Gi", "plain bytes"]),
        "smaller-than-the-image": ({GROWN: "128Mi"}, ["can only grow"]),
        "absurd": ({GROWN: "1Ei"}, ["above the limit"]),
        "typo": ({"qmprt.io/root-volume-sise": "1Gi"}, ["'qmprt.io/root-volume-sise'"]),
    }
    for case, (given, words) in refused.items():
        request = cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config(given), sandbox_config=config
        )
        code, details = await refusal(runtime, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, details)
        assert all(word in details for word in words) and (GROWN in details or "sise" in details), (case, details)
    pod_dir = server.state_dir / "pods" / pod_id
    assert sorted(entry.name for entry in pod_dir.iterdir()) == ["sandbox.json", "status.json"], "a refusal left files"

    request = cri.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config({GROWN: "1Gi"}), sandbox_config=config
    )
    container_id = (await runtime.CreateContainer(request)).container_id
    await runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    await wait_for_log(str(tmp_path / "logs" / "vm" / "0.log"), tiny.ready_marker)
    sectors = await runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=["cat", "/sys/block/vda/size"], timeout=60)
    )
    assert (sectors.exit_code, sectors.stdout.decode().strip()) == (0, str((1 << 30) // SECTOR))

    in_use = images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=PULLED)))
    with pytest.raises(aio.AioRpcError) as caught:
        await in_use
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=30), timeout=150)
    await runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=PULLED)))
    assert await image_status(images, PULLED) is None
    assert list((server.state_dir / "images" / "sha256").iterdir()) == []
