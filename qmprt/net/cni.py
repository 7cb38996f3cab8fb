"""CNI invocation: ADD in order with ``prevResult`` chaining, DEL in reverse, CHECK, VERSION.

Assumptions and choices (spec 1.0, as libcni and containerd run it):

- The network is the first config file of ``conf_dir`` (see :mod:`qmprt.net.cni_config`), re-read on
  every ADD so a config installed after start (by a CNI daemonset) is picked up.
- The ADD result is cached atomically under ``cache_dir/<network>/<container_id>-<ifname>.json``
  together with the config, netns path, K8S args and port mappings ADD used. DEL and CHECK replay
  those, so teardown after a restart or after the config file changed undoes what was really done.
- DEL is best effort and repeatable: every plugin runs (in reverse) even if one fails, the cache goes
  only when all succeeded, and a DEL without a cache runs the current config without ``prevResult``.
- A failed ADD runs a best-effort DEL of the whole list before raising, so a plugin that failed half
  way (or a missing later binary) leaves no interface or IPAM allocation behind.
- Every plugin run has a timeout; the plugin (or the ``exec_prefix`` wrapper it was exec'd by, e.g.
  ``nsenter --net=…``) is killed when it passes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.errors import DeadlineExceeded, FailedPrecondition, InternalError, InvalidArgument, NotFound
from qmprt.net.cni_config import (
    NetworkConfig,
    PluginConfig,
    find_config_file,
    find_config_files,
    load_config,
    load_config_file,
    parse_config,
)
from qmprt.net.cni_exec import CNIPluginError, decode_object, find_binary, run_plugin
from qmprt.net.cni_result import DNS, CNIResult, Interface, IPConfig, Route, parse_result

__all__ = [
    "CNI", "CNIPluginError", "CNIResult", "DNS", "DEFAULT_BIN_DIRS", "Interface", "IPConfig", "K8sArgs",
    "NetworkConfig", "PluginVersion", "PortMapping", "Route", "find_config_file", "load_config", "parse_config",
    "parse_result",
]

log = logging.getLogger(__name__)

DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CACHE_KIND = "qmprt-cni-cache-v1"
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NO_CHECK_VERSIONS = ("0.1.", "0.2.", "0.3.")
_CACHE_KEYS = {"container_id", "ifname", "netns_path", "k8s", "port_mappings", "config", "result"}


@dataclass(frozen=True)
class K8sArgs:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    infra_container_id: str = ""

    def cni_args(self) -> str:
        pairs = [
            ("K8S_POD_NAMESPACE", self.namespace),
            ("K8S_POD_NAME", self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", self.infra_container_id),
            ("K8S_POD_UID", self.uid),
        ]
        for key, value in pairs:
            if ";" in value or "=" in value:
                raise InvalidArgument(f"{key} value {value!r} cannot be passed in CNI_ARGS")
        return ";".join(["IgnoreUnknown=1", *(f"{key}={value}" for key, value in pairs)])


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "tcp", "udp" or "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""

    def runtime_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "protocol": self.protocol.lower(),
            "containerPort": self.container_port,
            "hostPort": self.host_port,
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


@dataclass(frozen=True)
class PluginVersion:
    cni_version: str
    supported_versions: tuple[str, ...]


@dataclass(frozen=True)
class _Attachment:
    """What one ADD was called with: replayed by DEL and CHECK."""

    container_id: str
    netns_path: str
    ifname: str
    k8s: K8sArgs
    port_mappings: tuple[PortMapping, ...]


class CNI:
    def __init__(
        self,
        conf_dir: str | os.PathLike[str],
        bin_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_BIN_DIRS,
        cache_dir: str | os.PathLike[str] = "/var/lib/qmprt/cni",
        exec_prefix: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.bin_dirs = tuple(Path(directory) for directory in bin_dirs)
        self.cache_dir = Path(cache_dir)
        self.exec_prefix = tuple(exec_prefix)
        self.timeout = timeout

    def ready(self) -> bool:
        """True once a network config exists (the CRI NetworkReady condition)."""
        return find_config_file(self.conf_dir) is not None

    def network(self) -> NetworkConfig:
        return load_config(self.conf_dir)

    def networks(self, limit: int) -> list[NetworkConfig]:
        """The first ``limit`` networks of the config directory, one pod interface each (as
        containerd's ``max_conf_num``); FailedPrecondition while there is none."""
        files = find_config_files(self.conf_dir)[:limit]
        if not files:
            raise FailedPrecondition(f"no CNI network config (.conflist/.conf/.json) in {self.conf_dir}")
        networks = [load_config_file(path) for path in files]
        names = [network.name for network in networks]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"CNI configs in {self.conf_dir} share a network name: {', '.join(names)}")
        return networks

    # ADD / DEL / CHECK

    async def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        k8s: K8sArgs = K8sArgs(),
        port_mappings: Sequence[PortMapping] = (),
        network: NetworkConfig | None = None,
    ) -> CNIResult:
        """ADD ``network`` (default: the first of the config directory) as ``ifname``."""
        attachment = _attachment(container_id, netns_path, ifname, k8s, port_mappings)
        network = network or self.network()
        previous: dict[str, Any] | None = None
        try:
            for plugin in network.plugins:
                output = await self._run(plugin, network, "ADD", attachment, previous)
                if output is not None:
                    previous = output
            if previous is None:
                raise InternalError(f"CNI network {network.name}: no plugin returned a result")
            result = parse_result(previous)
            self._write_cache(network, attachment, previous)
        except BaseException:
            await self._rollback(network, attachment)
            raise
        return result

    async def delete(
        self,
        container_id: str,
        netns_path: str = "",
        ifname: str = "eth0",
        k8s: K8sArgs = K8sArgs(),
        port_mappings: Sequence[PortMapping] = (),
    ) -> None:
        """Undo ADD; idempotent.

        With a cache entry, its config, K8S args and port mappings are used (the arguments only give a
        newer ``netns_path``); without one (ADD never finished) the current config and the arguments.
        """
        _attachment(container_id, netns_path, ifname, k8s, port_mappings)
        cached = self._find_cache(container_id, ifname)
        if cached is not None:
            cache_path, entry = cached
            network = parse_config(entry["config"], source=str(cache_path))
            attachment = _attachment_from_cache(entry, netns_path)
            previous = entry["result"]
        else:
            cache_path = None
            if not self.ready():
                return  # nothing was cached and there is no network to ask: nothing can be undone
            network = self.network()
            attachment = _attachment(container_id, netns_path, ifname, k8s, port_mappings)
            previous = None
        failures = await self._delete_all(network, attachment, previous)
        if failures:
            raise failures[0]
        if cache_path is not None:
            cache_path.unlink(missing_ok=True)

    async def check(self, container_id: str, ifname: str = "eth0") -> None:
        """Ask every plugin whether the attachment is as ADD left it; skipped where disabled."""
        cached = self._find_cache(container_id, ifname)
        if cached is None:
            raise NotFound(f"no CNI result cached for {container_id}/{ifname}")
        cache_path, entry = cached
        network = parse_config(entry["config"], source=str(cache_path))
        if network.disable_check or network.cni_version.startswith(_NO_CHECK_VERSIONS):
            return
        attachment = _attachment_from_cache(entry, "")
        for plugin in network.plugins:
            await self._run(plugin, network, "CHECK", attachment, entry["result"])

    def cached_result(self, container_id: str, ifname: str = "eth0") -> CNIResult | None:
        cached = self._find_cache(container_id, ifname)
        return parse_result(cached[1]["result"]) if cached else None

    async def version_of(self, plugin_type: str) -> PluginVersion:
        binary = find_binary(self.bin_dirs, plugin_type)
        env = self._environment({"CNI_COMMAND": "VERSION"})
        stdout = await run_plugin(binary, plugin_type, "VERSION", env, {"cniVersion": "1.0.0"}, self.timeout, self.exec_prefix)
        document = decode_object(plugin_type, "VERSION", stdout)
        supported = document.get("supportedVersions") or []
        if not isinstance(supported, list) or not all(isinstance(item, str) for item in supported):
            raise InternalError(f"CNI plugin {plugin_type} VERSION: supportedVersions is not a list of strings")
        return PluginVersion(cni_version=str(document.get("cniVersion", "")), supported_versions=tuple(supported))

    # internals

    async def _rollback(self, network: NetworkConfig, attachment: _Attachment) -> None:
        failures = await self._delete_all(network, attachment, None)
        for failure in failures:
            log.warning("cleanup after a failed CNI ADD of %s: %s", attachment.container_id, failure)

    async def _delete_all(
        self, network: NetworkConfig, attachment: _Attachment, previous: dict[str, Any] | None
    ) -> list[Exception]:
        failures: list[Exception] = []
        for plugin in reversed(network.plugins):
            try:
                await self._run(plugin, network, "DEL", attachment, previous)
            except (InternalError, FailedPrecondition, DeadlineExceeded) as err:
                failures.append(err)
        return failures

    async def _run(
        self,
        plugin: PluginConfig,
        network: NetworkConfig,
        command: str,
        attachment: _Attachment,
        previous: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        stdin = dict(plugin.document)
        stdin["cniVersion"] = network.cni_version
        stdin["name"] = network.name
        if previous is not None:
            stdin["prevResult"] = previous
        runtime_config: dict[str, Any] = {}
        if "portMappings" in plugin.capabilities and attachment.port_mappings:
            runtime_config["portMappings"] = [mapping.runtime_config() for mapping in attachment.port_mappings]
        if runtime_config:
            stdin["runtimeConfig"] = runtime_config
        else:
            stdin.pop("runtimeConfig", None)
        env = self._environment(
            {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": attachment.container_id,
                "CNI_NETNS": attachment.netns_path,
                "CNI_IFNAME": attachment.ifname,
                "CNI_ARGS": attachment.k8s.cni_args(),
            }
        )
        binary = find_binary(self.bin_dirs, plugin.type)
        stdout = await run_plugin(binary, plugin.type, command, env, stdin, self.timeout, self.exec_prefix)
        if command != "ADD" or not stdout.strip():
            return None
        return decode_object(plugin.type, command, stdout)

    def _environment(self, cni: dict[str, str]) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CNI_")}
        env.update(cni)
        env["CNI_PATH"] = os.pathsep.join(str(directory) for directory in self.bin_dirs)
        return env

    def _write_cache(self, network: NetworkConfig, attachment: _Attachment, result: dict[str, Any]) -> None:
        directory = state.ensure_private_dir(self.cache_dir / network.name)
        entry = {
            "kind": CACHE_KIND,
            "network": network.name,
            "container_id": attachment.container_id,
            "ifname": attachment.ifname,
            "netns_path": attachment.netns_path,
            "k8s": asdict(attachment.k8s),
            "port_mappings": [asdict(mapping) for mapping in attachment.port_mappings],
            "config": network.to_json(),
            "result": result,
        }
        state.write_json_atomic(directory / f"{attachment.container_id}-{attachment.ifname}.json", entry)

    def _find_cache(self, container_id: str, ifname: str) -> tuple[Path, dict[str, Any]] | None:
        """The cache entry under whichever network ADD used (the config may have changed since)."""
        if not self.cache_dir.is_dir():
            return None
        for directory in sorted(self.cache_dir.iterdir()):
            path = directory / f"{container_id}-{ifname}.json"
            if not path.is_file():
                continue
            entry = state.read_json(path)
            if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND or not _CACHE_KEYS <= entry.keys():
                raise InternalError(f"{path} is not a qmprt CNI cache entry")
            return path, entry
        return None


def _attachment(
    container_id: str, netns_path: str, ifname: str, k8s: K8sArgs, port_mappings: Sequence[PortMapping]
) -> _Attachment:
    if not _CONTAINER_ID.match(container_id):
        raise InvalidArgument(f"container id {container_id!r} is not valid for CNI")
    if not _IFNAME.match(ifname):
        raise InvalidArgument(f"interface name {ifname!r} is not valid")
    k8s.cni_args()  # refuses values that would smuggle extra keys into CNI_ARGS
    return _Attachment(container_id, netns_path, ifname, k8s, tuple(port_mappings))


def _attachment_from_cache(entry: dict[str, Any], netns_path: str) -> _Attachment:
    try:
        return _Attachment(
            container_id=entry["container_id"],
            netns_path=netns_path or entry["netns_path"],
            ifname=entry["ifname"],
            k8s=K8sArgs(**entry["k8s"]),
            port_mappings=tuple(PortMapping(**mapping) for mapping in entry["port_mappings"]),
        )
    except (KeyError, TypeError) as err:
        raise InternalError(f"CNI cache entry for {entry.get('container_id')} is damaged: {err}") from err
