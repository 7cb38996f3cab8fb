"""The image store on real files, real qemu-img and a real HTTP server on 127.0.0.1.

The server (``http.server`` in a thread, started per module) serves the images this module builds with
qemu-img, and misbehaves on request: it requires credentials, drops the connection mid-body, trickles,
redirects. Every test ends by checking that nothing is left in the store's temp directory. Images are a
few MiB at most; the module runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qmprt.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from qmprt.image import (
    FetchSettings,
    ImageConfig,
    ImageRecord,
    ImageStore,
    PullAuth,
    TranslationRule,
    create_overlay,
    create_overlay_async,
    translate,
)
from qmprt.image import fetch as fetch_module
from qmprt.image.inspect import _info_argv, _parse_info, _run, judge_info

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MiB = 1 << 20
LIMIT = 1 << 30
USER, PASSWORD, TOKEN = "kube", "s3cret", "tok-123"
DIRECT = FetchSettings(proxy="", timeout_s=5)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def corrupt_l1(path: Path) -> None:
    """Point the first L1 entry far outside the file: the header is fine, qemu-img check is not."""
    with open(path, "r+b") as image:
        header = image.read(104)
        (l1_offset,) = struct.unpack_from(">Q", header, 40)
        image.seek(l1_offset)
        image.write(struct.pack(">Q", (1 << 63) | 0x7FFF_0001_0200))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("served")
    good = directory / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(good), "8M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(good)], check=True, capture_output=True)
    (directory / "good.raw").write_bytes(b"qmprt raw image\n" * (2 * MiB // 16))
    (directory / "other.raw").write_bytes(b"another raw one\n" * (MiB // 16))
    qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(directory / "backing.qcow2"))
    (directory / "data.raw").write_bytes(bytes(MiB))
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={directory / 'data.raw'}", str(directory / "datafile.qcow2"), "1M")
    qemu_img("create", "-q", "-f", "qcow2", str(directory / "oversize.qcow2"), "2G")
    shutil.copy(good, directory / "corrupt.qcow2")
    corrupt_l1(directory / "corrupt.qcow2")
    shutil.copy(good, directory / "badheader.qcow2")
    with open(directory / "badheader.qcow2", "r+b") as image:
        image.seek(48)  # refcount table offset: not cluster aligned
        image.write(struct.pack(">Q", 0x123))
    qemu_img("create", "-q", "-f", "vmdk", str(directory / "disk.vmdk"), "1M")
    return directory


class Handler(BaseHTTPRequestHandler):
    server: ImageServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _file(self, name: str) -> bytes | None:
        path = self.server.directory / name
        return path.read_bytes() if path.is_file() else None

    def _send(self, body: bytes, *, chunk: int = 1 << 16, delay: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), chunk):
                self.wfile.write(body[start : start + chunk])
                if delay:
                    self.wfile.flush()
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            self.server.aborted_by_client += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.counts[self.path] += 1
        route, _, rest = self.path.lstrip("/").partition("/")
        if route == "redirect":
            hops, _, target = rest.partition("/")
            location = f"/redirect/{int(hops) - 1}/{target}" if int(hops) > 1 else f"/{target}"
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route == "auth" and self.headers.get("Authorization") != "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()
        ).decode():
            self.send_error(401)
            return
        if route == "bearer" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_error(403)
            return
        body = self._file(rest)
        if body is None:
            self.send_error(404)
            return
        if route in ("files", "auth", "bearer"):
            self._send(body)
        elif route == "slow":
            self._send(body, chunk=64 << 10, delay=0.02)
        elif route == "stall":
            # Half the body, then silence until the module ends: only a socket shutdown wakes the reader.
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.server.release.wait(30)
            self.close_connection = True
        elif route == "drop":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif route == "chunkdrop":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(b"%x\r\n" % len(body) + half)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.send_error(404)


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.directory = directory
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.aborted_by_client = 0
        self.release = threading.Event()

    @property
    def base(self) -> str:
        return f"{'https' if isinstance(self.socket, ssl.SSLSocket) else 'http'}://127.0.0.1:{self.server_address[1]}"


def _serve(server: ImageServer) -> Iterator[ImageServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(images: Path) -> Iterator[ImageServer]:
    yield from _serve(ImageServer(images))


@pytest.fixture(scope="module")
def tls_server(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServer, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    server = ImageServer(images)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for running in _serve(server):
        yield running, cert


def config_for(server: ImageServer, **kwargs: object) -> ImageConfig:
    rule = TranslationRule(regexp=r"test\.local/(.+):.+", url=server.base + "/{1}", transport=DIRECT)
    return ImageConfig(rules=(rule,), default_transport=DIRECT, max_virtual_size_bytes=LIMIT, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path, server: ImageServer) -> Iterator[ImageStore]:
    image_store = ImageStore(tmp_path / "images", config_for(server, file_roots=(str(server.directory),)))
    yield image_store
    image_store.close()
    assert list((tmp_path / "images" / "tmp").iterdir()) == [], "a pull left a temp file behind"


def sha256_of(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def assert_nothing_stored(image_store: ImageStore) -> None:
    root = image_store.root
    assert list((root / "sha256").iterdir()) == []
    assert list((root / "meta").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    assert not (root / "names.json").exists() or json.loads((root / "names.json").read_text()) == {}
    assert image_store.list() == []


def assert_stored(record: ImageRecord, source: Path, image_format: str) -> None:
    stored = Path(record.path)
    assert stored.read_bytes() == source.read_bytes()
    assert record.digest == sha256_of(source) and stored.name == record.digest.removeprefix("sha256:")
    assert stored.stat().st_mode & 0o777 == 0o444
    assert record.format == image_format and record.size_bytes == source.stat().st_size


async def test_pull_by_rule(store: ImageStore, server: ImageServer, images: Path) -> None:
    record = await store.pull("test.local/files/good.qcow2:v1")
    assert_stored(record, images / "good.qcow2", "qcow2")
    assert record.virtual_size == 8 * MiB and record.names == ("test.local/files/good.qcow2:v1",)
    assert store.resolve("test.local/files/good.qcow2:v1") == record
    assert json.loads((store.root / "names.json").read_text()) == {"test.local/files/good.qcow2:v1": record.digest}
    meta = json.loads((store.root / "meta" / f"{record.digest[7:]}.json").read_text())
    assert meta["format"] == "qcow2" and meta["virtual_size"] == 8 * MiB


async def test_pull_raw_by_url_and_file_url(store: ImageStore, server: ImageServer, images: Path) -> None:
    record = await store.pull(server.base + "/files/good.raw")
    assert_stored(record, images / "good.raw", "raw")
    assert record.names == (server.base + "/files/good.raw",)
    again = await store.pull((images / "good.raw").as_uri())
    assert again.digest == record.digest and len(again.names) == 2


async def test_file_urls_only_under_file_roots(tmp_path: Path, server: ImageServer, images: Path) -> None:
    closed = ImageStore(tmp_path / "closed", config_for(server))
    with pytest.raises(InvalidArgument, match="file roots"):
        await closed.pull((images / "good.raw").as_uri())
    (tmp_path / "link.raw").symlink_to(images / "good.raw")
    other = ImageStore(tmp_path / "other", config_for(server, file_roots=(str(tmp_path / "allowed"),)))
    with pytest.raises(InvalidArgument, match="file roots"):
        await other.pull((tmp_path / "link.raw").as_uri())  # the symlink's target decides
    with pytest.raises(InvalidArgument):
        await other.pull("file:///dev/null")
    assert_nothing_stored(closed)
    assert_nothing_stored(other)


async def test_a_rule_over_https(tmp_path: Path, tls_server: tuple[ImageServer, Path], images: Path) -> None:
    server, cert = tls_server
    port = server.server_address[1]
    name = f"127.0.0.1:{port}/files/good.qcow2:v2"
    pattern, url = r"127\.0\.0\.1:\d+/(.+):.*", f"https://127.0.0.1:{port}/{{1}}"
    rule = TranslationRule(regexp=pattern, url=url, transport=FetchSettings(ca_file=str(cert), proxy=""))
    trusting = ImageConfig(rules=(rule,), max_virtual_size_bytes=LIMIT)
    translated = translate(name, trusting)
    assert translated is not None and translated.url == f"https://127.0.0.1:{port}/files/good.qcow2"
    image_store = ImageStore(tmp_path / "images", trusting)
    record = await image_store.pull(name)
    assert_stored(record, images / "good.qcow2", "qcow2")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(image_store.pull(f"127.0.0.1:{port}/stall/good.raw"), 0.3)
    assert time.monotonic() - started < 1.5, "a TLS read blocked on a silent server was not woken"
    assert list((image_store.root / "tmp").iterdir()) == []
    untrusting = ImageStore(tmp_path / "untrusting", ImageConfig(rules=(TranslationRule(regexp=pattern, url=url, transport=DIRECT),)))
    with pytest.raises(Unavailable, match="TLS verification failed"):
        await untrusting.pull(name)
    assert_nothing_stored(untrusting)


async def test_digest_pin_match_and_mismatch(store: ImageStore, server: ImageServer, images: Path) -> None:
    digest = sha256_of(images / "good.raw")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(InvalidArgument, match="pinned"):
        await store.pull(f"test.local/files/good.raw:v1@{wrong}")
    assert_nothing_stored(store)
    record = await store.pull(f"test.local/files/good.raw:v1@{digest}")
    assert record.digest == digest and record.names == (f"test.local/files/good.raw:v1@{digest}",)
    # Pinned content already stored: registered without a download.
    before = server.counts["/files/good.raw"]
    again = await store.pull(f"test.local/files/good.raw:v9@{digest}")
    assert server.counts["/files/good.raw"] == before and len(again.names) == 2
    assert store.resolve(f"anything.example/else:1@{digest}") == again


@pytest.mark.parametrize("route", ["drop", "chunkdrop"], ids=["content-length-not-reached", "chunked-cut"])
async def test_dropped_connection_leaves_nothing(store: ImageStore, route: str) -> None:
    with pytest.raises(Unavailable):
        await store.pull(f"test.local/{route}/good.raw:v1")
    assert_nothing_stored(store)


async def test_deadline_shorter_than_the_download(store: ImageStore, server: ImageServer) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.pull("test.local/slow/good.raw:v1"), 0.3)
    assert time.monotonic() - started < 1.5, "the download did not stop promptly"
    assert_nothing_stored(store)


async def test_deadline_while_the_server_is_silent(store: ImageStore) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.pull("test.local/stall/good.raw:v1"), 0.3)
    assert time.monotonic() - started < 1.5, "a read blocked on a silent server was not woken"
    assert_nothing_stored(store)


async def test_idle_server_times_out(tmp_path: Path, server: ImageServer) -> None:
    rule = TranslationRule(regexp=r"idle\.local/(.+):.+", url=server.base + "/{1}", transport=FetchSettings(proxy="", timeout_s=0.3))
    image_store = ImageStore(tmp_path / "images", ImageConfig(rules=(rule,)))
    with pytest.raises(Unavailable, match="broke after"):
        await image_store.pull("idle.local/stall/good.raw:v1")
    assert_nothing_stored(image_store)


async def test_qemu_img_gets_a_timeout(tmp_path: Path, server: ImageServer, images: Path) -> None:
    hanging = tmp_path / "qemu-img"
    hanging.write_text("#!/bin/sh\nexec sleep 10\n")
    hanging.chmod(0o755)
    image_store = ImageStore(tmp_path / "images", config_for(server, qemu_img=str(hanging), qemu_img_timeout_s=0.3))
    with pytest.raises(DeadlineExceeded):
        await image_store.pull("test.local/files/good.raw:v1")
    with pytest.raises(DeadlineExceeded):
        image_store.import_file(images / "good.raw", "h.example/x:1")
    assert_nothing_stored(image_store)


async def test_concurrent_pulls_share_one_download(store: ImageStore, server: ImageServer) -> None:
    seen: list[tuple[int, int | None]] = []
    before = server.counts["/slow/good.raw"]
    first, second = await asyncio.gather(
        store.pull("test.local/slow/good.raw:a", progress=lambda done, total: seen.append((done, total))),
        store.pull("test.local/slow/good.raw:b"),
    )
    assert server.counts["/slow/good.raw"] == before + 1
    assert first.digest == second.digest and second.names == ("test.local/slow/good.raw:a", "test.local/slow/good.raw:b")
    assert seen[-1] == (2 * MiB, 2 * MiB) and [done for done, _ in seen] == sorted(done for done, _ in seen)


async def test_one_of_two_pulls_gives_up_the_other_completes(store: ImageStore, server: ImageServer) -> None:
    before = server.counts["/slow/other.raw"]
    patient = asyncio.create_task(store.pull("test.local/slow/other.raw:patient"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.pull("test.local/slow/other.raw:hasty"), 0.1)
    record = await patient
    assert record.names == ("test.local/slow/other.raw:patient",)
    assert server.counts["/slow/other.raw"] == before + 1


async def test_progress_is_logged_for_long_pulls(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fetch_module, "PROGRESS_LOG_INTERVAL_S", 0.05)
    with caplog.at_level(logging.INFO, logger="qmprt.image"):
        await store.pull("test.local/slow/good.raw:logged")
    lines = [record.getMessage() for record in caplog.records]
    assert any("MiB of 2.0 MiB" in line and "MB/s" in line for line in lines), lines


async def test_auth_basic_and_bearer(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument, match="401"):
        await store.pull("test.local/auth/good.raw:v1")
    with pytest.raises(InvalidArgument, match="401"):
        await store.pull("test.local/auth/good.raw:v1", auth=PullAuth(username=USER, password="wrong"))
    record = await store.pull("test.local/auth/good.raw:v1", auth=PullAuth(username=USER, password=PASSWORD))
    assert record.format == "raw"
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    await store.pull("test.local/redirect/1/auth/good.raw:v2", auth=PullAuth(auth=encoded))  # kept on the same origin
    with pytest.raises(InvalidArgument, match="403"):
        await store.pull("test.local/bearer/other.raw:v1", auth=PullAuth(registry_token="nope"))
    await store.pull("test.local/bearer/other.raw:v1", auth=PullAuth(registry_token=TOKEN))


async def test_redirects_and_their_limit(tmp_path: Path, server: ImageServer) -> None:
    image_store = ImageStore(tmp_path / "images", config_for(server))
    record = await image_store.pull("test.local/redirect/3/files/good.raw:v1")
    assert record.format == "raw"
    strict_rule = TranslationRule(
        regexp=r"strict\.local/(.+):.+", url=server.base + "/{1}", transport=FetchSettings(proxy="", max_redirects=1)
    )
    strict = ImageStore(tmp_path / "strict", ImageConfig(rules=(strict_rule,)))
    await strict.pull("strict.local/redirect/1/files/good.raw:v1")
    with pytest.raises(InvalidArgument, match="redirect"):
        await strict.pull("strict.local/redirect/2/files/good.raw:v1")
    with pytest.raises(NotFound):
        await strict.pull("strict.local/files/absent.raw:v1")


HOSTILE = {
    "backing-file": ("backing.qcow2", "backing file"),
    "external-data-file": ("datafile.qcow2", "external data file"),
    "oversize": ("oversize.qcow2", "above the limit"),
    "corrupt-l1": ("corrupt.qcow2", "corrupt"),
    "corrupt-header": ("badheader.qcow2", "cannot open"),
    "vmdk": ("disk.vmdk", "VMDK"),
}


@pytest.mark.parametrize("image", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_hostile_images_are_refused(store: ImageStore, image: tuple[str, str]) -> None:
    file_name, message = image
    with pytest.raises(InvalidArgument, match=message):
        await store.pull(f"test.local/files/{file_name}:v1")
    assert_nothing_stored(store)


@pytest.mark.parametrize("file_name", ["backing.qcow2", "datafile.qcow2", "oversize.qcow2"], ids=["backing", "data-file", "oversize"])
def test_qemu_img_info_alone_refuses_them_too(images: Path, file_name: str) -> None:
    """Defence in depth: what the header check catches first, the verdict on qemu-img's report catches too."""
    info = _parse_info(*_run(_info_argv("qemu-img", images / file_name, "qcow2"), 30), "qcow2")
    with pytest.raises(InvalidArgument):
        judge_info(info, "qcow2", LIMIT)


