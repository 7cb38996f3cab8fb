"""How ``qmprt ctl`` prints: crictl-like tables, ages and sizes, and JSON for inspect-like commands."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

SHORT_ID = 13  # crictl truncates ids to 13 characters in tables


def short_id(value: str) -> str:
    return value.removeprefix("sha256:")[:SHORT_ID]


def table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell plus three spaces, as crictl's tabwriter does."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        out.write("   ".join(cells).rstrip() + "\n")


def age(timestamp_ns: int, now_ns: int | None = None) -> str:
    """``3 minutes ago``, in the words of crictl (docker's HumanDuration)."""
    if timestamp_ns <= 0:
        return ""
    seconds = max(0.0, ((now_ns or time.time_ns()) - timestamp_ns) / 1e9)
    return f"{_human_duration(seconds)} ago"


def _human_duration(seconds: float) -> str:
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if round(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if round(hours) == 1:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    if hours < 24 * 7 * 2:
        return f"{int(hours / 24)} days"
    if hours < 24 * 30 * 2:
        return f"{int(hours / 24 / 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{int(hours / 24 / 30)} months"
    return f"{int(hours / 24 / 365)} years"


def size(value: int) -> str:
    """Decimal units with three significant digits: ``28.6MB`` (crictl's HumanSizeWithPrecision)."""
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if amount < 1000 or unit == "PB":
            return f"{amount:.3g}{unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message in the proto3 JSON mapping (JSON names, enums by name, int64 as strings)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def inspect_document(status: Message, info: Mapping[str, str]) -> dict[str, Any]:
    """``{"status": …, "info": …}`` with each JSON ``info`` value embedded as JSON, as crictl does."""
    document: dict[str, Any] = {"status": message_dict(status)}
    if info:
        document["info"] = {key: _json_or_text(value) for key, value in info.items()}
    return document


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def write_document(out: TextIO, document: Any, format: str = "json") -> None:
    """``document`` as indented JSON (crictl's default) or YAML."""
    if format == "yaml":
        yaml.safe_dump(document, out, allow_unicode=True, sort_keys=False)
        return
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
