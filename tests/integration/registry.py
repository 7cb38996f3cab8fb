"""A real distribution registry (Debian's docker-registry) on loopback for the containerDisk tests.

TLS with a certificate the test makes (self-signed, so it is its own CA), htpasswd Basic auth
(bcrypt, as the registry requires: ``htpasswd -B``), storage in the test's directory; started on a
free port and stopped by PID. ``push_layout`` copies an OCI image layout to it with skopeo.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

USER, PASSWORD = "qmprt", "s3cret-pass"
GZIP_MAGIC = b"\x1f\x8b"
TOOLS = ("docker-registry", "skopeo", "htpasswd", "openssl")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def running_registry(tmp_path_factory: Any, **kinds: bool) -> Iterator[Registry]:
    """A test module's registry fixture: skipped without the tools, started, stopped by PID.
    ``kinds``: ``auth`` and ``tls`` of ``Registry``."""
    if missing := missing_tools():
        pytest.skip(f"needs {', '.join(missing)} (tools/install.sh installs them)")
    running = Registry(tmp_path_factory.mktemp("registry"), **kinds)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Registry:
    """``auth=False``: anonymous pulls and pushes; ``tls=False``: plain HTTP (a mirror of either kind)."""

    directory: Path
    auth: bool = True
    tls: bool = True
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    cert_dir: Path = field(init=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.cert_dir / "ca.crt"

    def start(self, timeout: float = 30) -> None:
        self.cert_dir = self.directory / "certs"
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        key = self.directory / "registry.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(self.ca), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        htpasswd = self.directory / "htpasswd"
        line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True).stdout
        htpasswd.write_bytes(line)
        self.port = free_port()
        config = self.directory / "config.yml"
        settings: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.directory / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.tls:
            settings["http"]["tls"] = {"certificate": str(self.ca), "key": str(key)}
        if self.auth:
            settings["auth"] = {"htpasswd": {"realm": "qmprt-test", "path": str(htpasswd)}}
        config.write_text(json.dumps(settings))  # YAML is a superset of JSON
        log = open(self.directory / "registry.log", "wb")
        self.process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.directory / 'registry.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def push_layout(self, layout: Path, tag: str, reference: str, *, all_images: bool = False) -> None:
        """``skopeo copy oci:LAYOUT:TAG docker://HOST/REFERENCE`` with the test's credentials and CA; the
        digests stay the layout's (skopeo would otherwise compress the layers and rewrite the manifest)."""
        command = ["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-cert-dir", str(self.cert_dir)]
        if self.auth:
            command += ["--dest-creds", f"{USER}:{PASSWORD}"]
        if not self.tls:
            command.append("--dest-tls-verify=false")
        if all_images:
            command.append("--all")
        subprocess.run([*command, f"oci:{layout}:{tag}", f"docker://{self.host}/{reference}"], check=True, capture_output=True, timeout=300)


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def tar_layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _uncompressed(layer: bytes) -> bytes:
    return gzip.decompress(layer) if layer[:2] == GZIP_MAGIC else layer


def _layer_type(layer: bytes) -> str:
    return "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if layer[:2] == GZIP_MAGIC else "")


def oci_layout(layout: Path, tag: str, layers: list[bytes], architecture: str = "amd64") -> str:
    """An OCI image layout holding one image of tar ``layers`` (gzipped ones are recognised by their
    magic and typed ``tar+gzip``); returns its manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    diff_ids = ["sha256:" + hashlib.sha256(_uncompressed(layer)).hexdigest() for layer in layers]
    config = {"architecture": architecture, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, json.dumps(config).encode())},
        "layers": [{"mediaType": _layer_type(layer), **_blob(layout, layer)} for layer in layers],
    }
    descriptor = {"mediaType": manifest["mediaType"], **_blob(layout, json.dumps(manifest).encode()),
                  "annotations": {"org.opencontainers.image.ref.name": tag}}
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"].append(descriptor)
    index_path.write_text(json.dumps(index))
    return str(descriptor["digest"])


def oci_index(layout: Path, tag: str, manifests: dict[str, str]) -> str:
    """Replace the layout's index.json entries with one image index of ``manifests`` (digest →
    architecture) tagged ``tag``; returns the index's digest."""
    index_path = layout / "index.json"
    entries = {entry["digest"]: entry for entry in json.loads(index_path.read_text())["manifests"]}
    inner = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": entries[digest]["mediaType"], "digest": digest, "size": entries[digest]["size"],
             "platform": {"os": "linux", "architecture": architecture}}
            for digest, architecture in manifests.items()
        ],
    }
    descriptor = {"mediaType": inner["mediaType"], **_blob(layout, json.dumps(inner).encode()),
                  "annotations": {"org.opencontainers.image.ref.name": tag}}
    index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return str(descriptor["digest"])
