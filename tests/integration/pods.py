"""Helpers for tests that drive the pod runtime directly (without the gRPC layer)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from pathlib import Path

from qmprt import cgroups, config as config_module
from qmprt.image import open_store
from qmprt.pod.specs import ContainerMetadata, ContainerSpec, SandboxMetadata, SandboxSpec
from qmprt.pod.runtime import Runtime

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest

BOOT_TIMEOUT = 90


async def open_runtime(
    tiny: TinyGuest, state_dir: Path, run_dir: Path, cni_dir: Path, **vm_changes: object
) -> Runtime:
    """A Runtime on real cgroups, netns and image store, with the tiny guest imported as "tiny"."""
    cfg = config_module.load(state_dir=str(state_dir), run_dir=str(run_dir))
    cfg = dataclasses.replace(
        cfg,
        cgroups=dataclasses.replace(cfg.cgroups, root=f"{TEST_CGROUP_ROOT}/rt"),
        cni=dataclasses.replace(cfg.cni, conf_dir=str(cni_dir)),
        vm=dataclasses.replace(cfg.vm, **vm_changes),  # type: ignore[arg-type]
    )
    images = open_store(cfg)
    if images.resolve("tiny") is None:
        images.import_file(tiny.disk, "tiny")
    runtime = Runtime(cfg, images, cgroups.detect())
    await runtime.recover()
    return runtime


def sandbox_spec(tmp_path: Path, name: str = "web") -> SandboxSpec:
    log_dir = tmp_path / "logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        metadata=SandboxMetadata(name=name, uid=secrets.token_hex(4), namespace="default"),
        hostname=f"{name}-host",
        log_directory=str(log_dir),
        labels={"app": name, "io.kubernetes.pod.name": name},
        annotations={"note": "üñí ✓"},
    )


def container_spec(**changes: object) -> ContainerSpec:
    base = ContainerSpec(
        metadata=ContainerMetadata(name="vm"),
        image="tiny",
        log_path="vm.log",
        envs=(("GREETING", "it's $HOME \"quoted\"\nline two ✓"),),
        labels={"tier": "front"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def wait_for_log(path: str, text: str, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if os.path.exists(path) and text in Path(path).read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")
