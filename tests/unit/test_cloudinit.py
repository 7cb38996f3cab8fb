"""The NoCloud seed writer: golden renderings, shell round-trips, validation, and the ISO itself.

Both readers of the seed are exercised where they exist on the machine: PyYAML (what real cloud-init
parses with) through the system Python, and the tiny guest's busybox awk parser.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from qmprt.cloudinit import (
    COMMAND_PATH,
    ENVIRONMENT_PATH,
    READY_MARKER,
    USER_DATA_MAX_BYTES,
    DNSConfig,
    NetworkInterface,
    Route,
    SeedFile,
    SeedFormat,
    SeedMount,
    SeedSpec,
    COMMAND_EXIT_MARKER,
    check_hostname,
    hostname_from_name,
    mount_command,
    render_command_script,
    render_environment,
    render_meta_data,
    render_network_config,
    render_user_data,
    seed_files,
    write_nocloud_iso,
    write_seed_iso,
)
from qmprt.cloudinit import iso as iso_module

ROOT = Path(__file__).resolve().parents[2]
YAML2SH = ROOT / "images" / "tiny" / "yaml2sh.awk"

HOSTILE_VALUES = [
    "",
    "plain",
    "it's",
    "'",
    "''",
    "'\\''",
    '"double" and \\backslash\\',
    "$HOME ${HOME} $(echo no) `echo no`",
    "line one\nline two\n",
    "\n\n",
    "tab\there",
    "ünïcödé ✓ 日本語 🚀",
    "trailing space ",
    " leading space",
    "semi; colon & amp | pipe > gt < lt",
    "*?[glob]",
    "\\n is not a newline",
    "-n",
    "\x01\x7f control",
]


def small_spec() -> SeedSpec:
    return SeedSpec(
        instance_id="iid-0123",
        hostname="web-1",
        env={"GREETING": "hello 'world'", "EMPTY": ""},
        command=("/bin/echo", "$GREETING", "it's"),
        interfaces=(
            NetworkInterface(
                mac="52:54:00:AB:CD:EF",
                name=None,
                addresses=("10.88.0.5/16", "fd00::5/64"),
                gateway4="10.88.0.1",
                gateway6="fd00::1",
                routes=(Route("10.96.0.0/12", "10.88.0.1"),),
                mtu=1450,
            ),
        ),
        dns=DNSConfig(servers=("10.96.0.10",), searches=("svc.cluster.local",), options=("ndots:5", "edns0")),
    )


def test_ready_marker_is_what_the_guest_prints() -> None:
    assert (ROOT / "images" / "tiny" / "rcS").read_text().count(f'echo "{READY_MARKER}"') == 1


def test_meta_data_golden() -> None:
    assert render_meta_data(small_spec()) == b'instance-id: "iid-0123"\nlocal-hostname: "web-1"\n'


def test_user_data_golden() -> None:
    env_b64 = base64.b64encode(b"GREETING='hello '\\''world'\\'''\nEMPTY=''\n").decode()
    script = (
        "#!/bin/sh\n"
        "# Written by qmprt: the container's command, with its environment exported.\n"
        "set -a\n"
        ". /etc/cloud/environment\n"
        "set +a\n"
        "exec '/bin/echo' '$GREETING' 'it'\\''s'\n"
    )
    script_b64 = base64.b64encode(script.encode()).decode()
    assert render_user_data(small_spec()).decode() == (
        "#cloud-config\n"
        'hostname: "web-1"\n'
        "write_files:\n"
        '  - path: "/etc/cloud/environment"\n'
        '    permissions: "0600"\n'
        '    encoding: "b64"\n'
        f'    content: "{env_b64}"\n'
        '  - path: "/var/lib/qmprt/command.sh"\n'
        '    permissions: "0700"\n'
        '    encoding: "b64"\n'
        f'    content: "{script_b64}"\n'
        "runcmd:\n"
        '  - "/var/lib/qmprt/command.sh"\n'
        "manage_resolv_conf: true\n"
        "resolv_conf:\n"
        "  nameservers:\n"
        '    - "10.96.0.10"\n'
        "  searchdomains:\n"
        '    - "svc.cluster.local"\n'
        "  options:\n"
        '    ndots: "5"\n'
        "    edns0: true\n"
    )


def test_network_config_golden() -> None:
    assert render_network_config(small_spec()) == (
        b"version: 1\n"
        b"config:\n"
        b'  - type: "physical"\n'
        b'    name: "eth0"\n'
        b'    mac_address: "52:54:00:ab:cd:ef"\n'
        b"    mtu: 1450\n"
        b"    subnets:\n"
        b'      - type: "static"\n'
        b'        address: "10.88.0.5/16"\n'
        b'        gateway: "10.88.0.1"\n'
        b"        routes:\n"
        b'          - network: "10.96.0.0/12"\n'
        b'            gateway: "10.88.0.1"\n'
        b'      - type: "static"\n'
        b'        address: "fd00::5/64"\n'
        b'        gateway: "fd00::1"\n'
        b'  - type: "nameserver"\n'
        b"    address:\n"
        b'      - "10.96.0.10"\n'
        b"    search:\n"
        b'      - "svc.cluster.local"\n'
    )


def test_minimal_spec() -> None:
    spec = SeedSpec(instance_id="i", hostname="tiny")
    assert render_network_config(spec) is None
    assert render_user_data(spec) == (
        b'#cloud-config\nhostname: "tiny"\nwrite_files:\n'
        b'  - path: "/etc/cloud/environment"\n    permissions: "0600"\n'
        b'    encoding: "b64"\n    content: ""\n'
    )
    assert set(seed_files(spec)) == {"meta-data", "user-data"}


def test_dotted_hostname_is_kept_whole_by_cloud_init_too() -> None:
    user_data = render_user_data(SeedSpec(instance_id="i", hostname="web.example"))
    assert b'fqdn: "web.example"\nprefer_fqdn_over_hostname: true\n' in user_data


def test_dns_without_servers_goes_to_resolv_conf_only() -> None:
    spec = SeedSpec(instance_id="i", hostname="h", dns=DNSConfig(searches=("example.com",)))
    assert render_network_config(spec) is None
    assert b'resolv_conf:\n  searchdomains:\n    - "example.com"\n' in render_user_data(spec)


def _sh_available() -> list[str]:
    shells = [shell for shell in ("/bin/sh", "/usr/bin/dash", "/bin/busybox") if os.path.exists(shell)]
    return [f"{shell} sh" if shell.endswith("busybox") else shell for shell in shells]


@pytest.mark.parametrize("shell", _sh_available(), ids=lambda shell: shell.split()[0].rsplit("/", 1)[-1])
@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_environment_round_trips_through_sh(tmp_path: Path, shell: str, value: str) -> None:
    env_file = tmp_path / "environment"
    env_file.write_bytes(render_environment({"VAR": value, "OTHER": "x"}))
    result = subprocess.run(
        [*shell.split(), "-c", '. "$1"; printf %s "$VAR"', "sh", str(env_file)],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout == value.encode("utf-8")


def test_environment_exported_with_set_a(tmp_path: Path) -> None:
    env_file = tmp_path / "environment"
    values = {f"V{index}": value for index, value in enumerate(HOSTILE_VALUES)}
    env_file.write_bytes(render_environment(values))
    result = subprocess.run(
        ["/bin/sh", "-c", 'set -a; . "$1"; set +a; exec env -0', "sh", str(env_file)],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    seen = dict(item.split(b"=", 1) for item in result.stdout.split(b"\0") if item)
    assert {key: seen[key.encode()].decode() for key in values} == values


@pytest.mark.parametrize(
    "key",
    ["", "1ABC", "A-B", "A B", "A=B", "$(id)", "A;B", "ÄPFEL", "A\nB", "A.B", "-x"],
    ids=["empty", "digit", "dash", "space", "equals", "subst", "semicolon", "unicode", "newline", "dot", "option"],
)
def test_hostile_env_keys_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="environment variable name") as excinfo:
        render_environment({"GOOD": "1", key: "value"})
    assert repr(key) in str(excinfo.value)
    with pytest.raises(ValueError):
        write_nocloud_iso(SeedSpec(instance_id="i", hostname="h", env={key: "v"}), "/nonexistent/seed.iso")


def test_env_value_with_nul_rejected() -> None:
    with pytest.raises(ValueError, match="NUL"):
        render_environment({"A": "x\0y"})


def test_command_script_quotes_argv(tmp_path: Path) -> None:
    argv = ("/bin/printf", *HOSTILE_VALUES)
    script = render_command_script(argv).decode()
    env_file = tmp_path / "environment"
    env_file.write_bytes(render_environment({"A": "from env"}))
    # Run the script itself, with its environment file and exec redirected into this test's reach.
    runnable = script.replace(f". {ENVIRONMENT_PATH}", f". {env_file}").replace(
        "exec '/bin/printf'", "exec '/bin/printf' '%s\\0'", 1
    )
    (tmp_path / "command.sh").write_text(runnable)
    result = subprocess.run(["/bin/sh", str(tmp_path / "command.sh")], capture_output=True, check=True)
    assert result.stdout.split(b"\0")[:-1] == [value.encode() for value in HOSTILE_VALUES]
    assert script.startswith("#!/bin/sh\n") and script.endswith("\n")


@pytest.mark.parametrize("code", [0, 3], ids=["success", "failure"])
def test_a_job_script_reports_its_status_then_powers_off(tmp_path: Path, code: int) -> None:
    script = render_command_script(("sh", "-c", f"printf partial; exit {code}"), "/tmp", power_off_after=True).decode()
    runnable = script.replace(f". {ENVIRONMENT_PATH}", ":").replace("\npoweroff\n", "\necho powered-off\n")
    (tmp_path / "command.sh").write_text(runnable)
    result = subprocess.run(["/bin/sh", str(tmp_path / "command.sh")], capture_output=True, check=True)
    assert result.stdout.decode() == f"partial\n{COMMAND_EXIT_MARKER}{code}\npowered-off\n"
    assert "cd '/tmp' || exit 1" in script and "exec" not in script


@pytest.mark.parametrize("stdin", ["stream", "tty"])
def test_a_command_with_stdin_reads_the_console(tmp_path: Path, stdin: str) -> None:
    script = render_command_script(("cat",), stdin=stdin).decode()
    console = tmp_path / "ttyS0"
    console.write_bytes(b"typed into the console\n")
    # A regular file stands in for the serial port (stty then fails quietly, as it may).
    runnable = (
        script.replace(f". {ENVIRONMENT_PATH}", ":").replace("/dev/ttyS0", str(console)).replace("[ -c", "[ -e")
        .replace("/run/qmprt-stdin.fifo", str(tmp_path / "stdin.fifo"))
    )
    (tmp_path / "command.sh").write_text(runnable)
    result = subprocess.run(["/bin/sh", str(tmp_path / "command.sh")], capture_output=True, check=True)
    assert result.stdout == b"typed into the console\n"
    assert ("stty raw -echo" in script) == (stdin == "stream")
    assert ('cat < "$__qmprt_console" > "$__qmprt_stdin" &' in script) == (stdin == "stream")  # a pipe: a shell on it is not interactive
    assert "exec <" not in render_command_script(("cat",)).decode()
    with pytest.raises(ValueError, match="stdin"):
        render_command_script(("cat",), stdin="pipe")


def test_working_dir_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="working directory"):
        render_command_script(("true",), "relative")
    assert "cd '/srv/my app'" in render_command_script(("true",), "/srv/my app").decode()


def test_sysctls_are_bootcmd_before_the_mounts() -> None:
    spec = SeedSpec(
        instance_id="i", hostname="h", sysctls={"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
        mounts=(SeedMount(tag="data", path="/data"),),
    )
    bootcmd = yaml.safe_load(render_user_data(spec))["bootcmd"]
    assert bootcmd[:2] == ["sysctl -w 'kernel.shm_rmid_forced=1'", "sysctl -w 'net.ipv4.ip_forward=1'"]
    assert bootcmd[2].startswith("mkdir -p '/data'")


@pytest.mark.parametrize(
    ("key", "value"),
    [("kernel.x;reboot", "1"), ("", "1"), ("a" * 300, "1"), ("kernel.x", ""), ("kernel.x", "1\nreboot"),
     ("kernel.x", "v" * 5000), ("net.'x", "1")],
    ids=["shell-metachar", "empty-key", "long-key", "empty-value", "newline", "long-value", "quote"],
)
def test_bad_sysctls_rejected(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="sysctl"):
        render_user_data(SeedSpec(instance_id="i", hostname="h", sysctls={key: value}))


@pytest.mark.parametrize(
    ("name", "hostname"),
    [
        ("create-PodSandbox-for-container-7b3f4c1e-1d8a-4b47-9f1a-2e3c4d5e6f70",
         "create-podsandbox-for-container-7b3f4c1e-1d8a-4b47-9f1a-2e3c4d5"),
        ("web-1", "web-1"),
        ("My_Pod", "my-pod"),
        ("---", "pod"),
        ("", "pod"),
        ("a.b." + "c" * 70, "a.b"),
        ("web..site.example", "web.site.example"),
        ("-x-", "x"),
    ],
    ids=["critest", "valid", "underscore", "only-dashes", "empty", "long-last-label", "empty-label", "edge-dashes"],
)
def test_hostname_from_name_is_always_valid(name: str, hostname: str) -> None:
    derived = hostname_from_name(name)
    assert derived == hostname
    assert check_hostname(derived) == derived and len(derived) <= 63

    user_data = render_user_data(SeedSpec(instance_id="i", hostname="h"))
    assert b"runcmd" not in user_data and COMMAND_PATH.encode() not in user_data


@pytest.mark.parametrize(
    "spec, message",
    [
        (SeedSpec(instance_id="i", hostname="bad_host"), "hostname"),
        (SeedSpec(instance_id="i", hostname="-x"), "hostname"),
        (SeedSpec(instance_id="i", hostname="a" * 65), "hostname"),
        (SeedSpec(instance_id="i d", hostname="h"), "instance id"),
        (SeedSpec(instance_id="i", hostname="h", files=(SeedFile("relative", b""),)), "not absolute"),
        (SeedSpec(instance_id="i", hostname="h", files=(SeedFile('/a"b', b""),)), "printable ASCII"),
        (SeedSpec(instance_id="i", hostname="h", files=(SeedFile("/a\nb", b""),)), "printable ASCII"),
        (SeedSpec(instance_id="i", hostname="h", files=(SeedFile(ENVIRONMENT_PATH, b""),)), "reserved"),
        (SeedSpec(instance_id="i", hostname="h", files=(SeedFile("/x", b"", 0o10000),)), "permissions"),
        (SeedSpec(instance_id="i", hostname="h", command=("a\0b",)), "NUL"),
    ],
    ids=["underscore", "leading-dash", "too-long", "instance-space", "relative", "quote", "newline",
         "reserved", "mode", "nul-arg"],
)
def test_invalid_specs_rejected(spec: SeedSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seed_files(spec)


def _interface(**changes: object) -> SeedSpec:
    fields: dict[str, object] = {"mac": "52:54:00:00:00:01", "addresses": ("10.0.0.2/24",)}
    fields.update(changes)
    return SeedSpec(instance_id="i", hostname="h", interfaces=(NetworkInterface(**fields),))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec, message",
    [
        (_interface(mac="52:54:00:00:00"), "MAC"),
        (_interface(name="a-very-long-interface-name"), "interface name"),
        (_interface(addresses=("10.0.0.300/24",)), "CIDR"),
        (_interface(addresses=("10.0.0.2",)), "prefix length"),
        (_interface(gateway6="fd00::1"), "IPv6 address"),
        (_interface(gateway4="fd00::1"), "gateway4"),
        (_interface(routes=(Route("fd01::/64", "fd00::1"),)), "IPv6"),
        (_interface(routes=(Route("10.1.0.0/16", "fd00::1"),)), "route"),
        (_interface(mtu=10), "MTU"),
        (SeedSpec(instance_id="i", hostname="h", dns=DNSConfig(servers=("dns.example",))), "DNS server"),
        (SeedSpec(instance_id="i", hostname="h", dns=DNSConfig(servers=("1.1.1.1",), searches=("a b",))), "search"),
        (SeedSpec(instance_id="i", hostname="h", dns=DNSConfig(servers=("1.1.1.1",), options=("nd ots",))), "option"),
    ],
    ids=["mac", "ifname", "address", "no-prefix", "gw6-without-v6", "gw4-family", "route-no-v6", "route-mixed",
         "mtu", "dns-server", "dns-search", "dns-option"],
)
def test_invalid_network_rejected(spec: SeedSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seed_files(spec)


def test_duplicate_interfaces_rejected() -> None:
    first = NetworkInterface(mac="52:54:00:00:00:01", name="eth0")
    with pytest.raises(ValueError, match="names"):
        render_network_config(SeedSpec(instance_id="i", hostname="h", interfaces=(first, first)))


def test_route_destination_normalised() -> None:
    config = render_network_config(_interface(routes=(Route("10.1.2.3/16", "10.0.0.1"),)))
    assert config is not None and b'network: "10.1.0.0/16"' in config


def _read_iso(
    path: Path, names: tuple[str, ...] = ("meta-data", "user-data", "network-config")
) -> tuple[dict[str, bytes], dict[str, bytes], str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        by_rr: dict[str, bytes] = {}
        by_joliet: dict[str, bytes] = {}
        for name in names:
            for store, kwargs in ((by_rr, {"rr_path": f"/{name}"}), (by_joliet, {"joliet_path": f"/{name}"})):
                out = io.BytesIO()
                try:
                    iso.get_file_from_iso_fp(out, **kwargs)
                except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                    continue
                store[name] = out.getvalue()
        label = iso.pvd.volume_identifier.decode().strip()
        return by_rr, by_joliet, label
    finally:
        iso.close()


def test_iso_round_trip(tmp_path: Path) -> None:
    spec = small_spec()
    path = tmp_path / "seed.iso"
    write_nocloud_iso(spec, path)
    by_rr, by_joliet, label = _read_iso(path)
    expected = {
        "meta-data": render_meta_data(spec),
        "user-data": render_user_data(spec),
        "network-config": render_network_config(spec),
    }
    assert by_rr == expected
    assert by_joliet == expected
    assert label == "cidata"
    assert [entry.name for entry in os.scandir(tmp_path)] == ["seed.iso"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_iso_without_network_config(tmp_path: Path) -> None:
    write_nocloud_iso(SeedSpec(instance_id="i", hostname="h"), tmp_path / "seed.iso")
    by_rr, _, _ = _read_iso(tmp_path / "seed.iso")
    assert set(by_rr) == {"meta-data", "user-data"}


def test_iso_blkid_label(tmp_path: Path) -> None:
    blkid = shutil.which("blkid")
    if blkid is None:
        pytest.skip("blkid is not installed")
    write_nocloud_iso(small_spec(), tmp_path / "seed.iso")
    result = subprocess.run([blkid, "-o", "export", str(tmp_path / "seed.iso")], capture_output=True, text=True)
    assert "LABEL=cidata" in result.stdout.splitlines() and "TYPE=iso9660" in result.stdout.splitlines()


def test_iso_replaces_atomically_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"old seed")

    def broken_write(self: pycdlib.PyCdlib, outfp: object, *args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(iso_module.pycdlib.PyCdlib, "write_fp", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_nocloud_iso(small_spec(), path)
    assert path.read_bytes() == b"old seed"
    assert sorted(entry.name for entry in os.scandir(tmp_path)) == ["seed.iso"]


# ---- the two readers of the seed ----

def _pyyaml_load(documents: dict[str, bytes]) -> dict[str, object]:
    """Parse with PyYAML's safe_load (what cloud-init uses): here, or in the system Python."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return {name: yaml.safe_load(data.decode()) for name, data in documents.items()}
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import yaml"], capture_output=True) if os.path.exists(python) else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no system Python with PyYAML")
    program = (
        "import json, sys, yaml\n"
        "docs = json.load(sys.stdin)\n"
        "print(json.dumps({name: yaml.safe_load(text) for name, text in docs.items()}))\n"
    )
    payload = json.dumps({name: data.decode() for name, data in documents.items()})
    result = subprocess.run([python, "-c", program], input=payload, capture_output=True, text=True, check=True)
    loaded: dict[str, object] = json.loads(result.stdout)
    return loaded


def test_pyyaml_reads_what_was_meant() -> None:
    spec = small_spec()
    loaded = _pyyaml_load({name: data for name, data in seed_files(spec).items()})
    assert loaded["meta-data"] == {"instance-id": "iid-0123", "local-hostname": "web-1"}
    user_data = loaded["user-data"]
    assert isinstance(user_data, dict)
    assert user_data["hostname"] == "web-1"
    assert user_data["runcmd"] == [COMMAND_PATH]
    assert [entry["path"] for entry in user_data["write_files"]] == [ENVIRONMENT_PATH, COMMAND_PATH]
    assert all(entry["encoding"] == "b64" for entry in user_data["write_files"])
    assert user_data["write_files"][0]["permissions"] == "0600"
    assert base64.b64decode(user_data["write_files"][0]["content"]) == render_environment(spec.env)
    assert user_data["resolv_conf"] == {
        "nameservers": ["10.96.0.10"],
        "searchdomains": ["svc.cluster.local"],
        "options": {"ndots": "5", "edns0": True},
    }
    assert loaded["network-config"] == {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth0",
                "mac_address": "52:54:00:ab:cd:ef",
                "mtu": 1450,
                "subnets": [
                    {
                        "type": "static",
                        "address": "10.88.0.5/16",
                        "gateway": "10.88.0.1",
                        "routes": [{"network": "10.96.0.0/12", "gateway": "10.88.0.1"}],
                    },
                    {"type": "static", "address": "fd00::5/64", "gateway": "fd00::1"},
                ],
            },
            {"type": "nameserver", "address": ["10.96.0.10"], "search": ["svc.cluster.local"]},
        ],
    }


