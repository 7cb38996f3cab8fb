"""qmprt's configuration: one frozen dataclass per TOML table, loaded and validated once at start.

::

    [runtime]   state_dir, run_dir, socket, log_level, handlers (RuntimeClass handlers besides "")
    [vm]        accel ("auto" | "kvm" | "tcg"), machine ("q35" | "microvm"), cpus, memory_mib,
                tcg_tb_size_mib (128; 0 = QEMU's default of 1 GiB), qemu_binary, stop_grace_seconds,
                memory_overhead_mib, command_exit ("keep" | "poweroff"), unprivileged (QEMU drops root:
                true), uid_base and uid_count (the per-VM uids it drops to), exec_helper (the qmprt-exec
                binary seeds deliver: "" = images/out/qmprt-exec of the checkout, else
                /usr/lib/qmprt/qmprt-exec; "none" = no helper in seeds)
    [cgroups]   driver ("cgroupfs" | "systemd"), root (the parent of every VM cgroup without a pod parent),
                pids_max
    [metrics]   address (qmprt's Prometheus endpoint: "127.0.0.1:9437"; "" turns it off; port 0 picks one)
    [cni]       conf_dir, bin_dirs, max_networks (pod interfaces, one per config file), wiring
                ("tc-redirect" | "macvtap"; a pod's qmprt.io/network-wiring wins), plugin_timeout_seconds
    [image]     name translation rules, transport, limits: kept as the raw table here and checked by
                ``qmprt.image.image_config_from_table`` when the store opens (config sits below the
                mechanisms, so it does not import them)

Environment overrides: ``QMPRT_ACCEL`` (vm.accel), ``QMPRT_STATE_DIR``, ``QMPRT_RUN_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qmprt.errors import InvalidArgument

T = TypeVar("T")
WIRING_MODES = ("tc-redirect", "macvtap")  # qmprt.net.wiring.MODES (config sits below net)


@dataclass(frozen=True)
class RuntimeConfig:
    state_dir: str = "/var/lib/qmprt"
    run_dir: str = "/run/qmprt"
    socket: str = "/run/qmprt/qmprt.sock"
    log_level: str = "info"
    handlers: tuple[str, ...] = ("qmprt",)  # RuntimeClass handlers accepted besides the default ""

    def validate(self) -> None:
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise InvalidArgument(f"runtime.log_level must be debug, info, warning or error, not {self.log_level!r}")
        for name in ("state_dir", "run_dir", "socket"):
            if not os.path.isabs(getattr(self, name)):
                raise InvalidArgument(f"runtime.{name} must be an absolute path")


@dataclass(frozen=True)
class VMDefaults:
    accel: str = "auto"
    machine: str = "q35"
    cpus: int = 1
    memory_mib: int = 128
    # TCG's translation cache. QEMU's own default (1 GiB) lets a systemd + cloud-init guest's emulator
    # grow ~600 MiB past guest RAM (a 512 MiB Debian guest peaked at 1078 MiB RSS); 128 MiB booted it
    # as fast (52.7 s vs 53.7 s to cloud-init done) at 417 MiB, inside the default memory overhead.
    tcg_tb_size_mib: int = 128
    qemu_binary: str = "qemu-system-x86_64"
    stop_grace_seconds: float = 30.0
    memory_overhead_mib: int = 160  # per-VM host memory besides guest RAM (see qmprt.pod.sizing)
    # What a container's command means when its pod does not say (qmprt.io/command-exit): "keep"
    # runs the VM on after it, "poweroff" makes it a job whose end is the container's exit.
    command_exit: str = "keep"
    # QEMU drops root once started: each VM gets its own uid (= gid) from [uid_base, uid_base + uid_count),
    # so one compromised emulator cannot signal or read another. False keeps QEMU root (debugging only).
    unprivileged: bool = True
    uid_base: int = 1_900_000_000
    uid_count: int = 65536
    # qmprt's exec helper, written into every cloud-init seed (guests that bake it in ignore the copy).
    # "" looks for images/out/qmprt-exec of the checkout qmprt runs from, then /usr/lib/qmprt/qmprt-exec;
    # "none" delivers nothing. A missing file: seeds go without it (logged).
    exec_helper: str = ""

    def exec_helper_path(self) -> Path | None:
        if self.exec_helper == "none":
            return None
        if self.exec_helper:
            return Path(self.exec_helper)
        for candidate in (Path(__file__).resolve().parent.parent / "images/out/qmprt-exec",
                          Path("/usr/lib/qmprt/qmprt-exec")):
            if candidate.exists():
                return candidate
        return None

    def validate(self) -> None:
        if self.accel not in ("auto", "kvm", "tcg"):
            raise InvalidArgument(f"vm.accel must be auto, kvm or tcg, not {self.accel!r}")
        if self.machine not in ("q35", "microvm"):
            raise InvalidArgument(f"vm.machine must be q35 or microvm, not {self.machine!r}")
        if not 1 <= self.cpus <= 255:
            raise InvalidArgument("vm.cpus must be between 1 and 255")
        if self.memory_mib < 32:
            raise InvalidArgument("vm.memory_mib must be at least 32")
        if self.memory_overhead_mib < 0:
            raise InvalidArgument("vm.memory_overhead_mib must not be negative")
        if self.tcg_tb_size_mib < 0:
            raise InvalidArgument("vm.tcg_tb_size_mib must be 0 (QEMU's default) or positive")
        if self.command_exit not in ("keep", "poweroff"):
            raise InvalidArgument(f"vm.command_exit must be keep or poweroff, not {self.command_exit!r}")
        if self.uid_base < 1000 or self.uid_count < 1 or self.uid_base + self.uid_count > 2**32 - 2:
            raise InvalidArgument(
                "vm.uid_base must be at least 1000 and vm.uid_base + vm.uid_count at most 4294967294 "
                "(a range of ids no account on the node uses)"
            )


@dataclass(frozen=True)
class CgroupsConfig:
    driver: str = "cgroupfs"
    root: str = "qmprt"
    pids_max: int = 1024  # bounds QEMU's threads (vCPUs, I/O workers) in each VM's cgroup

    def validate(self) -> None:
        if self.driver not in ("cgroupfs", "systemd"):
            raise InvalidArgument(f"cgroups.driver must be cgroupfs or systemd, not {self.driver!r}")
        if self.pids_max < 64:
            raise InvalidArgument("cgroups.pids_max must be at least 64: QEMU needs threads")
        if not self.root or ".." in self.root.split("/"):
            raise InvalidArgument("cgroups.root must be a relative cgroup path without '..'")


@dataclass(frozen=True)
class CNIConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    max_networks: int = 1  # config files used, in lexical order: eth0, eth1, … (containerd's max_conf_num)
    wiring: str = "tc-redirect"  # how a CNI interface reaches the VM: "tc-redirect" or "macvtap"
    plugin_timeout_seconds: float = 60.0

    def validate(self) -> None:
        if not self.bin_dirs:
            raise InvalidArgument("cni.bin_dirs must name at least one directory")
        if not 1 <= self.max_networks <= 8:
            raise InvalidArgument(f"cni.max_networks = {self.max_networks}: give 1 to 8")
        if self.wiring not in WIRING_MODES:
            raise InvalidArgument(f"cni.wiring = {self.wiring!r}: give one of {', '.join(WIRING_MODES)}")
        if self.plugin_timeout_seconds <= 0:
            raise InvalidArgument("cni.plugin_timeout_seconds must be positive")


def _check_host_port(address: str, field: str, example: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"{field} {address!r} must be host:port, e.g. {example}")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1:9437"  # qmprt's Prometheus endpoint; "" turns it off, port 0 picks one

    def validate(self) -> None:
        if self.address:
            _check_host_port(self.address, "metrics.address", "127.0.0.1:9437")


@dataclass(frozen=True)
class StreamingConfig:
    """The streaming server of Exec, Attach and PortForward (``qmprt.streaming``)."""

    address: str = "127.0.0.1:0"  # loopback and a free port: kubelet on this node dials the URL
    cert_file: str = ""  # TLS when set (PEM); key_file may be in the same file
    key_file: str = ""
    token_ttl_seconds: float = 60.0  # how long a URL waits for its client (containerd's too)

    def validate(self) -> None:
        _check_host_port(self.address, "streaming.address", "127.0.0.1:0")
        if self.key_file and not self.cert_file:
            raise InvalidArgument("streaming.key_file is set without streaming.cert_file")
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"streaming.{name} {path!r} is not a file")
        if not 0 < self.token_ttl_seconds <= 3600:
            raise InvalidArgument("streaming.token_ttl_seconds must be in (0, 3600]")


@dataclass(frozen=True)
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    vm: VMDefaults = field(default_factory=VMDefaults)
    cgroups: CgroupsConfig = field(default_factory=CgroupsConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    image: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)

    def validate(self) -> None:
        for table in (self.runtime, self.vm, self.cgroups, self.cni, self.metrics, self.streaming):
            table.validate()


def _table(cls: type[T], name: str, values: Any) -> T:
    if not isinstance(values, dict):
        raise InvalidArgument(f"[{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InvalidArgument(f"[{name}] has unknown keys: {', '.join(unknown)}")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise InvalidArgument(f"{name}.{key} must be a list")
            value = tuple(value)
        elif isinstance(default, bool) or not isinstance(value, type(default)):
            if not (isinstance(default, float) and isinstance(value, int)):
                raise InvalidArgument(f"{name}.{key} must be a {type(default).__name__}, not {value!r}")
        converted[key] = value
    return cls(**converted)


def load(path: str | os.PathLike[str] | None = None, **overrides: str) -> Config:
    """Read ``path`` (or only defaults), apply env and keyword overrides, validate."""
    document: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise InvalidArgument(f"config file {path} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgument(f"config file {path}: {err}") from err
    tables: dict[str, type[Any]] = {
        "runtime": RuntimeConfig, "vm": VMDefaults, "cgroups": CgroupsConfig, "cni": CNIConfig, "metrics": MetricsConfig,
        "streaming": StreamingConfig,
    }
    unknown = sorted(set(document) - set(tables) - {"image"})
    if unknown:
        raise InvalidArgument(f"config has unknown tables: {', '.join(unknown)}")
    parts: dict[str, Any] = {name: _table(cls, name, document.get(name, {})) for name, cls in tables.items()}
    if not isinstance(document.get("image", {}), dict):
        raise InvalidArgument("[image] must be a table")
    parts["image"] = dict(document.get("image", {}))
    config = Config(**parts)
    runtime_changes: dict[str, Any] = {
        key: value
        for key, value in {
            "state_dir": overrides.get("state_dir") or os.environ.get("QMPRT_STATE_DIR"),
            "run_dir": overrides.get("run_dir") or os.environ.get("QMPRT_RUN_DIR"),
            "socket": overrides.get("socket"),
        }.items()
        if value
    }
    if runtime_changes:
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **runtime_changes))
    runtime_table = document.get("runtime", {})
    run_dir_named = "run_dir" in runtime_changes or (isinstance(runtime_table, dict) and "run_dir" in runtime_table)
    if not run_dir_named and config.runtime.socket != RuntimeConfig.socket:
        # A socket placed elsewhere takes the VMs' sockets with it: nothing is made under /run/qmprt.
        run_dir = os.path.join(os.path.dirname(config.runtime.socket), "run")
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, run_dir=run_dir))
    accel = os.environ.get("QMPRT_ACCEL")
    if accel:
        config = dataclasses.replace(config, vm=dataclasses.replace(config.vm, accel=accel))
    config.validate()
    return config
