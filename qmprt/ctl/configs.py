"""crictl-style pod and container configs, from JSON or YAML files, into the real protobuf messages.

``json_format.ParseDict`` accepts the proto field names (``log_directory``) as crictl's examples
write them, and the JSON names (``logDirectory``) too; unknown fields are an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cri_api.v1 import api_pb2 as cri
from google.protobuf import json_format
from google.protobuf.message import Message

from qmprt.errors import InvalidArgument

M = TypeVar("M", bound=Message)


def load_document(path: str | Path) -> dict[str, Any]:
    """A JSON (``.json``) or YAML (anything else) file as a mapping."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as err:
        raise InvalidArgument(f"cannot read {source}: {err.strerror}") from err
    try:
        document = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InvalidArgument(f"{source} is not valid {'JSON' if source.suffix == '.json' else 'YAML'}: {err}") from err
    if not isinstance(document, dict):
        raise InvalidArgument(f"{source} must hold a mapping at its top level")
    return document


def parse(document: dict[str, Any], message: M, source: str = "config") -> M:
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as err:
        raise InvalidArgument(f"{source}: {err}") from err
    return message


def pod_config(path: str | Path) -> cri.PodSandboxConfig:
    return parse(load_document(path), cri.PodSandboxConfig(), str(path))


def container_config(path: str | Path) -> cri.ContainerConfig:
    return parse(load_document(path), cri.ContainerConfig(), str(path))
