"""Block volumes: golden argv and QMP, validation, secrets, ephemeral disks, and QEMU's own schema check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument
from qmprt.virtio import Transport
from qmprt.volumes import (
    Attachment,
    BlockVolumes,
    EphemeralVolume,
    HostBlockVolume,
    ISCSIVolume,
    RBDVolume,
    volume_from_json,
    volume_to_json,
    write_secret,
)

CEPH_KEY = "AQBvbXBydGtleWZvcnRoZXRlc3RzMDEyMzQ1Njc4OQ=="


def test_host_device_golden() -> None:
    volume = HostBlockVolume(Attachment("raw", "serial-1", read_only=True), "/dev/loop7", "host_device")
    assert volume.args("pci") == [
        "-blockdev",
        '{"driver":"raw","node-name":"vol-raw","read-only":true,"discard":"unmap",'
        '"file":{"driver":"host_device","filename":"/dev/loop7","node-name":"vol-raw-file","read-only":true,'
        '"discard":"unmap"}}',
        "-device",
        '{"driver":"virtio-blk-pci","id":"vol-raw-dev","drive":"vol-raw","serial":"serial-1"}',
    ]
    assert volume.attachment.guest_path == "/dev/disk/by-id/virtio-serial-1"


def test_mmio_and_scsi_devices() -> None:
    blk = HostBlockVolume(Attachment("a", "sa"), "/f", "file")
    assert json.loads(blk.args("mmio")[-1])["driver"] == "virtio-blk-device"
    scsi = HostBlockVolume(Attachment("b", "sb", bus="virtio-scsi"), "/g", "file")
    assert json.loads(scsi.args("pci")[-1]) == {
        "driver": "scsi-hd", "id": "vol-b-dev", "drive": "vol-b", "bus": "vol-scsi0.0", "serial": "sb",
    }
    assert scsi.attachment.guest_path == "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_sb"
    argv = BlockVolumes((blk, scsi), Transport.MMIO).args()
    assert argv[:2] == ["-device", '{"driver":"virtio-scsi-device","id":"vol-scsi0"}']
    assert BlockVolumes((blk,), Transport.PCI).args() == blk.args("pci")


def test_a_vms_volumes_refuse_duplicates() -> None:
    one = HostBlockVolume(Attachment("a", "s1"), "/f", "file")
    with pytest.raises(InvalidArgument, match="names are not unique"):
        BlockVolumes((one, HostBlockVolume(Attachment("a", "s2"), "/g", "file")), Transport.PCI)
    with pytest.raises(InvalidArgument, match="serials are not unique"):
        BlockVolumes((one, HostBlockVolume(Attachment("b", "s1"), "/g", "file")), Transport.PCI)


def test_volumes_read_back_from_their_documents() -> None:
    volumes = (
        HostBlockVolume(Attachment("dev0", "disk", read_only=True), "/dev/sdz"),
        EphemeralVolume(Attachment("data0", "data0"), "/p/data0.qcow2", 1 << 30),
        RBDVolume(Attachment("rbd0", "rbd0"), "pool", "img", ("10.0.0.1:6789",), "admin", "/p/rbd0.key"),
        ISCSIVolume(Attachment("iscsi0", "iscsi0", bus="virtio-scsi"), "10.0.0.2", "iqn.2026-12.io.qmprt:t", 1),
    )
    for volume in volumes:
        document = json.loads(json.dumps(volume_to_json(volume)))
        assert volume_from_json(document) == volume
    with pytest.raises(ValueError, match="unknown kind 'nfs'"):
        volume_from_json({**volume_to_json(volumes[0]), "kind": "nfs"})
    with pytest.raises(InvalidArgument, match="volume name"):  # a document edited by hand is checked again
        volume_from_json({**volume_to_json(volumes[0]), "attachment": {"name": "../x", "serial": "s"}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "A", "serial": "s"}, "volume name"),
        ({"name": "-a", "serial": "s"}, "volume name"),
        ({"name": "a" * 17, "serial": "s"}, "volume name"),
        ({"name": "a", "serial": ""}, "serial"),
        ({"name": "a", "serial": "x" * 21}, "serial"),
        ({"name": "a", "serial": "has space"}, "serial"),
        ({"name": "a", "serial": "s", "bus": "ide"}, "bus"),
    ],
    ids=["upper", "dash-first", "long-name", "empty-serial", "long-serial", "space-serial", "bus"],
)
def test_bad_attachments(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Attachment(**kwargs)  # type: ignore[arg-type]


def test_for_path_picks_the_driver(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    assert HostBlockVolume.for_path(str(image), Attachment("f", "s")).driver == "file"
    if Path("/dev/loop0").is_block_device():
        assert HostBlockVolume.for_path("/dev/loop0", Attachment("b", "s")).driver == "host_device"
    for path in (str(tmp_path), "/dev/null"):
        with pytest.raises(InvalidArgument, match="neither a block device nor a regular file"):
            HostBlockVolume.for_path(path, Attachment("d", "s"))
    with pytest.raises(InvalidArgument, match="No such file"):
        HostBlockVolume.for_path(str(tmp_path / "missing"), Attachment("m", "s"))


def test_rbd_golden_and_hotplug(tmp_path: Path) -> None:
    volume = RBDVolume(
        Attachment("ceph", "rbd-1"), pool="kube", image="pvc-1", monitors=("10.0.0.1", "mon2:3300", "[fd00::3]:6789"),
        user="qmprt", key_file="/state/ceph.key",
    )
    argv = volume.args("pci")
    assert argv[:2] == ["-object", '{"qom-type":"secret","id":"vol-ceph-key","file":"/state/ceph.key","format":"base64"}']
    assert json.loads(argv[3])["file"] == {
        "driver": "rbd", "pool": "kube", "image": "pvc-1", "user": "qmprt",
        "server": [
            {"host": "10.0.0.1", "port": "6789"}, {"host": "mon2", "port": "3300"}, {"host": "fd00::3", "port": "6789"},
        ],
        "key-secret": "vol-ceph-key", "auth-client-required": ["cephx"],
        "node-name": "vol-ceph-file", "read-only": False, "discard": "unmap",
    }
    assert CEPH_KEY not in " ".join(argv)
    assert [name for name, _ in volume.qmp_args("pci")] == ["object-add", "blockdev-add", "device_add"]


def test_iscsi_golden() -> None:
    volume = ISCSIVolume(
        Attachment("lun", "iscsi-1", read_only=True), portal="[fd00::9]", target="iqn.2024-01.io.qmprt:store",
        lun=3, user="chap-user", password_file="/state/chap", initiator_name="iqn.2024-01.io.qmprt:node1",
    )
    argv = volume.args("pci")
    assert argv[:2] == ["-object", '{"qom-type":"secret","id":"vol-lun-chap","file":"/state/chap","format":"raw"}']
    assert json.loads(argv[3])["file"] == {
        "driver": "iscsi", "transport": "tcp", "portal": "[fd00::9]:3260", "target": "iqn.2024-01.io.qmprt:store",
        "lun": 3, "user": "chap-user", "password-secret": "vol-lun-chap",
        "initiator-name": "iqn.2024-01.io.qmprt:node1", "node-name": "vol-lun-file", "read-only": True,
        "discard": "unmap",
    }
    plain = ISCSIVolume(Attachment("l2", "s2"), portal="san.example:3261", target="iqn.2024-01.io.qmprt:x")
    assert plain.secrets() == () and json.loads(plain.args("pci")[1])["file"]["portal"] == "san.example:3261"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RBDVolume(Attachment("a", "s"), pool="p/x", image="i"), "pool"),
        (lambda: RBDVolume(Attachment("a", "s"), pool="p", image="i", monitors=("a:b",)), "monitor"),
        (lambda: RBDVolume(Attachment("a", "s"), pool="p", image="i", monitors=("h:70000",)), "monitor"),
        (lambda: RBDVolume(Attachment("a", "s"), pool="p", image="i", key_file="/k"), "needs the user"),
        (lambda: ISCSIVolume(Attachment("a", "s"), portal="h", target="not-an-iqn"), "target"),
        (lambda: ISCSIVolume(Attachment("a", "s"), portal="h", target="iqn.2024-01.x", lun=-1), "LUN"),
        (lambda: ISCSIVolume(Attachment("a", "s"), portal="h", target="iqn.2024-01.x", user="u"), "CHAP"),
        (lambda: ISCSIVolume(Attachment("a", "s"), portal="h:p", target="iqn.2024-01.x"), "portal"),
    ],
    ids=["rbd-pool", "rbd-monitor", "rbd-port", "rbd-key-no-user", "iscsi-target", "iscsi-lun", "iscsi-chap",
         "iscsi-portal"],
)
def test_bad_network_volumes(make: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make()  # type: ignore[operator]


def test_write_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "ceph.key"
    write_secret(key_file, f"  {CEPH_KEY}\n".encode(), "base64")
    assert key_file.read_bytes() == CEPH_KEY.encode()
    assert key_file.stat().st_mode & 0o777 == 0o600
    write_secret(key_file, b"pass word\n")  # raw: kept as given, replaced atomically
    assert key_file.read_bytes() == b"pass word\n"
    with pytest.raises(InvalidArgument, match="not base64"):
        write_secret(tmp_path / "bad", b"not base64!", "base64")
    with pytest.raises(InvalidArgument, match="empty"):
        write_secret(tmp_path / "empty", b"")
    assert sorted(os.listdir(tmp_path)) == ["ceph.key"]


async def test_ephemeral_volume_lifecycle(tmp_path: Path) -> None:
    attachment = Attachment("data", "data-1")
    volume = await EphemeralVolume.ensure(tmp_path, attachment, 64 * 1024 * 1024 - 100)
    assert volume.size_bytes == 64 * 1024 * 1024  # rounded up to whole sectors
    path = Path(volume.path)
    assert path == tmp_path / "data.qcow2" and path.stat().st_mode & 0o777 == 0o600
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                                     check=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * 1024 * 1024)
    assert json.loads(volume.args("pci")[1])["driver"] == "qcow2"
    assert await EphemeralVolume.ensure(tmp_path, attachment, 64 * 1024 * 1024) == volume
    with pytest.raises(InvalidArgument, match="exists with 67108864 bytes"):
        await EphemeralVolume.ensure(tmp_path, attachment, 32 * 1024 * 1024)
    with pytest.raises(InvalidArgument, match="size must be positive"):
        await EphemeralVolume.ensure(tmp_path, Attachment("zero", "z"), 0)
    volume.delete()
    volume.delete()
    assert os.listdir(tmp_path) == []


def test_qemu_accepts_the_rendered_schema(tmp_path: Path) -> None:
    """QEMU checks -blockdev against its QAPI schema before it loads a driver: what we render for rbd
    and iscsi must get past that check (to 'Unknown driver', the module is not installed here, or to
    the connection attempt) and never fail on a parameter."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("QEMU is not installed")
    write_secret(tmp_path / "key", CEPH_KEY.encode(), "base64")
    write_secret(tmp_path / "chap", b"secret")
    volumes = [
        RBDVolume(Attachment("ceph", "rbd-1"), pool="p", image="i", monitors=("127.0.0.1:1",), user="u",
                  key_file=str(tmp_path / "key")),
        ISCSIVolume(Attachment("lun", "lun-1"), portal="127.0.0.1:1", target="iqn.2024-01.io.qmprt:t", user="u",
                    password_file=str(tmp_path / "chap")),
    ]
    for volume in volumes:
        # Only the secret objects and the blockdev: -device needs a machine with a bus.
        argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none", *volume.args("pci")[:-2]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        assert "is unexpected" not in result.stderr and "is missing" not in result.stderr, result.stderr
        assert "Unknown driver" in result.stderr or "connect" in result.stderr.lower(), result.stderr
