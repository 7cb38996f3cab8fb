"""OCI and Docker schema 2 manifests and indexes: parsed, checked, and the linux/amd64 entry picked.

A registry's answer is untrusted: the document is size-bounded, its digest is checked against the one
asked for (or the registry's ``Docker-Content-Digest``) by the caller, and every descriptor in it must
carry a sha256 digest and a non-negative size before anything is fetched with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qmprt.errors import InvalidArgument
from qmprt.image.reference import is_digest

MAX_MANIFEST_BYTES = 4 << 20  # the distribution registry's own limit for a manifest
MAX_LAYERS = 128

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: tuple[str, str, str] = ("", "", "")  # os, architecture, variant (index entries only)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgument(f"{where} has no mediaType")
    if not isinstance(digest, str) or not is_digest(digest):
        raise InvalidArgument(f"{where} has digest {digest!r}; qmprt needs sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where} has size {size!r}")
    platform = value.get("platform")
    fields: tuple[str, str, str] = ("", "", "")
    if isinstance(platform, dict):
        fields = tuple(str(platform.get(key, "")) for key in ("os", "architecture", "variant"))  # type: ignore[assignment]
    return Descriptor(media_type, digest, size, fields)


def parse_document(body: bytes, content_type: str, what: str) -> tuple[str, dict[str, object]]:
    """The media type (the document's own, else the Content-Type) and the JSON object."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"{what}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{what}: the manifest is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"{what}: the manifest is not a JSON object")
    media_type = document.get("mediaType") or content_type.split(";")[0].strip()
    if not isinstance(media_type, str) or media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        raise InvalidArgument(f"{what}: manifest media type {media_type!r} is none of {ACCEPT}")
    if document.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what}: schemaVersion {document.get('schemaVersion')!r}; only schema 2 is read")
    return media_type, document


def parse_manifest(document: dict[str, object], what: str) -> Manifest:
    layers = document.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidArgument(f"{what}: the manifest has no layers")
    if len(layers) > MAX_LAYERS:
        raise InvalidArgument(f"{what}: {len(layers)} layers, more than {MAX_LAYERS}")
    config = _descriptor(document.get("config"), f"{what}: config")
    return Manifest(config, tuple(_descriptor(layer, f"{what}: layer {i}") for i, layer in enumerate(layers)))


def pick_platform(document: dict[str, object], what: str, os: str = "linux", architecture: str = "amd64") -> Descriptor:
    """The index entry for the platform (a VM's disk is for the host's architecture); the first of
    several (the OCI spec leaves the choice to the client; variants do not apply to amd64)."""
    entries = document.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{what}: the index lists no manifests")
    if len(entries) > 1024:
        raise InvalidArgument(f"{what}: the index lists {len(entries)} manifests, more than 1024")
    descriptors = [_descriptor(entry, f"{what}: index entry {i}") for i, entry in enumerate(entries)]
    for descriptor in descriptors:
        if descriptor.platform[:2] == (os, architecture) and descriptor.media_type in MANIFEST_TYPES:
            return descriptor
    offered = sorted({"/".join(part for part in d.platform if part) or "(no platform)" for d in descriptors})
    raise InvalidArgument(f"{what}: no {os}/{architecture} image in the index (it has {', '.join(offered)})")
