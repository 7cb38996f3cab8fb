"""The registry the containerDisk tests run against: TLS, Basic auth, and an OCI layout pushed by skopeo."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt.image.ocimanifest import ACCEPT, parse_document, parse_manifest

from .registry import PASSWORD, USER, Registry, missing_tools, oci_layout, tar_layer


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if missing := missing_tools():
        pytest.skip(f"needs {', '.join(missing)} (tools/install.sh installs them)")
    running = Registry(tmp_path_factory.mktemp("registry"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def get(registry: Registry, path: str, credentials: tuple[str, str] | None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"https://{registry.host}/v2/{path}", headers={"Accept": ACCEPT})
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    context = ssl.create_default_context(cafile=str(registry.ca))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_a_pushed_layout_is_served_with_basic_auth_only(registry: Registry, tmp_path: Path) -> None:
    disk = b"QFI\xfb" + bytes(2000)
    digest = oci_layout(tmp_path / "layout", "1", [tar_layer({"disk/tiny.qcow2": disk})])
    registry.push_layout(tmp_path / "layout", "1", "vm/tiny:1")

    status, _, headers = get(registry, "vm/tiny/manifests/1", None)
    assert status == 401 and headers["Www-Authenticate"].startswith("Basic realm=")
    assert get(registry, "vm/tiny/manifests/1", (USER, "wrong"))[0] == 401

    status, body, headers = get(registry, "vm/tiny/manifests/1", (USER, PASSWORD))
    assert status == 200 and headers["Docker-Content-Digest"] == digest
    media_type, document = parse_document(body, headers["Content-Type"], "vm/tiny:1")
    layer = parse_manifest(document, "vm/tiny:1").layers[0]
    status, blob, _ = get(registry, f"vm/tiny/blobs/{layer.digest}", (USER, PASSWORD))
    assert status == 200 and len(blob) == layer.size and disk in blob
    assert json.loads(get(registry, "vm/tiny/tags/list", (USER, PASSWORD))[1])["tags"] == ["1"]
