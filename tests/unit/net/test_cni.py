"""CNI invocation against fake plugins: chaining, DEL order and cache, env, capabilities, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from qmprt.errors import DeadlineExceeded, FailedPrecondition, InternalError, InvalidArgument, NotFound
from qmprt.net.cni import CNI, CNIPluginError, K8sArgs, PortMapping

from .fakeplugins import FakePlugins, write_conflist

NETNS = "/var/run/netns/qmprt-fake"


def result(address: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:00:05", "sandbox": NETNS}],
        "ips": [{"address": address, "gateway": "10.99.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }


FIRST = result("10.99.0.5/24")
FINAL = result("10.99.0.6/24")


def conflist(*plugins: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "podnet", "plugins": list(plugins), **extra}


@pytest.fixture
def fakes(tmp_path: Path) -> FakePlugins:
    plugins = FakePlugins.make(tmp_path / "fake")
    plugins.install("first", "second", "ports", "failing")
    return plugins


@pytest.fixture
def cni(tmp_path: Path, fakes: FakePlugins) -> CNI:
    write_conflist(
        tmp_path / "net.d",
        conflist(
            {"type": "first", "ipam": {"type": "host-local"}},
            {"type": "ports", "capabilities": {"portMappings": True, "bandwidth": False}},
            {"type": "second", "capabilities": {"bandwidth": True}},
        ),
    )
    fakes.answer("first", "ADD", FIRST)
    fakes.answer("second", "ADD", FINAL)
    return CNI(tmp_path / "net.d", [tmp_path / "missing-bin", fakes.bin_dir], tmp_path / "cache", timeout=5)


K8S = K8sArgs(namespace="default", name="web-0", uid="1234-abcd", infra_container_id="sandbox1")


async def test_add_chains_prev_result_and_caches_the_final_result(cni: CNI, fakes: FakePlugins, tmp_path: Path) -> None:
    added = await cni.add("sandbox1", NETNS, k8s=K8S)

    calls = fakes.calls()
    assert [(call.plugin, call.command) for call in calls] == [("first", "ADD"), ("ports", "ADD"), ("second", "ADD")]
    assert "prevResult" not in calls[0].stdin
    assert calls[0].stdin == {"type": "first", "ipam": {"type": "host-local"}, "cniVersion": "1.0.0", "name": "podnet"}
    assert calls[1].stdin["prevResult"] == FIRST  # "ports" printed nothing: the result passes on unchanged
    assert calls[2].stdin["prevResult"] == FIRST
    assert added.pod_ips() == ("10.99.0.6",)
    cached = json.loads((tmp_path / "cache" / "podnet" / "sandbox1-eth0.json").read_text())
    assert cached["result"] == FINAL and cached["netns_path"] == NETNS
    assert (tmp_path / "cache" / "podnet" / "sandbox1-eth0.json").stat().st_mode & 0o777 == 0o600


async def test_environment_carries_the_k8s_args(cni: CNI, fakes: FakePlugins, tmp_path: Path) -> None:
    await cni.add("sandbox1", NETNS, ifname="net1", k8s=K8S)

    env = fakes.calls()[0].env
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "sandbox1",
        "CNI_NETNS": NETNS,
        "CNI_IFNAME": "net1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        "K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=1234-abcd",
        "CNI_PATH": f"{tmp_path / 'missing-bin'}:{fakes.bin_dir}",
    }


async def test_port_mappings_go_only_to_plugins_declaring_the_capability(cni: CNI, fakes: FakePlugins) -> None:
    mappings = [PortMapping("TCP", 80, 8080), PortMapping("udp", 53, 5353, host_ip="10.99.9.1")]
    await cni.add("sandbox1", NETNS, k8s=K8S, port_mappings=mappings)

    stdins = {call.plugin: call.stdin for call in fakes.calls()}
    assert stdins["ports"]["runtimeConfig"] == {
        "portMappings": [
            {"protocol": "tcp", "containerPort": 80, "hostPort": 8080},
            {"protocol": "udp", "containerPort": 53, "hostPort": 5353, "hostIP": "10.99.9.1"},
        ]
    }
    assert "runtimeConfig" not in stdins["first"] and "runtimeConfig" not in stdins["second"]

    fakes.clear()
    await cni.delete("sandbox1")  # DEL replays the mappings ADD used, from the cache
    assert {call.plugin: call.stdin.get("runtimeConfig") for call in fakes.calls()}["ports"] == stdins["ports"]["runtimeConfig"]


async def test_no_runtime_config_without_port_mappings(cni: CNI, fakes: FakePlugins) -> None:
    await cni.add("sandbox1", NETNS)
    assert all("runtimeConfig" not in call.stdin for call in fakes.calls())


async def test_delete_runs_in_reverse_with_the_cached_result_and_is_repeatable(cni: CNI, fakes: FakePlugins, tmp_path: Path) -> None:
    await cni.add("sandbox1", NETNS, k8s=K8S)
    fakes.clear()

    restarted = CNI(cni.conf_dir, cni.bin_dirs, cni.cache_dir)  # the cache is all that survives a restart
    await restarted.delete("sandbox1")

    calls = fakes.calls()
    assert [(call.plugin, call.command) for call in calls] == [("second", "DEL"), ("ports", "DEL"), ("first", "DEL")]
    assert all(call.stdin["prevResult"] == FINAL for call in calls)
    assert all(call.env["CNI_NETNS"] == NETNS and "K8S_POD_NAME=web-0" in call.env["CNI_ARGS"] for call in calls)
    assert not list((tmp_path / "cache").rglob("*.json"))

    fakes.clear()
    await restarted.delete("sandbox1", NETNS)  # no cache: current config, no prevResult
    assert [call.plugin for call in fakes.calls()] == ["second", "ports", "first"]
    assert all("prevResult" not in call.stdin for call in fakes.calls())
    await restarted.delete("never-added")


async def test_delete_uses_the_config_add_used(cni: CNI, fakes: FakePlugins) -> None:
    await cni.add("sandbox1", NETNS)
    write_conflist(cni.conf_dir, conflist({"type": "failing"}, name="othernet"), name="00-new.conflist")
    fakes.clear()

    await cni.delete("sandbox1")

    assert [call.plugin for call in fakes.calls()] == ["second", "ports", "first"]


async def test_failed_delete_keeps_the_cache_for_a_retry(cni: CNI, fakes: FakePlugins) -> None:
    await cni.add("sandbox1", NETNS)
    fakes.answer("ports", "DEL", {"code": 11, "msg": "iptables busy"}, rc=1)
    fakes.clear()

    with pytest.raises(CNIPluginError, match="ports DEL failed.*iptables busy"):
        await cni.delete("sandbox1")

    assert [call.plugin for call in fakes.calls()] == ["second", "ports", "first"]  # best effort: all ran
    assert cni.cached_result("sandbox1") is not None
    (fakes.answers / "ports.DEL.rc").unlink()
    await cni.delete("sandbox1")
    assert cni.cached_result("sandbox1") is None


async def test_plugin_error_is_surfaced_and_the_chain_rolled_back(cni: CNI, fakes: FakePlugins, tmp_path: Path) -> None:
    fakes.answer("second", "ADD", {"cniVersion": "1.0.0", "code": 7, "msg": "no IP addresses available", "details": "range 10.99.0.0/30"}, rc=1)

    with pytest.raises(CNIPluginError) as caught:
        await cni.add("sandbox1", NETNS)

    assert caught.value.plugin == "second" and caught.value.code == 7
    assert str(caught.value) == "CNI plugin second ADD failed (code 7): no IP addresses available: range 10.99.0.0/30"
    assert [(call.plugin, call.command) for call in fakes.calls()] == [
        ("first", "ADD"), ("ports", "ADD"), ("second", "ADD"), ("second", "DEL"), ("ports", "DEL"), ("first", "DEL"),
    ]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.json"))


async def test_plugin_error_without_json_uses_stderr(tmp_path: Path, fakes: FakePlugins) -> None:
    script = fakes.bin_dir / "crashing"
    script.write_text("#!/bin/sh\necho 'panic: nil map' >&2\nexit 2\n")
    script.chmod(0o755)
    write_conflist(tmp_path / "net.d", conflist({"type": "crashing"}))
    cni = CNI(tmp_path / "net.d", [fakes.bin_dir], tmp_path / "cache")

    with pytest.raises(CNIPluginError, match=r"crashing ADD failed \(code 2\): panic: nil map"):
        await cni.add("sandbox1", NETNS)


async def test_missing_plugin_binary(tmp_path: Path, fakes: FakePlugins) -> None:
    write_conflist(tmp_path / "net.d", conflist({"type": "first"}, {"type": "absent"}))
    fakes.answer("first", "ADD", FIRST)
    cni = CNI(tmp_path / "net.d", [fakes.bin_dir], tmp_path / "cache")

    with pytest.raises(FailedPrecondition, match="CNI plugin absent not found"):
        await cni.add("sandbox1", NETNS)

    assert [(call.plugin, call.command) for call in fakes.calls()] == [("first", "ADD"), ("first", "DEL")]


async def test_a_hanging_plugin_times_out(tmp_path: Path, fakes: FakePlugins) -> None:
    write_conflist(tmp_path / "net.d", conflist({"type": "first"}))
    fakes.answer("first", "ADD", FIRST, sleep=30)
    cni = CNI(tmp_path / "net.d", [fakes.bin_dir], tmp_path / "cache", timeout=0.5)

    with pytest.raises(DeadlineExceeded, match="first ADD did not finish"):
        await cni.add("sandbox1", NETNS)


async def test_check_sends_the_cached_result_unless_disabled(cni: CNI, fakes: FakePlugins, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await cni.check("sandbox1")
    await cni.add("sandbox1", NETNS, k8s=K8S)
    fakes.clear()

    await cni.check("sandbox1")

    calls = fakes.calls()
    assert [(call.plugin, call.command) for call in calls] == [("first", "CHECK"), ("ports", "CHECK"), ("second", "CHECK")]
    assert all(call.stdin["prevResult"] == FINAL and call.env["CNI_NETNS"] == NETNS for call in calls)

    fakes.answer("ports", "CHECK", {"code": 999, "msg": "rule missing"}, rc=1)
    with pytest.raises(CNIPluginError, match="ports CHECK failed.*rule missing"):
        await cni.check("sandbox1")


@pytest.mark.parametrize("extra", [{"disableCheck": True}, {"cniVersion": "0.3.1"}], ids=["disableCheck", "v0.3.1"])
async def test_check_skipped(tmp_path: Path, fakes: FakePlugins, extra: dict[str, Any]) -> None:
    write_conflist(tmp_path / "net.d", conflist({"type": "first"}, **extra))
    fakes.answer("first", "ADD", result("10.99.0.5/24", "0.3.1"))
    cni = CNI(tmp_path / "net.d", [fakes.bin_dir], tmp_path / "cache")
    await cni.add("sandbox1", NETNS)
    fakes.clear()

    await cni.check("sandbox1")

    assert fakes.calls() == []


async def test_version_of(tmp_path: Path, fakes: FakePlugins) -> None:
    fakes.answer("first", "VERSION", {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    cni = CNI(tmp_path / "net.d", [fakes.bin_dir], tmp_path / "cache")

    version = await cni.version_of("first")

    assert version.cni_version == "1.0.0" and version.supported_versions == ("0.4.0", "1.0.0")
    assert fakes.calls()[0].env["CNI_COMMAND"] == "VERSION"


@pytest.mark.parametrize(
    ("container_id", "ifname"), [("../escape", "eth0"), ("", "eth0"), ("ok", "a/b"), ("ok", "x" * 16)], ids=["dots", "empty", "slash", "long"]
)
async def test_names_that_would_escape_the_cache_are_refused(cni: CNI, container_id: str, ifname: str) -> None:
    with pytest.raises(InvalidArgument):
        await cni.add(container_id, NETNS, ifname=ifname)


async def test_k8s_values_cannot_inject_cni_args(cni: CNI) -> None:
    with pytest.raises(InvalidArgument):
        await cni.add("sandbox1", NETNS, k8s=K8sArgs(name="web;K8S_POD_UID=other"))


async def test_a_cancelled_add_is_rolled_back(cni: CNI, fakes: FakePlugins) -> None:
    fakes.answer("second", "ADD", FINAL, sleep=30)
    adding = asyncio.create_task(cni.add("sandbox1", NETNS))
    for _ in range(100):
        if fakes.started("second", "ADD"):
            break
        await asyncio.sleep(0.02)

    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding

    assert [(call.plugin, call.command) for call in fakes.calls()][-3:] == [("second", "DEL"), ("ports", "DEL"), ("first", "DEL")]
    assert cni.cached_result("sandbox1") is None


async def test_a_damaged_cache_entry_is_reported(cni: CNI, tmp_path: Path) -> None:
    (tmp_path / "cache" / "podnet").mkdir(parents=True)
    (tmp_path / "cache" / "podnet" / "sandbox1-eth0.json").write_text('{"kind": "qmprt-cni-cache-v1"}')
    with pytest.raises(InternalError, match="not a qmprt CNI cache entry"):
        await cni.delete("sandbox1")
