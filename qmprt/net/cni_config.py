"""CNI network configuration: the first ``.conflist``/``.conf``/``.json`` of a directory.

Selection follows libcni/containerd: candidate files sorted lexically, the first one is *the* network;
an invalid first file is an error (not skipped), so a broken config is noticed rather than silently
replaced by the next one. Dotfiles (editor and atomic-write leftovers) are ignored. A ``.conf`` or
``.json`` holding a single plugin becomes a one-plugin list; one holding ``plugins`` is read as a list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmprt.errors import FailedPrecondition, InvalidArgument

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class PluginConfig:
    type: str
    document: dict[str, Any]  # the plugin's object as written, minus name/cniVersion injected later

    @property
    def capabilities(self) -> frozenset[str]:
        declared = self.document.get("capabilities") or {}
        if not isinstance(declared, dict):
            return frozenset()
        return frozenset(name for name, enabled in declared.items() if enabled is True)


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    disable_check: bool = False
    source: str = ""  # the file it came from, for messages

    def to_json(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": [plugin.document for plugin in self.plugins],
        }


def find_config_files(conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The network config files in lexical order (the first defines the pod's first interface)."""
    directory = Path(conf_dir)
    if not directory.is_dir():
        return []
    return [
        directory / name
        for name in sorted(
            entry.name
            for entry in directory.iterdir()
            if entry.suffix in CONFIG_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
        )
    ]


def find_config_file(conf_dir: str | os.PathLike[str]) -> Path | None:
    """The file that defines the network, or None while there is none (NetworkReady=false)."""
    files = find_config_files(conf_dir)
    return files[0] if files else None


def load_config(conf_dir: str | os.PathLike[str]) -> NetworkConfig:
    path = find_config_file(conf_dir)
    if path is None:
        raise FailedPrecondition(f"no CNI network config (.conflist/.conf/.json) in {conf_dir}")
    return load_config_file(path)


def load_config_file(path: Path) -> NetworkConfig:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise InvalidArgument(f"CNI config {path}: cannot read JSON: {err}") from err
    if path.suffix != ".conflist" and isinstance(document, dict) and "plugins" not in document:
        document = _list_from_single(document, path)
    return parse_config(document, source=str(path))


def _list_from_single(document: dict[str, Any], path: Path) -> dict[str, Any]:
    plugin = {key: value for key, value in document.items() if key not in ("name", "cniVersion")}
    return {
        "name": document.get("name"),
        "cniVersion": document.get("cniVersion"),
        "disableCheck": bool(document.get("disableCheck", False)),
        "plugins": [plugin],
    }


def parse_config(document: Any, source: str = "<config>") -> NetworkConfig:
    if not isinstance(document, dict):
        raise InvalidArgument(f"CNI config {source}: not a JSON object")
    name = document.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"CNI config {source}: 'name' must be a non-empty string without '/'")
    version = document.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise InvalidArgument(f"CNI config {source}: 'cniVersion' must be a non-empty string")
    disable_check = document.get("disableCheck", False)
    if not isinstance(disable_check, bool):
        raise InvalidArgument(f"CNI config {source}: 'disableCheck' must be a boolean")
    plugins = document.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InvalidArgument(f"CNI config {source}: 'plugins' must be a non-empty list")
    parsed = []
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise InvalidArgument(f"CNI config {source}: plugins[{index}] is not an object")
        plugin_type = plugin.get("type")
        if not isinstance(plugin_type, str) or not plugin_type or "/" in plugin_type:
            raise InvalidArgument(f"CNI config {source}: plugins[{index}] needs a 'type' (a binary name)")
        parsed.append(PluginConfig(type=plugin_type, document=dict(plugin)))
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(parsed), disable_check=disable_check, source=source)
