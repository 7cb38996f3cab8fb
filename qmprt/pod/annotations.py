"""qmprt's own annotations: the keys under ``qmprt.io/`` that pods and containers may set.

Kubernetes carries pod annotations to the sandbox config and container annotations to the container
config; qmprt reads the keys with the prefix ``qmprt.io/`` and ignores every other key. A container's
annotation wins over the same key on its sandbox, so a pod can set a default for all its containers.

Known keys (add a row here, a field to ``QmprtAnnotations`` and a branch to ``parse_annotations``):

=============================  ==========  =========================================================
key                            value       effect
=============================  ==========  =========================================================
``qmprt.io/root-volume-size``  quantity    size of the container's root disk (its overlay); at least
                                           the image's virtual size, at most the image config's
                                           ``max_virtual_size_bytes``; the guest grows its
                                           filesystem into it if it knows how (cloud-init does)
=============================  ==========  =========================================================

An unknown ``qmprt.io/`` key is refused (InvalidArgument naming it): a typo must not be silently
ignored, as a misspelt size would boot a disk of the wrong size.

Quantities are Kubernetes resource quantities: plain bytes (``1073741824``), a binary suffix
(``Ki Mi Gi Ti Pi Ei``: ``512Mi``, ``10Gi``, ``1.5Gi``), a decimal one (``k M G T P E``: ``20G``) or an
exponent (``5e9``). A fractional byte count rounds up, as Kubernetes' ``Quantity.Value()`` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from qmprt.errors import InvalidArgument
from qmprt.net.wiring import MODES, Mode

PREFIX = "qmprt.io/"
ROOT_VOLUME_SIZE = PREFIX + "root-volume-size"
VCPUS = PREFIX + "vcpus"
NUMA_NODES = PREFIX + "numa-nodes"
SEED_FORMAT = PREFIX + "seed-format"
BOOT = PREFIX + "boot"
USER_DATA = PREFIX + "user-data"
USER_DATA_MODE = PREFIX + "user-data-mode"
SSH_AUTHORIZED_KEYS = PREFIX + "ssh-authorized-keys"
DATA_VOLUMES = PREFIX + "data-volumes"
RBD_VOLUMES = PREFIX + "rbd-volumes"
ISCSI_VOLUMES = PREFIX + "iscsi-volumes"
NETWORK_WIRING = PREFIX + "network-wiring"
COMMAND_EXIT = PREFIX + "command-exit"
COMMAND_EXIT_MODES = ("keep", "poweroff")

KNOWN_KEYS: Mapping[str, str] = {
    ROOT_VOLUME_SIZE: "the container's root disk size, a Kubernetes quantity (10Gi, 512Mi, 20G or bytes)",
    VCPUS: "a vCPU count below the CPU limit's (a positive integer)",
    NUMA_NODES: "the guest's NUMA node count (a positive integer, at most the vCPU count)",
    SEED_FORMAT: "nocloud or configdrive",
    BOOT: "disk, direct, microvm or template",
    USER_DATA: "a #cloud-config document or a script",
    USER_DATA_MODE: "merge or replace",
    SSH_AUTHORIZED_KEYS: "public keys, one per line",
    DATA_VOLUMES: "ephemeral data disk sizes: 10Gi,512Mi or 3x1Gi",
    RBD_VOLUMES: 'a JSON list of {"pool", "image", "monitors", "user", "secret_mount"}',
    ISCSI_VOLUMES: 'a JSON list of {"portal", "target", "lun", "user", "secret_mount"}',
    NETWORK_WIRING: "tc-redirect or macvtap (a pod annotation: how its CNI interfaces reach the VM)",
    COMMAND_EXIT: "keep (the VM runs on after the container's command) or poweroff (the guest powers off "
    "when the command ends and the container exits with its code)",
}
MAX_DATA_VOLUMES = 16
SSH_KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-")


@dataclass(frozen=True)
class RBDVolume:
    pool: str
    image: str
    monitors: tuple[str, ...]
    user: str
    secret_mount: str


@dataclass(frozen=True)
class ISCSIVolume:
    portal: str
    target: str
    lun: int = 0
    user: str = ""
    secret_mount: str = ""

QUANTITY_FORMS = "plain bytes (1073741824), a binary suffix Ki Mi Gi Ti Pi Ei (10Gi), a decimal suffix k M G T P E (20G)"

_SUFFIXES: Mapping[str, Decimal] = {
    "": Decimal(1),
    **{suffix: Decimal(1024) ** power for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
    **{suffix: Decimal(1000) ** power for power, suffix in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
}
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>[KMGTPE]i|[kMGTPE])|[eE](?P<exponent>[+-]?[0-9]{1,3}))?"
)
_LARGEST = 1 << 63  # no disk is larger; also keeps exponents from making huge integers


@dataclass(frozen=True)
class QmprtAnnotations:
    """The parsed ``qmprt.io/`` annotations of one container (its own over its sandbox's)."""

    root_volume_size_bytes: int | None = None
    root_volume_size: str = ""  # as written, for messages
    vcpus: int | None = None
    numa_nodes: int = 1
    seed_format: str = "nocloud"
    boot: str = "disk"
    user_data: str | None = None
    user_data_mode: str = "merge"
    ssh_authorized_keys: tuple[str, ...] = ()
    data_volume_sizes: tuple[int, ...] = ()
    rbd_volumes: tuple[RBDVolume, ...] = ()
    iscsi_volumes: tuple[ISCSIVolume, ...] = ()
    command_exit: str | None = None  # None: the node's vm.command_exit

    def vcpu_count(self, granted: int) -> int:
        """The vCPUs to boot: the annotation may ask for fewer than the resources grant, never more."""
        if self.vcpus is None:
            return granted
        if self.vcpus > granted:
            raise InvalidArgument(
                f"annotation {VCPUS}={self.vcpus} asks for more vCPUs than the container's CPU limit grants "
                f"({granted}); raise the limit instead"
            )
        return self.vcpus

    def guest_numa_nodes(self, vcpus: int) -> int:
        if self.numa_nodes > vcpus:
            raise InvalidArgument(
                f"annotation {NUMA_NODES}={self.numa_nodes}: a guest NUMA node needs at least one vCPU, "
                f"and this VM has {vcpus}"
            )
        return self.numa_nodes

    def check_data_volumes(self, max_bytes: int) -> None:
        """Each ephemeral data disk within the node's limit for one disk (image.max_virtual_size_bytes)."""
        for size in self.data_volume_sizes:
            if size > max_bytes:
                raise InvalidArgument(
                    f"annotation {DATA_VOLUMES}: a {size}-byte disk is above the limit of {max_bytes} bytes "
                    "(image.max_virtual_size_bytes)"
                )

    def check_root_volume(self, image_virtual_size: int, max_bytes: int) -> int:
        """The root disk size, refused when smaller than the image or above the limit."""
        assert self.root_volume_size_bytes is not None
        size = self.root_volume_size_bytes
        if size < image_virtual_size:
            raise InvalidArgument(
                f"annotation {ROOT_VOLUME_SIZE}={self.root_volume_size} ({size} bytes) is smaller than the "
                f"image's virtual size of {image_virtual_size} bytes; a root disk can only grow"
            )
        if size > max_bytes:
            raise InvalidArgument(
                f"annotation {ROOT_VOLUME_SIZE}={self.root_volume_size} ({size} bytes) is above the limit of "
                f"{max_bytes} bytes (image.max_virtual_size_bytes)"
            )
        return size


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity of bytes as an int (fractions round up); ValueError when it is none."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity")
    try:
        value = Decimal(match["number"])
        if match["exponent"] is not None:
            value = value.scaleb(int(match["exponent"]))
        else:
            value *= _SUFFIXES[match["suffix"] or ""]
    except InvalidOperation as err:
        raise ValueError(f"{text!r} is not a quantity") from err
    if value >= _LARGEST:
        raise ValueError(f"{text!r} is out of range")
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def _check_keys(annotations: Mapping[str, str], where: str) -> None:
    for key in sorted(annotations):
        if key.startswith(PREFIX) and key not in KNOWN_KEYS:
            raise InvalidArgument(
                f"unknown {where} annotation {key!r}: qmprt knows {', '.join(sorted(KNOWN_KEYS))}"
            )


