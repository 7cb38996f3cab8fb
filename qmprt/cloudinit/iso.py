"""The NoCloud seed as an ISO 9660 image (volume label ``cidata``).

Rock Ridge and Joliet keep the names ``meta-data``, ``user-data`` and ``network-config`` intact for
every reader (Linux prefers Rock Ridge; Windows-flavoured tools read Joliet). The image is written
to a temporary file next to the destination and renamed into place, so a reader never sees half a
seed; the temporary file is removed on failure. The file is created 0600: the seed holds the
container's environment.
"""

from __future__ import annotations

import io
import os
import tempfile

import pycdlib

from qmprt.cloudinit.seed import (
    SeedSpec,
    render_meta_data,
    render_network_config,
    render_user_data,
)

VOLUME_LABEL = "cidata"

# (ISO 9660 level-1 name, Rock Ridge / Joliet name)
_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETWORKC.;1",
}


def seed_files(spec: SeedSpec) -> dict[str, bytes]:
    """The seed's files by name; ``network-config`` only when the spec has network settings."""
    files = {"meta-data": render_meta_data(spec), "user-data": render_user_data(spec)}
    network_config = render_network_config(spec)
    if network_config is not None:
        files["network-config"] = network_config
    return files


def write_nocloud_iso(spec: SeedSpec, path: str | os.PathLike[str]) -> None:
    """Render ``spec`` and write it as a NoCloud seed ISO at ``path``, atomically."""
    files = seed_files(spec)  # render (and validate) before touching the filesystem
    destination = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(destination))
    fd, temp_path = tempfile.mkstemp(prefix=".seed-", suffix=".iso.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            iso = pycdlib.PyCdlib()
            iso.new(
                interchange_level=1,
                vol_ident=VOLUME_LABEL,
                joliet=3,
                rock_ridge="1.09",
                app_ident_str="qmprt",
            )
            for name, content in files.items():
                iso.add_fp(
                    io.BytesIO(content),
                    len(content),
                    iso_path=_NAMES[name],
                    rr_name=name,
                    joliet_path="/" + name,
                    file_mode=0o100444,
                )
            iso.write_fp(out)
            iso.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_path, destination)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
