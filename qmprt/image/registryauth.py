"""A registry's authentication challenge and the token request that answers it (distribution's token spec).

A registry answers an unauthenticated request with 401 and ``WWW-Authenticate: Bearer realm=…,
service=…, scope=…`` (or ``Basic realm=…``). For Bearer the client asks the realm for a token,
with the pull's credentials: username and password as Basic auth on a GET, an identity token
(an OAuth2 refresh token) as a POST ``grant_type=refresh_token``, or none for anonymous access; a
registry token from kubelet is itself the Bearer token and needs no request. Credentials are never
sent to a realm over plain http unless the registry itself is plain http.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass, field

from qmprt.errors import PermissionDenied
from qmprt.image.fetch import PullAuth

MAX_CHALLENGE_LENGTH = 4096
MAX_TOKEN_RESPONSE_BYTES = 1 << 20
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lowercase
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)


def parse_challenge(header: str, registry: str) -> Challenge:
    """The first Bearer or Basic challenge of a ``WWW-Authenticate`` value."""
    if len(header) > MAX_CHALLENGE_LENGTH:
        raise PermissionDenied(f"registry {registry}: its authentication challenge is longer than {MAX_CHALLENGE_LENGTH} characters")
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        raise PermissionDenied(f"registry {registry} asks for {scheme or 'an empty'!r} authentication; qmprt speaks Basic and Bearer")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            break  # a second challenge, or junk: what was read is enough
        key, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key] = value
        position = match.end()
    return Challenge(scheme, params)


def token_request(challenge: Challenge, auth: PullAuth, registry: str, registry_scheme: str, scope: str) -> TokenRequest:
    """The request for a Bearer token; the scope asked for is the challenge's, else ``scope``."""
    realm = challenge.params.get("realm", "")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise PermissionDenied(f"registry {registry}: its token realm {realm!r} is not an http(s) URL")
    has_credentials = bool(auth.username or auth.password or auth.auth or auth.identity_token)
    if parts.scheme == "http" and registry_scheme == "https" and has_credentials:
        raise PermissionDenied(f"registry {registry}: its token realm {realm} is plain http; credentials are not sent there")
    query = {"service": challenge.params.get("service", ""), "scope": challenge.params.get("scope", "") or scope}
    query = {key: value for key, value in query.items() if value}
    if auth.identity_token:
        body = urllib.parse.urlencode(
            {**query, "grant_type": "refresh_token", "refresh_token": auth.identity_token, "client_id": "qmprt"}
        ).encode()
        return TokenRequest("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, body)
    separator = "&" if parts.query else "?"
    url = realm + (separator + urllib.parse.urlencode(query) if query else "")
    basic = PullAuth(username=auth.username, password=auth.password, auth=auth.auth).header()
    return TokenRequest("GET", url, {"Authorization": basic} if basic else {})


def parse_token_response(body: bytes, registry: str) -> str:
    """The token of a realm's answer (``token``, or OAuth2's ``access_token``)."""
    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
        raise PermissionDenied(f"registry {registry}: its token answer is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PermissionDenied(f"registry {registry}: its token answer is not JSON") from None
    token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise PermissionDenied(f"registry {registry}: its token answer has no token")
    if any(ord(ch) < 33 or ord(ch) > 126 for ch in token):
        raise PermissionDenied(f"registry {registry}: its token has characters an HTTP header cannot carry")
    return token
