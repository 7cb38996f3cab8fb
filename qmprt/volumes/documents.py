"""Block volumes as the JSON documents a container record keeps, and back.

A document is the volume's fields with its ``kind`` (``host``, ``ephemeral``, ``rbd``, ``iscsi``);
reading one runs the volume's own checks again, so a record edited by hand cannot smuggle in what a
request could not. An unknown kind is a ``ValueError`` (an unreadable record).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from qmprt.volumes.block import Attachment, BlockVolume, EphemeralVolume, HostBlockVolume
from qmprt.volumes.network import ISCSIVolume, RBDVolume

KINDS: dict[str, type[BlockVolume]] = {
    "host": HostBlockVolume, "ephemeral": EphemeralVolume, "rbd": RBDVolume, "iscsi": ISCSIVolume,
}


def volume_to_json(volume: BlockVolume) -> dict[str, Any]:
    kind = next(name for name, kind in KINDS.items() if type(volume) is kind)
    return {"kind": kind, **dataclasses.asdict(volume)}  # type: ignore[call-overload]


def volume_from_json(document: Mapping[str, Any]) -> BlockVolume:
    fields = dict(document)
    kind = fields.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"a volume of unknown kind {kind!r}; qmprt knows {', '.join(KINDS)}")
    fields["attachment"] = Attachment(**fields["attachment"])
    if "monitors" in fields:
        fields["monitors"] = tuple(fields["monitors"])
    return KINDS[kind](**fields)