def test_import_file(store: ImageStore, images: Path) -> None:
    record = store.import_file(images / "good.qcow2", "airgap/tiny")
    assert_stored(record, images / "good.qcow2", "qcow2")
    assert record.names == ("airgap/tiny:latest",)
    with pytest.raises(InvalidArgument, match="backing file"):
        store.import_file(images / "backing.qcow2", "airgap/evil")
    with pytest.raises(InvalidArgument, match="pinned"):
        store.import_file(images / "good.raw", "airgap/raw@sha256:" + "1" * 64)
    with pytest.raises(NotFound):
        store.import_file(images / "absent.raw", "airgap/absent")
    assert [r.digest for r in store.list()] == [record.digest]


def test_resolve_forms(store: ImageStore, images: Path) -> None:
    record = store.import_file(images / "good.raw", "h.example/x:1")
    hexdigest = record.digest.removeprefix("sha256:")
    for ref in ("h.example/x:1", record.digest, hexdigest[:8], f"sha256:{hexdigest[:5]}", f"h.example/x:9@{record.digest}"):
        assert store.resolve(ref) == record, ref
    assert store.resolve("h.example/x:2") is None
    assert store.resolve("h.example/x") is None
    assert store.resolve("Not A Name!") is None
    store.import_file(images / "good.raw", "h.example/x")
    assert store.resolve("h.example/x") == store.resolve("h.example/x:latest")


