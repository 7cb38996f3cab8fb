"""The template seed, and the identity a clone of a template takes after its restore.

A template boots with ``template_seed_files``: no pod's data, only ``qmprt-template: wait``, which tells a
guest that implements qmprt's template contract (the tiny guest: images/tiny/rcS) to start its exec
helper, print ``TEMPLATE_MARKER`` and wait on ``IDENTITY_FIFO``. qmprt pauses and saves it there.

A clone resumes in that wait. ``identity_script`` is what qmprt runs in it (``sh -s`` through the exec
helper) before anything else: the clone's own NoCloud seed files written to ``IDENTITY_DIR`` (its
hostname, instance-id and so machine-id, environment, files, keys, command, network), the clock set to
the host's, the kernel RNG reseeded from fresh host entropy (``qmprt-exec -r``: clones must not share
random streams), each NIC given its MAC; then the FIFO is opened and the guest's boot goes on as if the
seed had been on a disk from the start.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Mapping, Sequence

TEMPLATE_MARKER = "qmprt: template point"
IDENTITY_DIR = "/run/qmprt/identity"
IDENTITY_FIFO = "/run/qmprt/identity.fifo"
SEED_BYTES = 64
MAX_IDENTITY_BYTES = 4 << 20
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")  # the seed's files, base64'd: bounded as a seed ISO is


def template_seed_files() -> dict[str, bytes]:
    return {"meta-data": b"instance-id: qmprt-template\nlocal-hostname: template\nqmprt-template: wait\n"}


def _heredoc_base64(data: bytes, then: str) -> str:
    """``data`` through ``base64 -d``, then ``then`` ("> PATH" or "| COMMAND"): one process fewer per
    file than a pipe into cat, which counts in a guest under TCG."""
    text = base64.encodebytes(data).decode()
    return f"base64 -d <<'QMPRT_EOF' {then}\n{text}QMPRT_EOF\n"


def identity_script(
    files: Mapping[str, bytes], macs: Sequence[str] = (), now_ns: int | None = None, entropy: bytes | None = None,
) -> bytes:
    """The shell script (POSIX sh, busybox) that gives a restored clone its identity; see the module."""
    for name in files:
        if name not in ("meta-data", "user-data", "network-config"):
            raise ValueError(f"{name!r} is not a NoCloud seed file")
    seconds = (time.time_ns() if now_ns is None else now_ns) / 1e9
    lines = ["set -e", "umask 077", f"mkdir -p {IDENTITY_DIR}"]
    body = "".join(_heredoc_base64(data, f"> {IDENTITY_DIR}/{name}") for name, data in files.items())
    lines.append(body.rstrip("\n"))
    lines.append(f"date -u -s @{seconds:.0f} > /dev/null")
    lines.append(_heredoc_base64(entropy if entropy is not None else os.urandom(SEED_BYTES), "| qmprt-exec -r").rstrip("\n"))
    for index, mac in enumerate(macs):
        if not _MAC.fullmatch(mac):
            raise ValueError(f"NIC {index}: {mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        lines.append(f"ip link set dev eth{index} address {mac}")
    lines.append(f"echo go > {IDENTITY_FIFO}")
    script = ("\n".join(lines) + "\n").encode()
    if len(script) > MAX_IDENTITY_BYTES:
        raise ValueError(f"a clone's identity is {len(script)} bytes, over the {MAX_IDENTITY_BYTES} a seed may hold")
    return script
