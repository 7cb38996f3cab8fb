"""The container baseline: Debian's containerd run by the benchmark, a busybox pod through its CRI socket.

containerd gets a generated config.toml: root, state, runc's root, the opt plugin's path and its gRPC
socket in the temp dir; no TCP (the CRI streaming server on 127.0.0.1 only); metrics and debug off;
``restrict_oom_score_adj = true`` (this kind of machine refuses negative OOM scores); the overlayfs
snapshotter, or ``native`` where an overlay mount fails. Networking: a CNI config whose only plugin is a
no-op that configures nothing and reports a documentation address (192.0.2.1, never routed), as qmprt
runs here with no CNI plugin either; containerd adds loopback itself.

The image is built here from ``busybox-static``: a docker-archive tar of one layer (/bin/busybox and
links to it) with two names, the pod's container and the sandbox ("pause") image, imported with
``ctr -n k8s.io images import``. Each run: RunPodSandbox + CreateContainer + StartContainer of a busybox
container that echoes a line, until that line is in its CRI log.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from common import Daemon, kill_processes_mentioning, unmount_below
from cri import Client, PodTemplate

from qmprt import cgroups

BUSYBOX = "bench.qmprt.local/busybox:1"
PAUSE = "bench.qmprt.local/pause:1"
READY_LINE = "bench: container ready"
APPLETS = ("sh", "sleep", "echo", "cat", "true", "mkdir", "httpd", "nc", "printf", "hostname", "uname")

NOOP_CNI = """#!/bin/sh
# A CNI plugin that configures nothing: ADD reports eth0 with a documentation address.
case "$CNI_COMMAND" in
  ADD) cat >/dev/null
       printf '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"address":"192.0.2.1/32","interface":0}]}' "$CNI_NETNS" ;;
  VERSION) printf '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}' ;;
  *) cat >/dev/null ;;
esac
"""


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def busybox_layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as layer:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            layer.addfile(info)
        _add(layer, "bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            layer.addfile(info)
    return buffer.getvalue()


def image_archive(path: Path) -> Path:
    """A docker-archive (``docker save`` format) with the busybox and pause images, one shared layer."""
    layer = busybox_layer()
    layer_digest = hashlib.sha256(layer).hexdigest()
    manifest = []
    configs = {}
    for name, process in ((BUSYBOX, {"Cmd": ["/bin/sh"]}), (PAUSE, {"Entrypoint": ["/bin/sleep", "2147483647"]})):
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], **process},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        configs[config_name] = config
        manifest.append({"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_digest}/layer.tar"]})
    with tarfile.open(path, "w") as archive:
        _add(archive, f"{layer_digest}/layer.tar", layer)
        for config_name, config in configs.items():
            _add(archive, config_name, config)
        _add(archive, "manifest.json", json.dumps(manifest).encode())
    return path


def overlay_works(directory: Path) -> bool:
    probe = directory / "overlay-probe"
    for name in ("lower", "upper", "work", "merged"):
        (probe / name).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")], capture_output=True)
    if mounted.returncode == 0:
        subprocess.run(["umount", str(probe / "merged")], check=True)
    shutil.rmtree(probe)
    return mounted.returncode == 0


def config_toml(directory: Path, snapshotter: str, cni_bin: Path, cni_conf: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{directory / 'root'}"
state = "{directory / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{directory / 'containerd.sock'}"
[ttrpc]
  address = "{directory / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  [{cri}.containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc') or 'runc'}"
        Root = "{directory / 'runc'}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def remove_cgroup_tree(name: str) -> None:
    """Kill what is left in cgroup ``name`` and remove it from every hierarchy runc made it in
    (runc creates it in all mounted v1 hierarchies, named ones included)."""
    driver = cgroups.detect()
    if driver.exists(name):
        with contextlib.suppress(Exception):
            driver.open(name).kill()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


class Containerd:
    """A private containerd in ``directory`` and busybox pods through its CRI socket.

    By default its pods get the no-op CNI network; ``cni`` = (plugin dir, config dir) gives it a real
    one instead (the tests share a node's bridge network with qmprt's VM pods), and ``exec_prefix``
    runs it in another network namespace (``nsenter --net=… --``).
    """

    def __init__(self, directory: Path, cni: tuple[Path, Path] | None = None, exec_prefix: tuple[str, ...] = ()) -> None:
        self.directory = directory
        for name in ("root", "state", "runc", "opt", "cni", "cni-bin", "logs"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        self.snapshotter = "overlayfs" if overlay_works(directory) else "native"
        self.socket = directory / "containerd.sock"
        self.config = directory / "config.toml"
        cni_bin, cni_conf = cni or (directory / "cni-bin", directory / "cni")
        self.config.write_text(config_toml(directory, self.snapshotter, cni_bin, cni_conf))
        if cni is None:
            self._noop_network()
        self.cgroup_parent = f"qmprt-bench-containerd-{os.getpid()}-{directory.name}"
        self.template = PodTemplate(
            image=BUSYBOX, log_name="busybox.log", namespace_options=True, cgroup_parent="/" + self.cgroup_parent,
            command=("/bin/sh", "-c", f"echo {READY_LINE}; exec sleep 2147483647"),
        )
        self.daemon = Daemon("containerd", [*exec_prefix, "containerd", "--config", str(self.config)], directory / "containerd.log")
        self.client: Client | None = None
        self.netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        self.had_run_containerd = os.path.exists("/run/containerd")
        # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3": the version
        self.version = subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.split()[2]

    def _noop_network(self) -> None:
        noop = self.directory / "cni-bin" / "noop"
        noop.write_text(NOOP_CNI)
        noop.chmod(0o755)
        loopback = next((Path(d) / "loopback" for d in ("/usr/lib/cni", "/opt/cni/bin") if (Path(d) / "loopback").exists()), None)
        if loopback is not None:
            shutil.copy(loopback, self.directory / "cni-bin" / "loopback")
        (self.directory / "cni" / "10-noop.conflist").write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "bench-noop", "plugins": [{"type": "noop"}]})
        )

    def ctr(self, *args: str) -> str:
        done = subprocess.run(["ctr", "-a", str(self.socket), "-n", "k8s.io", *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def start(self) -> None:
        self.daemon.start(lambda: self.socket.exists() and bool(self.ctr("version")), timeout=60)
        archive = image_archive(self.directory / "busybox-image.tar")
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(archive))
        self.client = Client(f"unix://{self.socket}")
        self.client.version()

    def one(self, index: int, timeout: float = 60) -> dict[str, float]:
        assert self.client is not None
        started = self.client.start_pod(index, self.directory / "logs" / f"pod-{index}", READY_LINE, self.template, timeout=timeout)
        self.client.remove_pod(started.pod_id)
        return started.timings

    def stop(self) -> None:
        """Pods removed, the daemon stopped by PID, then whatever of this run is left: shims and
        containers (killed), mounts, network namespaces it made, its cgroup parent, the temp dir."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.remove_all()
            self.client.close()
            self.client = None
        self.daemon.stop()
        kill_processes_mentioning(str(self.directory))  # shims name the socket in their argv
        remove_cgroup_tree(self.cgroup_parent)
        unmount_below(self.directory)
        if os.path.isdir("/run/netns"):
            for name in set(os.listdir("/run/netns")) - self.netns_before:
                if name.startswith("cni-"):
                    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        if not self.had_run_containerd:
            shutil.rmtree("/run/containerd", ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
