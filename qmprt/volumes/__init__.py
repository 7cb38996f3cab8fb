"""Volumes: what a VM's guest stores on and shares with the host, rendered for QEMU.

No knowledge of pods or CRI: callers (``qmprt.pod``) decide which volumes a VM gets, hand them to
the VM as devices in ``VMConfig.extra_devices`` (``BlockVolumes`` and ``VirtiofsShares`` render
themselves; a share also needs ``VMConfig.shared_memory``), keep the volumes as documents
(``volume_to_json``/``volume_from_json``), run one ``VirtiofsDaemon`` per share before the VM starts,
and persist each daemon's ``to_json()`` to adopt or stop it after a restart.

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
    BlockVolumes,
    Bus,
    EphemeralVolume,
    HostBlockVolume,
    QMPCommand,
    SecretObject,
    write_secret,
)
from qmprt.volumes.documents import volume_from_json, volume_to_json
from qmprt.volumes.network import ISCSIVolume, RBDVolume
from qmprt.volumes.virtiofs import VIRTIOFSD, VirtiofsDaemon, VirtiofsShare, VirtiofsShares, virtiofs_unavailable

__all__ = [
    "SCSI_CONTROLLER_ID",
    "VIRTIOFSD",
    "Attachment",
    "BlockVolume",
    "BlockVolumes",
    "Bus",
    "EphemeralVolume",
    "HostBlockVolume",
    "ISCSIVolume",
    "QMPCommand",
    "RBDVolume",
    "SecretObject",
    "VirtiofsDaemon",
    "VirtiofsShare",
    "VirtiofsShares",
    "virtiofs_unavailable",
    "volume_from_json",
    "volume_to_json",
    "write_secret",
]
