"""Registry documents: manifests and indexes as registries send them, and the hostile variants."""

from __future__ import annotations

import json

import pytest

from qmprt.errors import InvalidArgument
from qmprt.image.ocimanifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_document,
    parse_manifest,
    pick_platform,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def manifest(media_type: str = OCI_MANIFEST, **change: object) -> dict[str, object]:
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 2},
        "layers": [{"mediaType": LAYER, "digest": D2, "size": 1234}],
    }
    document.update(change)
    return document


def entry(digest: str, arch: str, os: str = "linux", media_type: str = OCI_MANIFEST) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": 500, "platform": {"os": os, "architecture": arch}}


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_a_manifest_gives_its_config_and_layers(media_type: str) -> None:
    kind, document = parse_document(json.dumps(manifest(media_type)).encode(), "", "r/x:1")
    assert kind == media_type
    parsed = parse_manifest(document, "r/x:1")
    assert parsed.config.digest == D1 and [(d.digest, d.size, d.media_type) for d in parsed.layers] == [(D2, 1234, LAYER)]


def test_the_content_type_names_a_document_without_media_type() -> None:
    document = manifest()
    del document["mediaType"]
    assert parse_document(json.dumps(document).encode(), f"{DOCKER_MANIFEST}; charset=utf-8", "x")[0] == DOCKER_MANIFEST


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_an_index_picks_linux_amd64(media_type: str) -> None:
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": [entry(D1, "arm64"), entry(D2, "amd64", "windows"), entry(D3, "amd64")]}
    kind, document = parse_document(json.dumps(index).encode(), "", "x")
    assert kind == media_type and pick_platform(document, "x").digest == D3


def test_an_index_without_amd64_names_what_it_has() -> None:
    index = {"schemaVersion": 2, "manifests": [entry(D1, "arm64"), entry(D2, "s390x")]}
    with pytest.raises(InvalidArgument, match="no linux/amd64 image in the index \\(it has linux/arm64, linux/s390x\\)"):
        pick_platform(index, "x")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps(manifest("application/vnd.docker.distribution.manifest.v1+json")).encode(), "media type"),
        (json.dumps(manifest(schemaVersion=1)).encode(), "schemaVersion 1"),
        (b"{" + b" " * MAX_MANIFEST_BYTES + b"}", "larger than"),
    ],
    ids=["text", "array", "schema1-type", "schema1", "huge"],
)
def test_bad_documents_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_document(body, "application/json", "x")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"layers": []}, "no layers"),
        ({"layers": [{"mediaType": LAYER, "digest": D2, "size": 1}] * (MAX_LAYERS + 1)}, "more than"),
        ({"layers": [{"mediaType": LAYER, "digest": "md5:abc", "size": 1}]}, "layer 0 has digest"),
        ({"layers": [{"mediaType": LAYER, "digest": D2, "size": -1}]}, "layer 0 has size -1"),
        ({"layers": [{"mediaType": LAYER, "digest": D2, "size": True}]}, "layer 0 has size True"),
        ({"layers": ["x"]}, "not a descriptor"),
        ({"config": None}, "config is not a descriptor"),
        ({"layers": [{"digest": D2, "size": 1}]}, "no mediaType"),
    ],
    ids=["none", "too-many", "digest", "negative", "bool", "string", "config", "type"],
)
def test_bad_descriptors_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_manifest(manifest(**change), "x")
