"""containerDisks pulled into the image store from a real registry (TLS, htpasswd Basic auth).

Every image is an OCI layout the test builds and skopeo pushes; the store pulls it as PullImage does
(``ImageStore.pull``), with qemu-img's checks. Each refusal must leave nothing behind: no blob, no
name, no temp file. The last test kills the registry in the middle of a pull.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from qmprt.image.fetch import PullAuth
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.registryconfig import RegistryHost
from qmprt.image.rules import ImageConfig
from qmprt.image.store import ImageStore

from .guests import TinyGuest
from .registry import PASSWORD, USER, Registry, free_port, oci_index, oci_layout, running_registry, tar_layer
from .test_image_store import assert_nothing_stored

GOOD = PullAuth(username=USER, password=PASSWORD)
LIMIT = 1 << 30


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(registry: Registry, directory: Path, reference: str, layers: list[bytes]) -> str:
    """One image of ``layers`` pushed as ``reference`` (repo:tag); its manifest digest."""
    tag = reference.rpartition(":")[2]
    digest = oci_layout(directory, tag, layers)
    registry.push_layout(directory, tag, reference)
    return digest


@pytest.fixture(scope="module")
def tiny_disk(registry: Registry, tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """The tiny guest as a containerDisk, pushed as vm/tiny:1 and vm/tiny:2; (its bytes, the manifest digest)."""
    disk = tiny.disk.read_bytes()
    layout = tmp_path_factory.mktemp("tiny-layout")
    digest = push(registry, layout, "vm/tiny:1", [tar_layer({"disk/tiny.qcow2": disk})])
    registry.push_layout(layout, "1", "vm/tiny:2")
    return disk, digest


def store_for(registry: Registry, root: Path) -> ImageStore:
    trusting = RegistryHost(FetchSettings(ca_file=str(registry.ca), proxy="", timeout_s=10))
    return ImageStore(root, ImageConfig(registries={registry.host: trusting}, max_virtual_size_bytes=LIMIT))


@pytest.fixture
def store(registry: Registry, tmp_path: Path) -> Iterator[ImageStore]:
    image_store = store_for(registry, tmp_path / "images")
    yield image_store
    image_store.close()


async def test_pull_by_tag_and_by_digest_two_tags_stored_once(
    registry: Registry, store: ImageStore, tiny_disk: tuple[bytes, str]
) -> None:
    disk, manifest = tiny_disk
    seen: list[tuple[int, int | None]] = []
    record = await store.pull(f"{registry.host}/vm/tiny:1", GOOD, progress=lambda done, total: seen.append((done, total)))
    assert record.digest == sha256(disk) and record.format == "qcow2" and Path(record.path).read_bytes() == disk
    assert set(record.names) == {f"{registry.host}/vm/tiny:1", f"{registry.host}/vm/tiny@{manifest}"}
    assert seen and seen[-1][0] == seen[-1][1] and seen[-1][1] > len(disk), "byte progress over the layers"
    again = await store.pull(f"{registry.host}/vm/tiny:2", GOOD)
    by_digest = await store.pull(f"{registry.host}/vm/tiny@{manifest}", GOOD)
    assert again.digest == by_digest.digest == record.digest
    assert [image.digest for image in store.list()] == [record.digest], "two tags of one disk are one image"
    assert set(store.list()[0].names) == {f"{registry.host}/vm/tiny:{tag}" for tag in (1, 2)} | {f"{registry.host}/vm/tiny@{manifest}"}
    assert list((store.root / "tmp").iterdir()) == [], "the layers' temp files are gone"

    store.remove(f"{registry.host}/vm/tiny:1", in_use=lambda digest: False)
    assert_nothing_stored(store)  # one tag removes the image: its other tag and its digest name too


async def test_an_index_gives_its_amd64_disk(registry: Registry, store: ImageStore, tiny: TinyGuest, tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    arm = oci_layout(layout, "arm", [tar_layer({"disk/a.raw": b"an arm64 disk is not for this host"})], architecture="arm64")
    amd = oci_layout(layout, "amd", [tar_layer({"disk/tiny.qcow2": tiny.disk.read_bytes()})])
    oci_index(layout, "1", {arm: "arm64", amd: "amd64"})
    registry.push_layout(layout, "1", "vm/multi:1", all_images=True)
    record = await store.pull(f"{registry.host}/vm/multi:1", GOOD)
    assert record.digest == sha256(tiny.disk.read_bytes())
    assert f"{registry.host}/vm/multi@{amd}" in record.names, "the repo digest is the amd64 manifest's"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second registry: anonymous, plain HTTP."""
    yield from running_registry(tmp_path_factory, auth=False, tls=False)


