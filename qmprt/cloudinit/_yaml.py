"""The one YAML dialect qmprt writes into a seed.

Two very different readers consume the seed: real cloud-init (PyYAML ``safe_load``) and the tiny
guest's busybox awk parser (``images/tiny/yaml2sh.awk``). This emitter writes only the subset both
read identically, and refuses anything else:

- block mappings, nested blocks indented by two spaces; keys plain when they are of
  ``[A-Za-z0-9_][A-Za-z0-9_./-]*``, else double-quoted;
- block sequences, items indented by two under their key (``- scalar``, ``- key: ...`` or a nested
  sequence ``- - scalar``);
- strings always double-quoted. qmprt's own values are printable ASCII without ``"`` or ``\\``
  (``check_string``), so they need no escapes; strings from user-supplied user-data may need them:
  ``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\r`` and ``\\xXX``/``\\uXXXX``/``\\UXXXXXXXX`` for the other
  characters YAML does not allow raw (printable non-ASCII characters are written as UTF-8);
- integers, floats, booleans and ``null`` plain; empty collections as ``[]`` and ``{}``; no other flow
  style, no block scalars, no anchors or tags.

Arbitrary bytes travel base64-encoded (``write_files`` with ``encoding: b64``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Union

Scalar = Union[str, int, float, bool, None]
Node = Union[Scalar, Sequence["Node"], Mapping[str, "Node"]]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
# Printable ASCII minus the two characters that would need escaping inside double quotes.
_SAFE_STRING = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def check_string(value: str, what: str) -> str:
    """Return ``value`` if it needs no escape in the dialect, else raise ``ValueError``."""
    if not _SAFE_STRING.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: only printable ASCII without '\"' or '\\' can go into the seed's YAML"
        )
    return value


def _escape_char(char: str, where: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code == 0:
        raise ValueError(f"{where}: a NUL character cannot go into the seed")
    printable = (0x20 <= code < 0x7F) or (code >= 0xA0 and char.isprintable() and not 0xD800 <= code < 0xE000)
    if printable and code != 0xFEFF:
        return char
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def quote(value: str, where: str) -> str:
    """``value`` as a double-quoted YAML string, escaped where the dialect says so."""
    if _SAFE_STRING.fullmatch(value):
        return f'"{value}"'
    return '"' + "".join(_escape_char(char, where) for char in value) + '"'


def _scalar(value: Scalar, where: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 (PyYAML) reads "1e-05" as a string: a float needs its dot.
        return text if "." in text else text.replace("e", ".0e", 1)
    if isinstance(value, str):
        return quote(value, where)
    raise ValueError(f"{where}: {type(value).__name__} values are not part of the seed dialect")


def _key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise ValueError(f"{where}: key {key!r} is not a string")
    return key if _PLAIN_KEY.fullmatch(key) else quote(key, where)


def _is_leaf(value: object) -> bool:
    if isinstance(value, (Mapping, list, tuple)):
        return not value
    return True


def _leaf(value: Node, where: str) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return _scalar(value, where)  # type: ignore[arg-type]


def _emit(node: Node, indent: int, where: str, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(node, Mapping):
        for key, value in node.items():
            rendered_key = _key(key, where)
            if _is_leaf(value):
                out.append(f"{pad}{rendered_key}: {_leaf(value, f'{where}.{key}')}")
            else:
                out.append(f"{pad}{rendered_key}:")
                _emit(value, indent + 2, f"{where}.{key}", out)
        return
    if isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            item_where = f"{where}[{index}]"
            if _is_leaf(item):
                out.append(f"{pad}- {_leaf(item, item_where)}")
                continue
            # A mapping or sequence item starts on the dash's line: its first line loses the
            # indentation the dash and its space stand for.
            lines: list[str] = []
            _emit(item, indent + 2, item_where, lines)
            out.append(f"{pad}- {lines[0][indent + 2:]}")
            out.extend(lines[1:])
        return
    raise ValueError(f"{where}: a document must be a mapping")


def dump(document: Mapping[str, Node], header: str | None = None) -> bytes:
    """Render ``document`` (a non-empty mapping) in the seed dialect, optionally after a header line."""
    if not isinstance(document, Mapping) or not document:
        raise ValueError("a seed document must be a non-empty mapping")
    lines: list[str] = [header] if header is not None else []
    _emit(document, 0, "document", lines)
    return ("\n".join(lines) + "\n").encode("utf-8")
