"""The template seed and a clone's identity script (run in the guest by ``sh -s``; here read back)."""

from __future__ import annotations

import base64
import re
import subprocess

import pytest

from qmprt.cloudinit import SeedSpec, seed_files
from qmprt.cloudinit.template import IDENTITY_DIR, IDENTITY_FIFO, identity_script, template_seed_files

HEREDOC = re.compile(r"base64 -d <<'QMPRT_EOF' (?P<command>[^\n]+)\n(?P<body>.*?)QMPRT_EOF\n", re.S)


def decoded(script: bytes) -> dict[str, bytes]:
    return {m["command"]: base64.b64decode(m["body"]) for m in HEREDOC.finditer(script.decode())}


def test_the_template_seed_holds_no_pod_data() -> None:
    files = template_seed_files()
    assert set(files) == {"meta-data"}
    assert b"qmprt-template: wait" in files["meta-data"] and b"instance-id: qmprt-template" in files["meta-data"]


def test_the_identity_script_writes_the_seed_sets_the_clock_reseeds_and_goes_on() -> None:
    seed = seed_files(SeedSpec(instance_id="i-1", hostname="clone-1", env={"A": "it's $HOME"}))
    entropy = bytes(range(64))
    script = identity_script(seed, macs=("0a:58:0a:00:00:05",), now_ns=1_800_000_000 * 10**9, entropy=entropy)
    assert subprocess.run(["sh", "-n"], input=script).returncode == 0, "valid sh"
    parts = decoded(script)
    assert parts == {**{f"> {IDENTITY_DIR}/{name}": data for name, data in seed.items()}, "| qmprt-exec -r": entropy}
    text = script.decode()
    assert "date -u -s @1800000000" in text and "ip link set dev eth0 address 0a:58:0a:00:00:05" in text
    assert text.startswith("set -e\n") and text.endswith(f"echo go > {IDENTITY_FIFO}\n"), "the guest goes on last"
    assert decoded(identity_script(seed))["| qmprt-exec -r"] != decoded(identity_script(seed))["| qmprt-exec -r"]


def test_the_identity_script_refuses_what_is_not_a_seed() -> None:
    with pytest.raises(ValueError, match="not a NoCloud seed file"):
        identity_script({"../etc/shadow": b"x"})
    with pytest.raises(ValueError, match="over the"):
        identity_script({"user-data": b"x" * (4 << 20)})
    with pytest.raises(ValueError, match="not a MAC address"):
        identity_script({}, macs=("aa:bb:cc:dd:ee:ff; reboot",))
