"""``qmprt serve`` as a child process with its own config, state, socket and log (tests, benchmark)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from .guests import ROOT, TinyGuest


def wait_for_version(
    what: str, process: subprocess.Popen[bytes], address: str, timeout: float, tail: Callable[[], str]
) -> None:
    """Until the CRI server ``process`` answers Version on ``address``; fail if it exits or is late."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{what} exited with {process.returncode}:\n{tail()}")
            try:
                stub.Version(cri.VersionRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"{what} did not answer within {timeout} s:\n{tail()}")


@contextlib.contextmanager
def served(directory: Path, tiny: TinyGuest, cgroup_root: str, image_name: str, **options: Any) -> Iterator[ServerProcess]:
    """A started ``ServerProcess`` on a short socket directory of its own, shut down and checked at the
    end: a module's server fixture is ``with served(...) as server: yield server``."""
    socket_dir = Path(f"/tmp/qmprt-s-{secrets.token_hex(4)}")  # unix socket paths are short
    socket_dir.mkdir(mode=0o700)
    server = ServerProcess(directory, socket_dir, tiny, cgroup_root, image_name, **options)
    try:
        server.start()
        yield server
    finally:
        leaked = server.shut_down()
        shutil.rmtree(socket_dir, ignore_errors=True)
        assert not leaked, f"the tests left VMs behind: {leaked}"


class ServerProcess:
    """``python -m qmprt.cli serve --config …`` with its output in a file.

    ``image_name`` is mapped to the tiny guest's file; ``image_rules`` adds (name, URL) rules after it.
    """

    def __init__(
        self, directory: Path, socket_dir: Path, tiny: TinyGuest, cgroup_root: str, image_name: str,
        log_level: str = "debug", image_rules: Sequence[tuple[str, str]] = (),
        cni_settings: str = "", exec_prefix: Sequence[str] = (), extra_config: str = "",
    ) -> None:
        """``cni_settings``: more lines for the ``[cni]`` table; ``exec_prefix``: what serve runs under
        (``nsenter --net=<node netns> --``, to run the node inside a test's network namespace);
        ``extra_config``: tables appended to the config (``[image.registry."host"]``)."""
        self.exec_prefix = list(exec_prefix)
        self.socket = socket_dir / "qmprt.sock"
        self.state_dir = directory / "state"
        self.log = directory / "serve.log"
        self.cni_dir = directory / "cni"
        self.cni_dir.mkdir()
        self.config = directory / "qmprt.toml"
        self.config.write_text(
            f"""
[runtime]
socket = "{self.socket}"
state_dir = "{self.state_dir}"
run_dir = "{socket_dir / 'run'}"
log_level = "{log_level}"
[metrics]
address = "127.0.0.1:0"
[cgroups]
root = "{cgroup_root}"
[cni]
conf_dir = "{self.cni_dir}"
{cni_settings}
[image]
file_roots = ["{tiny.directory}"]
[[image.rule]]
name = "{image_name.rsplit(':', 1)[0]}"
url = "file://{tiny.disk}"
"""
            + "".join(f'[[image.rule]]\nname = "{name}"\nurl = "{url}"\n' for name, url in image_rules)
            + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.exec_prefix, sys.executable, "-m", "qmprt.cli", "serve", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_version("qmprt serve", self.process, self.address, timeout, self.tail)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def shut_down(self) -> list[str]:
        """What a test module's server fixture does last: remove every pod through the socket (Stop then
        Remove, as kubelet), stop the server by PID, kill any QEMU it left. Returns what was left behind."""
        leaked = []
        if self.process is not None:
            try:
                with grpc.insecure_channel(self.address) as channel:
                    stub = api_pb2_grpc.RuntimeServiceStub(channel)
                    for pod in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items:
                        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            except grpc.RpcError as err:
                leaked.append(f"cleanup through the socket failed: {err}")
            code = self.stop()
            if code != 0:
                leaked.append(f"qmprt serve exited with {code}:\n{self.tail()}")
        for process in self.qemu_processes():
            leaked.append(f"qemu pid {process.pid}")
            process.kill()
        return leaked

    def metrics(self) -> str:
        """The text of qmprt's Prometheus endpoint (its address is in ``<run_dir>/metrics.json``)."""
        import json
        import urllib.request

        address = json.loads((self.socket.parent / "run" / "metrics.json").read_text())["address"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def qemu_processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "qemu-system" in (process.info["name"] or "") and str(self.state_dir) in cmdline:
                found.append(process)
        return found


class ProxyProcess:
    """``python -m qmprt.cli proxy --config …`` in front of ``downstreams`` (name → (socket, handlers)),
    the first being the default; output in a file, stopped by PID."""

    def __init__(self, directory: Path, socket_dir: Path, downstreams: dict[str, tuple[Path, Sequence[str]]]) -> None:
        self.socket = socket_dir / "proxy.sock"
        self.state_dir = directory / "proxy-state"
        self.log = directory / "proxy.log"
        self.config = directory / "proxy.toml"
        tables = "".join(
            f'[[downstream]]\nname = "{name}"\nendpoint = "unix://{socket}"\nhandlers = {list(handlers)!r}\n'.replace("'", '"')
            for name, (socket, handlers) in downstreams.items()
        )
        self.config.write_text(
            f'[proxy]\nsocket = "{self.socket}"\nstate_dir = "{self.state_dir}"\ndefault = "{next(iter(downstreams))}"\n{tables}'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qmprt.cli", "proxy", "--config", str(self.config)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for_version("qmprt proxy", self.process, self.address, timeout, self.tail)

    def stop(self, timeout: float = 20) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