def _awk_parse(document: bytes, prefix: str, tmp_path: Path) -> dict[str, str]:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    source = tmp_path / f"{prefix}.yaml"
    source.write_bytes(document)
    program = f'. "$1"; set | grep "^{prefix}_" | cut -d= -f1 | while read -r name; do eval "printf \'%s\\0%s\\0\' \\"$name\\" \\"\\${{$name}}\\""; done'
    parsed = subprocess.run(
        [busybox, "awk", "-v", f"prefix={prefix}", "-f", str(YAML2SH), str(source)],
        capture_output=True, check=True,
    ).stdout
    (tmp_path / f"{prefix}.sh").write_bytes(parsed)
    result = subprocess.run(
        [busybox, "sh", "-c", program, "sh", str(tmp_path / f"{prefix}.sh")], capture_output=True, check=True
    )
    fields = result.stdout.split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


def test_guest_awk_parser_reads_what_was_meant(tmp_path: Path) -> None:
    spec = small_spec()
    meta = _awk_parse(render_meta_data(spec), "md", tmp_path)
    assert meta["md_instance_id"] == "iid-0123" and meta["md_local_hostname"] == "web-1"
    user = _awk_parse(render_user_data(spec), "ud", tmp_path)
    assert user["ud_hostname"] == "web-1"
    assert user["ud_write_files__n"] == "2"
    assert base64.b64decode(user["ud_write_files_0_content"]) == render_environment(spec.env)
    assert user["ud_write_files_1_path"] == COMMAND_PATH and user["ud_write_files_1_permissions"] == "0700"
    assert user["ud_runcmd__n"] == "1" and user["ud_runcmd_0"] == COMMAND_PATH
    assert user["ud_resolv_conf_options__keys"] == "ndots edns0"
    assert user["ud_resolv_conf_options_ndots"] == "5" and user["ud_resolv_conf_options_edns0"] == "true"
    network_config = render_network_config(spec)
    assert network_config is not None
    net = _awk_parse(network_config, "nc", tmp_path)
    assert net["nc_version"] == "1" and net["nc_config__n"] == "2"
    assert net["nc_config_0_mac_address"] == "52:54:00:ab:cd:ef" and net["nc_config_0_mtu"] == "1450"
    assert net["nc_config_0_subnets__n"] == "2"
    assert net["nc_config_0_subnets_0_routes_0_network"] == "10.96.0.0/12"
    assert net["nc_config_0_subnets_1_address"] == "fd00::5/64"
    assert net["nc_config_1_address_0"] == "10.96.0.10" and net["nc_config_1_search_0"] == "svc.cluster.local"


