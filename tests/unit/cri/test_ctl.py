"""``qmprt ctl``: crictl-style configs, log reading, output helpers, and the commands over the real
server (on the fake runtime). ctl is a blocking client, so it runs in a thread beside the server's loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt import cli
from qmprt.ctl import commands, configs, logs, output
from qmprt.ctl.client import CRIClient
from qmprt.errors import InvalidArgument, NotFound, Unavailable
from qmprt.pod.states import ContainerState
from qmprt.vm.agent import ExecResult

from .conftest import Client
from .fake import FakeRuntime

# The examples of crictl's documentation, as people copy them.
CRICTL_POD_JSON = {
    "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83djaidwnduwk28bcsb"},
    "log_directory": "/tmp",
    "linux": {},
}
CRICTL_CONTAINER_JSON = {
    "metadata": {"name": "busybox"},
    "image": {"image": "busybox"},
    "command": ["top"],
    "log_path": "busybox.0.log",
    "linux": {},
}
POD_YAML = """\
metadata:
  name: web
  namespace: default
  uid: u-1
log_directory: /var/log/pods/web
hostname: web-0
labels:
  app: web
  "example.com/ünïcode": "✓"
port_mappings:
  - protocol: TCP
    container_port: 80
    host_port: 8080
dns_config:
  servers: [10.96.0.10]
linux:
  cgroup_parent: /kubepods/besteffort
"""
CONTAINER_YAML = """\
metadata: {name: vm, attempt: 2}
image: {image: tiny}
command: [/bin/sh, -c]
args: [echo hello]
envs:
  - {key: GREETING, value: "a=b"}
log_path: vm/0.log
linux:
  resources:
    cpu_period: 100000
    cpu_quota: 200000
    memory_limit_in_bytes: 268435456