def parse_annotations(container: Mapping[str, str], sandbox: Mapping[str, str]) -> QmprtAnnotations:
    """The ``qmprt.io/`` annotations of a container and its sandbox, the container's winning.

    InvalidArgument for an unknown ``qmprt.io/`` key or a malformed value, naming the key.
    """
    _check_keys(sandbox, "sandbox")
    _check_keys(container, "container")
    merged = {**sandbox, **container}
    parsed = QmprtAnnotations(
        vcpus=_positive_int(merged, VCPUS),
        numa_nodes=_positive_int(merged, NUMA_NODES) or 1,
        seed_format=_choice(merged, SEED_FORMAT, ("nocloud", "configdrive")),
        boot=_choice(merged, BOOT, ("disk", "direct", "microvm", "template")),
        user_data=merged.get(USER_DATA),
        user_data_mode=_choice(merged, USER_DATA_MODE, ("merge", "replace")),
        ssh_authorized_keys=_ssh_keys(merged.get(SSH_AUTHORIZED_KEYS, "")),
        data_volume_sizes=_sizes(merged.get(DATA_VOLUMES, "")),
        rbd_volumes=tuple(RBDVolume(**entry) for entry in _json_list(merged, RBD_VOLUMES, _RBD_FIELDS)),
        iscsi_volumes=tuple(ISCSIVolume(**entry) for entry in _json_list(merged, ISCSI_VOLUMES, _ISCSI_FIELDS)),
        command_exit=_choice(merged, COMMAND_EXIT, COMMAND_EXIT_MODES) if COMMAND_EXIT in merged else None,
    )
    size_text = merged.get(ROOT_VOLUME_SIZE)
    if size_text is None:
        return parsed
    try:
        size = parse_quantity(size_text)
    except ValueError as err:
        raise InvalidArgument(f"annotation {ROOT_VOLUME_SIZE}: {err}; give {QUANTITY_FORMS}") from err
    if size <= 0:
        raise InvalidArgument(f"annotation {ROOT_VOLUME_SIZE}: {size_text!r} is not a positive size")
    return dataclasses.replace(parsed, root_volume_size_bytes=size, root_volume_size=size_text)


