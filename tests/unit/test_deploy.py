"""deploy/: every manifest valid against the Kubernetes schemas (offline, kubernetes-validate), the
pieces agreeing with each other and with qmprt's own config parsers, and the systemd units verified."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from qmprt import config as config_module
from qmprt.proxy.config import load_proxy_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.33"  # a release the schemas ship and clusters run
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
NOT_RESOURCES = {"KubeletConfiguration"}  # a kubelet's file, not an API object: checked below


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def every_document() -> list[dict[str, Any]]:
    return [document for path in MANIFESTS for document in documents(path)]


def one(kind: str) -> dict[str, Any]:
    found = [document for document in every_document() if document["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=[path.name for path in MANIFESTS])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for document in documents(path):
        if document["kind"] in NOT_RESOURCES:
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_would_refuse_a_wrong_manifest() -> None:
    broken = dict(one("RuntimeClass"), handlr="qmprt")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def pod_spec() -> dict[str, Any]:
    return dict(one("DaemonSet")["spec"]["template"]["spec"])


def test_the_daemonset_has_what_vms_need_to_outlive_it() -> None:
    spec = pod_spec()
    assert spec["hostPID"] is True  # a pod PID namespace would take every QEMU with it
    assert spec["hostNetwork"] is True
    qmprt = next(c for c in spec["containers"] if c["name"] == "qmprt")
    mounts = {mount["mountPath"]: mount for mount in qmprt["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    host_path = {path: volumes[mount["name"]].get("hostPath", {}).get("path") for path, mount in mounts.items()}
    for path in ("/var/lib/qmprt", "/run/qmprt", "/run/netns", "/sys/fs/cgroup", "/dev/kvm", "/dev/net/tun", "/dev/vhost-net"):
        assert host_path[path] == path, path
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"
    assert volumes["kvm"]["hostPath"]["type"] == ""  # a node without KVM still runs (TCG)
    assert qmprt["command"][-2:] == ["--config", "/etc/qmprt/qmprt.toml"]


def test_the_runtimeclass_matches_the_daemonset_and_qmprts_handler() -> None:
    runtime_class = one("RuntimeClass")
    assert runtime_class["handler"] == "qmprt"
    assert runtime_class["scheduling"]["nodeSelector"] == pod_spec()["nodeSelector"] == {"qmprt.io/runtime": "true"}
    assert "qmprt" in config_module.load(DEPLOY / "config" / "qmprt.toml").runtime.handlers
    assert runtime_class["overhead"]["podFixed"]["memory"] == "160Mi"
    proxy = load_proxy_config(DEPLOY / "config" / "proxy.toml")
    assert proxy.handler_owners()["qmprt"] == "qmprt"
    assert one("Pod")["spec"]["runtimeClassName"] == runtime_class["metadata"]["name"]


def test_kubelet_talks_to_the_proxy_and_the_proxy_to_qmprt() -> None:
    kubelet = one("KubeletConfiguration")
    assert kubelet["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    proxy = load_proxy_config(DEPLOY / "config" / "proxy.toml")
    qmprt = config_module.load(DEPLOY / "config" / "qmprt.toml")
    assert kubelet["containerRuntimeEndpoint"] == kubelet["imageServiceEndpoint"] == f"unix://{proxy.socket}"
    assert proxy.downstream("qmprt").socket == qmprt.runtime.socket
    assert kubelet["cgroupDriver"] == qmprt.cgroups.driver
    assert kubelet["runtimeRequestTimeout"] == "15m"


def test_the_kustomization_ships_the_edge_configs() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    files = kustomization["configMapGenerator"][0]["files"]
    assert sorted(files) == ["config/proxy.toml", "config/qmprt.toml"]
    assert kustomization["configMapGenerator"][0]["name"] == next(
        v["configMap"]["name"] for v in pod_spec()["volumes"] if "configMap" in v
    )


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_a_unit_restart_leaves_the_vms_alone() -> None:
    service = unit("qmprt.service")["Service"]
    assert service["KillMode"] == "process"  # only qmprt's main process is signalled
    assert service["ExecStart"].split()[1:] == ["serve", "--config", "/etc/qmprt/qmprt.toml"]
    proxy = unit("qmprt-proxy.service")
    assert "kubelet.service" in proxy["Unit"]["Before"]
    assert "Requires" not in proxy["Unit"]  # it runs, and says who is not ready, whatever is down
    assert proxy["Service"]["ExecStart"].split()[1:] == ["proxy", "--config", "/etc/qmprt/proxy.toml"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_installed_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """What tools/install.sh --systemd installs (ExecStart at this checkout's qmprt), verified."""
    qmprt = Path(ROOT / ".venv" / "bin" / "qmprt")
    if not qmprt.exists():
        pytest.skip("no .venv/bin/qmprt")
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "install-units.sh"), str(qmprt), str(tmp_path / "units")],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "QMPRT_CONFIG_DIR": str(tmp_path / "etc")},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "not enabled" in done.stdout or "enabled and started" in done.stdout
    units = sorted((tmp_path / "units").glob("*.service"))
    assert [u.name for u in units] == ["qmprt-proxy.service", "qmprt.service"]
    for installed in units:
        assert f"ExecStart={qmprt} " in installed.read_text()
        assert f"--config {tmp_path / 'etc'}/" in installed.read_text()
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if str(tmp_path) in line]
    assert verified.returncode == 0 and not complaints, verified.stdout + verified.stderr
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["proxy.toml", "qmprt.toml"]
