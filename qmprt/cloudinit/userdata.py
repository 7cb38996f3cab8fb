"""User-supplied user-data: checked, then merged into qmprt's ``#cloud-config`` or put in its place.

``merge`` (the default) needs a ``#cloud-config`` document whose top level is a mapping. The result is
qmprt's document with the user's merged in, in this order:

1. qmprt's keys come first and keep their order: ``hostname`` (and ``fqdn``,
   ``prefer_fqdn_over_hostname``), ``bootcmd`` (the shared-directory mounts), ``write_files`` (the
   container's environment, its command script, the pod's files), ``ssh_authorized_keys``,
   ``runcmd`` (the command), ``manage_resolv_conf``/``resolv_conf`` (DNS);
2. the user's keys that qmprt does not set are added after them, in the user's order;
3. where both set a key: lists are concatenated, qmprt's items first (so qmprt's files are written and
   its command runs before the user's); mappings are merged key by key by these same rules; for a
   scalar the user's value wins, except ``hostname``, ``fqdn`` and ``prefer_fqdn_over_hostname``,
   which are always the pod's (the user's are dropped);
4. a list meeting a non-list (or a mapping a non-mapping) is refused, naming the key, and so is a
   user ``write_files`` entry for a path qmprt writes (the environment file and the command script).

``replace`` puts the user's document in place of qmprt's, byte for byte: a ``#!`` script, a
``#cloud-config``, or anything else cloud-init reads (MIME multipart, ``#include``…). The
environment file, the command, the pod's files and the mounts are then not delivered; the hostname
and SSH keys still are, through meta-data.

Either way user-data is at most ``USER_DATA_MAX_BYTES``. Every refusal is a ``ValueError`` whose message
starts with ``user-data``. YAML aliases and tags other than the standard ones are refused; dates stay
strings (qmprt re-emits the document in its own dialect, see ``_yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import yaml

from qmprt.cloudinit import _yaml

USER_DATA_MAX_BYTES = 64 * 1024
CLOUD_CONFIG_HEADER = "#cloud-config"
UserDataMode = Literal["merge", "replace"]

# Keys that name the guest: the pod's hostname decides them, whatever the user-data says.
QMPRT_ONLY_KEYS = frozenset({"hostname", "fqdn", "prefer_fqdn_over_hostname"})


class _UserDataLoader(yaml.SafeLoader):
    """``safe_load`` without aliases (an alias bomb would explode when re-emitted) and without dates."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise ValueError(f"user-data: YAML aliases are not accepted (line {mark.line + 1})")
        return super().compose_node(parent, index)


_UserDataLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def check_size(user_data: bytes) -> None:
    if len(user_data) > USER_DATA_MAX_BYTES:
        raise ValueError(
            f"user-data is {len(user_data)} bytes; at most {USER_DATA_MAX_BYTES} bytes ({USER_DATA_MAX_BYTES // 1024} KiB)"
            " are accepted"
        )


def parse_cloud_config(user_data: bytes) -> dict[str, Any]:
    """The user's ``#cloud-config`` as a mapping, or ``ValueError`` saying why it is not one."""
    check_size(user_data)
    try:
        text = user_data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"user-data is not UTF-8 text: {err}") from err
    first_line = text.split("\n", 1)[0].rstrip("\r").rstrip()
    if first_line != CLOUD_CONFIG_HEADER:
        kind = "a script" if first_line.startswith("#!") else f"a document starting {first_line[:40]!r}"
        raise ValueError(
            f"user-data to merge must start with the line {CLOUD_CONFIG_HEADER!r}; this is {kind}"
            " (set the user-data mode to replace to use it as it is)"
        )
    try:
        document = yaml.load(text, Loader=_UserDataLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"user-data is not valid YAML: {err}") from err
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError(f"user-data must be a mapping of cloud-config keys, not a {type(document).__name__}")
    _check_keys(document, "user-data")
    return document


def _check_keys(node: object, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _check_keys(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _check_keys(item, f"{where}[{index}]")
    elif isinstance(node, (bytes, bytearray)):
        raise ValueError(f"{where}: binary (!!binary) values are not accepted; use write_files with encoding b64")
    elif isinstance(node, set):
        raise ValueError(f"{where}: sets (!!set) are not accepted")


def merge(ours: Mapping[str, _yaml.Node], theirs: Mapping[str, Any], reserved_paths: frozenset[str]) -> dict[str, Any]:
    """qmprt's cloud-config ``ours`` with the user's ``theirs`` merged in (the order in the docstring)."""
    for index, entry in enumerate(theirs.get("write_files") or ()):
        if isinstance(entry, dict) and entry.get("path") in reserved_paths:
            raise ValueError(f"user-data write_files[{index}]: {entry['path']} is written by qmprt")
    top = {key: value for key, value in theirs.items() if key not in QMPRT_ONLY_KEYS}
    return _merge(ours, top, "user-data")


def _merge(ours: Mapping[str, Any], theirs: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(ours)
    for key, value in theirs.items():
        if key not in merged:
            merged[key] = value
            continue
        mine = merged[key]
        if isinstance(mine, (list, tuple)):
            if not isinstance(value, list):
                raise ValueError(f"{where}.{key} must be a list: qmprt's entries go first, the user's after")
            merged[key] = [*mine, *value]
        elif isinstance(mine, Mapping):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key} must be a mapping to merge with qmprt's")
            merged[key] = _merge(mine, value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged
