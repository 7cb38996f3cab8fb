"""Translation of image names to URLs: ordered rules, per-rule fetch settings; else the registry.

Rules are tried in order (the config's first, then each ``*.toml`` file of ``rules_dir`` in name order);
the first match wins:

- ``name``: an exact reference. Without a tag it matches every tag of that repository
  (``images.example.org/ubuntu`` matches ``…/ubuntu:22.04``); with a tag, only that tag.
- ``regexp``: matched (``re.fullmatch``) against the normalised name without its digest, e.g.
  ``images.example.org/ubuntu:22.04``, or ``host/path`` for a digest-only reference.

The URL template is ``str.format`` text whose fields may be ``{0}`` (the whole matched name), ``{1}``…
(regexp groups), named groups, ``{name}`` (the repository, without tag), ``{tag}``, ``{domain}``,
``{path}`` and ``{digest}`` (the pinned hex digest). Anything else (attributes, indexes, format specs)
is refused when the rule is parsed, so a rule error shows at load time, not at the first pull.

Without a matching rule a reference ``host[:port]/path[:tag|@digest]`` is pulled from its registry as a
containerDisk (``qmprt.image.containerdisk``; per-host settings in ``qmprt.image.registryconfig``);
``translate`` says so by returning None. URL names (``http://``, ``https://``, ``file:///``) are used as they are, with the
config's default transport; rules are not applied to them.

Rules files are TOML::

    [[rule]]
    regexp = 'images\\.example\\.org/(.+):(.+)'
    url = "https://mirror.example.org/{1}-{2}.qcow2"
    ca_file = "/etc/qmprt/mirror-ca.pem"
    timeout_s = 30

``RuleSet`` re-reads the rules directory whenever a file in it changes (new, removed, touched), so rules
are changed without a restart; a file that fails to parse keeps the previous rules in force and is logged.
"""

from __future__ import annotations

import logging
import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from qmprt.errors import InvalidArgument
from qmprt.image.fetch_settings import FETCH_SETTINGS_KEYS, FetchSettings, fetch_settings_from_table
from qmprt.image.reference import ImageReference, digest_hex, parse_reference
from qmprt.image.registryconfig import RegistryHost, registry_hosts_from_table

log = logging.getLogger(__name__)

GiB = 1 << 30
_BUILTIN_FIELDS = ("name", "tag", "domain", "path", "digest")


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InvalidArgument(f"URL template {template!r}: {err}") from err
    names = []
    for _literal, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        if format_spec or conversion or not (field_name.isdigit() or field_name.isidentifier()):
            raise InvalidArgument(
                f"URL template {template!r}: {{{field_name}}} must be a plain group number or name"
            )
        names.append(field_name)
    return names


@dataclass(frozen=True)
class TranslationRule:
    """``name`` (exact) or ``regexp`` → ``url`` template, fetched with ``transport``."""

    url: str
    name: str | None = None
    regexp: str | None = None
    transport: FetchSettings = field(default_factory=FetchSettings)
    source: str = "config"
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _name_ref: ImageReference | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.name is None) == (self.regexp is None):
            raise InvalidArgument(f"rule in {self.source}: give exactly one of name or regexp")
        groups: set[str] = set()
        group_count = 0
        if self.regexp is not None:
            try:
                pattern = re.compile(self.regexp)
            except re.error as err:
                raise InvalidArgument(f"rule in {self.source}: bad regexp {self.regexp!r}: {err}") from err
            object.__setattr__(self, "_pattern", pattern)
            groups = set(pattern.groupindex)
            group_count = pattern.groups
        else:
            assert self.name is not None
            reference = parse_reference(self.name)
            if reference.is_url or reference.digest:
                raise InvalidArgument(f"rule in {self.source}: name {self.name!r} must be a reference without digest")
            object.__setattr__(self, "_name_ref", reference)
        if not self.url:
            raise InvalidArgument(f"rule in {self.source}: url is empty")
        for field_name in _template_fields(self.url):
            if field_name.isdigit():
                if int(field_name) > group_count:
                    raise InvalidArgument(
                        f"rule in {self.source}: URL template uses group {{{field_name}}}, "
                        f"the rule has {group_count}"
                    )
            elif field_name not in groups and field_name not in _BUILTIN_FIELDS:
                raise InvalidArgument(f"rule in {self.source}: URL template field {{{field_name}}} is unknown")

    def apply(self, reference: ImageReference) -> str | None:
        """The URL for ``reference`` when this rule matches it, else None."""
        subject = reference.unpinned
        positional: tuple[str, ...]
        named: dict[str, str]
        if self._pattern is not None:
            match = self._pattern.fullmatch(subject)
            if match is None:
                return None
            positional = (match.group(0), *(group or "" for group in match.groups()))
            named = {key: value or "" for key, value in match.groupdict().items()}
        else:
            assert self._name_ref is not None
            wanted = self._name_ref
            if wanted.repository != reference.repository:
                return None
            if wanted.tag is not None and wanted.tag != reference.effective_tag:
                return None
            positional, named = (subject,), {}
        builtins = {
            "name": reference.repository,
            "domain": reference.domain or "",
            "path": reference.path,
        }
        if reference.effective_tag is not None:
            builtins["tag"] = reference.effective_tag
        if reference.digest is not None:
            builtins["digest"] = digest_hex(reference.digest)
        try:
            return self.url.format(*positional, **{**builtins, **named})
        except KeyError as err:
            raise InvalidArgument(
                f"rule in {self.source} needs {{{err.args[0]}}}, which image {reference.original!r} does not have"
            ) from err