def network_wiring(sandbox: Mapping[str, str], default: str) -> Mode:
    """The pod's wiring mode: its ``qmprt.io/network-wiring`` annotation, else the node's ``default``."""
    _check_keys(sandbox, "sandbox")
    allowed = (default, *(mode for mode in MODES if mode != default))
    return cast(Mode, _choice(sandbox, NETWORK_WIRING, allowed))


def _positive_int(annotations: Mapping[str, str], key: str) -> int | None:
    text = annotations.get(key)
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", text) or int(text) < 1:
        raise InvalidArgument(f"annotation {key}={text!r}: give a positive whole number, e.g. \"2\"")
    return int(text)


_RBD_FIELDS: Mapping[str, type] = {"pool": str, "image": str, "monitors": list, "user": str, "secret_mount": str}
_ISCSI_FIELDS: Mapping[str, type] = {"portal": str, "target": str, "lun": int, "user": str, "secret_mount": str}
_ISCSI_OPTIONAL = ("lun", "user", "secret_mount")


def _choice(annotations: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str:
    value = annotations.get(key, allowed[0])
    if value not in allowed:  # exactly: "poweroff\n" is a typo, not poweroff
        raise InvalidArgument(f"annotation {key}={value!r}: give one of {', '.join(allowed)}")
    return value


def _ssh_keys(text: str) -> tuple[str, ...]:
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    for key in keys:
        if not key.startswith(SSH_KEY_TYPES) or len(key.split()) < 2:
            raise InvalidArgument(
                f"annotation {SSH_AUTHORIZED_KEYS}: {key[:40]!r} is not an OpenSSH public key "
                "(\"ssh-ed25519 AAAA… comment\", one per line)"
            )
    return keys


def _sizes(text: str) -> tuple[int, ...]:
    sizes: list[int] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        count, _, quantity = item.rpartition("x") if re.fullmatch(r"[0-9]+x.+", item) else ("1", "", item)
        try:
            size = parse_quantity(quantity)
        except ValueError as err:
            raise InvalidArgument(f"annotation {DATA_VOLUMES}: {err}; give sizes like 10Gi,512Mi or 3x1Gi") from err
        if size < 1 << 20:
            raise InvalidArgument(f"annotation {DATA_VOLUMES}: {item!r} is under 1Mi")
        if len(count) > 3 or len(sizes) + int(count) > MAX_DATA_VOLUMES:
            raise InvalidArgument(f"annotation {DATA_VOLUMES}: more than {MAX_DATA_VOLUMES} volumes; at most {MAX_DATA_VOLUMES}")
        sizes += [size] * int(count)
    if len(sizes) > MAX_DATA_VOLUMES:
        raise InvalidArgument(f"annotation {DATA_VOLUMES}: {len(sizes)} volumes; at most {MAX_DATA_VOLUMES}")
    return tuple(sizes)


def _json_list(annotations: Mapping[str, str], key: str, fields: Mapping[str, type]) -> list[dict[str, Any]]:
    text = annotations.get(key)
    if text is None:
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"annotation {key}: not JSON ({err.msg}); give {KNOWN_KEYS[key]}") from err
    if not isinstance(document, list) or not all(isinstance(entry, dict) for entry in document):
        raise InvalidArgument(f"annotation {key}: give {KNOWN_KEYS[key]}")
    entries = []
    for index, entry in enumerate(document):
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise InvalidArgument(f"annotation {key}[{index}]: unknown field(s) {', '.join(unknown)}")
        for field, kind in fields.items():
            optional = key == ISCSI_VOLUMES and field in _ISCSI_OPTIONAL
            if field not in entry:
                if optional:
                    continue
                raise InvalidArgument(f"annotation {key}[{index}]: {field!r} is missing; give {KNOWN_KEYS[key]}")
            if not isinstance(entry[field], kind) or (kind is str and not entry[field]):
                expected = {str: "a non-empty string", int: "a whole number", list: "a list"}[kind]
                raise InvalidArgument(f"annotation {key}[{index}].{field}: expected {expected}")
        if "monitors" in entry:
            if not entry["monitors"] or not all(isinstance(m, str) and m for m in entry["monitors"]):
                raise InvalidArgument(f"annotation {key}[{index}].monitors: a list of host:port strings")
            entry = {**entry, "monitors": tuple(entry["monitors"])}
        entries.append(entry)
    return entries
