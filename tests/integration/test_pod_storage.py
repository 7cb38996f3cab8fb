"""What a VM pod is told and what it can store, read back from inside the guest (one boot)."""

from __future__ import annotations

import dataclasses
import os

from qmprt.pod.specs import DNSSettings, DeviceSpec, MountSpec

from .pods import container_spec, open_runtime, sandbox_spec, wait_for_log

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqmprtTestKeyOnlyForTests0000000000000000 ops@example"
HOSTILE = "it's $HOME \"quoted\"\nline two ✓ `x`"


async def test_guest_sees_config_files_shares_and_disks(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)

    config_dir = tmp_path / "configmap"
    config_dir.mkdir()
    (config_dir / "app.conf").write_text("mode = vm\n")
    secret = tmp_path / "secret-token"
    secret.write_text("s3cr3t")
    secret.chmod(0o400)
    raw_disk = tmp_path / "raw.img"
    with raw_disk.open("wb") as handle:
        handle.truncate(32 << 20)

    sandbox = dataclasses.replace(
        sandbox_spec(tmp_path, "stateful"),
        dns=DNSSettings(servers=("192.0.2.53", "192.0.2.54"), searches=("svc.cluster.local",), options=("ndots:5",)),
    )
    container = container_spec(
        envs=(("HOSTILE", HOSTILE),),
        mounts=(MountSpec("/etc/app", str(config_dir), readonly=True), MountSpec("/run/secrets/token", str(secret), readonly=True)),
        devices=(DeviceSpec("/dev/xvdb", str(raw_disk), "rw"),),
        annotations={"qmprt.io/ssh-authorized-keys": KEY, "qmprt.io/data-volumes": "64Mi"},
    )
    sandbox_id = await runtime.run_sandbox(sandbox)
    container_id = await runtime.create_container(sandbox_id, container)
    await runtime.start_container(container_id)
    await wait_for_log(runtime.container(container_id).log_path, tiny.ready_marker)

    async def guest(script: str) -> str:
        result = await runtime.exec_sync(container_id, ["sh", "-c", script], 30)
        assert result.exit_code == 0, (script, result.stderr)
        return result.stdout.decode()

    assert (await guest("cat /etc/hostname")).strip() == "stateful-host"
    assert await guest('. /etc/cloud/environment; printf %s "$HOSTILE"') == HOSTILE
    assert await guest("cat /etc/app/app.conf") == "mode = vm\n"
    assert (await runtime.exec_sync(container_id, ["sh", "-c", "echo x > /etc/app/new"], 30)).exit_code != 0
    assert await guest("cat /run/secrets/token; echo; stat -c %a /run/secrets/token") == "s3cr3t\n400\n"
    assert KEY in await guest("cat /root/.ssh/authorized_keys")
    resolv = await guest("cat /etc/resolv.conf")
    assert "nameserver 192.0.2.53" in resolv and "svc.cluster.local" in resolv and "ndots:5" in resolv
    assert (await guest("blockdev --getsize64 /dev/disk/by-id/virtio-xvdb")).strip() == str(32 << 20)
    assert (await guest("blockdev --getsize64 /dev/disk/by-id/virtio-data0")).strip() == str(64 << 20)
    # The raw device is the host file: what the guest writes, the host reads.
    await guest("printf qmprt-was-here | dd of=/dev/disk/by-id/virtio-xvdb conv=fsync 2>/dev/null")
    assert raw_disk.read_bytes()[:14] == b"qmprt-was-here"

    directory = state_dir / "pods" / sandbox_id / container_id
    assert (directory / "data0.qcow2").exists()
    await runtime.remove_sandbox(sandbox_id)
    assert not directory.exists()
    assert not any("virtiofsd" in " ".join(p) for p in _cmdlines() if str(config_dir) in " ".join(p))


def _cmdlines() -> list[list[str]]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0"))
            except OSError:
                pass
    return found