async def test_mirrors_are_tried_in_order_without_the_pulls_credentials(
    registry: Registry, mirror: Registry, tiny_disk: tuple[bytes, str], tmp_path: Path
) -> None:
    """The upstream is a port nothing listens on: the pull must come from a mirror. The first mirror
    (the test registry, which needs a login and holds the tiny guest as vm/tiny:1) gets no credentials,
    refuses, and is skipped; the second (anonymous, plain HTTP) serves its own, different vm/tiny:1."""
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    manifest = push(mirror, tmp_path / "layout", "vm/tiny:1", [tar_layer({"disk/blank.qcow2": blank.read_bytes()})])
    upstream = f"127.0.0.1:{free_port()}"
    direct = FetchSettings(proxy="", timeout_s=10)
    hosts = {
        upstream: RegistryHost(direct, mirrors=(registry.host, mirror.host)),
        registry.host: RegistryHost(FetchSettings(ca_file=str(registry.ca), proxy="", timeout_s=10)),
        mirror.host: RegistryHost(direct, plain_http=True),
    }
    store = ImageStore(tmp_path / "images", ImageConfig(registries=hosts, max_virtual_size_bytes=LIMIT))
    try:
        record = await store.pull(f"{upstream}/vm/tiny:1", GOOD)
        assert record.digest == sha256(blank.read_bytes()), "the second mirror's disk: the first got no login"
        assert set(record.names) == {f"{upstream}/vm/tiny:1", f"{upstream}/vm/tiny@{manifest}"}
        store.remove(record.digest, in_use=lambda digest: False)
        only_the_login_mirror = {**hosts, upstream: RegistryHost(direct, mirrors=(registry.host,))}
        store.close()
        store = ImageStore(tmp_path / "images", ImageConfig(registries=only_the_login_mirror, max_virtual_size_bytes=LIMIT))
        with pytest.raises(Unavailable, match=upstream):
            await store.pull(f"{upstream}/vm/tiny:1", GOOD)
        assert_nothing_stored(store)
    finally:
        store.close()


async def test_credentials_missing_or_wrong_are_refused_naming_the_registry(
    registry: Registry, store: ImageStore, tiny_disk: tuple[bytes, str]
) -> None:
    name = f"{registry.host}/vm/tiny:1"
    with pytest.raises(Unauthenticated, match=f"registry {registry.host}"):
        await store.pull(name)
    with pytest.raises(PermissionDenied, match=f"registry {registry.host} refused"):
        await store.pull(name, PullAuth(username=USER, password="wrong"))
    with pytest.raises(NotFound, match="has no vm/tiny:9"):
        await store.pull(f"{registry.host}/vm/tiny:9", GOOD)
    assert_nothing_stored(store)


def qcow2_with_backing_file(tmp_path: Path) -> bytes:
    path = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(path), "64M"], check=True)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-disk", "no disk under /disk/"),
        ("two-disks", "2 files under /disk/"),
        ("whited-out", "no disk under /disk/"),
        ("backing-file", "backing file"),
        ("not-a-disk", "qcow2 version .* is not supported"),
    ],
)
async def test_bad_containerdisks_are_refused_and_nothing_stored(
    registry: Registry, store: ImageStore, tmp_path: Path, tiny: TinyGuest, case: str, message: str
) -> None:
    disk = tiny.disk.read_bytes()
    layers = {
        "no-disk": [tar_layer({"etc/motd": b"hello"})],
        "two-disks": [tar_layer({"disk/a.qcow2": disk, "disk/b.qcow2": disk})],
        "whited-out": [tar_layer({"disk/tiny.qcow2": disk}), tar_layer({"disk/.wh.tiny.qcow2": b""})],
        "backing-file": [tar_layer({"disk/evil.qcow2": qcow2_with_backing_file(tmp_path)})],
        "not-a-disk": [tar_layer({"disk/disk.img": b"QFI\xfb but not really a qcow2 image" + bytes(4096)})],
    }[case]
    push(registry, tmp_path / "layout", f"bad/{case}:1", layers)
    with pytest.raises(InvalidArgument, match=message):
        await store.pull(f"{registry.host}/bad/{case}:1", GOOD)
    assert_nothing_stored(store)


async def test_a_corrupted_blob_is_refused_and_nothing_stored(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    layer = tar_layer({"disk/x.raw": os.urandom(1 << 20)})
    push(registry, tmp_path / "layout", "bad/corrupt:1", [layer])
    hexdigest = sha256(layer).partition(":")[2]
    stored = registry.directory / "data/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(InvalidArgument, match="does not match its digest"):
            await store.pull(f"{registry.host}/bad/corrupt:1", GOOD)
    finally:
        stored.write_bytes(original)
    assert_nothing_stored(store)


async def test_a_pull_cancelled_mid_layer_leaves_no_file(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    push(registry, tmp_path / "layout", "big/cancel:1", [tar_layer({"disk/big.raw": os.urandom(96 << 20)})])
    started = asyncio.Event()
    pull = asyncio.create_task(store.pull(f"{registry.host}/big/cancel:1", GOOD, progress=lambda done, total: started.set()))
    await asyncio.wait_for(started.wait(), 60)
    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    assert_nothing_stored(store)


async def test_a_registry_that_dies_mid_pull_leaves_no_partial_file(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    """Last in the module: the registry is killed (SIGKILL, its PID) once the first bytes arrived."""
    push(registry, tmp_path / "layout", "big/dies:1", [tar_layer({"disk/big.raw": os.urandom(96 << 20)})])
    assert registry.process is not None
    pid = registry.process.pid

    def kill_at_first_bytes(done: int, total: int | None) -> None:
        if registry.process is not None and registry.process.poll() is None:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(Unavailable, match=registry.host.split(":")[0]):
        await store.pull(f"{registry.host}/big/dies:1", GOOD, progress=kill_at_first_bytes)
    registry.process.wait(10)
    assert_nothing_stored(store)