def test_remove_by_name_by_digest_and_in_use(store: ImageStore, images: Path) -> None:
    record = store.import_file(images / "good.raw", "h.example/x:1")
    store.import_file(images / "good.raw", "h.example/x:2")
    other = store.import_file(images / "other.raw", "h.example/y:1")
    with pytest.raises(FailedPrecondition):
        store.remove("h.example/x:1", in_use=lambda digest: digest == record.digest)
    with pytest.raises(FailedPrecondition):
        store.remove(record.digest, in_use=lambda digest: digest == record.digest)
    assert store.resolve(record.digest).names == ("h.example/x:1", "h.example/x:2")  # type: ignore[union-attr]
    store.remove("h.example/x:1", in_use=lambda digest: False)  # one name: the image with all its names
    assert not Path(record.path).exists() and store.resolve(record.digest) is None
    assert store.resolve("h.example/x:2") is None and store.resolve("h.example/y:1") == other
    store.remove("h.example/x:2", in_use=lambda digest: True)  # unknown: idempotent, in_use not consulted
    store.import_file(images / "other.raw", "h.example/y:2")
    store.remove(other.digest, in_use=lambda digest: False)  # by digest: every name
    assert_nothing_stored(store)


def test_a_moved_name_leaves_the_old_image_listed_without_names(store: ImageStore, images: Path) -> None:
    old = store.import_file(images / "good.raw", "h.example/x:1")
    store.import_file(images / "other.raw", "h.example/x:1")
    assert store.resolve(old.digest).names == ()  # type: ignore[union-attr]
    assert len(store.list()) == 2