"""


# -- configs --------------------------------------------------------------------------------------


def test_crictl_json_examples_parse(tmp_path: Path) -> None:
    (tmp_path / "pod.json").write_text(json.dumps(CRICTL_POD_JSON))
    (tmp_path / "ctr.json").write_text(json.dumps(CRICTL_CONTAINER_JSON))
    pod = configs.pod_config(tmp_path / "pod.json")
    assert (pod.metadata.name, pod.metadata.attempt) == ("nginx-sandbox", 1)
    assert pod.metadata.uid == "hdishd83djaidwnduwk28bcsb"
    assert pod.log_directory == "/tmp" and pod.HasField("linux")
    container = configs.container_config(tmp_path / "ctr.json")
    assert (container.metadata.name, container.image.image, list(container.command)) == ("busybox", "busybox", ["top"])
    assert container.log_path == "busybox.0.log"


def test_yaml_configs_parse(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(POD_YAML)
    (tmp_path / "ctr.yml").write_text(CONTAINER_YAML)
    pod = configs.pod_config(tmp_path / "pod.yaml")
    assert dict(pod.labels) == {"app": "web", "example.com/ünïcode": "✓"}
    assert pod.port_mappings[0].protocol == cri.TCP and pod.port_mappings[0].host_port == 8080
    assert list(pod.dns_config.servers) == ["10.96.0.10"] and pod.linux.cgroup_parent == "/kubepods/besteffort"
    container = configs.container_config(tmp_path / "ctr.yml")
    assert container.metadata.attempt == 2 and list(container.args) == ["echo hello"]
    assert (container.envs[0].key, container.envs[0].value) == ("GREETING", "a=b")
    assert container.linux.resources.memory_limit_in_bytes == 256 << 20


def test_json_names_are_accepted_too(tmp_path: Path) -> None:
    (tmp_path / "pod.json").write_text(json.dumps({"metadata": {"name": "p"}, "logDirectory": "/x"}))
    assert configs.pod_config(tmp_path / "pod.json").log_directory == "/x"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pod.json", '{"metadata": {"name": "p"}, "log_dir": "/x"}', "log_dir"),
        ("pod.json", "{not json", "not valid JSON"),
        ("pod.yaml", "metadata: [unclosed", "not valid YAML"),
        ("pod.yaml", "- a list", "mapping"),
        ("pod.json", '{"metadata": {"attempt": "many"}}', "attempt"),
    ],
    ids=["unknown-field", "bad-json", "bad-yaml", "not-a-mapping", "wrong-type"],
)
def test_bad_configs_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidArgument, match=message) as caught:
        configs.pod_config(tmp_path / name)
    assert name in str(caught.value)


def test_a_missing_config_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        configs.container_config(tmp_path / "absent.json")


# -- logs -----------------------------------------------------------------------------------------

TS = "2024-05-01T10:00:00.123456789Z"


def test_parse_log_lines() -> None:
    assert logs.parse_line(f"{TS} stdout F hello world\n".encode()) == logs.LogLine(TS, "stdout", False, b"hello world")
    assert logs.parse_line(f"{TS} stderr P part".encode()) == logs.LogLine(TS, "stderr", True, b"part")
    assert logs.parse_line(f"{TS} stdout F".encode()) == logs.LogLine(TS, "stdout", False, b"")
    assert logs.parse_line(f"{TS} stdout F  two  spaces ".encode()).text == b" two  spaces "  # type: ignore[union-attr]
    assert logs.parse_line(b"garbage") is None
    assert logs.parse_line(f"{TS} console F x".encode()) is None


def test_read_with_tail_ignores_an_unfinished_last_line(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(
        f"{TS} stdout F one\n{TS} stdout P tw\n{TS} stdout F o\n{TS} stdout F three\n{TS} stdout F unfin".encode()
    )
    lines, offset = logs.read(str(path))
    assert b"".join(map(logs.render, lines)) == b"one\ntwo\nthree\n"
    assert offset == path.read_bytes().rindex(b"\n") + 1
    tailed, _ = logs.read(str(path), tail=1)
    assert [line.text for line in tailed] == [b"three"]
    assert logs.read(str(path), tail=0)[0] == []


def test_follow_survives_rotation_and_stops_after_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    path = tmp_path / "0.log"
    path.write_bytes(f"{TS} stdout F before\n".encode())
    _, offset = logs.read(str(path))
    running = threading.Event()
    running.set()
    seen: list[bytes] = []

    def reader() -> None:
        for line in logs.follow(str(path), offset, running.is_set):
            seen.append(line.text)

    thread = threading.Thread(target=reader)
    thread.start()
    with path.open("ab") as log_file:
        log_file.write(f"{TS} stdout F first\n".encode())
    time.sleep(0.2)
    os.rename(path, tmp_path / "0.log.1")  # kubelet rotates, then ReopenContainerLog makes a new file
    path.write_bytes(f"{TS} stderr F after rotation\n".encode())
    time.sleep(0.2)
    with path.open("ab") as log_file:
        log_file.write(f"{TS} stdout F last words\n".encode())
    running.clear()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert seen == [b"first", b"after rotation", b"last words"]


# -- output ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "Less than a second"), (5, "5 seconds"), (65, "About a minute"), (600, "10 minutes"),
     (3600, "About an hour"), (7200, "2 hours"), (3 * 86400, "3 days")],
    ids=["sub-second", "seconds", "minute", "minutes", "hour", "hours", "days"],
)
def test_ages_read_like_crictl(seconds: float, text: str) -> None:
    now = 10**18
    assert output.age(now - int(seconds * 1e9), now) == f"{text} ago"


def test_sizes_and_tables() -> None:
    assert (output.size(999), output.size(28_639_232), output.size(1_500_000_000)) == ("999B", "28.6MB", "1.5GB")
    out = io.StringIO()
    output.table(out, ["A", "LONG HEADER"], [["value-one", "x"], ["v", "yy"]])
    assert out.getvalue().splitlines() == ["A           LONG HEADER", "value-one   x", "v           yy"]


# -- the commands over the server -----------------------------------------------------------------


async def _ctl(function: Callable[..., int], client: Client, *args: Any, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()

    def run() -> int:
        with CRIClient(client.address) as ctl_client:
            return function(ctl_client, *args, out=out, **kwargs)

    code = await asyncio.to_thread(run)
    return code, out.getvalue()


async def test_lifecycle_through_ctl(client: Client, fake: FakeRuntime, tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(POD_YAML.replace("/var/log/pods/web", str(tmp_path / "logs")))
    (tmp_path / "ctr.yaml").write_text(CONTAINER_YAML)
    fake.images.add("tiny")

    _, printed = await _ctl(commands.run_pod, client, str(tmp_path / "pod.yaml"), "qmprt")
    pod_id = printed.strip()
    assert fake.sandboxes[pod_id].spec.runtime_handler == "qmprt"
    _, printed = await _ctl(
        commands.create, client, pod_id[:6], str(tmp_path / "ctr.yaml"), str(tmp_path / "pod.yaml")
    )
    container_id = printed.strip()
    assert fake.containers[container_id].spec.envs == (("GREETING", "a=b"),)

    _, running_only = await _ctl(commands.containers, client)
    assert container_id[:13] not in running_only
    _, listed = await _ctl(commands.containers, client, all=True)
    header, row = listed.splitlines()
    assert header.split() == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD", "ID", "POD"]
    assert row.split()[:2] == [container_id[:13], "tiny"] and "CREATED" in row and row.endswith("web")

    await _ctl(commands.start, client, [container_id[:8]])
    _, quiet = await _ctl(commands.containers, client, quiet=True)
    assert quiet == f"{container_id}\n"
    _, pods_table = await _ctl(commands.pods, client)
    assert pod_id[:13] in pods_table and "READY" in pods_table and "qmprt" in pods_table

    _, inspected = await _ctl(commands.inspect, client, container_id)
    document = json.loads(inspected)
    assert document["status"]["state"] == "CONTAINER_RUNNING"
    assert document["info"]["info"]["sandboxID"] == pod_id
    _, inspected_pod = await _ctl(commands.inspect_pod, client, pod_id)
    assert json.loads(inspected_pod)["status"]["labels"]["example.com/ünïcode"] == "✓"

    log_file = tmp_path / "logs" / "vm" / "0.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes(f"{TS} stdout F qmprt: guest ready\n{TS} stderr F oops\n".encode())
    stdout, stderr = io.BytesIO(), io.BytesIO()
    await asyncio.to_thread(_logs, client.address, container_id, stdout, stderr)
    assert (stdout.getvalue(), stderr.getvalue()) == (b"qmprt: guest ready\n", b"oops\n")

    fake.exec_results[("sh", "-c", "exit 3")] = ExecResult(3, b"out", b"err")
    stdout, stderr = io.BytesIO(), io.BytesIO()
    code = await asyncio.to_thread(_exec, client.address, container_id, ["sh", "-c", "exit 3"], stdout, stderr)
    assert (code, stdout.getvalue(), stderr.getvalue()) == (3, b"out", b"err")

    await _ctl(commands.stop, client, [container_id], 5)
    assert fake.containers[container_id].status.state == ContainerState.EXITED
    await _ctl(commands.remove, client, [container_id, container_id])
    await _ctl(commands.stop_pods, client, [pod_id])
    await _ctl(commands.remove_pods, client, [pod_id])
    assert not fake.sandboxes and not fake.containers


def _logs(address: str, container_id: str, stdout: io.BytesIO, stderr: io.BytesIO) -> int:
    with CRIClient(address) as ctl_client:
        return commands.container_logs(ctl_client, container_id, stdout, stderr)


def _exec(address: str, container_id: str, argv: list[str], stdout: io.BytesIO, stderr: io.BytesIO) -> int:
    with CRIClient(address) as ctl_client:
        return commands.exec_sync(ctl_client, container_id, argv, 10, stdout, stderr)


async def test_images_through_ctl(client: Client, fake: FakeRuntime) -> None:
    progress = io.StringIO()
    _, pulled = await _ctl(commands.pull, client, "registry.example/tiny:1.0", progress=progress)
    digest = fake.images.resolve("registry.example/tiny:1.0").digest  # type: ignore[union-attr]
    assert pulled == f"Image is up to date for {digest}\n"
    _, table = await _ctl(commands.images, client)
    assert table.splitlines()[1].split() == ["registry.example/tiny", "1.0", digest[7:20], "1.05MB"]
    _, usage = await _ctl(commands.image_fs_info, client)
    document = json.loads(usage)
    assert document["imageFilesystems"][0]["fsId"]["mountpoint"] and document["containerFilesystems"]
    with pytest.raises(NotFound, match="no such image: never-there"):
        await _ctl(commands.remove_images, client, ["registry.example/tiny:1.0", "never-there"])
    assert not fake.images.records, "the images that exist are removed all the same"
    record = fake.images.add("registry.example/tiny:1.0")
    fake.images.records[record.digest] = dataclasses.replace(record, names=(*record.names, "registry.example/tiny:2"))
    _, removed = await _ctl(commands.remove_images, client, ["registry.example/tiny:2"])
    assert removed == "Deleted: registry.example/tiny:1.0\nDeleted: registry.example/tiny:2\n", "every tag it removed"


async def test_pull_shows_progress_while_waiting(client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 0.8

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    progress = Terminal()
    await _ctl(commands.pull, client, "slow", progress=progress)
    assert "pulling slow" in progress.getvalue()


async def test_stats_through_ctl(client: Client, fake: FakeRuntime) -> None:
    from .conftest import create_container, run_pod

    await create_container(client, fake, await run_pod(client))
    _, table = await _ctl(commands.stats, client, sample_s=0.05)
    header, row = table.splitlines()
    assert header.split()[:4] == ["CONTAINER", "NAME", "CPU", "%"] and row.split()[1] == "vm"


async def test_errors_come_back_as_qmprt_errors(client: Client) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await _ctl(commands.inspect, client, "nope")


def test_an_absent_server_says_so(tmp_path: Path) -> None:
    with CRIClient(str(tmp_path / "absent.sock"), timeout=2) as ctl_client, pytest.raises(
        Unavailable, match="qmprt serve"
    ):
        commands.version(ctl_client, io.StringIO())


async def test_cli_wiring(client: Client, fake: FakeRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(cli.main, ["ctl", "-r", client.address, "version"])
    assert code == 0
    assert "RuntimeName:  qmprt" in capsys.readouterr().out
    code = await asyncio.to_thread(cli.main, ["ctl", "-r", client.address, "inspectp", "nope"])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_exec_takes_the_rest_of_the_line_as_the_command() -> None:
    args = cli.build_parser().parse_args(["ctl", "exec", "--timeout", "5", "abc", "sh", "-c", "ls -l"])
    assert (args.id, args.cmd, args.exec_timeout) == ("abc", ["sh", "-c", "ls -l"], 5)


async def test_inspect_as_yaml(client: Client, fake: FakeRuntime) -> None:
    import yaml

    from .conftest import run_pod

    pod_id = await run_pod(client)
    _, printed = await _ctl(commands.inspect_pod, client, pod_id, format="yaml")
    document = yaml.safe_load(printed)
    assert document["status"]["id"] == pod_id and document["info"]["info"]["id"] == pod_id


def test_serve_takes_its_paths_from_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from qmprt.cri import server

    seen: list[Any] = []

    async def fake_serve(config: Any, *, streaming: Any = None) -> None:
        seen.append(config)
        assert streaming is not None  # serve runs the streaming server beside the socket

    monkeypatch.setattr(server, "serve", fake_serve)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # serve sets it from config
    config_file = tmp_path / "qmprt.toml"
    config_file.write_text('[runtime]\nlog_level = "debug"\nhandlers = ["qmprt", "vm"]\n')
    code = cli.main(
        ["serve", "--config", str(config_file), "--socket", "/tmp/x/q.sock", "--state-dir", "/tmp/x/s",
         "--run-dir", "/tmp/x/r"]
    )
    assert code == 0
    [config] = seen
    assert (config.runtime.socket, config.runtime.state_dir, config.runtime.run_dir) == (
        "/tmp/x/q.sock", "/tmp/x/s", "/tmp/x/r"
    )
    assert config.runtime.handlers == ("qmprt", "vm")
