"""Which file of a CNI config directory is the network, and what makes it invalid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qmprt.errors import FailedPrecondition, InvalidArgument
from qmprt.net.cni_config import find_config_file, load_config, parse_config

BRIDGE = {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}


def write(directory: Path, name: str, document: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(document if isinstance(document, str) else json.dumps(document))


def test_no_config_means_not_ready(tmp_path: Path) -> None:
    assert find_config_file(tmp_path / "absent") is None
    write(tmp_path, "README.md", "not a config")
    write(tmp_path, ".10-net.conflist.tmp", "{}")
    assert find_config_file(tmp_path) is None
    with pytest.raises(FailedPrecondition, match="no CNI network config"):
        load_config(tmp_path)


def test_first_file_in_lexical_order_wins(tmp_path: Path) -> None:
    write(tmp_path, "20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [BRIDGE]})
    write(tmp_path, "10-a.conf", {"cniVersion": "0.4.0", "name": "a", **BRIDGE})
    write(tmp_path, "99-c.json", {"cniVersion": "1.0.0", "name": "c", "plugins": [BRIDGE]})

    network = load_config(tmp_path)

    assert network.name == "a" and network.cni_version == "0.4.0"
    assert [plugin.type for plugin in network.plugins] == ["bridge"]
    assert network.plugins[0].document == BRIDGE  # name and cniVersion are injected per run, not kept
    assert network.source.endswith("10-a.conf")


def test_a_conf_holding_a_list_and_a_json(tmp_path: Path) -> None:
    write(tmp_path, "10-x.json", {"cniVersion": "1.0.0", "name": "x", "disableCheck": True, "plugins": [BRIDGE, {"type": "portmap", "capabilities": {"portMappings": True}}]})
    network = load_config(tmp_path)
    assert [plugin.type for plugin in network.plugins] == ["bridge", "portmap"]
    assert network.disable_check
    assert network.plugins[1].capabilities == frozenset({"portMappings"})


def test_an_invalid_first_file_is_an_error_not_skipped(tmp_path: Path) -> None:
    write(tmp_path, "10-broken.conflist", "{not json")
    write(tmp_path, "20-good.conflist", {"cniVersion": "1.0.0", "name": "good", "plugins": [BRIDGE]})
    with pytest.raises(InvalidArgument, match="10-broken.conflist"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ([], "not a JSON object"),
        ({"cniVersion": "1.0.0", "plugins": [BRIDGE]}, "'name'"),
        ({"cniVersion": "1.0.0", "name": "../x", "plugins": [BRIDGE]}, "'name'"),
        ({"name": "n", "plugins": [BRIDGE]}, "'cniVersion'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "'plugins'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "cni0"}]}, r"plugins\[0\] needs a 'type'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]}, "'type'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [BRIDGE], "disableCheck": "yes"}, "disableCheck"),
    ],
    ids=["not-object", "no-name", "name-path", "no-version", "no-plugins", "no-type", "type-path", "disable-check-type"],
)
def test_validation(document: Any, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        parse_config(document)


def test_a_single_plugin_conf_without_type(tmp_path: Path) -> None:
    write(tmp_path, "10-x.conf", {"cniVersion": "1.0.0", "name": "x", "bridge": "cni0"})
    with pytest.raises(InvalidArgument, match="needs a 'type'"):
        load_config(tmp_path)