# ---- SSH keys, mounts, user-data, ConfigDrive ----

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2Wm2n8uYcKqY0cX9qJ7x1lq0wq7m1mM6d5p3Q9g5B alice@example"


def test_ssh_keys_in_meta_data_and_cloud_config() -> None:
    spec = SeedSpec(instance_id="i", hostname="h", ssh_authorized_keys=(SSH_KEY, 'from="10.0.0.0/8" ' + SSH_KEY))
    assert render_meta_data(spec).decode() == (
        'instance-id: "i"\nlocal-hostname: "h"\npublic-keys:\n'
        f'  - "{SSH_KEY}"\n  - "from=\\"10.0.0.0/8\\" {SSH_KEY}"\n'
    )
    loaded = _pyyaml_load({"user-data": render_user_data(spec), "meta-data": render_meta_data(spec)})
    assert loaded["user-data"]["ssh_authorized_keys"] == list(spec.ssh_authorized_keys)  # type: ignore[index]
    assert loaded["meta-data"]["public-keys"] == list(spec.ssh_authorized_keys)  # type: ignore[index]


@pytest.mark.parametrize(
    "key",
    ["", "AAAAC3Nza", "ssh-ed25519", f"{SSH_KEY}\n{SSH_KEY}", "ssh-ed25519 not*base64", "ssh-rsa AAAA\x00"],
    ids=["empty", "no-type", "no-data", "two-lines", "bad-data", "nul"],
)
def test_bad_ssh_keys_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="SSH key 0"):
        render_meta_data(SeedSpec(instance_id="i", hostname="h", ssh_authorized_keys=(key,)))


