"""VM templates for ``qmprt.io/boot: template`` pods: keyed, built in the background, linked into clones.

A template is everything that must match for a restore (``TemplateKey``: image digest, kernel, initrd
and command line, machine, vCPUs, guest RAM, NIC count, QEMU binary and version, accelerator). It lives
in ``<state>/templates/<key>/``: ``disk.qcow2`` (its overlay on the image, frozen), ``seed.iso`` (the
template seed: no pod's data), ``ram`` (guest RAM), ``state`` (device state), ``key.json``, and ``ready``
(written last: a directory without it is a build that did not finish, removed at the next look).

A clone's container directory gets hard links to the four files at CreateContainer, so removing a
template (a newer key, ``qmprt ctl template rm``, its image removed) never breaks a container made from
it, created or running: the clone keeps its inode; the page cache still shares the RAM file's clean pages.

Builds run one at a time in the background, in their own cgroup with the smallest CPU weight (pods
come first), at most ``MAX_TEMPLATES`` kept; the first pod of a key boots cold meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qmprt import cgroups, state
from qmprt.cloudinit.iso import SeedFormat, write_iso_files
from qmprt.cloudinit.template import TEMPLATE_MARKER, template_seed_files
from qmprt.config import Config
from qmprt.errors import InvalidArgument, QmprtError
from qmprt.image.overlay import create_overlay_async
from qmprt.vm import snapshot
from qmprt.vm.config import DiskConfig, NICConfig, Snapshot, VMConfig
from qmprt.vm.devices import KernelBoot
from qmprt.vm.machine import VM

if TYPE_CHECKING:
    from qmprt.image.records import ImageRecord

log = logging.getLogger(__name__)
FILES = ("disk.qcow2", "seed.iso", "ram", "state")
MAX_TEMPLATES = 8
BUILD_TIMEOUT_S = 180.0  # a guest that never reaches its template point (no template contract) gives up
PLACEHOLDER_MAC = "02:00:00:00:00:{:02x}"


@dataclasses.dataclass(frozen=True)
class TemplateKey:
    image_digest: str
    image_path: str
    image_format: str
    kernel: str | None
    initrd: str | None
    cmdline: str
    machine: str
    cpus: int
    memory_mib: int
    nics: int
    binary: str
    qemu_version: str
    accel: str

    @property
    def id(self) -> str:
        document = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(document).hexdigest()[:32]


_versions: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    """``binary --version``'s first line (cached: a template of another QEMU is another template)."""
    if binary not in _versions:
        try:
            done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            _versions[binary] = done.stdout.split("\n")[0]
        except (OSError, subprocess.TimeoutExpired) as err:
            raise InvalidArgument(f"cannot run {binary} --version: {err}") from err
    return _versions[binary]


def check_templatable(*, shares: bool, volumes: bool, hugepages: bool, numa_nodes: int, host_nodes: bool,
                      seed_format: str) -> None:
    """What a template cannot hold (its device set and RAM are fixed): INVALID_ARGUMENT naming it."""
    refused = [what for what, bad in (
        ("directory mounts (virtiofs shares need shared guest memory)", shares),
        ("devices and volumes (a clone has exactly its template's disks)", volumes),
        ("hugepages", hugepages), ("guest NUMA nodes", numa_nodes != 1), ("cpuset_mems bindings", host_nodes),
        ("a configdrive seed (a clone takes a NoCloud identity)", seed_format != "nocloud"),
    ) if bad]
    if refused:
        raise InvalidArgument(f"annotation qmprt.io/boot=template: a template cannot have {', '.join(refused)}")


def template_key(image: ImageRecord, machine: str, cpus: int, memory_mib: int, nics: int, config: Config,
                 accel: str) -> TemplateKey:
    """The key of the template a VM of ``image`` with this shape would restore from."""
    boot = image.boot
    return TemplateKey(
        image_digest=image.digest, image_path=image.path, image_format=image.format,
        kernel=boot.kernel if boot else None, initrd=boot.initrd if boot else None, cmdline=boot.cmdline if boot else "",
        machine=machine, cpus=cpus, memory_mib=memory_mib, nics=nics,
        binary=config.vm.qemu_binary, qemu_version=qemu_version(config.vm.qemu_binary), accel=accel,
    )


