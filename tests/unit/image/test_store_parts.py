"""The store's small parts without qemu-img or a network: names index, mountinfo, auth headers, overlays' argv."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from qmprt.errors import InternalError, InvalidArgument
from qmprt.image.fetch import PullAuth
from qmprt.image.fsinfo import find_mount, mount_point_of, parse_mountinfo, tree_usage
from qmprt.image.names import NamesIndex
from qmprt.image.overlay import _overlay_argv

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_names_index_persists_every_change(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    index = NamesIndex(path)
    assert index.as_dict() == {}
    index.set("x:1", A)
    index.set("x:2", A)
    index.set("y:1", B)
    assert json.loads(path.read_text()) == {"x:1": A, "x:2": A, "y:1": B}
    assert index.names_for(A) == ("x:1", "x:2")
    index.set("y:1", A)  # a name moves to new content
    assert index.remove_digest(A) == ("x:1", "x:2", "y:1")
    assert index.remove_digest(A) == ()
    assert NamesIndex(path).as_dict() == {}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_names_index_drops_names_of_missing_images(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"x:1": A, "y:1": B}))
    index = NamesIndex(path, stored={"a" * 64})
    assert index.as_dict() == {"x:1": A}


@pytest.mark.parametrize(
    "document", ['["x"]', '{"x": "md5:abc"}', '{"x": 3}', "{not json"], ids=["list", "bad-digest", "number", "syntax"]
)
def test_names_index_refuses_a_damaged_file(tmp_path: Path, document: str) -> None:
    path = tmp_path / "names.json"
    path.write_text(document)
    with pytest.raises(InternalError):
        NamesIndex(path)


def test_names_index_refuses_bad_digests(tmp_path: Path) -> None:
    with pytest.raises(InternalError):
        NamesIndex(tmp_path / "n.json").set("x", "sha256:short")


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:35 / /var/lib/qmprt rw,relatime shared:20 - xfs /dev/vdb rw
41 40 0:36 / /var/lib/qmprt/images rw - tmpfs tmpfs rw
42 22 0:37 / /mnt/with\\040space rw - ext4 /dev/vdc rw
43 40 0:38 / /var/lib/qmprt rw - ext4 /dev/vdd rw
"""


def test_mountinfo_parsing_and_lookup() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [entry.mount_point for entry in entries][4] == "/mnt/with space"
    assert find_mount("/var/lib/qmprt/images/sha256", entries, (0, 36)).mount_point == "/var/lib/qmprt/images"  # type: ignore[union-attr]
    # The later of two mounts on one mount point shadows the earlier.
    assert find_mount("/var/lib/qmprt/pods", entries, None).device == (0, 38)  # type: ignore[union-attr]
    # The device decides when it is known (a bind mount of a subdirectory, say).
    assert find_mount("/var/lib/qmprt/pods", entries, (254, 0)).mount_point == "/"  # type: ignore[union-attr]
    assert find_mount("/mnt/with space/x", entries, None).fs_type == "ext4"  # type: ignore[union-attr]
    assert find_mount("/var/lib/qmprtx", entries, None).mount_point == "/"  # type: ignore[union-attr]


def test_mount_point_of_this_machine(tmp_path: Path) -> None:
    mount_point = mount_point_of(tmp_path)
    assert os.path.ismount(mount_point)
    assert str(tmp_path.resolve()).startswith(mount_point)


def test_tree_usage_counts_blocks_and_inodes(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10000)
    usage = tree_usage(tmp_path)
    assert usage.inodes_used == 3
    assert usage.used_bytes >= 10000


def test_pull_auth_headers() -> None:
    assert PullAuth().header() is None
    assert PullAuth(username="u", password="p").header() == "Basic " + base64.b64encode(b"u:p").decode()
    assert PullAuth(auth=base64.b64encode(b"v:q").decode()).header() == "Basic " + base64.b64encode(b"v:q").decode()
    assert PullAuth(registry_token="rt", username="u").header() == "Bearer rt"
    assert PullAuth(identity_token="it").header() == "Bearer it"
    with pytest.raises(InvalidArgument):
        PullAuth(auth="!!!").header()
    with pytest.raises(InvalidArgument):
        PullAuth(auth=base64.b64encode(b"nocolon").decode()).header()


def test_pull_auth_repr_hides_secrets() -> None:
    shown = repr(PullAuth(username="u", password="hunter2", auth="c2VjcmV0OngK", registry_token="tok"))
    assert "hunter2" not in shown and "c2VjcmV0" not in shown and "tok" not in shown


def test_overlay_growth_never_shrinks(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"")
    argv = _overlay_argv(base, "qcow2", tmp_path / "o.qcow2", 1000, "qemu-img", virtual_size=512)
    assert argv[-1] == "1024"  # whole sectors, rounded up
    assert argv[:8] == ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]
    assert _overlay_argv(base, "raw", tmp_path / "o.qcow2", None, "qemu-img", None)[-1] == str(tmp_path / "o.qcow2")
    with pytest.raises(InvalidArgument, match="only grow"):
        _overlay_argv(base, "qcow2", tmp_path / "o.qcow2", 511, "qemu-img", virtual_size=512)
    with pytest.raises(InvalidArgument, match="positive"):
        _overlay_argv(base, "qcow2", tmp_path / "o.qcow2", 0, "qemu-img", virtual_size=512)
    with pytest.raises(InvalidArgument, match="does not exist"):
        _overlay_argv(tmp_path / "absent", "qcow2", tmp_path / "o.qcow2", None, "qemu-img", None)
    with pytest.raises(InvalidArgument, match="qcow2 or raw"):
        _overlay_argv(base, "vmdk", tmp_path / "o.qcow2", None, "qemu-img", None)  # type: ignore[arg-type]


def test_open_store_under_the_state_dir_collects_leftovers(tmp_path: Path) -> None:
    from qmprt import config as config_module
    from qmprt.image import ImageStore, open_store

    config = config_module.load(state_dir=str(tmp_path / "state"))
    first = open_store(config)
    assert isinstance(first, ImageStore) and first.root == tmp_path / "state" / "images"
    (first.root / "tmp" / "left.part").write_bytes(b"x")
    second = open_store(config)
    assert list((second.root / "tmp").iterdir()) == [] and second.list() == []


def _redirect(old_url: str, new_url: str, authorization: str | None = "Basic abc") -> object:
    import email.message
    import io
    import urllib.request

    from qmprt.image.httpclient import _RedirectHandler

    request = urllib.request.Request(old_url)
    if authorization:
        request.add_unredirected_header("Authorization", authorization)
    handler = _RedirectHandler(5, authorization)
    return handler.redirect_request(request, io.BytesIO(), 302, "Found", email.message.Message(), new_url)  # type: ignore[arg-type]


def test_redirects_keep_credentials_only_on_the_same_origin() -> None:
    same = _redirect("https://h.example/a", "https://h.example/b")
    assert same.get_header("Authorization") == "Basic abc"  # type: ignore[attr-defined]
    other = _redirect("https://h.example/a", "https://cdn.example/b")
    assert other.get_header("Authorization") is None  # type: ignore[attr-defined]
    other_port = _redirect("http://h.example/a", "http://h.example:8080/b")
    assert other_port.get_header("Authorization") is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "target", ["http://h.example/b", "file:///etc/passwd", "ftp://h.example/b"], ids=["downgrade", "file", "ftp"]
)
def test_redirects_refused(target: str) -> None:
    with pytest.raises(InvalidArgument):
        _redirect("https://h.example/a", target)