def test_mounts_are_bootcmd() -> None:
    spec = SeedSpec(
        instance_id="i", hostname="h",
        mounts=(SeedMount("cfg", "/etc/my config"), SeedMount("data.1", "/data", read_only=False)),
    )
    text = render_user_data(spec).decode()
    assert text.startswith(
        '#cloud-config\nhostname: "h"\nbootcmd:\n'
        "  - \"mkdir -p '/etc/my config' && mount -t virtiofs -o ro 'cfg' '/etc/my config'\"\n"
        "  - \"mkdir -p '/data' && mount -t virtiofs -o rw 'data.1' '/data'\"\n"
        "write_files:\n"
    )
    assert mount_command(SeedMount("t", "/it's")) == "mkdir -p '/it'\\''s' && mount -t virtiofs -o ro 't' '/it'\\''s'"


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (SeedMount("", "/a"), "mount tag"),
        (SeedMount("x" * 37, "/a"), "mount tag"),
        (SeedMount("a b", "/a"), "mount tag"),
        (SeedMount("t", "relative"), "mount path"),
        (SeedMount("t", "/"), "mount path"),
        (SeedMount("t", "/a/../b"), "mount path"),
        (SeedMount("t", "/a//b"), "mount path"),
        (SeedMount("t", '/a"b'), "mount path"),
    ],
    ids=["empty-tag", "long-tag", "space-tag", "relative", "root", "dotdot", "double-slash", "quote"],
)
def test_bad_mounts_rejected(mount: SeedMount, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_user_data(SeedSpec(instance_id="i", hostname="h", mounts=(mount,)))


def test_duplicate_mount_paths_rejected() -> None:
    spec = SeedSpec(instance_id="i", hostname="h", mounts=(SeedMount("a", "/x"), SeedMount("b", "/x")))
    with pytest.raises(ValueError, match="mount paths are not unique"):
        render_user_data(spec)


USER_CLOUD_CONFIG = b"""#cloud-config
hostname: not-the-pod
fqdn: not.the.pod
packages: [curl, "jq"]
runcmd:
  - echo "user's first"
  - [sh, -c, 'echo $HOME']
write_files:
  - path: /etc/motd
    content: |
      Welcome, "friend"\\
      tab\there
    permissions: '0644'
resolv_conf:
  nameservers: [9.9.9.9]
  domain: example.org
manage_resolv_conf: false
created: 2024-01-02
ratio: 0.5
nothing: ~
empty: {}
"""


def test_user_data_merge_order() -> None:
    spec = dataclasses.replace(small_spec(), user_data=USER_CLOUD_CONFIG)
    merged = _pyyaml_load({"user-data": render_user_data(spec)})["user-data"]
    assert isinstance(merged, dict)
    ours = _pyyaml_load({"user-data": render_user_data(small_spec())})["user-data"]
    assert isinstance(ours, dict)
    assert list(merged) == [*ours, "packages", "created", "ratio", "nothing", "empty"]
    assert merged["hostname"] == "web-1" and "fqdn" not in merged
    assert merged["runcmd"] == [COMMAND_PATH, "echo \"user's first\"", ["sh", "-c", "echo $HOME"]]
    assert [entry["path"] for entry in merged["write_files"]] == [ENVIRONMENT_PATH, COMMAND_PATH, "/etc/motd"]
    assert merged["write_files"][2]["content"] == 'Welcome, "friend"\\\ntab\there\n'
    assert merged["resolv_conf"]["nameservers"] == ["10.96.0.10", "9.9.9.9"]
    assert merged["resolv_conf"]["domain"] == "example.org"
    assert merged["manage_resolv_conf"] is False  # the user's scalar wins
    assert merged["packages"] == ["curl", "jq"]
    assert merged["created"] == "2024-01-02"  # dates stay strings
    assert (merged["ratio"], merged["nothing"], merged["empty"]) == (0.5, None, {})


def test_merged_user_data_reaches_the_tiny_guest(tmp_path: Path) -> None:
    spec = dataclasses.replace(small_spec(), user_data=USER_CLOUD_CONFIG)
    user = _awk_parse(render_user_data(spec), "ud", tmp_path)
    assert user["ud_hostname"] == "web-1"
    assert user["ud_write_files__n"] == "3"
    assert user["ud_write_files_2_content"] == 'Welcome, "friend"\\\ntab\there\n'
    assert user["ud_write_files_2_permissions"] == "0644"
    assert user["ud_runcmd_1"] == "echo \"user's first\""
    assert user["ud_runcmd_2_2"] == "echo $HOME"


@pytest.mark.parametrize("value", HOSTILE_VALUES[1:], ids=range(1, len(HOSTILE_VALUES)))
def test_user_strings_round_trip_through_both_readers(tmp_path: Path, value: str) -> None:
    quoted = json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # raw DEL is no YAML
    document = f"#cloud-config\nnote: {quoted}\nlist:\n  - - {quoted}\n"
    spec = SeedSpec(instance_id="i", hostname="h", user_data=document.encode())
    rendered = render_user_data(spec)
    loaded = _pyyaml_load({"user-data": rendered})["user-data"]
    assert loaded["note"] == value and loaded["list"] == [[value]]  # type: ignore[index]
    parsed = _awk_parse(rendered, "ud", tmp_path)
    assert parsed["ud_note"] == value and parsed["ud_list_0_0"] == value


@pytest.mark.parametrize(
    ("user_data", "message"),
    [
        (b"#!/bin/sh\necho hi\n", "must start with the line '#cloud-config'; this is a script"),
        (b"packages: [a]\n", "must start with the line '#cloud-config'"),
        (b"#cloud-config\n- a\n- b\n", "must be a mapping"),
        (b"#cloud-config\nkey: [unclosed\n", "not valid YAML"),
        (b"#cloud-config\na: &x [1]\nb: *x\n", "aliases are not accepted"),
        (b"#cloud-config\n1: one\n", "key 1 is not a string"),
        (b"#cloud-config\nblob: !!binary aGk=\n", "binary"),
        (b"#cloud-config\nx: !!python/object:os.system {}\n", "not valid YAML"),
        (b"#cloud-config\n\xff\n", "not UTF-8"),
        (b"#cloud-config\nruncmd: echo\n", "user-data.runcmd must be a list"),
        (b"#cloud-config\nresolv_conf: off\n", "user-data.resolv_conf must be a mapping"),
        (b"#cloud-config\nwrite_files:\n  - path: /etc/cloud/environment\n", "is written by qmprt"),
        (b"#cloud-config\nnul: \"\\0\"\n", "NUL"),
        (b"#cloud-config\n" + b"a: 1\n" * 20000, "at most 65536 bytes"),
    ],
    ids=["script", "no-header", "list", "bad-yaml", "alias", "int-key", "binary", "python-tag", "not-utf8",
         "runcmd-scalar", "resolv-scalar", "reserved-path", "nul", "too-big"],
)
def test_bad_user_data_rejected(user_data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_user_data(dataclasses.replace(small_spec(), user_data=user_data))


def test_user_data_replace_is_verbatim() -> None:
    script = b"#!/bin/sh\necho 'replaced' \xe2\x9c\x93\n"
    spec = dataclasses.replace(small_spec(), user_data=script, user_data_mode="replace", ssh_authorized_keys=(SSH_KEY,))
    assert render_user_data(spec) == script
    assert SSH_KEY.encode() in render_meta_data(spec)  # keys still reach the guest
    with pytest.raises(ValueError, match="replace needs user-data"):
        render_user_data(dataclasses.replace(small_spec(), user_data_mode="replace"))
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        render_user_data(dataclasses.replace(spec, user_data=b"#" * (USER_DATA_MAX_BYTES + 1)))
    with pytest.raises(ValueError, match="mode 'both'"):
        render_user_data(dataclasses.replace(spec, user_data_mode="both"))  # type: ignore[arg-type]


def test_empty_cloud_config_merges_to_ours() -> None:
    spec = dataclasses.replace(small_spec(), user_data=b"#cloud-config\n")
    assert render_user_data(spec) == render_user_data(small_spec())


def test_config_drive_files(tmp_path: Path) -> None:
    spec = dataclasses.replace(small_spec(), ssh_authorized_keys=(SSH_KEY,))
    files = seed_files(spec, SeedFormat.CONFIG_DRIVE)
    assert set(files) == {
        "openstack/latest/meta_data.json", "openstack/latest/user_data", "openstack/latest/network_data.json",
    }
    assert files["openstack/latest/user_data"] == render_user_data(spec)
    assert json.loads(files["openstack/latest/meta_data.json"]) == {
        "uuid": "iid-0123", "hostname": "web-1", "name": "web-1", "launch_index": 0,
        "public_keys": {"key-0": SSH_KEY},
    }
    assert json.loads(files["openstack/latest/network_data.json"]) == {
        "links": [{"id": "eth0", "name": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:ab:cd:ef", "mtu": 1450}],
        "networks": [
            {
                "id": "network0", "link": "eth0", "type": "ipv4", "ip_address": "10.88.0.5", "netmask": "255.255.0.0",
                "routes": [
                    {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.88.0.1"},
                    {"network": "10.96.0.0", "netmask": "255.240.0.0", "gateway": "10.88.0.1"},
                ],
            },
            {
                "id": "network1", "link": "eth0", "type": "ipv6", "ip_address": "fd00::5",
                "netmask": "ffff:ffff:ffff:ffff:0000:0000:0000:0000",
                "routes": [{"network": "::", "netmask": "0000:0000:0000:0000:0000:0000:0000:0000", "gateway": "fd00::1"}],
            },
        ],
        "services": [{"type": "dns", "address": "10.96.0.10"}],
    }
    assert "openstack/latest/network_data.json" not in seed_files(
        SeedSpec(instance_id="i", hostname="h"), SeedFormat.CONFIG_DRIVE
    )


def test_config_drive_iso(tmp_path: Path) -> None:
    spec = small_spec()
    path = tmp_path / "config.iso"
    write_seed_iso(spec, path, SeedFormat.CONFIG_DRIVE)
    names = tuple(seed_files(spec, SeedFormat.CONFIG_DRIVE))
    by_rr, by_joliet, label = _read_iso(path, names)
    assert by_rr == by_joliet == seed_files(spec, SeedFormat.CONFIG_DRIVE)
    assert label == "config-2"
    assert path.stat().st_mode & 0o777 == 0o600
    blkid = shutil.which("blkid")
    if blkid is not None:
        result = subprocess.run([blkid, "-o", "export", str(path)], capture_output=True, text=True)
        assert "LABEL=config-2" in result.stdout.splitlines()
