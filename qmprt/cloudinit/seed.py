"""What a container's seed says, and its NoCloud files rendered from it.

The seed carries the container's hostname, environment, command, extra files, SSH keys, shared
directory mounts, network settings and, optionally, the user's own user-data. Every file is rendered
in the canonical form that both real cloud-init and the tiny guest's init (``images/tiny/rcS``)
apply the same way; see ``images/README.md`` for the guest side. ``qmprt.cloudinit.configdrive``
renders the same spec in OpenStack's form.

- ``meta-data``: ``instance-id``, ``local-hostname`` and ``public-keys`` (the SSH keys).
- ``user-data``: ``#cloud-config`` with ``hostname``, ``bootcmd`` (one ``sysctl -w`` per pod sysctl,
  then one ``mount -t virtiofs`` per ``SeedMount``: bootcmd runs at every boot, before write_files;
  cloud-init's own ``mounts`` does not take a virtiofs tag), ``write_files`` (always base64),
  ``ssh_authorized_keys`` and ``runcmd``. With ``exec_helper``, the qmprt-exec binary goes to
  ``EXEC_HELPER_PATH`` (``gz+b64``) and the first ``runcmd`` item starts it unless one already runs. The environment is written to ``/etc/cloud/environment``
  as ``KEY='value'`` lines; the command is written to ``/var/lib/qmprt/command.sh``, which sources
  the environment, changes to the working directory and ``exec``s the argv (or, for a job, runs it,
  prints its status after ``COMMAND_EXIT_MARKER`` and powers off), and ``runcmd`` runs that script. A dotted hostname also goes in as ``fqdn`` with
  ``prefer_fqdn_over_hostname`` so cloud-init sets it whole. The DNS settings are repeated in
  cc_resolv_conf's ``resolv_conf`` form, the only place for resolver options (network-config
  cannot express them; distributions where cc_resolv_conf does not run ignore it). User-supplied
  user-data is merged into this document or replaces it (``qmprt.cloudinit.userdata`` has the rules).
- ``network-config``: version 1, rendered by ``qmprt.cloudinit.network`` (which also gives the
  ``resolv_conf`` above).
"""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from qmprt.cloudinit import _yaml, userdata
from qmprt.cloudinit.network import DNSConfig, NetworkInterface, network_config, resolv_conf
from qmprt.cloudinit.userdata import UserDataMode

ENVIRONMENT_PATH = "/etc/cloud/environment"
COMMAND_PATH = "/var/lib/qmprt/command.sh"
EXEC_HELPER_PATH = "/usr/local/lib/qmprt/qmprt-exec"
# A runcmd item (before the command, which may never return): start the helper unless one runs (a
# guest that bakes it in, as the tiny guest does, or a second boot's); it daemonizes itself.
EXEC_HELPER_START = f"pidof qmprt-exec >/dev/null 2>&1 || {EXEC_HELPER_PATH} -d || true"
# Printed on the console, followed by the status, when a job command ends (``render_command_script``).
COMMAND_EXIT_MARKER = "qmprt: command exited with status "

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_HOSTNAME_MAX = 64  # the kernel's limit (HOST_NAME_MAX)
_LABEL_MAX = 63  # a DNS label, and what a derived hostname is cut to
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")
_SYSCTL_KEY = re.compile(r"[a-z0-9_][a-z0-9_.\-/]{0,254}", re.IGNORECASE)
_SYSCTL_VALUE_MAX = 4096
# An authorized_keys line: optional options, then a key type the OpenSSH server knows, then base64.
_SSH_KEY_TYPE = re.compile(r"ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+")
_SSH_KEY_DATA = re.compile(r"[A-Za-z0-9+/]+={0,3}")
_SSH_KEY_MAX = 16 * 1024
_MOUNT_TAG = re.compile(r"[A-Za-z0-9_.-]{1,36}")  # virtio-fs tags are at most 36 bytes

_EMPTY_ENV: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class SeedFile:
    """A file the guest writes at boot (cloud-init ``write_files``)."""

    path: str
    content: bytes
    permissions: int = 0o644


@dataclass(frozen=True)
class SeedMount:
    """A virtiofs share the guest mounts at ``path`` (its tag is what ``qmprt.volumes`` gave QEMU)."""

    tag: str
    path: str
    read_only: bool = True


