"""A registry v2 (OCI distribution) client for pulls: manifests, indexes and blobs, every digest checked.

Built on the project's HTTP client (qmprt.image.httpclient: its TLS, proxy, redirect and abort rules).
A 401 is answered once per scope with what the challenge asks for (registryauth); a second 401 is
UNAUTHENTICATED when the pull brought no credentials and PERMISSION_DENIED when it did, naming the
registry. Blobs stream to a file with their sha256 and size checked; a dropped download is retried.
Blocking: callers run it off the event loop, as the other fetchers.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import BinaryIO

from qmprt.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from qmprt.image.fetch import USER_AGENT, PullAuth, write_chunk
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.httpclient import Abort, http_error, opener
from qmprt.image.ocimanifest import ACCEPT, INDEX_TYPES, MAX_MANIFEST_BYTES, Descriptor, Manifest, parse_document, parse_manifest, pick_platform
from qmprt.image.reference import is_digest
from qmprt.image.registryauth import parse_challenge, parse_token_response, token_request

log = logging.getLogger("qmprt.image")
CHUNK = 1 << 20
BLOB_ATTEMPTS = 3


class RegistryClient:
    def __init__(self, host: str, transport: FetchSettings, auth: PullAuth, abort: Abort, *, scheme: str = "https") -> None:
        self.host, self.scheme, self.transport, self.auth, self.abort = host, scheme, transport, auth, abort
        self._authorization: str | None = None  # what the last challenge was answered with

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    def _open(self, url: str, headers: dict[str, str], authorization: str | None, data: bytes | None = None) -> http.client.HTTPResponse:
        request = urllib.request.Request(url, data=data, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers})
        if authorization:
            request.add_unredirected_header("Authorization", authorization)
        try:
            return opener(self.transport, self.abort, authorization).open(request, timeout=self.transport.timeout_s)  # type: ignore[no-any-return]
        except urllib.error.URLError as err:
            if isinstance(err, urllib.error.HTTPError):
                raise
            self.abort.check()
            if isinstance(err.reason, ssl.SSLCertVerificationError):
                raise Unavailable(f"registry {self.host}: TLS verification failed: {err.reason.verify_message}") from err
            raise Unavailable(f"registry {self.host}: {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:
            self.abort.check()
            raise Unavailable(f"registry {self.host}: {err}") from err

    def _answer(self, challenge_header: str, scope: str) -> str:
        challenge = parse_challenge(challenge_header, self.host)
        if challenge.scheme == "basic":
            basic = self.auth.header() if not (self.auth.registry_token or self.auth.identity_token) else None
            if basic is None:
                raise Unauthenticated(f"registry {self.host} wants a username and password for {scope}; the pull brought none")
            return basic
        if self.auth.registry_token:
            return f"Bearer {self.auth.registry_token}"
        request = token_request(challenge, self.auth, self.host, self.scheme, scope)
        try:
            with self._open(request.url, request.headers, None, request.body) as answer:
                body = answer.read(MAX_MANIFEST_BYTES + 1)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (401, 403):
                raise self._refused(scope) from None
            raise http_error(request.url, err) from None
        return f"Bearer {parse_token_response(body, self.host)}"

    def _refused(self, scope: str) -> Exception:
        if self.auth == PullAuth():
            return Unauthenticated(f"registry {self.host} needs credentials for {scope} (an image pull secret)")
        return PermissionDenied(f"registry {self.host} refused the pull's credentials for {scope}")

    def get(self, path: str, accept: str, scope: str) -> http.client.HTTPResponse:
        """GET ``/v2/PATH``, answering one authentication challenge."""
        url = self._url(path)
        for attempt in (1, 2):
            try:
                return self._open(url, {"Accept": accept}, self._authorization)
            except urllib.error.HTTPError as err:
                err.close()
                challenge = err.headers.get("WWW-Authenticate", "")
                if err.code == 401 and attempt == 1 and challenge:
                    self._authorization = self._answer(challenge, scope)
                    continue
                if err.code in (401, 403):
                    raise self._refused(scope) from None
                if err.code == 404:
                    raise NotFound(f"registry {self.host} has no {path.replace('/manifests/', ':').replace('/blobs/', '@')}") from None
                raise http_error(url, err) from None
        raise AssertionError("unreachable")

    def manifest(self, repository: str, reference: str) -> tuple[str, str, dict[str, object]]:
        """(digest, media type, document) of ``repository``'s manifest or index ``reference`` (tag or digest)."""
        what = f"{self.host}/{repository}{'@' if is_digest(reference) else ':'}{reference}"
        with self.get(f"{repository}/manifests/{reference}", ACCEPT, f"repository:{repository}:pull") as answer:
            body = answer.read(MAX_MANIFEST_BYTES + 1)
            content_type, header_digest = answer.headers.get("Content-Type", ""), answer.headers.get("Docker-Content-Digest")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = reference if is_digest(reference) else header_digest if header_digest and header_digest.startswith("sha256:") else None
        if expected is not None and expected != digest:
            raise InvalidArgument(f"{what}: the manifest's digest is {digest}, not {expected}")
        media_type, document = parse_document(body, content_type, what)
        return digest, media_type, document

    def resolve(self, repository: str, reference: str) -> tuple[str, Manifest]:
        """The linux/amd64 manifest a tag or digest stands for: (its digest, the manifest)."""
        digest, media_type, document = self.manifest(repository, reference)
        if media_type in INDEX_TYPES:
            chosen = pick_platform(document, f"{self.host}/{repository}")
            digest, media_type, document = self.manifest(repository, chosen.digest)
            if media_type in INDEX_TYPES:
                raise InvalidArgument(f"{self.host}/{repository}@{chosen.digest}: an index inside an index is not followed")
        return digest, parse_manifest(document, f"{self.host}/{repository}")

    def with_abort(self, abort: Abort) -> RegistryClient:
        """The same client (and the authorization it earned) for another transfer with its own abort flag."""
        client = RegistryClient(self.host, self.transport, self.auth, abort, scheme=self.scheme)
        client._authorization = self._authorization
        return client

    def blob(
        self, repository: str, descriptor: Descriptor, dest: BinaryIO, limit: int, progress: Callable[[int], None] | None = None
    ) -> None:
        """Stream the blob into ``dest`` (truncated first), its size and sha256 checked; retried when dropped.

        ``progress`` is called with the bytes of this blob written so far."""
        if descriptor.size > limit:
            raise InvalidArgument(f"blob {descriptor.digest} of {self.host}/{repository} is {descriptor.size} bytes, above the limit of {limit}")
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            dest.seek(0)
            dest.truncate()
            try:
                self._copy_blob(repository, descriptor, dest, progress)
                return
            except Unavailable as err:
                self.abort.check()
                if attempt == BLOB_ATTEMPTS:
                    raise
                log.warning("blob %s of %s/%s: %s; attempt %d of %d", descriptor.digest, self.host, repository, err, attempt + 1, BLOB_ATTEMPTS)

    def _copy_blob(self, repository: str, descriptor: Descriptor, dest: BinaryIO, progress: Callable[[int], None] | None) -> None:
        hasher, done = hashlib.sha256(), 0
        with self.get(f"{repository}/blobs/{descriptor.digest}", "*/*", f"repository:{repository}:pull") as answer:
            while True:
                try:
                    chunk = answer.read1(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    self.abort.check()
                    raise Unavailable(f"blob {descriptor.digest}: the transfer broke after {done} bytes: {err!r}") from err
                if not chunk:
                    break
                self.abort.check()
                done += len(chunk)
                if done > descriptor.size:
                    raise InvalidArgument(f"blob {descriptor.digest} of {self.host}/{repository} is longer than its {descriptor.size} bytes")
                hasher.update(chunk)
                write_chunk(dest, chunk, f"blob {descriptor.digest}")
                if progress is not None:
                    progress(done)
        self.abort.check()
        if done != descriptor.size:
            raise Unavailable(f"blob {descriptor.digest}: the connection closed after {done} of {descriptor.size} bytes")
        if "sha256:" + hasher.hexdigest() != descriptor.digest:
            raise InvalidArgument(f"blob {descriptor.digest} of {self.host}/{repository} does not match its digest (sha256:{hasher.hexdigest()})")