async def test_fs_usage_after_a_pull(store: ImageStore) -> None:
    empty = store.fs_usage()
    await store.pull("test.local/files/good.raw:v1")
    usage = store.fs_usage()
    assert os.path.ismount(usage.mountpoint)
    assert str(store.root.resolve()).startswith(usage.mountpoint)
    assert usage.used_bytes >= 2 * MiB > empty.used_bytes
    assert usage.inodes_used > empty.inodes_used and usage.timestamp_ns > empty.timestamp_ns


def test_restart_sees_the_store_and_collect_partials(tmp_path: Path, server: ImageServer, images: Path) -> None:
    root = tmp_path / "images"
    first = ImageStore(root, config_for(server))
    record = first.import_file(images / "good.raw", "h.example/x:1")
    (root / "tmp" / "0123.part").write_bytes(b"half a download")
    (root / "tmp" / "stray-dir").mkdir()
    (root / "meta" / ("c" * 64 + ".json")).write_text("{}")  # metadata whose image never arrived
    (root / "sha256" / ("d" * 64)).write_bytes(b"never verified")  # an image without metadata
    (root / ".names.json.1.2.tmp").write_text("{")
    second = ImageStore(root, config_for(server))
    assert second.list() == [record]
    assert second.collect_partials() == 5
    assert second.collect_partials() == 0
    assert sorted(p.name for p in (root / "sha256").iterdir()) == [record.digest[7:]]
    assert sorted(p.name for p in root.iterdir()) == ["meta", "names.json", "sha256", "tmp"]
    for directory in ("", "sha256", "meta", "tmp"):
        assert (root / directory).stat().st_mode & 0o777 == 0o700


