"""One store opened by several processes (``qmprt serve`` and ``qmprt ctl image import``): the index
lock, the reload on change, temp files a starting server must not collect.

A fake ``qemu-img`` (a shell script that reports a raw image) keeps these tests free of real image
tools; other processes are plain ``python -c`` children holding the store's locks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt import cli
from qmprt.image import ImageConfig, ImageStore

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path) -> ImageConfig:
    fake = tmp_path / "qemu-img"
    fake.write_text('#!/bin/sh\necho \'{"format": "raw", "virtual-size": 4096}\'\n')
    fake.chmod(0o755)
    return ImageConfig(qemu_img=str(fake))


@pytest.fixture
def disks(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name in ("one", "two", "three"):
        made[name] = tmp_path / f"{name}.raw"
        made[name].write_bytes(name.encode() * 1024)
    return made


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "images"


def test_a_server_sees_what_another_store_imports_and_removes(
    root: Path, config: ImageConfig, disks: dict[str, Path]
) -> None:
    server, importer = ImageStore(root, config), ImageStore(root, config)
    assert server.resolve("node.local/one:1") is None and server.list() == []
    one = importer.import_file(disks["one"], "node.local/one:1")
    assert server.resolve("node.local/one:1") == one
    assert [record.digest for record in server.list()] == [one.digest]
    # A name moved by the other store; the old image stays, without names, until removed by digest.
    two = importer.import_file(disks["two"], "node.local/one:1")
    assert server.resolve("node.local/one:1") == two
    assert server.resolve(one.digest).names == ()  # type: ignore[union-attr]
    importer.remove(one.digest, in_use=lambda digest: False)  # no name changes, the image goes
    assert server.resolve(one.digest) is None and [r.digest for r in server.list()] == [two.digest]


def test_changes_of_two_stores_never_overwrite_each_other(
    root: Path, config: ImageConfig, disks: dict[str, Path]
) -> None:
    first, second = ImageStore(root, config), ImageStore(root, config)
    first.import_file(disks["one"], "a.local/one:1")
    second.import_file(disks["two"], "b.local/two:1")  # its index was loaded before the first import
    first.import_file(disks["three"], "a.local/three:1")
    second.remove("a.local/one:1", in_use=lambda digest: False)
    names = json.loads((root / "names.json").read_text())
    assert sorted(names) == ["a.local/three:1", "b.local/two:1"]
    assert sorted(name for record in first.list() for name in record.names) == sorted(names)
    assert len(list((root / "sha256").iterdir())) == 2


def _child(code: str) -> subprocess.Popen[str]:
    """A python child running ``code``, talking to the test through its stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_the_index_lock_holds_off_another_process(
    root: Path, config: ImageConfig, disks: dict[str, Path], children: list[subprocess.Popen[str]]
) -> None:
    server = ImageStore(root, config)
    holder = _child(
        f"""
        import sys, time
        from qmprt.image import ImageConfig, ImageStore
        store = ImageStore({str(root)!r}, ImageConfig())
        with store._index.exclusive():
            print("held", flush=True)
            sys.stdin.readline()
            time.sleep(0.3)
        """
    )
    children.append(holder)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    holder.stdin.write("go\n")
    holder.stdin.flush()
    started = time.monotonic()
    server.import_file(disks["one"], "node.local/one:1")  # publishes only once the child lets go
    assert time.monotonic() - started >= 0.25
    assert holder.wait(10) == 0


def test_a_starting_server_leaves_another_process_s_temp_file_alone(
    root: Path, config: ImageConfig, children: list[subprocess.Popen[str]]
) -> None:
    ImageStore(root, config)
    (root / "tmp" / "crashed.part").write_bytes(b"left by a crash")
    importer = _child(
        f"""
        import sys
        from qmprt.image import ImageConfig, ImageStore
        store = ImageStore({str(root)!r}, ImageConfig())
        temp = store._new_temp()
        print(temp, flush=True)
        sys.stdin.readline()
        store._discard_temp(temp)
        """
    )
    children.append(importer)
    assert importer.stdout is not None and importer.stdin is not None
    in_progress = Path(importer.stdout.readline().strip())
    starting = ImageStore(root, config)
    assert starting.collect_partials() == 1
    assert in_progress.exists() and not (root / "tmp" / "crashed.part").exists()
    importer.stdin.write("done\n")
    importer.stdin.flush()
    assert importer.wait(10) == 0
    assert list((root / "tmp").iterdir()) == []


@pytest.mark.parametrize("placement", ["after-import", "after-ctl"], ids=["import --config", "ctl --config"])
def test_ctl_image_import_command(
    tmp_path: Path, config: ImageConfig, disks: dict[str, Path], capsys: pytest.CaptureFixture[str], placement: str
) -> None:
    config_file = tmp_path / "qmprt.toml"
    config_file.write_text(f'[runtime]\nstate_dir = "{tmp_path / "state"}"\n[image]\nqemu_img = "{config.qemu_img}"\n')
    flag = ["--config", str(config_file)]
    before, after = ([], flag) if placement == "after-import" else (flag, [])
    assert cli.main(["ctl", *before, "image", "import", str(disks["one"]), "--name", "node.local/one", *after]) == 0
    printed = capsys.readouterr().out
    assert f"Imported {disks['one']} as node.local/one:latest: sha256:" in printed and "(raw," in printed
    stored = ImageStore(tmp_path / "state" / "images", config).resolve("node.local/one")
    assert stored is not None and stored.digest in printed
    absent = tmp_path / "absent.raw"
    assert cli.main(["ctl", *before, "image", "import", str(absent), "--name", "node.local/x", *after]) == 1
    assert f"{absent} does not exist" in capsys.readouterr().err
