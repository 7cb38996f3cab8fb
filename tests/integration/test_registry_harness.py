"""The registry the containerDisk tests run against (TLS, Basic auth, OCI layouts pushed by skopeo), and
qmprt's registry client against it."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from qmprt.image.fetch import PullAuth
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.httpclient import Abort
from qmprt.image.ocilayers import Layer, copy_disk, find_disk
from qmprt.image.ocimanifest import ACCEPT, parse_document, parse_manifest
from qmprt.image.registry import RegistryClient

from .registry import PASSWORD, USER, Registry, oci_index, oci_layout, running_registry, tar_layer

GOOD = PullAuth(username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


def get(registry: Registry, path: str, credentials: tuple[str, str] | None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"https://{registry.host}/v2/{path}", headers={"Accept": ACCEPT})
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    context = ssl.create_default_context(cafile=str(registry.ca))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_a_pushed_layout_is_served_with_basic_auth_only(registry: Registry, tmp_path: Path) -> None:
    disk = b"QFI\xfb" + bytes(2000)
    digest = oci_layout(tmp_path / "layout", "1", [tar_layer({"disk/tiny.qcow2": disk})])
    registry.push_layout(tmp_path / "layout", "1", "vm/tiny:1")

    status, _, headers = get(registry, "vm/tiny/manifests/1", None)
    assert status == 401 and headers["Www-Authenticate"].startswith("Basic realm=")
    assert get(registry, "vm/tiny/manifests/1", (USER, "wrong"))[0] == 401

    status, body, headers = get(registry, "vm/tiny/manifests/1", (USER, PASSWORD))
    assert status == 200 and headers["Docker-Content-Digest"] == digest
    media_type, document = parse_document(body, headers["Content-Type"], "vm/tiny:1")
    layer = parse_manifest(document, "vm/tiny:1").layers[0]
    status, blob, _ = get(registry, f"vm/tiny/blobs/{layer.digest}", (USER, PASSWORD))
    assert status == 200 and len(blob) == layer.size and disk in blob
    assert json.loads(get(registry, "vm/tiny/tags/list", (USER, PASSWORD))[1])["tags"] == ["1"]


# The registry client (qmprt.image.registry) against the real registry.


def client(registry: Registry, auth: PullAuth) -> RegistryClient:
    return RegistryClient(registry.host, FetchSettings(ca_file=str(registry.ca)), auth, Abort())


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """vm/disk:1 (one image), and vm/multi:1 (an index of arm64 and amd64 images)."""
    layout = tmp_path_factory.mktemp("layouts")
    digests = {"single": oci_layout(layout / "single", "1", [tar_layer({"disk/a.qcow2": b"amd64 disk"})])}
    registry.push_layout(layout / "single", "1", "vm/disk:1")
    arm = oci_layout(layout / "multi", "arm", [tar_layer({"disk/a.qcow2": b"arm64 disk"})], architecture="arm64")
    amd = oci_layout(layout / "multi", "amd", [tar_layer({"disk/a.qcow2": b"amd64 disk, from the index"})])
    digests["multi"] = oci_index(layout / "multi", "1", {arm: "arm64", amd: "amd64"})
    digests["multi-amd64"] = amd
    registry.push_layout(layout / "multi", "1", "vm/multi:1", all_images=True)
    return digests


def fetch_disk(registry: Registry, repository: str, reference: str, tmp_path: Path, auth: PullAuth = GOOD) -> tuple[str, bytes]:
    registry_client = client(registry, auth)
    digest, manifest = registry_client.resolve(repository, reference)
    layers = []
    for index, descriptor in enumerate(manifest.layers):
        path = tmp_path / f"layer{index}"
        with open(path, "wb") as dest:
            registry_client.blob(repository, descriptor, dest, 1 << 30)
        layers.append(Layer(path, descriptor.media_type, descriptor.digest))
    entry = find_disk(layers)
    with open(tmp_path / "disk", "wb") as out:
        copy_disk(layers, entry, out, 1 << 30)
    return digest, (tmp_path / "disk").read_bytes()


def test_the_client_pulls_by_tag_and_by_digest(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    assert fetch_disk(registry, "vm/disk", "1", tmp_path) == (pushed["single"], b"amd64 disk")
    assert fetch_disk(registry, "vm/disk", pushed["single"], tmp_path) == (pushed["single"], b"amd64 disk")


def test_an_index_gives_its_amd64_image(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    assert fetch_disk(registry, "vm/multi", "1", tmp_path) == (pushed["multi-amd64"], b"amd64 disk, from the index")


def test_credentials_missing_or_wrong_are_named(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated, match=f"registry {registry.host} wants a username and password"):
        client(registry, PullAuth()).resolve("vm/disk", "1")
    with pytest.raises(PermissionDenied, match=f"registry {registry.host} refused the pull's credentials"):
        client(registry, PullAuth(username=USER, password="wrong")).resolve("vm/disk", "1")
    with pytest.raises(NotFound, match="has no vm/disk:2"):
        client(registry, GOOD).resolve("vm/disk", "2")


def test_a_corrupted_blob_is_refused(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    registry_client = client(registry, GOOD)
    _, manifest = registry_client.resolve("vm/disk", "1")
    layer = manifest.layers[0]
    hexdigest = layer.digest.partition(":")[2]
    stored = registry.directory / "data/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(InvalidArgument, match="does not match its digest"), open(tmp_path / "blob", "wb") as dest:
            registry_client.blob("vm/disk", layer, dest, 1 << 30)
    finally:
        stored.write_bytes(original)
