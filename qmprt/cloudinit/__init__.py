"""Seeds: a container's hostname, environment, command, files, SSH keys, mounts and network, for its guest.

``write_seed_iso(spec, path, format)`` is the whole job for the runtime: a NoCloud (``cidata``) or
ConfigDrive (``config-2``) ISO, chosen by ``SeedFormat``; ``write_nocloud_iso`` is the NoCloud case.
The ``render_*`` functions give the individual files (for tests and debugging). User-supplied
user-data is merged into qmprt's cloud-config or replaces it: ``qmprt.cloudinit.userdata`` documents
the merge order and the limits. No grpc or protobuf here: callers translate CRI objects into a
``SeedSpec`` first. Every invalid input is a ``ValueError`` saying what is wrong.

``READY_MARKER`` is the line the tiny test guest prints on its console once the seed is applied, the
network is configured and the guest agent is started.
"""

from qmprt.cloudinit.configdrive import (
    CONFIG_DRIVE_LABEL,
    config_drive_files,
    render_meta_data_json,
    render_network_data_json,
)
from qmprt.cloudinit.iso import VOLUME_LABEL, SeedFormat, seed_files, write_nocloud_iso, write_seed_iso
from qmprt.cloudinit.network import DNSConfig, NetworkInterface, Route
from qmprt.cloudinit.seed import (
    COMMAND_EXIT_MARKER,
    COMMAND_PATH,
    ENVIRONMENT_PATH,
    SeedFile,
    SeedMount,
    SeedSpec,
    check_hostname,
    hostname_from_name,
    mount_command,
    render_command_script,
    render_environment,
    render_meta_data,
    render_network_config,
    render_user_data,
)
from qmprt.cloudinit.userdata import USER_DATA_MAX_BYTES, UserDataMode

READY_MARKER = "qmprt: guest ready"

__all__ = [
    "COMMAND_EXIT_MARKER",
    "COMMAND_PATH",
    "CONFIG_DRIVE_LABEL",
    "ENVIRONMENT_PATH",
    "READY_MARKER",
    "USER_DATA_MAX_BYTES",
    "VOLUME_LABEL",
    "DNSConfig",
    "NetworkInterface",
    "Route",
    "SeedFile",
    "SeedFormat",
    "SeedMount",
    "SeedSpec",
    "UserDataMode",
    "check_hostname",
    "config_drive_files",
    "hostname_from_name",
    "mount_command",
    "render_command_script",
    "render_environment",
    "render_meta_data",
    "render_meta_data_json",
    "render_network_config",
    "render_network_data_json",
    "render_user_data",
    "seed_files",
    "write_nocloud_iso",
    "write_seed_iso",
]
