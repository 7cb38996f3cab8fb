"""How to fetch from one image server: TLS, timeouts, redirects, proxy (``FetchSettings``).

They come from a TOML table: ``[image.transport]`` (the default, for the default mapping and URL
names) or the keys of one ``[[rule]]`` (``qmprt.image.rules``). The keys are the field names;
``fetch_settings_from_table`` checks their types and lays a table over a base.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from qmprt.errors import InvalidArgument


@dataclass(frozen=True)
class FetchSettings:
    """How to fetch from one server.

    ``timeout_s`` bounds connecting and each wait for data (an idle server), not the whole download:
    the client's deadline bounds that. ``proxy``: None uses the environment (``https_proxy``,
    ``no_proxy``…) as containerd does, ``""`` connects directly, anything else is the proxy URL.
    """

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure_skip_verify: bool = False
    timeout_s: float = 30.0
    max_redirects: int = 5
    proxy: str | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise InvalidArgument("transport timeout_s must be positive")
        if not 0 <= self.max_redirects <= 30:
            raise InvalidArgument("transport max_redirects must be between 0 and 30")
        if self.client_key and not self.client_cert:
            raise InvalidArgument("transport client_key needs client_cert")


FETCH_SETTINGS_KEYS = {f.name for f in fields(FetchSettings)}


def fetch_settings_from_table(table: dict[str, Any], where: str, base: FetchSettings | None = None) -> FetchSettings:
    """A FetchSettings from the transport keys of ``table`` (others ignored), on top of ``base``."""
    values = {f.name: getattr(base or FetchSettings(), f.name) for f in fields(FetchSettings)}
    for key in FETCH_SETTINGS_KEYS & set(table):
        value = table[key]
        default = getattr(FetchSettings(), key)
        if key == "timeout_s":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif key in ("insecure_skip_verify",):
            ok = isinstance(value, bool)
        elif key == "max_redirects":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str) or (value is None and default is None)
        if not ok:
            raise InvalidArgument(f"{where}: {key} has the wrong type ({value!r})")
        values[key] = float(value) if key == "timeout_s" else value
    return FetchSettings(**values)
