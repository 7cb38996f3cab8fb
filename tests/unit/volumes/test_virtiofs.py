"""virtiofs shares: golden argv of both sides, and the daemon's life without a VM (it waits for one)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import psutil
import pytest

from qmprt.errors import InvalidArgument
from qmprt.virtio import Transport
from qmprt.vm.config import DiskConfig, VMConfig
from qmprt.vm.devices import RawArgs
from qmprt.vm.machine import VM
from qmprt.volumes import VIRTIOFSD, VirtiofsDaemon, VirtiofsShare, VirtiofsShares, virtiofs_unavailable


def test_read_only_daemon_runs_in_a_read_only_bind() -> None:
    share = VirtiofsShare("cfg", "config", "/srv/a,b", "/run/x/fs.sock")
    assert share.daemon_argv(5) == [
        "unshare", "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", 'mount -o bind,ro -- "$0" "$0" && exec "$@"', "/srv/a,b",
        VIRTIOFSD, "--fd=5", "-o", "source=/srv/a,b", "-o", "cache=auto",
    ]
    writable = dataclasses.replace(share, read_only=False, cache="none")
    assert writable.daemon_argv(5) == [VIRTIOFSD, "--fd=5", "-o", "source=/srv/a,b", "-o", "cache=none"]


def test_qemu_side_golden() -> None:
    share = VirtiofsShare("cfg", "config", "/srv/a", "/run/x,y/fs.sock")
    assert share.args("pci") == [
        "-chardev", "socket,id=fs-cfg,path=/run/x,,y/fs.sock",
        "-device", '{"driver":"vhost-user-fs-pci","id":"fs-cfg-dev","chardev":"fs-cfg","tag":"config"}',
    ]
    assert json.loads(share.args("mmio")[3])["driver"] == "vhost-user-fs-device"
    assert share.qmp_args("pci") == [
        ("chardev-add", {"id": "fs-cfg", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": "/run/x,y/fs.sock"}}, "server": False}}}),
        ("device_add", {"driver": "vhost-user-fs-pci", "id": "fs-cfg-dev", "chardev": "fs-cfg", "tag": "config"}),
    ]
    other = VirtiofsShare("data", "data", "/srv/b", "/run/x/d.sock")
    assert VirtiofsShares((share, other), Transport.PCI).args() == [*share.args("pci"), *other.args("pci")]
    with pytest.raises(InvalidArgument, match="tags are not unique"):
        VirtiofsShares((share, dataclasses.replace(other, tag="config")), Transport.PCI)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad"}, "share name"),
        ({"tag": "x" * 37}, "share tag"),
        ({"tag": "a b"}, "share tag"),
        ({"source": "relative"}, "absolute"),
        ({"socket_path": "/" + "s" * 107}, "socket path"),
        ({"cache": "sometimes"}, "cache"),
    ],
    ids=["name", "long-tag", "space-tag", "source", "socket", "cache"],
)
def test_bad_shares(kwargs: dict[str, str], message: str) -> None:
    fields = {"name": "a", "tag": "t", "source": "/s", "socket_path": "/r/s.sock", **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        VirtiofsShare(**fields)  # type: ignore[arg-type]


def test_vm_config_carries_other_mechanisms_devices() -> None:
    share = VirtiofsShare("cfg", "config", "/srv/a", "/run/x/fs.sock")
    base = VMConfig(vm_id="v", root_disk=DiskConfig("/r.qcow2", "qcow2"))
    with pytest.raises(InvalidArgument, match="shared_memory"):
        dataclasses.replace(base, extra_devices=(VirtiofsShares((share,), Transport.PCI),))
    config = dataclasses.replace(base, extra_devices=(VirtiofsShares((share,), Transport.PCI),), shared_memory=True)
    # vm.json keeps their rendering; an adopted VM gets it back as it was.
    assert config.to_json()["extra_args"] == share.args("pci") and "extra_devices" not in config.to_json()
    adopted = VMConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert adopted.extra_devices == (RawArgs(tuple(share.args("pci"))),) and adopted.to_json() == config.to_json()
    argv = VM.render(config, {"qmp": 3, "qmp-shell": 4, "qga": 5, "console": 6, "exec": 7}, "/c.raw").argv()
    start = argv.index("-chardev", argv.index('{"driver":"virtio-blk-pci","id":"blk-root","drive":"root","bootindex":0}'))
    assert argv[start:start + 4] == list(share.args("pci"))
    assert "share" in next(arg for arg in argv if arg.startswith('{"qom-type":"memory-backend-memfd"'))


async def test_daemon_start_adopt_stop(tmp_path: Path) -> None:
    reason = virtiofs_unavailable()
    if reason is not None:
        pytest.skip(reason)
    source = tmp_path / "src"
    source.mkdir()
    share = VirtiofsShare("t", "t", str(source), str(tmp_path / "fs.sock"))
    daemon = await VirtiofsDaemon.start(share, tmp_path / "virtiofsd.log")
    try:
        assert daemon.running
        assert Path(share.socket_path).is_socket() and Path(share.socket_path).stat().st_mode & 0o777 == 0o600
        process = psutil.Process(daemon.pid)
        assert process.cmdline()[0] == VIRTIOFSD and f"source={source}" in process.cmdline()
        document = json.loads(json.dumps(daemon.to_json()))
        adopted = VirtiofsDaemon.adopt(document)
        assert adopted.running and adopted.share == share
        stale = VirtiofsDaemon.adopt({**document, "create_time": document["create_time"] - 100})
        assert not stale.running  # a reused pid is not ours
        await adopted.stop()
        assert not adopted.running and not Path(share.socket_path).exists()
    finally:
        await daemon.stop()
    assert not daemon.running
    await daemon.stop()  # stopping a stopped daemon does nothing


async def test_daemon_start_refuses_a_missing_directory(tmp_path: Path) -> None:
    share = VirtiofsShare("t", "t", str(tmp_path / "missing"), str(tmp_path / "fs.sock"))
    with pytest.raises(InvalidArgument, match="not a directory"):
        await VirtiofsDaemon.start(share, tmp_path / "virtiofsd.log")
    assert not Path(share.socket_path).exists()


async def test_daemon_failure_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    fake = tmp_path / "virtiofsd"
    fake.write_text("#!/bin/sh\necho 'fuse: unknown option' >&2\nexit 1\n")
    fake.chmod(0o700)
    share = VirtiofsShare("t", "t", str(tmp_path), str(tmp_path / "fs.sock"), read_only=False, binary=str(fake))
    with pytest.raises(Exception, match="exited with 1: fuse: unknown option"):
        await VirtiofsDaemon.start(share, tmp_path / "virtiofsd.log")
    assert not Path(share.socket_path).exists()