@dataclass(frozen=True)
class ImageConfig:
    """The ``[image]`` settings.

    ``file_roots``: directories that ``file://`` URLs may read from. Empty (the default) refuses every
    file URL: anyone who can create a pod names its image, and a file URL naming ``/etc/shadow`` or a
    host block device would otherwise copy it into a disk the pod boots. ``import_file`` (an
    administrator's command) is not limited by it.
    ``max_download_bytes``: None allows the size limit plus 1/8 for qcow2 metadata, plus 64 MiB.
    """

    rules: tuple[TranslationRule, ...] = ()
    rules_dir: str | None = None
    max_virtual_size_bytes: int = 256 * GiB
    default_transport: FetchSettings = field(default_factory=FetchSettings)
    registries: dict[str, RegistryHost] = field(default_factory=dict)
    file_roots: tuple[str, ...] = ()
    max_download_bytes: int | None = None
    qemu_img: str = "qemu-img"
    qemu_img_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_virtual_size_bytes <= 0:
            raise InvalidArgument("image.max_virtual_size_bytes must be positive")
        if self.max_download_bytes is not None and self.max_download_bytes <= 0:
            raise InvalidArgument("image.max_download_bytes must be positive")
        if self.qemu_img_timeout_s <= 0:
            raise InvalidArgument("image.qemu_img_timeout_s must be positive")
        for root in self.file_roots:
            if not os.path.isabs(root):
                raise InvalidArgument(f"image.file_roots entry {root!r} must be an absolute path")

    @property
    def download_limit(self) -> int:
        if self.max_download_bytes is not None:
            return self.max_download_bytes
        return self.max_virtual_size_bytes + self.max_virtual_size_bytes // 8 + (64 << 20)


class Translation(NamedTuple):
    url: str
    transport: FetchSettings


def translate(
    name: str | ImageReference, config: ImageConfig, rules: tuple[TranslationRule, ...] | None = None
) -> Translation | None:
    """The URL and transport for ``name`` by ``rules`` (default: the config's) in order; None: its registry."""
    reference = name if isinstance(name, ImageReference) else parse_reference(name)
    if reference.is_url:
        return Translation(reference.repository, config.default_transport)
    for rule in config.rules if rules is None else rules:
        url = rule.apply(reference)
        if url is not None:
            return Translation(url, rule.transport)
    if reference.domain is None:
        raise InvalidArgument(
            f"no translation rule matches image {reference.original!r}, and it names no host to fetch from"
        )
    return None


_RULE_KEYS = {"name", "regexp", "url"}


def rules_from_document(document: dict[str, Any], source: str) -> tuple[TranslationRule, ...]:
    """The rules of a parsed TOML document with a ``[[rule]]`` array."""
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise InvalidArgument(f"{source}: unknown keys {', '.join(unknown)} (rules are [[rule]] tables)")
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise InvalidArgument(f"{source}: rule must be an array of tables ([[rule]])")
    rules = []
    for index, table in enumerate(tables):
        where = f"{source} rule {index + 1}"
        extra = sorted(set(table) - _RULE_KEYS - FETCH_SETTINGS_KEYS)
        if extra:
            raise InvalidArgument(f"{where}: unknown keys {', '.join(extra)}")
        for key in _RULE_KEYS & set(table):
            if not isinstance(table[key], str):
                raise InvalidArgument(f"{where}: {key} must be a string")
        if "url" not in table:
            raise InvalidArgument(f"{where}: url is missing")
        rules.append(
            TranslationRule(
                url=table["url"],
                name=table.get("name"),
                regexp=table.get("regexp"),
                transport=fetch_settings_from_table(table, where),
                source=where,
            )
        )
    return tuple(rules)


_CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "rules_dir": (str,),
    "max_virtual_size_bytes": (int,),
    "file_roots": (list,),
    "max_download_bytes": (int,),
    "qemu_img": (str,),
    "qemu_img_timeout_s": (int, float),
}


def image_config_from_table(table: dict[str, Any], where: str = "[image]") -> ImageConfig:
    """An ImageConfig from the ``[image]`` table of qmprt's config file::

        [image]
        rules_dir = "/etc/qmprt/image-rules.d"
        max_virtual_size_bytes = 274877906944
        file_roots = ["/srv/images"]
        [image.transport]            # the default transport: registries and URL names
        ca_file = "/etc/ssl/certs/ca-certificates.crt"
        [image.registry."registry.local:5000"]   # qmprt.image.registryconfig
        mirrors = ["mirror.local:5000"]
        [[image.rule]]
        regexp = '...'
        url = "..."
    """
    if "default_scheme" in table:
        raise InvalidArgument(
            f"{where} default_scheme is gone: a reference with a host is pulled from its registry now; "
            "give [image.registry.\"HOST\"] plain_http = true for a registry without TLS, or a [[rule]] for a web server"
        )
    unknown = sorted(set(table) - set(_CONFIG_KEYS) - {"rule", "transport", "registry"})
    if unknown:
        raise InvalidArgument(f"{where} has unknown keys: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, types in _CONFIG_KEYS.items():
        if key not in table:
            continue
        value: Any = table[key]
        if isinstance(value, bool) or not any(isinstance(value, kind) for kind in types):
            raise InvalidArgument(f"{where} {key} has the wrong type ({value!r})")
        if key == "file_roots":
            if not all(isinstance(root, str) for root in value):
                raise InvalidArgument(f"{where} file_roots must be a list of paths")
            value = tuple(value)
        values[key] = float(value) if key == "qemu_img_timeout_s" else value
    transport_table = table.get("transport", {})
    if not isinstance(transport_table, dict):
        raise InvalidArgument(f"{where} transport must be a table")
    extra = sorted(set(transport_table) - FETCH_SETTINGS_KEYS)
    if extra:
        raise InvalidArgument(f"{where} transport has unknown keys: {', '.join(extra)}")
    values["default_transport"] = fetch_settings_from_table(transport_table, f"{where} transport")
    values["registries"] = registry_hosts_from_table(table.get("registry", {}), f"{where} registry", values["default_transport"])
    values["rules"] = rules_from_document({"rule": table.get("rule", [])}, where)
    return ImageConfig(**values)


def parse_rules_file(path: str | os.PathLike[str]) -> tuple[TranslationRule, ...]:
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"rules file {path}: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"rules file {path}: {err}") from err
    return rules_from_document(document, str(path))


_Signature = tuple[tuple[str, int, int, int], ...]


class RuleSet:
    """The config's rules followed by the rules directory's, re-read when the directory changes."""

    def __init__(self, config: ImageConfig) -> None:
        self._config = config
        self._signature: _Signature | None = None
        self._directory_rules: tuple[TranslationRule, ...] = ()
        if config.rules_dir is not None:
            # At start a broken rules file is an error; later it only keeps the previous rules.
            self._signature = self._scan()
            self._directory_rules = self._load()

    def _files(self) -> list[Path]:
        assert self._config.rules_dir is not None
        try:
            return sorted(Path(self._config.rules_dir).glob("*.toml"))
        except OSError:
            return []

    def _scan(self) -> _Signature:
        signature = []
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue
            signature.append((path.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(signature)

    def _load(self) -> tuple[TranslationRule, ...]:
        rules: list[TranslationRule] = []
        for path in self._files():
            rules.extend(parse_rules_file(path))
        return tuple(rules)

    def current(self) -> tuple[TranslationRule, ...]:
        if self._config.rules_dir is None:
            return self._config.rules
        signature = self._scan()
        if signature != self._signature:
            try:
                self._directory_rules = self._load()
                log.info("image translation rules reloaded from %s", self._config.rules_dir)
            except InvalidArgument as err:
                log.error("image translation rules not reloaded, the previous ones stay in force: %s", err)
            self._signature = signature
        return self._config.rules + self._directory_rules

    def translate(self, name: str | ImageReference) -> Translation | None:
        return translate(name, self._config, self.current())
