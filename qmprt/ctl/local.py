"""``qmprt ctl`` commands that work on the node's state directory itself, with no server involved.

``image import`` registers a local disk image in the store, for air-gapped nodes and tests. It is safe
while ``qmprt serve`` runs on the same state directory: the store's index is locked across processes,
and the server sees the new image on its next lookup (see ``qmprt.image.index``).
"""

from __future__ import annotations

import os
from typing import TextIO

from qmprt.config import Config
from qmprt.ctl import output
from qmprt.errors import InvalidArgument
from qmprt.image import normalise_name, open_store


def import_image(
    config: Config, path: str, name: str, out: TextIO,
    kernel: str | None = None, initrd: str | None = None, cmdline: str = "",
) -> int:
    """Copy ``path`` into the store under ``name``, with every check a pull has; with ``kernel``, attach
    it (and ``initrd``, ``cmdline``) so pods may boot the image directly."""
    store = open_store(config, collect=False)
    try:
        record = store.import_file(os.path.abspath(path), name)
        if kernel is not None:
            record = store.set_boot_files(record.digest, kernel, initrd, cmdline)
    except InvalidArgument as err:
        raise InvalidArgument(f"{path} was not imported: {err}") from err
    finally:
        store.close()
    out.write(
        f"Imported {path} as {normalise_name(name)}: {record.digest} "
        f"({record.format}, {output.size(record.size_bytes)}, virtual size {output.size(record.virtual_size)}"
        f"{', with a kernel for direct boot' if record.boot else ''})\n"
    )
    return 0
