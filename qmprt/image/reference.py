"""Image names: docker-style references and URLs, parsed, validated and normalised.

A name is either

- a docker-style reference ``[host[:port]/]path[:tag][@sha256:<hex>]`` (the grammar of the
  distribution project: lowercase path components, ``\\w[\\w.-]{0,127}`` tags), normalised by adding
  ``:latest`` when it has neither a tag nor a digest, as kubelet and crictl users expect (no default
  ``docker.io/library/`` domain is added: VM images have no default registry), or
- an ``http://``, ``https://`` or ``file:///`` URL, kept verbatim, optionally followed by
  ``@sha256:<hex>``.

In both, a trailing ``@sha256:<64 hex>`` pins the content: a download whose digest differs is refused.
The strict grammar matters beyond tidiness: the parts of a reference are substituted into URL templates,
and the grammar keeps ``..``, ``?``, ``#`` and ``%`` out of them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from qmprt.errors import InvalidArgument

DIGEST_ALGORITHM = "sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PIN = re.compile(r"^(?P<rest>.+)@(?P<algorithm>sha256|sha384|sha512):(?P<hex>[0-9A-Fa-f]+)$", re.IGNORECASE)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
URL_SCHEMES = ("http", "https", "file")
MAX_NAME_LENGTH = 255


def is_digest(text: str) -> bool:
    """``sha256:<64 lowercase hex>``."""
    algorithm, _, hexdigest = text.partition(":")
    return algorithm == DIGEST_ALGORITHM and _HEX64.fullmatch(hexdigest) is not None


def digest_hex(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidArgument(f"{digest!r} is not a sha256:<64 hex> digest")
    return digest.partition(":")[2]


@dataclass(frozen=True)
class ImageReference:
    """One parsed name. ``tag`` is None when the name has none (``name`` then says ``latest``)."""

    original: str
    repository: str  # host/path for references, the URL (without pin) for URLs
    tag: str | None
    digest: str | None  # "sha256:<hex>" when pinned
    is_url: bool
    domain: str | None  # host[:port] of a reference, None when it names no host (or is a URL)
    path: str  # the path of a reference (after the host), "" for URLs

    @property
    def effective_tag(self) -> str | None:
        """The tag a reference stands for: its own, ``latest`` when unpinned, None for URLs and pins."""
        if self.is_url:
            return None
        if self.tag is not None:
            return self.tag
        return None if self.digest else "latest"

    @property
    def unpinned(self) -> str:
        """The normalised name without the digest: what translation rules match against."""
        tag = self.effective_tag
        return f"{self.repository}:{tag}" if tag is not None else self.repository

    @property
    def name(self) -> str:
        """The normalised name stored in the names index and shown as a repo tag."""
        return f"{self.unpinned}@{self.digest}" if self.digest else self.unpinned


def _split_pin(text: str) -> tuple[str, str | None]:
    match = _PIN.match(text)
    if match is None:
        return text, None
    algorithm, hexdigest = match.group("algorithm"), match.group("hex")
    if algorithm.lower() != DIGEST_ALGORITHM:
        raise InvalidArgument(f"image {text!r}: only sha256 digests are supported, not {algorithm}")
    if _HEX64.fullmatch(hexdigest) is None:
        raise InvalidArgument(f"image {text!r}: a sha256 digest is 64 lowercase hex characters")
    return match.group("rest"), f"{DIGEST_ALGORITHM}:{hexdigest}"


def _parse_url(original: str, url: str, digest: str | None) -> ImageReference:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidArgument(f"image URL {original!r} contains whitespace or control characters")
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        # The name is stored and listed: credentials belong in the pull's auth, not in the name.
        raise InvalidArgument(f"image URL {original!r}: put credentials in the pull's auth, not in the URL")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidArgument(f"image URL {original!r}: a file URL is file:///absolute/path")
    elif not parts.hostname:
        raise InvalidArgument(f"image URL {original!r} names no host")
    return ImageReference(original, url, None, digest, True, None, "")


def parse_reference(text: str) -> ImageReference:
    """Parse an image name; raise InvalidArgument when it is neither a valid reference nor a URL."""
    if not text or len(text) > 4096:
        raise InvalidArgument("an image name must be between 1 and 4096 characters")
    rest, digest = _split_pin(text)
    scheme = rest.partition("://")[0]
    if "://" in rest:
        if scheme.lower() not in URL_SCHEMES:
            raise InvalidArgument(f"image URL {text!r}: only http, https and file URLs are supported")
        return _parse_url(text, rest, digest)
    if len(rest) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"image name {text!r} is longer than {MAX_NAME_LENGTH} characters")
    # A tag is the part after the last ':' provided no '/' follows it (else it is a port).
    repository, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        repository, tag = rest[:colon], rest[colon + 1 :]
        if _TAG.fullmatch(tag) is None:
            raise InvalidArgument(f"image name {text!r}: {tag!r} is not a valid tag")
    first, slash, remainder = repository.partition("/")
    domain: str | None = None
    path = repository
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if _DOMAIN.fullmatch(domain) is None:
            raise InvalidArgument(f"image name {text!r}: {domain!r} is not a valid host[:port]")
    if _PATH.fullmatch(path) is None:
        raise InvalidArgument(
            f"image name {text!r}: the path must be lowercase letters, digits and single separators (. _ __ -)"
        )
    if domain is None and tag is None and digest is None and _HEX64.fullmatch(path):
        raise InvalidArgument(f"image name {text!r} looks like a digest; write sha256:{path}")
    return ImageReference(text, repository, tag, digest, False, domain, path)


def normalise_name(text: str) -> str:
    """The normalised form of a name (``:latest`` added to untagged references, URLs verbatim)."""
    return parse_reference(text).name