class Templates:
    @classmethod
    def for_config(cls, config: Config, cgroup_driver: cgroups.CgroupDriver) -> Templates:
        """The node's templates under ``<state_dir>/templates``; their QEMUs drop to the last VM uid."""
        defaults = config.vm
        user = defaults.uid_base + defaults.uid_count - 1 if defaults.unprivileged else None
        return cls(Path(config.runtime.state_dir) / "templates", cgroup_driver, config.cgroups.root,
                   Path(config.runtime.run_dir), run_as=lambda: (user, user) if user is not None else None)

    def __init__(self, root: Path, cgroup_driver: cgroups.CgroupDriver, cgroup_root: str, run_root: Path,
                 run_as: Callable[[], tuple[int, int] | None]) -> None:
        self.root = root
        self.cgroup_driver = cgroup_driver
        self.cgroup_root = cgroup_root
        self.run_root = run_root
        self.run_as = run_as
        self._building: set[str] = set()
        self._failed: set[str] = set()  # keys whose build failed: not tried again until qmprt restarts
        self._gate = asyncio.Semaphore(1)
        self.tasks: set[asyncio.Task[None]] = set()

    def directory(self, key: TemplateKey | str) -> Path:
        return self.root / (key if isinstance(key, str) else key.id)

    def ready(self, key: TemplateKey) -> Path | None:
        directory = self.directory(key)
        return directory if (directory / "ready").exists() else None

    def link_into(self, key: TemplateKey, destination: Path) -> dict[str, Path]:
        """Hard links of the template's files in ``destination`` (``template-<name>``), by file name."""
        source = self.ready(key)
        if source is None:
            raise QmprtError(f"template {key.id} is gone")
        links = {}
        for name in FILES:
            link = destination / f"template-{name}"
            os.link(source / name, link)
            links[name] = link
        return links

    def list(self) -> list[dict[str, Any]]:
        found = []
        for directory in sorted(self.root.glob("*/ready")):
            key = json.loads((directory.parent / "key.json").read_text())
            found.append({"id": directory.parent.name, "built_at": directory.stat().st_mtime, **key})
        return found

    def remove(self, template_id: str) -> bool:
        directory = self.directory(template_id)
        if not directory.is_dir() or directory.parent != self.root or template_id in self._building:
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return True

    def prune(self, present_images: Iterable[str]) -> None:
        """Templates whose image is gone, and builds that never finished (not running now), go."""
        present = set(present_images)
        for directory in self.root.glob("*") if self.root.is_dir() else ():
            if directory.name in self._building:
                continue
            key_file = directory / "key.json"
            try:
                image = json.loads(key_file.read_text())["image_digest"] if (directory / "ready").exists() else None
            except (OSError, ValueError, KeyError):
                image = None
            if image is None or image not in present:
                shutil.rmtree(directory, ignore_errors=True)

    def request(self, key: TemplateKey) -> None:
        """Build ``key``'s template in the background unless it is there, building, or the count is full."""
        if self.ready(key) is not None or key.id in self._building or key.id in self._failed:
            return
        if len(self.list()) + len(self._building) >= MAX_TEMPLATES:
            log.info("template %s not built: %d templates kept already", key.id[:12], MAX_TEMPLATES)
            return
        self._building.add(key.id)
        task = asyncio.get_running_loop().create_task(self._build_gated(key), name=f"template {key.id[:12]}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _build_gated(self, key: TemplateKey) -> None:
        try:
            async with self._gate:
                started = time.monotonic()
                await self.build(key)
                log.info("template %s built in %.1f s", key.id[:12], time.monotonic() - started)
        except Exception as err:  # noqa: BLE001 - a build that fails is logged; pods boot cold
            self._failed.add(key.id)
            log.warning("template %s could not be built (its pods boot cold; not tried again): %s", key.id[:12], err)
        finally:
            self._building.discard(key.id)

    async def build(self, key: TemplateKey) -> Path:
        """Boot the template to its point, save it, publish the directory (``ready`` last)."""
        state.ensure_private_dir(self.root)
        work = self.root / f".build-{key.id}"
        shutil.rmtree(work, ignore_errors=True)
        state.ensure_private_dir(work)
        cgroup = self.cgroup_driver.create(f"{self.cgroup_root}/template-{key.id[:16]}")
        try:
            cgroup.set_limits(cgroups.CgroupLimits(cpu_shares=2))
            await create_overlay_async(key.image_path, key.image_format, work / "disk.qcow2")  # type: ignore[arg-type]
            await asyncio.to_thread(write_iso_files, template_seed_files(), work / "seed.iso", SeedFormat.NOCLOUD)
            vm = await VM.start(self.config(key, work, "save"), work / "vm", self.run_root / f"template-{key.id[:16]}",
                                cgroup=cgroup)
            try:
                await snapshot.finish_template(vm, TEMPLATE_MARKER, BUILD_TIMEOUT_S)
            finally:
                await vm.stop(grace=0)
                vm.remove_files()
            (work / "key.json").write_text(json.dumps(dataclasses.asdict(key), indent=1))
            shutil.rmtree(work / "vm", ignore_errors=True)
            (work / "ready").touch()
            final = self.directory(key)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(work, final)
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(self.run_root / f"template-{key.id[:16]}", ignore_errors=True)
            cgroup.kill()
            cgroup.delete()

    def config(self, key: TemplateKey, files: Path, role: str, prefix: str = "") -> VMConfig:
        """The VM of ``key`` over the files in ``files`` (named ``prefix + name``): the template being
        saved, or (``restore``) a clone's devices, to which the caller gives its own disk and NICs."""
        kernel = KernelBoot(key.kernel, key.initrd, tuple(key.cmdline.split())) if key.kernel else None
        return VMConfig(
            vm_id=f"template-{key.id[:16]}",
            root_disk=DiskConfig(str(files / f"{prefix}disk.qcow2"), "qcow2"),
            seed=DiskConfig(str(files / f"{prefix}seed.iso"), "raw", read_only=True, serial="cidata"),
            machine=key.machine,  # type: ignore[arg-type]
            kernel=kernel, accel=key.accel, cpus=key.cpus, memory_mib=key.memory_mib,  # type: ignore[arg-type]
            binary=key.binary,
            nics=tuple(NICConfig(PLACEHOLDER_MAC.format(index)) for index in range(key.nics)),
            snapshot=Snapshot(role, str(files / f"{prefix}ram"), str(files / f"{prefix}state")),
            run_as=self.run_as(),
        )