@dataclass(frozen=True)
class SeedSpec:
    instance_id: str
    hostname: str
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY_ENV)
    command: tuple[str, ...] = ()  # argv run at boot, output on the console
    files: tuple[SeedFile, ...] = ()
    interfaces: tuple[NetworkInterface, ...] = ()
    dns: DNSConfig | None = None
    ssh_authorized_keys: tuple[str, ...] = ()  # authorized_keys lines
    mounts: tuple[SeedMount, ...] = ()
    user_data: bytes | None = None  # the user's own user-data (see qmprt.cloudinit.userdata)
    user_data_mode: UserDataMode = "merge"
    sysctls: Mapping[str, str] = field(default_factory=lambda: _EMPTY_ENV)  # applied at every boot
    working_dir: str = ""  # where the command runs
    power_off_after_command: bool = False  # the command is a job: its end powers the guest off
    command_stdin: str = ""  # "tty" or "stream": the command reads the serial console (an attach types there)
    exec_helper: bytes | None = None  # qmprt-exec's binary: written and started unless one runs



def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _check_no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")


def render_environment(env: Mapping[str, str]) -> bytes:
    """``KEY='value'`` lines that ``.`` in sh sets back to exactly the same values.

    Raises ``ValueError`` for a key that is not a shell identifier or a value holding NUL (which no
    environment variable can carry).
    """
    lines = []
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"environment variable name {key!r} is not a valid shell identifier")
        _check_no_nul(value, f"environment variable {key}")
        lines.append(f"{key}={_sh_quote(value)}\n")
    return "".join(lines).encode("utf-8")


CONSOLE_STDIN = (
    # The serial console (ttyS0 on q35 and microvm; the kernel's console device otherwise).
    '__qmprt_console=/dev/ttyS0; [ -c "$__qmprt_console" ] || __qmprt_console=/dev/console',
)


