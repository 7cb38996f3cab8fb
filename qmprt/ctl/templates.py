"""``qmprt ctl template warm|ls|rm``: VM templates on the node's state directory, without a server.

``warm IMAGE`` builds the template that a ``qmprt.io/boot: template`` pod of that image and size would
use (the key is computed as CreateContainer computes it), in this process: QEMU in its own cgroup,
dropping root as the server's templates do. ``ls`` lists the ready ones, ``rm ID`` removes one (safe
while clones of it run: they hold hard links). A running ``qmprt serve`` sees the change at its next
CreateContainer.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TextIO

from qmprt import cgroups
from qmprt.config import Config
from qmprt.ctl import output
from qmprt.errors import NotFound
from qmprt.image import open_store
from qmprt.pod.annotations import parse_quantity
from qmprt.pod.templates import TemplateKey, Templates, template_key
from qmprt.vm import accel as accel_module

_ID = re.compile(r"[0-9a-f]{32}")


def store(config: Config) -> Templates:
    return Templates.for_config(config, cgroups.detect())


def key_for(config: Config, image_name: str, memory: str, cpus: int, nics: int) -> TemplateKey:
    """The key of a template pod of ``image_name`` with memory limit ``memory`` ("" = none) and ``cpus``."""
    images = open_store(config)
    try:
        image = images.resolve(image_name)
    finally:
        images.close()
    if image is None:
        raise NotFound(f"image {image_name!r} is not in the store: pull it first")
    guest_mib = (parse_quantity(memory) >> 20) - config.vm.memory_overhead_mib if memory else config.vm.memory_mib
    accel = accel_module.detect(None if config.vm.accel == "auto" else config.vm.accel).accel
    return template_key(image, "q35", cpus, guest_mib, nics, config, accel)


def warm(config: Config, image_name: str, out: TextIO, *, memory: str = "", cpus: int = 1, nics: int = 1) -> int:
    key = key_for(config, image_name, memory, cpus, nics)
    templates = store(config)
    if templates.ready(key) is not None:
        out.write(f"{key.id} (ready already)\n")
        return 0
    started = time.monotonic()
    asyncio.run(templates.build(key))
    out.write(f"{key.id} built in {time.monotonic() - started:.1f} s\n")
    return 0


def list_templates(config: Config, out: TextIO) -> int:
    rows = [(entry["id"], entry["image_digest"][7:19], str(entry["cpus"]), str(entry["memory_mib"]), str(entry["nics"]),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["built_at"])))
            for entry in store(config).list()]
    output.table(out, ("TEMPLATE", "IMAGE", "CPUS", "GUEST MIB", "NICS", "BUILT"), rows)
    return 0


def remove(config: Config, template_id: str, out: TextIO) -> int:
    if not _ID.fullmatch(template_id) or not store(config).remove(template_id):
        raise NotFound(f"no template {template_id!r} (qmprt ctl template ls lists them)")
    out.write(f"Deleted: {template_id}\n")
    return 0
