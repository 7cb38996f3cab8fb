"""Seeds as ISO 9660 images: NoCloud (volume label ``cidata``) or ConfigDrive (``config-2``).

Rock Ridge and Joliet keep the names (``meta-data``, ``openstack/latest/meta_data.json``…) intact for
every reader (Linux prefers Rock Ridge; Windows-flavoured tools read Joliet). The image is written
to a temporary file next to the destination and renamed into place, so a reader never sees half a
seed; the temporary file is removed on failure. The file is created 0600: the seed holds the
container's environment.
"""

from __future__ import annotations

import enum
import io
import os
import tempfile

import pycdlib

from qmprt.cloudinit.configdrive import CONFIG_DRIVE_LABEL, META_DATA, NETWORK_DATA, USER_DATA, config_drive_files
from qmprt.cloudinit.seed import (
    SeedSpec,
    render_meta_data,
    render_network_config,
    render_user_data,
)

VOLUME_LABEL = "cidata"


class SeedFormat(str, enum.Enum):
    """Which datasource the seed speaks: NoCloud (``cidata``) or OpenStack ConfigDrive (``config-2``)."""

    NOCLOUD = "nocloud"
    CONFIG_DRIVE = "configdrive"

    @property
    def label(self) -> str:
        return VOLUME_LABEL if self is SeedFormat.NOCLOUD else CONFIG_DRIVE_LABEL


# path in the seed → ISO 9660 level-1 path of each file and directory a seed can hold.
_ISO_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETWORKC.;1",
    "openstack": "/OPENSTAC",
    "openstack/latest": "/OPENSTAC/LATEST",
    META_DATA: "/OPENSTAC/LATEST/META_DAT.JSO;1",
    USER_DATA: "/OPENSTAC/LATEST/USER_DAT.;1",
    NETWORK_DATA: "/OPENSTAC/LATEST/NETWORK_.JSO;1",
}


def seed_files(spec: SeedSpec, format: SeedFormat = SeedFormat.NOCLOUD) -> dict[str, bytes]:
    """The seed's files by path; the network file only when the spec has network settings."""
    if format is SeedFormat.CONFIG_DRIVE:
        return config_drive_files(spec)
    files = {"meta-data": render_meta_data(spec), "user-data": render_user_data(spec)}
    network_config = render_network_config(spec)
    if network_config is not None:
        files["network-config"] = network_config
    return files


def write_seed_iso(spec: SeedSpec, path: str | os.PathLike[str], format: SeedFormat = SeedFormat.NOCLOUD) -> None:
    """Render ``spec`` and write it as a seed ISO of ``format`` at ``path``, atomically."""
    write_iso_files(seed_files(spec, format), path, format)  # rendered (and validated) first


def write_iso_files(files: dict[str, bytes], path: str | os.PathLike[str], format: SeedFormat) -> None:
    """``files`` (by path) as a seed ISO labelled for ``format`` at ``path``, atomically."""
    destination = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(destination))
    fd, temp_path = tempfile.mkstemp(prefix=".seed-", suffix=".iso.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            iso = pycdlib.PyCdlib()
            iso.new(
                interchange_level=1,
                vol_ident=format.label,
                joliet=3,
                rock_ridge="1.09",
                app_ident_str="qmprt",
            )
            made: set[str] = set()
            for name, content in files.items():
                parts = name.split("/")
                for depth in range(1, len(parts)):
                    parent = "/".join(parts[:depth])
                    if parent not in made:
                        iso.add_directory(_ISO_NAMES[parent], rr_name=parts[depth - 1], joliet_path="/" + parent)
                        made.add(parent)
                iso.add_fp(
                    io.BytesIO(content),
                    len(content),
                    iso_path=_ISO_NAMES[name],
                    rr_name=parts[-1],
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


def write_nocloud_iso(spec: SeedSpec, path: str | os.PathLike[str]) -> None:
    """``write_seed_iso`` for a NoCloud seed."""
    write_seed_iso(spec, path, SeedFormat.NOCLOUD)
