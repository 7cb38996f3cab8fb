"""A containerDisk pulled from its registry: manifest resolved, layers fetched, the one disk copied out.

Two phases, both blocking (run in a worker thread with an ``Abort``):

``resolve_blocking`` finds the linux/amd64 manifest of a reference, trying the host's mirrors before
the registry (``registryconfig``). The store then knows the manifest digest: a repository digest it
already holds needs no download, and concurrent pulls of one manifest (by tag and by digest) share one.

``download_disk_blocking`` fetches every layer (sha256 and size checked, within the download limit)
into the store's temp files, finds the disk under ``/disk/`` as an unpacker would (``ocilayers``), and
copies it into the destination, hashing it. The layer files are deleted whatever happens; the store's
checks of the disk itself (format, ``qemu-img``, no backing file) come after, as for any pull.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qmprt.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from qmprt.image.fetch import Fetched, Progress, PullAuth
from qmprt.image.httpclient import Abort
from qmprt.image.ocilayers import Layer, copy_disk, find_disk
from qmprt.image.ocimanifest import Manifest
from qmprt.image.reference import ImageReference
from qmprt.image.registry import RegistryClient
from qmprt.image.registryconfig import RegistryHost, endpoints
from qmprt.image.fetch_settings import FetchSettings

log = logging.getLogger("qmprt.image")

# A mirror that fails in one of these ways is skipped for the next endpoint.
_MIRROR_SKIPS = (Unavailable, NotFound, Unauthenticated, PermissionDenied)


@dataclass(frozen=True)
class Resolved:
    """The manifest a reference stands for, and the client that found it (its authorization kept)."""

    reference: ImageReference
    client: RegistryClient
    manifest_digest: str
    manifest: Manifest

    @property
    def repository_digest(self) -> str:
        """``host/path@sha256:<manifest>``: the reference by digest (its repo digest in CRI)."""
        return f"{self.reference.repository}@{self.manifest_digest}"

    @property
    def label(self) -> str:
        via = "" if self.client.host == self.reference.domain else f" via mirror {self.client.host}"
        return f"{self.repository_digest}{via}"


def resolve_blocking(
    reference: ImageReference, hosts: dict[str, RegistryHost], default: FetchSettings, auth: PullAuth, abort: Abort
) -> Resolved:
    """The linux/amd64 manifest of ``reference`` from the first endpoint (mirror, then registry) that has it."""
    assert reference.domain is not None
    wanted = reference.digest or reference.effective_tag or "latest"
    for endpoint in endpoints(reference.domain, hosts, default):
        client = RegistryClient(endpoint.host, endpoint.transport, PullAuth() if endpoint.mirror else auth, abort, scheme=endpoint.scheme)
        try:
            digest, manifest = client.resolve(reference.path, wanted)
        except _MIRROR_SKIPS as err:
            abort.check()
            if not endpoint.mirror:
                raise
            log.warning("mirror %s of %s: %s; trying the next", endpoint.host, reference.domain, err)
            continue
        return Resolved(reference, client, digest, manifest)
    raise AssertionError("the registry itself is always the last endpoint")


def _offset(progress: Progress, base: int, total: int) -> Callable[[int], None]:
    return lambda done: progress(base + done, total)


def download_disk_blocking(
    resolved: Resolved,
    dest: Path,
    abort: Abort,
    progress: Progress,
    *,
    limit: int,
    new_temp: Callable[[], Path],
    discard_temp: Callable[[Path | None], None],
) -> Fetched:
    """Fetch the layers of ``resolved`` and copy its one disk into ``dest``: the disk's digest and size."""
    client, manifest = resolved.client.with_abort(abort), resolved.manifest
    total = sum(layer.size for layer in manifest.layers)
    if total > limit:
        raise InvalidArgument(f"{resolved.label}: its layers are {total} bytes, above the download limit of {limit}")
    started = time.monotonic()
    temps: list[Path] = []
    try:
        layers, done = [], 0
        for descriptor in manifest.layers:
            temp = new_temp()
            temps.append(temp)
            with open(temp, "wb", buffering=0) as handle:
                client.blob(resolved.reference.path, descriptor, handle, limit, _offset(progress, done, total))
            done += descriptor.size
            layers.append(Layer(temp, descriptor.media_type, descriptor.digest))
        entry = find_disk(layers)
        hasher = hashlib.sha256()

        def on_chunk(chunk: bytes) -> None:
            abort.check()
            hasher.update(chunk)

        with open(dest, "wb", buffering=0) as handle:
            size = copy_disk(layers, entry, handle, limit, on_chunk=on_chunk)
    finally:
        for temp in temps:
            discard_temp(temp)
    elapsed = max(time.monotonic() - started, 1e-6)
    log.info(
        "pulled %s: %.1f MiB of layers in %.2f s (%.1f MB/s), disk /disk/%s of %.1f MiB",
        resolved.label, total / (1 << 20), elapsed, total / elapsed / 1e6, entry.name, size / (1 << 20),
    )
    return Fetched(f"sha256:{hasher.hexdigest()}", size)
