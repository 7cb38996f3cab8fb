"""Volumes: what a VM's guest stores on and shares with the host, rendered for QEMU.

No knowledge of pods or CRI: callers (``qmprt.pod``) decide which volumes a VM gets, put the rendered
arguments into ``VMConfig.extra_args`` (``volume_args`` + ``shares_args``; a share also needs
``VMConfig.shared_memory``), run one ``VirtiofsDaemon`` per share before the VM starts, and persist
each daemon's ``to_json()`` to adopt or stop it after a restart.

- ``qmprt.volumes.block``: host block devices and raw files, ephemeral qcow2 disks, each with a
  stable serial; ``qmprt.volumes.network``: Ceph RBD and iSCSI (secrets through QEMU ``secret``
  objects reading 0600 files);
- ``qmprt.volumes.virtiofs``: host directories through virtiofsd, read-only when asked.

Invalid descriptions raise ``InvalidArgument``; a host that cannot run virtiofsd ``FailedPrecondition``
(``virtiofs_unavailable()`` says why beforehand).
"""

from qmprt.volumes.block import (
    SCSI_CONTROLLER_ID,
    Attachment,
    BlockVolume,
    Bus,
    EphemeralVolume,
    HostBlockVolume,
    QMPCommand,
    SecretObject,
    volume_args,
    write_secret,
)
from qmprt.volumes.network import ISCSIVolume, RBDVolume
from qmprt.volumes.virtiofs import VIRTIOFSD, VirtiofsDaemon, VirtiofsShare, shares_args, virtiofs_unavailable

__all__ = [
    "SCSI_CONTROLLER_ID",
    "VIRTIOFSD",
    "Attachment",
    "BlockVolume",
    "Bus",
    "EphemeralVolume",
    "HostBlockVolume",
    "ISCSIVolume",
    "QMPCommand",
    "RBDVolume",
    "SecretObject",
    "VirtiofsDaemon",
    "VirtiofsShare",
    "shares_args",
    "virtiofs_unavailable",
    "volume_args",
    "write_secret",
]
