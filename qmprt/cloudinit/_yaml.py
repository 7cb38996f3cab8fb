"""The one YAML dialect qmprt writes into a seed.

Two very different readers consume the seed: real cloud-init (PyYAML ``safe_load``) and the tiny
guest's busybox awk parser (``images/tiny/yaml2sh.awk``). This emitter writes only the subset both
read identically, and refuses anything else instead of escaping it:

- block mappings with plain keys of ``[A-Za-z0-9_-]``, nested blocks indented by two spaces;
- block sequences, items indented by two under their key (``- scalar`` or ``- key: ...``);
- strings always double-quoted, from printable ASCII without ``"`` or ``\\`` (so no escapes exist);
- integers and booleans plain; no empty collections, no flow style, no multi-line scalars.

Arbitrary bytes travel base64-encoded (``write_files`` with ``encoding: b64``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Union

Scalar = Union[str, int, bool]
Node = Union[Scalar, Sequence["Node"], Mapping[str, "Node"]]

_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Printable ASCII minus the two characters that would need escaping inside double quotes.
_SAFE_STRING = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')


def check_string(value: str, what: str) -> str:
    """Return ``value`` if the dialect can carry it as a quoted string, else raise ``ValueError``."""
    if not _SAFE_STRING.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: only printable ASCII without '\"' or '\\' can go into the seed's YAML"
        )
    return value


def _scalar(value: Scalar, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + check_string(value, where) + '"'


def _emit(node: Node, indent: int, where: str, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(node, Mapping):
        if not node:
            raise ValueError(f"{where}: empty mappings are not part of the seed dialect")
        for key, value in node.items():
            if not _KEY.fullmatch(key):
                raise ValueError(f"{where}: key {key!r} is not part of the seed dialect")
            if isinstance(value, (str, int, bool)):
                out.append(f"{pad}{key}: {_scalar(value, f'{where}.{key}')}")
            else:
                out.append(f"{pad}{key}:")
                _emit(value, indent + 2, f"{where}.{key}", out)
        return
    if isinstance(node, Sequence) and not isinstance(node, str):
        if not node:
            raise ValueError(f"{where}: empty sequences are not part of the seed dialect")
        for index, item in enumerate(node):
            item_where = f"{where}[{index}]"
            if isinstance(item, Mapping):
                lines: list[str] = []
                _emit(item, indent + 2, item_where, lines)
                out.append(f"{pad}- {lines[0][indent + 2:]}")
                out.extend(lines[1:])
            elif isinstance(item, (str, int, bool)):
                out.append(f"{pad}- {_scalar(item, item_where)}")
            else:
                raise ValueError(f"{item_where}: nested sequences are not part of the seed dialect")
        return
    raise ValueError(f"{where}: a document must be a mapping")


def dump(document: Mapping[str, Node], header: str | None = None) -> bytes:
    """Render ``document`` (a mapping) in the seed dialect, optionally after a header line."""
    lines: list[str] = [header] if header is not None else []
    _emit(document, 0, "document", lines)
    return ("\n".join(lines) + "\n").encode("ascii")
