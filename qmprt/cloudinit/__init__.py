"""NoCloud seeds: a container's hostname, environment, command, files and network, for its guest.

``write_nocloud_iso(spec, path)`` is the whole job for the runtime; the ``render_*`` functions give
the individual files (for tests and debugging). No grpc or protobuf here: callers translate CRI
objects into a ``SeedSpec`` first.

``READY_MARKER`` is the line the tiny test guest prints on its console once the seed is applied, the
network is configured and the guest agent is started.
"""

from qmprt.cloudinit.iso import VOLUME_LABEL, seed_files, write_nocloud_iso
from qmprt.cloudinit.seed import (
    COMMAND_PATH,
    ENVIRONMENT_PATH,
    DNSConfig,
    NetworkInterface,
    Route,
    SeedFile,
    SeedSpec,
    render_command_script,
    render_environment,
    render_meta_data,
    render_network_config,
    render_user_data,
)

READY_MARKER = "qmprt: guest ready"

__all__ = [
    "COMMAND_PATH",
    "ENVIRONMENT_PATH",
    "READY_MARKER",
    "VOLUME_LABEL",
    "DNSConfig",
    "NetworkInterface",
    "Route",
    "SeedFile",
    "SeedSpec",
    "render_command_script",
    "render_environment",
    "render_meta_data",
    "render_network_config",
    "render_user_data",
    "seed_files",
    "write_nocloud_iso",
]
