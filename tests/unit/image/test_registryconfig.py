"""Per-registry settings: mirrors, plain HTTP, transport keys laid over [image.transport]."""

from __future__ import annotations

import pytest

from qmprt.errors import InvalidArgument
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.registryconfig import endpoints, registry_hosts_from_table
from qmprt.image.rules import image_config_from_table

BASE = FetchSettings(timeout_s=9, proxy="")


def test_hosts_mirrors_and_transport_over_the_default() -> None:
    config = image_config_from_table(
        {
            "transport": {"timeout_s": 9, "proxy": ""},
            "registry": {
                "registry.local:5000": {"ca_file": "/etc/qmprt/ca.pem", "mirrors": ["mirror.local", "10.0.0.5:5000"]},
                "10.0.0.5:5000": {"plain_http": True},
            },
        }
    )
    found = endpoints("registry.local:5000", config.registries, config.default_transport)
    assert [(e.host, e.scheme, e.mirror) for e in found] == [
        ("mirror.local", "https", True),
        ("10.0.0.5:5000", "http", True),
        ("registry.local:5000", "https", False),
    ]
    assert found[2].transport == FetchSettings(ca_file="/etc/qmprt/ca.pem", timeout_s=9, proxy="")
    assert found[0].transport == BASE, "a mirror without a table of its own uses [image.transport]"
    [only] = endpoints("quay.io", config.registries, config.default_transport)
    assert (only.host, only.scheme, only.transport, only.mirror) == ("quay.io", "https", BASE, False)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "table of hosts"),
        ({"bad host/": {}}, "not a registry host"),
        ({"r.local": "x"}, "must be a table"),
        ({"r.local": {"mirror": ["m"]}}, "unknown keys: mirror"),
        ({"r.local": {"mirrors": "m"}}, "mirrors must be a list"),
        ({"r.local": {"mirrors": [f"m{i}.local" for i in range(9)]}}, "at most 8"),
        ({"r.local": {"mirrors": ["https://m.local"]}}, "not a registry host"),
        ({"r.local": {"plain_http": "yes"}}, "true or false"),
        ({"r.local": {"timeout_s": "slow"}}, "wrong type"),
    ],
    ids=["not-table", "bad-host", "host-not-table", "unknown-key", "mirrors-not-list", "too-many", "mirror-url", "plain-http", "transport-type"],
)
def test_bad_registry_tables_are_refused(table: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        registry_hosts_from_table(table, "[image] registry", BASE)
