"""Network namespaces are made without forking, and removed idempotently."""

import os
import secrets
import subprocess

from qmprt.net import netns


def test_create_is_a_real_namespace_and_remove_is_idempotent() -> None:
    name = f"qmprt-t{secrets.token_hex(4)}"
    path = netns.create(name)
    try:
        assert netns.exists(name)
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True, check=True)
        assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
        # The creating process stayed in its own namespace.
        assert os.stat(f"/proc/{os.getpid()}/ns/net").st_ino != os.stat(path).st_ino
    finally:
        netns.remove(name)
    assert not netns.exists(name) and not path.exists()
    netns.remove(name)
