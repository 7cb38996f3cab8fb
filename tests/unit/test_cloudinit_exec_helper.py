"""The exec helper in a cloud-init seed: a gz+b64 ``write_files`` entry and a ``runcmd`` item that
starts it before the command, read back by real YAML and by the tiny guest's parser."""

from __future__ import annotations

import base64
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qmprt.cloudinit import SeedSpec
from qmprt.cloudinit.seed import EXEC_HELPER_PATH, EXEC_HELPER_START, COMMAND_PATH, render_user_data
from qmprt.config import VMDefaults

ROOT = Path(__file__).resolve().parents[2]
BINARY = bytes(range(256)) * 64


def spec(helper: bytes | None) -> SeedSpec:
    return SeedSpec(instance_id="i-1", hostname="web", command=("sleep", "1"), exec_helper=helper)


def test_seed_writes_and_starts_the_helper_before_the_command() -> None:
    document = yaml.safe_load(render_user_data(spec(BINARY)))
    entry = next(item for item in document["write_files"] if item["path"] == EXEC_HELPER_PATH)
    assert entry["encoding"] == "gz+b64" and entry["permissions"] == "0755"
    assert gzip.decompress(base64.b64decode(entry["content"])) == BINARY
    assert document["runcmd"] == [EXEC_HELPER_START, COMMAND_PATH]


def test_seed_without_the_helper_is_as_before() -> None:
    document = yaml.safe_load(render_user_data(spec(None)))
    assert all(item["path"] != EXEC_HELPER_PATH for item in document["write_files"])
    assert document["runcmd"] == [COMMAND_PATH]


def test_the_tiny_guests_parser_accepts_the_entry(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    source = tmp_path / "user-data"
    source.write_bytes(render_user_data(spec(BINARY)))
    parsed = subprocess.run(
        [busybox, "awk", "-v", "prefix=ud", "-f", str(ROOT / "images/tiny/yaml2sh.awk"), str(source)],
        capture_output=True, check=True,
    ).stdout
    (tmp_path / "ud.sh").write_bytes(parsed)
    script = (
        '. "$1"; i=$((ud_write_files__n - 1)); eval "printf %s \\"\\${ud_write_files_${i}_content}\\"" '
        '| base64 -d | gunzip; eval "printf %s \\"\\${ud_runcmd_0}\\"" >&2'
    )
    result = subprocess.run([busybox, "sh", "-c", script, "sh", str(tmp_path / "ud.sh")], capture_output=True, check=True)
    assert result.stdout == BINARY
    assert result.stderr.decode() == EXEC_HELPER_START


def test_helper_path_setting(tmp_path: Path) -> None:
    assert VMDefaults(exec_helper="none").exec_helper_path() is None
    assert VMDefaults(exec_helper=str(tmp_path / "x")).exec_helper_path() == tmp_path / "x"
    default = VMDefaults().exec_helper_path()
    assert default is None or default.name == "qmprt-exec"
