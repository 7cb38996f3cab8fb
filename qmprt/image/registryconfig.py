"""Per-registry settings: mirrors, TLS (CA files, client certificates, insecure flags), plain HTTP.

A reference with a host (``registry.local:5000/vm/tiny:1``) that no translation rule matches is pulled
from its registry. ``[image.registry."HOST[:PORT]"]`` tables in qmprt's config say how::

    [image.registry."registry.local:5000"]
    ca_file = "/etc/qmprt/registry-ca.pem"   # any [image.transport] key: TLS, timeout, proxy
    mirrors = ["mirror.local:5000"]          # tried in order before the registry itself
    plain_http = false                       # true: http://, for a registry without TLS

A host without a table uses ``[image.transport]``. A mirror is a host too: its own table (if any) sets
its transport. Mirrors get no credentials: the pull's credentials are the upstream registry's, and
sending them to another host would hand them out. A mirror that fails (unreachable, lacking the image,
refusing anonymous pulls) is skipped for the next; the registry itself is always tried last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qmprt.errors import InvalidArgument
from qmprt.image.fetch_settings import FETCH_SETTINGS_KEYS, FetchSettings, fetch_settings_from_table
from qmprt.image.reference import _DOMAIN

MAX_MIRRORS = 8


@dataclass(frozen=True)
class RegistryHost:
    """The settings of one registry host."""

    transport: FetchSettings
    mirrors: tuple[str, ...] = ()
    plain_http: bool = False

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"


@dataclass(frozen=True)
class Endpoint:
    """One place to pull a repository from: a mirror, or the registry itself."""

    host: str
    scheme: str
    transport: FetchSettings
    mirror: bool


def _check_host(host: str, where: str) -> str:
    if not isinstance(host, str) or _DOMAIN.fullmatch(host) is None:
        raise InvalidArgument(f"{where}: {host!r} is not a registry host[:port]")
    return host


def registry_hosts_from_table(table: Any, where: str, base: FetchSettings) -> dict[str, RegistryHost]:
    """The ``[image.registry]`` tables by host; each host's transport is laid over ``base``."""
    if not isinstance(table, dict):
        raise InvalidArgument(f"{where} must be a table of hosts ([image.registry.\"host:port\"])")
    hosts: dict[str, RegistryHost] = {}
    for host, settings in table.items():
        here = f"{where}.\"{host}\""
        _check_host(host, where)
        if not isinstance(settings, dict):
            raise InvalidArgument(f"{here} must be a table")
        unknown = sorted(set(settings) - FETCH_SETTINGS_KEYS - {"mirrors", "plain_http"})
        if unknown:
            raise InvalidArgument(f"{here} has unknown keys: {', '.join(unknown)}")
        mirrors = settings.get("mirrors", [])
        if not isinstance(mirrors, list) or len(mirrors) > MAX_MIRRORS:
            raise InvalidArgument(f"{here} mirrors must be a list of at most {MAX_MIRRORS} hosts")
        plain_http = settings.get("plain_http", False)
        if not isinstance(plain_http, bool):
            raise InvalidArgument(f"{here} plain_http must be true or false")
        hosts[host] = RegistryHost(
            transport=fetch_settings_from_table(settings, here, base),
            mirrors=tuple(_check_host(mirror, f"{here} mirrors") for mirror in mirrors),
            plain_http=plain_http,
        )
    return hosts


def endpoints(host: str, hosts: dict[str, RegistryHost], default: FetchSettings) -> list[Endpoint]:
    """Where to pull from for ``host``, in order: its mirrors, then the registry itself."""
    own = hosts.get(host, RegistryHost(default))
    found = []
    for mirror in own.mirrors:
        settings = hosts.get(mirror, RegistryHost(default))
        found.append(Endpoint(mirror, settings.scheme, settings.transport, True))
    found.append(Endpoint(host, own.scheme, own.transport, False))
    return found
