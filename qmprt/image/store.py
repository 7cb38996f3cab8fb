"""The image store: verified disk images by sha256 digest, and the names that point at them.

Layout under ``root`` (``<state_dir>/images``, directories 0700)::

    sha256/<hex>        the image, read-only (0444), named by the sha256 of its bytes
    meta/<hex>.json     {version, digest, format, virtual_size, size_bytes, created_at_ns}, written once
    names.json          {name: "sha256:<hex>"}
    tmp/<random>.part   downloads and imports in progress

Assumptions, and what keeps them true:

- An image reaches ``sha256/`` only after every check of ``inspect`` passed on the very bytes that were
  hashed: the file is downloaded into ``tmp/``, verified there (nothing else writes to it), then renamed
  (same filesystem, atomic). Its metadata is written before the rename, so a stored image always has it.
- A crash can leave files in ``tmp/``, a metadata file without its image, or an image without names.
  ``collect_partials`` (called once at start) deletes the first two kinds; an image without names is
  listed (kubelet's image GC removes it by digest), since a container may still use it.
- Changes (publish, names, removal) are serialised across threads and processes by the index's
  exclusive lock (``index.py``): ``qmprt ctl image import`` may publish while ``qmprt serve`` runs on
  the same store, and the server's lookups reload the index when another process changed it. Each
  change holds the lock for milliseconds.
- A temp file is flocked by the process writing it for as long as it exists, so ``collect_partials``
  (a server starting) skips another process's download or import in progress.
- ``remove`` asks ``in_use(digest)`` under that lock; the pod layer must not create a container on an
  image between that answer and the deletion (it serialises container creation against removal).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from qmprt.config import Config
from qmprt.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from qmprt.image.containerdisk import Resolved, download_disk_blocking, resolve_blocking
from qmprt.image.fetch import Fetched, Progress, PullAuth, copy_local, run_abortable
from qmprt.image.httpclient import Abort
from qmprt.image.fsinfo import mount_point_of, tree_usage
from qmprt.image.inspect import inspect_image
from qmprt.image.index import ImageMeta, StoreIndex
from qmprt.image.pulls import Downloads, Verified, check_pin
from qmprt.image.reference import ImageReference, digest_hex, is_digest, parse_reference
from qmprt.image.boot import load_boot_files, remove_boot_files, write_boot_files
from qmprt.image.records import FsUsage, ImageRecord
from qmprt.image.rules import ImageConfig, RuleSet, image_config_from_table
from qmprt.state import ensure_private_dir, fsync_dir, write_json_atomic

log = logging.getLogger(__name__)

MIN_PREFIX = 3


class ImageStore:
    def __init__(self, root: str | os.PathLike[str], config: ImageConfig) -> None:
        self.root = ensure_private_dir(root)
        self.config = config
        self._blobs = ensure_private_dir(self.root / "sha256")
        self._meta_dir = ensure_private_dir(self.root / "meta")
        self._tmp = ensure_private_dir(self.root / "tmp")
        self._rules = RuleSet(config)
        self._index = StoreIndex(self.root, self._blobs, self._meta_dir)
        self._active_temps: dict[Path, int] = {}  # temp file → the descriptor that holds its flock
        self._downloads = Downloads(config, self._new_temp, self._discard_temp)
        self._progress: dict[str, tuple[int, int | None]] = {}  # pulls in progress, by name

    # -- paths -------------------------------------------------------------------------------------

    def _blob_path(self, hexdigest: str) -> Path:
        return self._blobs / hexdigest

    def _new_temp(self) -> Path:
        path = self._tmp / f"{secrets.token_hex(8)}.part"
        # Created and flocked under the store's lock: collect_partials (which takes it) never sees it unlocked.
        with self._index.exclusive():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._active_temps[path] = fd
        return path

    def _discard_temp(self, path: Path | None) -> None:
        if path is None:
            return
        path.unlink(missing_ok=True)  # gone already when it was published (renamed into sha256/)
        with self._index.exclusive():
            fd = self._active_temps.pop(path, None)
        if fd is not None:
            os.close(fd)

    # -- queries -----------------------------------------------------------------------------------

    def _record(self, hexdigest: str) -> ImageRecord:
        meta = self._index.images[hexdigest]
        digest = f"sha256:{hexdigest}"
        return ImageRecord(
            digest=digest,
            path=str(self._blob_path(hexdigest)),
            format=meta.format,
            size_bytes=meta.size_bytes,
            virtual_size=meta.virtual_size,
            names=self._index.names.names_for(digest),
            created_at_ns=meta.created_at_ns,
            boot=load_boot_files(self.root, hexdigest),
        )

    def _registered_name(self, ref: str) -> str | None:
        if self._index.names.get(ref) is not None:
            return ref
        try:
            name = parse_reference(ref).name
        except InvalidArgument:
            return None
        return name if self._index.names.get(name) is not None else None

    def _lookup(self, ref: str) -> str | None:
        """The digest ``ref`` designates: a name, a digest, ``name@digest``, or a unique digest prefix."""
        name = self._registered_name(ref)
        if name is not None:
            return self._index.names.get(name)
        if is_digest(ref):
            return ref if digest_hex(ref) in self._index.images else None
        try:
            reference: ImageReference | None = parse_reference(ref)
        except InvalidArgument:
            reference = None
        if reference is not None and reference.digest is not None:
            return reference.digest if digest_hex(reference.digest) in self._index.images else None
        prefix = ref.removeprefix("sha256:")
        if MIN_PREFIX <= len(prefix) <= 64 and all(ch in "0123456789abcdef" for ch in prefix):
            matches = [hexdigest for hexdigest in self._index.images if hexdigest.startswith(prefix)]
            if len(matches) > 1:
                raise InvalidArgument(f"{ref!r} is a prefix of {len(matches)} image digests; give more of it")
            if matches:
                return f"sha256:{matches[0]}"
        return None

    def resolve(self, ref: str) -> ImageRecord | None:
        """The image ``ref`` names, or None; InvalidArgument when ``ref`` is an ambiguous prefix."""
        with self._index.current():
            digest = self._lookup(ref)
            return self._record(digest_hex(digest)) if digest is not None else None

    def list(self) -> list[ImageRecord]:
        with self._index.current():
            records = [self._record(hexdigest) for hexdigest in self._index.images]
        return sorted(records, key=lambda record: (record.created_at_ns, record.digest))

    def fs_usage(self) -> FsUsage:
        usage = tree_usage(self.root)
        return FsUsage(mount_point_of(self.root), usage.used_bytes, usage.inodes_used, time.time_ns())

    # -- changes -----------------------------------------------------------------------------------

    def _publish(self, verified: Verified, names: tuple[str, ...]) -> ImageRecord:
        """Move a verified image into the store (unless it is there already) and point ``names`` at it."""
        digest = verified.fetched.digest
        hexdigest = digest_hex(digest)
        with self._index.exclusive():
            if hexdigest not in self._index.images:
                meta = ImageMeta(verified.info.format, verified.info.virtual_size, verified.fetched.size, time.time_ns())
                meta_path = self._index.meta_path(hexdigest)
                try:
                    write_json_atomic(meta_path, meta.document(digest), exclusive=True)
                except AlreadyExists:
                    meta = ImageMeta.load(meta_path)  # left by a publish that a crash interrupted
                try:
                    os.chmod(verified.temp_path, 0o444)
                    os.rename(verified.temp_path, self._blob_path(hexdigest))
                except FileNotFoundError as err:
                    raise Unavailable(f"image {digest} was removed while it was being pulled; pull it again") from err
                fsync_dir(self._blobs)
                self._index.images[hexdigest] = meta
                log.info("stored image %s (%s, virtual size %d)", digest, meta.format, meta.virtual_size)
            for name in names:
                previous = self._index.names.get(name)
                self._index.names.set(name, digest)
                if previous is not None and previous != digest:
                    log.info("image name %s moved from %s to %s", name, previous, digest)
            return self._record(hexdigest)

    def _delete(self, hexdigest: str) -> None:
        remove_boot_files(self.root, hexdigest)
        self._blob_path(hexdigest).unlink(missing_ok=True)
        self._index.meta_path(hexdigest).unlink(missing_ok=True)
        self._index.images.pop(hexdigest, None)
        log.info("removed image sha256:%s", hexdigest)

    def remove(self, ref: str, in_use: Callable[[str], bool]) -> None:
        """Remove the image ``ref`` designates (a name, a digest, ``name@digest``) with all its names.

        As containerd does, and as crictl's ``rmi`` says it will ("removing this image will delete all of
        the following tags"): the CRI's RemoveImage removes an image, whichever reference names it.
        Unknown references are not an error; an image in use is (FailedPrecondition).
        """
        with self._index.exclusive():
            found = self._lookup(ref)
            if found is None:
                return
            if in_use(found):
                raise FailedPrecondition(f"image {ref} ({found}) is used by a container")
            if not self._index.names.remove_digest(found):
                self._index.touch_names()  # no name changed: tell other processes the image went
            self._delete(digest_hex(found))

    def set_boot_files(
        self, ref: str, kernel: str | os.PathLike[str], initrd: str | os.PathLike[str] | None, cmdline: str
    ) -> ImageRecord:
        """Attach a kernel (and initramfs) to a stored image for direct kernel boot; replaces earlier ones."""
        with self._index.exclusive():
            found = self._lookup(ref)
            if found is None:
                raise NotFound(f"image {ref!r} is not in the store")
            write_boot_files(self.root, digest_hex(found), kernel, initrd, cmdline)
            self._index.touch_names()  # other processes re-read and see the boot files
            return self._record(digest_hex(found))

    def import_file(self, path: str | os.PathLike[str], name: str) -> ImageRecord:
        """Copy a local file into the store under ``name``, with every check a pull has. Blocking."""
        reference = parse_reference(name)
        temp = self._new_temp()
        try:
            fetched = copy_local(path, temp, limit=self.config.download_limit, label=f"import of {path}")
            check_pin(reference, fetched)
            info = inspect_image(
                temp, self.config.max_virtual_size_bytes, self.config.qemu_img, self.config.qemu_img_timeout_s
            )
            return self._publish(Verified(temp, fetched, info), (reference.name,))
        finally:
            self._discard_temp(temp)

    async def pull(
        self, name: str, auth: PullAuth | None = None, progress: Progress | None = None
    ) -> ImageRecord:
        """Download, verify and store ``name``; concurrent pulls of one content share one download.

        Cancelling the pull (a client's deadline) stops the download and deletes what it wrote, unless
        another pull still waits for the same download. ``pull_progress`` tells how far it got.
        """
        reference = parse_reference(name)
        route = self._rules.translate(reference)
        self._progress[reference.name] = (0, None)

        def tracked(done: int, total: int | None) -> None:
            self._progress[reference.name] = (done, total)
            if progress is not None:
                progress(done, total)

        try:
            if route is None:
                return await self._pull_registry(reference, auth or PullAuth(), tracked)
            if reference.digest is not None:
                with self._index.current():
                    if digest_hex(reference.digest) in self._index.images:
                        # Pinned content already here: nothing to download.
                        return self._publish_name((reference.name,), reference.digest)
            url, settings = route
            label = reference.name if reference.name == url else f"{reference.name} from {url}"
            authorization = auth.header() if auth is not None else None
            fetch_into = self._downloads.url_fetch(url, settings, reference, authorization, label)
            async with self._downloads.verified(("url", url, reference.digest or ""), label, fetch_into, tracked) as verified:
                return self._publish(verified, (reference.name,))
        finally:
            self._progress.pop(reference.name, None)

    def pull_progress(self, name: str) -> tuple[int, int | None] | None:
        """(bytes done, bytes in all) of a pull of ``name`` in progress in this process, else None."""
        try:
            return self._progress.get(parse_reference(name).name)
        except InvalidArgument:
            return None

    async def _pull_registry(self, reference: ImageReference, auth: PullAuth, progress: Progress) -> ImageRecord:
        """A containerDisk from its registry (``containerdisk``), stored under its tag and repo digest."""
        config, executor = self.config, self._downloads.executor()

        def resolve(abort: Abort, _report: Progress) -> Resolved:
            return resolve_blocking(reference, config.registries, config.default_transport, auth, abort)

        resolved = await run_abortable(resolve, executor=executor, label=reference.name)
        names = tuple(dict.fromkeys((reference.name, resolved.repository_digest)))
        with self._index.exclusive():
            known = self._index.names.get(resolved.repository_digest)
            if known is not None and digest_hex(known) in self._index.images:
                log.info("%s is stored already (%s): no download", resolved.repository_digest, known)
                return self._publish_name(names, known)

        async def fetch_into(temp: Path, report: Progress) -> Fetched:
            def work(abort: Abort, report_bytes: Progress) -> Fetched:
                return download_disk_blocking(
                    resolved, temp, abort, report_bytes,
                    limit=config.download_limit, new_temp=self._new_temp, discard_temp=self._discard_temp,
                )

            return await run_abortable(work, progress=report, executor=executor, label=resolved.label)

        async with self._downloads.verified(("registry", resolved.repository_digest), resolved.label, fetch_into, progress) as verified:
            return self._publish(verified, names)

    def _publish_name(self, names: tuple[str, ...], digest: str) -> ImageRecord:
        with self._index.exclusive():
            for name in names:
                self._index.names.set(name, digest)
            return self._record(digest_hex(digest))

    def close(self) -> None:
        """Let the download threads go (downloads in progress are cancelled by their pulls)."""
        self._downloads.close()

    def collect_partials(self) -> int:
        """Delete what interrupted work left: temp downloads, metadata without image, image without
        metadata (never verified to completion), stale index temp files. Returns how many."""
        removed = 0
        with self._index.exclusive():
            for entry in self._tmp.iterdir():
                if entry in self._active_temps:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                elif not _unlink_unless_locked(entry):
                    continue  # another process's download or import in progress
                removed += 1
            for directory in (self.root, self._meta_dir):
                for stale in directory.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
                    removed += 1
            for meta_path in self._meta_dir.glob("*.json"):
                if not self._blob_path(meta_path.stem).exists():
                    meta_path.unlink(missing_ok=True)
                    removed += 1
            for blob in self._blobs.iterdir():
                if blob.name not in self._index.images:
                    blob.unlink(missing_ok=True)
                    self._index.meta_path(blob.name).unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d leftovers of interrupted pulls from %s", removed, self.root)
        return removed


def open_store(config: Config, image_config: ImageConfig | None = None, *, collect: bool = True) -> ImageStore:
    """The store under ``<state_dir>/images``, with the leftovers of interrupted pulls collected.

    ``image_config`` defaults to the config file's ``[image]`` table (``ImageConfig()`` when absent).
    ``collect=False`` leaves that to the server (a command line tool opening a server's store).
    """
    if image_config is None:
        image_config = image_config_from_table(config.image) if config.image else ImageConfig()
    store = ImageStore(Path(config.runtime.state_dir) / "images", image_config)
    if collect:
        store.collect_partials()
    return store


def _unlink_unless_locked(path: Path) -> bool:
    """Delete ``path`` unless its writer holds its flock; whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # a symlink or something else no writer of ours made
        path.unlink(missing_ok=True)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