def render_command_script(
    command: tuple[str, ...], working_dir: str = "", power_off_after: bool = False, stdin: str = ""
) -> bytes:
    """The script that runs ``command`` with the environment file exported, in ``working_dir``.

    ``stdin`` "tty" or "stream" (a container with stdin, with or without a tty): the command reads
    the serial console, which is what an attach writes to. A "stream" is a pipe from the console
    set raw (no echo, no CR/NL translation), so what the attacher sends and reads is the command's
    bytes, as through a container's pipes; a "tty" is the terminal itself.

    With ``power_off_after`` the command is a job: when it ends the script prints
    ``COMMAND_EXIT_MARKER`` and its status on the console and powers the guest off, and qmprt
    reports that status as the container's exit code. Otherwise the script ``exec``s the command and
    the VM runs on after it.
    """
    if not command:
        raise ValueError("the command is empty")
    for index, arg in enumerate(command):
        _check_no_nul(arg, f"command argument {index}")
    argv = " ".join(_sh_quote(arg) for arg in command)
    lines = [
        "#!/bin/sh",
        "# Written by qmprt: the container's command, with its environment exported.",
        "set -a",
        f". {ENVIRONMENT_PATH}",
        "set +a",
    ]
    if working_dir:
        if not working_dir.startswith("/") or not working_dir.isprintable() or len(working_dir) > 4096:
            raise ValueError(f"working directory {working_dir!r} must be an absolute path on one line")
        _check_no_nul(working_dir, "working directory")
        lines.append(f"cd {_sh_quote(working_dir)} || exit 1")
    if stdin not in ("", "tty", "stream"):
        raise ValueError(f"stdin {stdin!r} must be tty, stream or empty")
    if stdin:
        lines += list(CONSOLE_STDIN)
    if stdin == "tty":
        lines.append('exec < "$__qmprt_console"')
    elif stdin == "stream":
        # A pipe from the raw console, as a container runtime gives a command whose stdin is not a
        # terminal: a shell reading it is not interactive (no prompt, no echo).
        lines += [
            'stty raw -echo < "$__qmprt_console" 2>/dev/null',
            '__qmprt_stdin=/run/qmprt-stdin.fifo; rm -f "$__qmprt_stdin"',
            'mkfifo -m 0600 "$__qmprt_stdin" || exit 1',
            'cat < "$__qmprt_console" > "$__qmprt_stdin" &',
        ]
        argv = f'{argv} < "$__qmprt_stdin"'
    if power_off_after:
        # The marker starts a line of its own even after output without a final newline.
        lines += [argv, "status=$?", f"printf '\\n{COMMAND_EXIT_MARKER}%s\\n' \"$status\"", "poweroff"]
    else:
        lines.append(f"exec {argv}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def hostname_from_name(name: str) -> str:
    """A valid hostname made from a pod's metadata name, for sandboxes that set none.

    Lower-cased; every run of characters outside ``[a-z0-9.]`` becomes one ``-``; labels lose the
    ``-`` at their ends and empty labels go; the result is cut to 63 characters at the last label
    boundary that fits (a single longer label is cut inside), and is ``pod`` when nothing is left.
    """
    lowered = re.sub(r"[^a-z0-9.]+", "-", name.lower())
    labels = [label.strip("-")[:_LABEL_MAX].strip("-") for label in lowered.split(".")]
    labels = [label for label in labels if label]
    hostname = ""
    for label in labels:
        candidate = f"{hostname}.{label}" if hostname else label
        if len(candidate) > _LABEL_MAX:
            break
        hostname = candidate
    return hostname or "pod"


def check_hostname(hostname: str) -> str:
    if len(hostname) > _HOSTNAME_MAX or not _HOSTNAME.fullmatch(hostname):
        raise ValueError(
            f"hostname {hostname!r} must be DNS labels (letters, digits, '-') joined by '.',"
            f" at most {_HOSTNAME_MAX} characters"
        )
    return hostname


def check_instance_id(instance_id: str) -> str:
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ValueError(f"instance id {instance_id!r} must match {_INSTANCE_ID.pattern}")
    return instance_id


def check_ssh_keys(keys: tuple[str, ...]) -> list[str]:
    """The keys, each checked to be one authorized_keys line; ``ValueError`` names the bad one."""
    for index, key in enumerate(keys):
        words = key.split(" ")
        types = [i for i, word in enumerate(words[:-1]) if _SSH_KEY_TYPE.fullmatch(word)]
        if (
            len(key) > _SSH_KEY_MAX
            or not key.isprintable()
            or not types
            or not _SSH_KEY_DATA.fullmatch(words[types[0] + 1])
        ):
            raise ValueError(
                f"SSH key {index} ({key[:40]!r}…) is not one authorized_keys line"
                " ('ssh-ed25519 AAAA… comment', 'ecdsa-sha2-nistp256 …', 'sk-…')"
            )
    return list(keys)


def render_meta_data(spec: SeedSpec) -> bytes:
    document: dict[str, _yaml.Node] = {
        "instance-id": check_instance_id(spec.instance_id),
        "local-hostname": check_hostname(spec.hostname),
    }
    if spec.ssh_authorized_keys:
        document["public-keys"] = check_ssh_keys(spec.ssh_authorized_keys)
    return _yaml.dump(document)


def _seed_files(spec: SeedSpec) -> list[SeedFile]:
    files = [SeedFile(ENVIRONMENT_PATH, render_environment(spec.env), 0o600)]
    if spec.command:
        files.append(
            SeedFile(
                COMMAND_PATH,
                render_command_script(
                    spec.command, spec.working_dir, spec.power_off_after_command, spec.command_stdin
                ),
                0o700,
            )
        )
    files.extend(spec.files)
    seen: set[str] = set()
    for seed_file in files:
        if not seed_file.path.startswith("/"):
            raise ValueError(f"seed file path {seed_file.path!r} is not absolute")
        if seed_file.path in seen:
            raise ValueError(f"seed file path {seed_file.path!r} is given twice (or is reserved)")
        seen.add(seed_file.path)
        if not 0 <= seed_file.permissions <= 0o7777:
            raise ValueError(f"permissions {seed_file.permissions:o} of {seed_file.path} are invalid")
    return files


def _sh_quote_ascii(value: str, what: str) -> str:
    return _sh_quote(_yaml.check_string(value, what))


def mount_command(mount: SeedMount) -> str:
    """The shell command (a ``bootcmd`` item) that mounts ``mount`` in the guest."""
    if not _MOUNT_TAG.fullmatch(mount.tag):
        raise ValueError(f"mount tag {mount.tag!r} must be 1 to 36 of letters, digits, '_', '.', '-'")
    parts = mount.path.split("/")
    if not mount.path.startswith("/") or mount.path == "/" or "" in parts[1:] or "." in parts or ".." in parts:
        raise ValueError(f"mount path {mount.path!r} must be an absolute, normalised path other than /")
    path = _sh_quote_ascii(mount.path, "mount path")
    options = "ro" if mount.read_only else "rw"
    return f"mkdir -p {path} && mount -t virtiofs -o {options} {_sh_quote(mount.tag)} {path}"


def sysctl_command(key: str, value: str) -> str:
    """The shell command (a ``bootcmd`` item) that sets one kernel parameter in the guest.

    The guest's kernel is the pod's own, so every parameter is namespaced to the pod there; kubelet
    already refused the ones a pod may not set.
    """
    if not _SYSCTL_KEY.fullmatch(key):
        raise ValueError(f"sysctl {key!r} must be a kernel parameter name (letters, digits, '_', '-', '.', '/')")
    if not value or len(value) > _SYSCTL_VALUE_MAX or not value.isprintable():
        raise ValueError(
            f"sysctl {key}: value {value!r} must be 1 to {_SYSCTL_VALUE_MAX} printable characters on one line"
        )
    return f"sysctl -w {_sh_quote_ascii(f'{key}={value}', f'sysctl {key}')}"


def render_user_data(spec: SeedSpec) -> bytes:
    """user-data: qmprt's ``#cloud-config``, merged with or replaced by the user's user-data."""
    if spec.user_data_mode not in ("merge", "replace"):
        raise ValueError(f"user-data mode {spec.user_data_mode!r} must be 'merge' or 'replace'")
    if spec.user_data_mode == "replace":
        if spec.user_data is None:
            raise ValueError("user-data mode replace needs user-data")
        userdata.check_size(spec.user_data)
        check_hostname(spec.hostname)
        return spec.user_data
    document = qmprt_cloud_config(spec)
    if spec.user_data is not None:
        theirs = userdata.parse_cloud_config(spec.user_data)
        document = userdata.merge(document, theirs, frozenset({ENVIRONMENT_PATH, COMMAND_PATH}))
    return _yaml.dump(document, header=userdata.CLOUD_CONFIG_HEADER)


def qmprt_cloud_config(spec: SeedSpec) -> dict[str, Any]:
    """qmprt's own cloud-config document for ``spec`` (before any user-data is merged in)."""
    document: dict[str, Any] = {"hostname": check_hostname(spec.hostname)}
    if "." in spec.hostname:
        # cloud-init would take a dotted hostname as an FQDN and set only its first label.
        document["fqdn"] = spec.hostname
        document["prefer_fqdn_over_hostname"] = True
    bootcmd = [sysctl_command(key, value) for key, value in sorted(spec.sysctls.items())]
    if spec.mounts:
        paths = [mount.path for mount in spec.mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"mount paths are not unique: {paths}")
        bootcmd += [mount_command(mount) for mount in spec.mounts]
    if bootcmd:
        document["bootcmd"] = bootcmd
    document["write_files"] = [
        {
            "path": _yaml.check_string(seed_file.path, "seed file path"),
            "permissions": f"{seed_file.permissions:04o}",
            "encoding": "b64",
            "content": base64.b64encode(seed_file.content).decode("ascii"),
        }
        for seed_file in _seed_files(spec)
    ]
    if spec.ssh_authorized_keys:
        document["ssh_authorized_keys"] = check_ssh_keys(spec.ssh_authorized_keys)
    if spec.exec_helper is not None:
        document["write_files"].append(exec_helper_file(spec.exec_helper))
    runcmd = [EXEC_HELPER_START] if spec.exec_helper is not None else []
    if spec.command:
        runcmd.append(COMMAND_PATH)
    if runcmd:
        document["runcmd"] = runcmd
    resolv = resolv_conf(spec.dns)
    if resolv:
        document["manage_resolv_conf"] = True
        document["resolv_conf"] = resolv
    return document




def exec_helper_file(binary: bytes) -> dict[str, str]:
    """The ``write_files`` entry of the exec helper: gzip + base64 (a static binary shrinks by half)."""
    return {
        "path": EXEC_HELPER_PATH,
        "permissions": "0755",
        "encoding": "gz+b64",
        "content": base64.b64encode(gzip.compress(binary, 9, mtime=0)).decode("ascii"),
    }


def render_network_config(spec: SeedSpec) -> bytes | None:
    """network-config version 1, or ``None`` when the spec has neither interfaces nor DNS."""
    return network_config(spec.interfaces, spec.dns)
