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


def import_image(config: Config, path: str, name: str, out: TextIO) -> int:
    """Copy ``path`` into the store under ``name``, with every check a pull has."""
    store = open_store(config, collect=False)
    try:
        record = store.import_file(os.path.abspath(path), name)
    except InvalidArgument as err:
        raise InvalidArgument(f"{path} was not imported: {err}") from err
    finally:
        store.close()
    out.write(
        f"Imported {path} as {normalise_name(name)}: {record.digest} "
        f"({record.format}, {output.size(record.size_bytes)}, virtual size {output.size(record.virtual_size)})\n"
    )
    return 0
