"""The proxy's configuration: its own TOML file, loaded and checked once at start.

::

    [proxy]
    socket = "/run/qmprt/proxy.sock"       # what kubelet's containerRuntimeEndpoint names
    state_dir = "/var/lib/qmprt-proxy"      # ids.json: which downstream owns each sandbox and container
    default = "containerd"                  # handler "" and image names that no pattern matches
    probe_timeout_seconds = 5.0             # Status, Version and id lookups wait this long for a downstream

    [[downstream]]
    name = "qmprt"
    endpoint = "unix:///run/qmprt/qmprt.sock"
    handlers = ["qmprt"]                    # RuntimeClass handlers this downstream serves
    image_patterns = ['\\.qcow2$']          # regexes (re.search) on image names, for image calls
                                            # that say no handler (old kubelets)
    [[downstream]]
    name = "containerd"
    endpoint = "unix:///run/containerd/containerd.sock"
    handlers = ["runc"]

The default downstream also serves the handler ``""``. A handler may belong to one downstream only.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmprt.cri.socket import socket_path
from qmprt.errors import InvalidArgument

MAX_DOWNSTREAMS = 8
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
HANDLER = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")  # a DNS label or subdomain, as RuntimeClass
MAX_PATTERN = 256


@dataclass(frozen=True)
class Downstream:
    name: str
    endpoint: str
    handlers: tuple[str, ...] = ()
    image_patterns: tuple[re.Pattern[str], ...] = ()

    @property
    def socket(self) -> str:
        return socket_path(self.endpoint)

    def matches_image(self, image: str) -> bool:
        return any(pattern.search(image) for pattern in self.image_patterns)


@dataclass(frozen=True)
class ProxyConfig:
    socket: str = "/run/qmprt/proxy.sock"
    state_dir: str = "/var/lib/qmprt-proxy"
    default: str = "containerd"
    probe_timeout_seconds: float = 5.0
    downstreams: tuple[Downstream, ...] = field(default_factory=tuple)

    def downstream(self, name: str) -> Downstream:
        for downstream in self.downstreams:
            if downstream.name == name:
                return downstream
        raise KeyError(name)

    def handler_owners(self) -> dict[str, str]:
        """RuntimeClass handler → the name of the downstream that serves it (``""`` included)."""
        owners = {"": self.default}
        for downstream in self.downstreams:
            owners.update((handler, downstream.name) for handler in downstream.handlers)
        return owners


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument(f"{where}.{key} must be a list of strings")
    return tuple(value)


def _downstream(table: Any, index: int) -> Downstream:
    where = f"downstream[{index}]"
    if not isinstance(table, dict):
        raise InvalidArgument(f"{where} must be a table")
    unknown = set(table) - {"name", "endpoint", "handlers", "image_patterns"}
    if unknown:
        raise InvalidArgument(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    name, endpoint = table.get("name"), table.get("endpoint")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument(f"{where}.name must be a short lower-case name like 'qmprt' or 'containerd'")
    if not isinstance(endpoint, str):
        raise InvalidArgument(f"downstream {name!r} needs an endpoint (unix:///path/to/cri.sock)")
    socket_path(endpoint)  # absolute, short enough
    handlers = _strings(table, "handlers", where)
    for handler in handlers:
        if not HANDLER.fullmatch(handler):
            raise InvalidArgument(f"downstream {name!r}: handler {handler!r} is not a DNS label or subdomain")
    patterns = []
    for text in _strings(table, "image_patterns", where):
        if len(text) > MAX_PATTERN:
            raise InvalidArgument(f"downstream {name!r}: an image pattern is longer than {MAX_PATTERN} characters")
        try:
            patterns.append(re.compile(text))
        except re.error as err:
            raise InvalidArgument(f"downstream {name!r}: image pattern {text!r} is not a regex: {err}") from err
    return Downstream(name, endpoint, handlers, tuple(patterns))


def proxy_config_from_table(document: dict[str, Any], socket: str | None = None) -> ProxyConfig:
    unknown = set(document) - {"proxy", "downstream"}
    if unknown:
        raise InvalidArgument(f"unknown tables in the proxy config: {', '.join(sorted(unknown))}")
    table = document.get("proxy", {})
    if not isinstance(table, dict) or set(table) - {"socket", "state_dir", "default", "probe_timeout_seconds"}:
        raise InvalidArgument("[proxy] takes socket, state_dir, default and probe_timeout_seconds")
    raw = document.get("downstream", [])
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_DOWNSTREAMS:
        raise InvalidArgument(f"the proxy config needs 1 to {MAX_DOWNSTREAMS} [[downstream]] tables")
    downstreams = tuple(_downstream(item, index) for index, item in enumerate(raw))
    timeout = table.get("probe_timeout_seconds", ProxyConfig.probe_timeout_seconds)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise InvalidArgument("proxy.probe_timeout_seconds must be a number of seconds")
    for key in ("socket", "state_dir", "default"):
        if not isinstance(table.get(key, ""), str):
            raise InvalidArgument(f"proxy.{key} must be a string")
    config = ProxyConfig(
        socket=socket or str(table.get("socket", ProxyConfig.socket)),
        state_dir=str(table.get("state_dir", ProxyConfig.state_dir)),
        default=str(table.get("default", ProxyConfig.default)),
        probe_timeout_seconds=float(timeout),
        downstreams=downstreams,
    )
    _check(config)
    return config


def _check(config: ProxyConfig) -> None:
    socket_path(config.socket)
    if not os.path.isabs(config.state_dir):
        raise InvalidArgument("proxy.state_dir must be an absolute path")
    if not 0.1 <= config.probe_timeout_seconds <= 60:
        raise InvalidArgument("proxy.probe_timeout_seconds must be between 0.1 and 60")
    names = [downstream.name for downstream in config.downstreams]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"downstream names must be unique: {', '.join(names)}")
    if config.default not in names:
        raise InvalidArgument(f"proxy.default {config.default!r} is not a downstream: {', '.join(names)}")
    seen: dict[str, str] = {}
    for downstream in config.downstreams:
        if socket_path(downstream.endpoint) == socket_path(config.socket):
            raise InvalidArgument(f"downstream {downstream.name!r} is the proxy's own socket")
        for handler in downstream.handlers:
            if handler in seen:
                raise InvalidArgument(f"handler {handler!r} is claimed by both {seen[handler]!r} and {downstream.name!r}")
            seen[handler] = downstream.name


def load_proxy_config(path: str | os.PathLike[str], socket: str | None = None) -> ProxyConfig:
    """The config at ``path``; ``socket`` (the command line's ``--socket``) wins over the file's."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise InvalidArgument(f"cannot read the proxy config {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"the proxy config {path} is not valid TOML: {err}") from err
    return proxy_config_from_table(document, socket)
