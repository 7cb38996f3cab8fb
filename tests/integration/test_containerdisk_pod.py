"""containerDisks end to end through a real ``qmprt serve``: PullImage from a real registry (TLS with
the test's CA in ``[image.registry."HOST"]``, htpasswd Basic auth with the credentials kubelet passes in
``PullImageRequest.auth``), then VM pods booting from the pulled disk by tag and by digest.

Refusals are checked before anything boots; the two boots are the module's only VMs.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from grpc import aio

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import ROOT, TinyGuest
from .registry import PASSWORD, USER, Registry, oci_layout, running_registry, tar_layer
from .serverproc import ServerProcess, served
from .test_cri_server import wait_for_log

GOOD = cri.AuthConfig(username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def manifest(registry: Registry, tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny guest as a containerDisk pushed as vm/tiny:1, its layer gzipped as docker build makes
    them (the containerdisks project's images); its manifest digest."""
    layout = tmp_path_factory.mktemp("layout")
    layer = gzip.compress(tar_layer({"disk/tiny.qcow2": tiny.disk.read_bytes()}), compresslevel=1)
    digest = oci_layout(layout, "1", [layer])
    registry.push_layout(layout, "1", "vm/tiny:1")
    return digest


@pytest.fixture(scope="module")
def server(
    tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    trust = f'[image.registry."{registry.host}"]\nca_file = "{registry.ca}"\n'
    with served(tmp_path_factory.mktemp("cd"), tiny, f"{TEST_CGROUP_ROOT}/cd", "unused.qmprt.test/x:1",
                extra_config=trust) as server:
        yield server


async def pull_refused(images: Any, name: str, auth: cri.AuthConfig | None) -> tuple[grpc.StatusCode, str]:
    request = cri.PullImageRequest(image=cri.ImageSpec(image=name), auth=auth)
    try:
        await images.PullImage(request, timeout=60)
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError(f"PullImage {name} with {auth} was accepted")


async def test_wrong_or_missing_credentials_are_refused_naming_the_registry(
    server: ServerProcess, stubs: tuple[Any, Any], registry: Registry, manifest: str
) -> None:
    _, images = stubs
    name = f"{registry.host}/vm/tiny:1"
    cases = {
        "none": (None, grpc.StatusCode.UNAUTHENTICATED),
        "wrong password": (cri.AuthConfig(username=USER, password="wrong"), grpc.StatusCode.PERMISSION_DENIED),
        "auth field, wrong": (cri.AuthConfig(auth="bm9ib2R5Om5vcGU="), grpc.StatusCode.PERMISSION_DENIED),
    }
    for case, (auth, expected) in cases.items():
        code, details = await pull_refused(images, name, auth)
        assert code == expected and f"registry {registry.host}" in details, (case, code, details)
    code, details = await pull_refused(images, f"{registry.host}/vm/absent:1", GOOD)
    assert code == grpc.StatusCode.NOT_FOUND and "vm/absent:1" in details, details
    assert (await images.ListImages(cri.ListImagesRequest())).images == []
    assert list((server.state_dir / "images" / "tmp").iterdir()) == []


def pod_config(tmp_path: Path, name: str) -> cri.PodSandboxConfig:
    (tmp_path / "logs" / "vm").mkdir(parents=True, exist_ok=True)  # kubelet's part
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="default"),
        log_directory=str(tmp_path / "logs"),
    )


async def boot_and_remove(runtime: Any, tmp_path: Path, image: str, tiny: TinyGuest) -> None:
    """A pod whose VM boots from ``image`` to the guest's ready marker, then stopped and removed."""
    config = pod_config(tmp_path, secrets.token_hex(3))
    pod_id = (await runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=image),
                                    log_path="vm/0.log")
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container, sandbox_config=config)
    container_id = (await runtime.CreateContainer(request)).container_id
    try:
        await runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
        await wait_for_log(str(tmp_path / "logs" / "vm" / "0.log"), tiny.ready_marker)
        status = (await runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status
        assert status.image.image == image and status.state == cri.CONTAINER_RUNNING
    finally:
        await runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=30), timeout=150)
        await runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
        await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def ctl_pull(server: ServerProcess, name: str, creds: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "qmprt.cli", "ctl", "-r", str(server.socket), "pull", name, "--creds", creds]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_pods_boot_from_a_containerdisk_pulled_by_tag_and_by_digest(
    server: ServerProcess, stubs: tuple[Any, Any], registry: Registry, manifest: str, tiny: TinyGuest,
    tmp_path: Path,
) -> None:
    runtime, images = stubs
    disk = "sha256:" + hashlib.sha256(tiny.disk.read_bytes()).hexdigest()
    by_tag, by_digest = f"{registry.host}/vm/tiny:1", f"{registry.host}/vm/tiny@{manifest}"
    pulled = await images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=by_tag), auth=GOOD), timeout=120)
    assert pulled.image_ref == disk
    listed = (await images.ListImages(cri.ListImagesRequest())).images
    assert [(image.id, list(image.repo_tags), list(image.repo_digests)) for image in listed] == [
        (disk, [by_tag], [by_digest])
    ]
    await boot_and_remove(runtime, tmp_path / "tag", by_tag, tiny)

    await images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=by_tag)))
    assert (await images.ListImages(cri.ListImagesRequest())).images == []
    refused = ctl_pull(server, by_digest, f"{USER}:wrong")
    assert refused.returncode != 0 and f"registry {registry.host}" in refused.stderr, refused.stderr
    done = ctl_pull(server, by_digest, f"{USER}:{PASSWORD}")
    assert done.returncode == 0 and done.stdout == f"Image is up to date for {disk}\n", done.stderr
    status = (await images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=by_digest)))).image
    assert status.id == disk and list(status.repo_digests) == [by_digest] and list(status.repo_tags) == []
    await boot_and_remove(runtime, tmp_path / "digest", by_digest, tiny)
    await images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=by_digest)))
    assert list((server.state_dir / "images" / "sha256").iterdir()) == []
