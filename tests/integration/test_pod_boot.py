"""VM pods that boot the image's attached kernel directly: q35 (direct) and microvm."""

from __future__ import annotations

import json

import pytest

from qmprt.errors import InvalidArgument

from .pods import container_spec, open_runtime, sandbox_spec, wait_for_log


async def test_direct_and_microvm_pods(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path, "fast"))
    microvm = container_spec(annotations={"qmprt.io/boot": "microvm", "qmprt.io/data-volumes": "32Mi"})
    with pytest.raises(InvalidArgument, match="has no kernel attached"):
        await runtime.create_container(sandbox_id, microvm)

    runtime.images.set_boot_files("tiny", tiny.kernel, tiny.initrd, " ".join(tiny.cmdline("q35")))
    for boot, spec in (("microvm", microvm), ("direct", container_spec(annotations={"qmprt.io/boot": "direct"}))):
        container_id = await runtime.create_container(sandbox_id, spec)
        await runtime.start_container(container_id)
        await wait_for_log(runtime.container(container_id).log_path, tiny.ready_marker)
        container = runtime.containers[container_id]
        assert container.vm is not None and container.vm.monitor is not None
        machine = await container.vm.monitor.execute("query-target")  # answers: the VM is up
        assert machine["arch"] == "x86_64"
        argv = json.loads((state_dir / "pods" / sandbox_id / container_id / "vm.json").read_text())["argv"]
        assert argv[argv.index("-machine") + 1].split(",")[0] == ("microvm" if boot == "microvm" else "q35")
        assert argv[argv.index("-kernel") + 1] == runtime.images.resolve("tiny").boot.kernel
        assert (await runtime.exec_sync(container_id, ["cat", "/etc/hostname"], 30)).stdout == b"fast-host\n"
        if boot == "microvm":
            size = await runtime.exec_sync(container_id, ["blockdev", "--getsize64", "/dev/disk/by-id/virtio-data0"], 30)
            assert size.stdout.strip() == str(32 << 20).encode()
        await runtime.stop_container(container_id, 30)
        assert runtime.container(container_id).status.reason == "Completed"
        await runtime.remove_container(container_id)
    await runtime.remove_sandbox(sandbox_id)