async def test_overlay_on_a_stored_image_grows_never_shrinks(store: ImageStore, images: Path, tmp_path: Path) -> None:
    record = store.import_file(images / "good.qcow2", "h.example/tiny:1")
    overlay = tmp_path / "overlay.qcow2"
    started = time.monotonic()
    create_overlay(record.path, record.format, overlay, 64 * MiB + 1, base_virtual_size_bytes=record.virtual_size)
    elapsed = time.monotonic() - started
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", "-U", str(overlay)], check=True, capture_output=True, text=True).stdout
    )
    assert info["virtual-size"] == 64 * MiB + 512
    assert info["backing-filename"] == record.path and info["backing-filename-format"] == "qcow2"
    assert overlay.stat().st_mode & 0o777 == 0o600
    assert elapsed < 2.0
    with pytest.raises(InvalidArgument, match="only grow"):
        create_overlay(record.path, record.format, tmp_path / "small.qcow2", MiB)  # asks qemu-img for the size
    assert not (tmp_path / "small.qcow2").exists()
    await create_overlay_async(record.path, record.format, tmp_path / "plain.qcow2")
    await create_overlay_async(record.path, record.format, tmp_path / "grown.qcow2", 16 * MiB)
    with pytest.raises(InvalidArgument, match="only grow"):
        await create_overlay_async(record.path, record.format, tmp_path / "small.qcow2", MiB)
