"""qmprt.io/ annotations: quantities, precedence, refusals that name the key and the accepted forms."""

from __future__ import annotations

import pytest

from qmprt.errors import InvalidArgument
from qmprt.pod.annotations import KNOWN_KEYS, PREFIX, ROOT_VOLUME_SIZE, QmprtAnnotations, parse_annotations, parse_quantity

Ki, Mi, Gi = 1 << 10, 1 << 20, 1 << 30

QUANTITIES = {
    "10Gi": 10 * Gi,
    "512Mi": 512 * Mi,
    "20G": 20 * 10**9,
    "1073741824": Gi,
    "1.5Gi": 3 * Gi // 2,
    "2Ti": 2 << 40,
    "64Ki": 64 * Ki,
    "5e9": 5 * 10**9,
    "1E3": 1000,
    "100k": 100_000,
    "0.5": 1,  # fractions round up, as Quantity.Value() does
    "+1Gi": Gi,
}


@pytest.mark.parametrize("text, expected", list(QUANTITIES.items()), ids=list(QUANTITIES))
def test_kubernetes_quantities(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


MALFORMED = ["10GB", "10gi", "10K", "1 Gi", " 1Gi", "Gi", "", "500m", "0x10", "1e1000", "ten", "1Gi;rm"]


@pytest.mark.parametrize("text", MALFORMED, ids=[repr(t) for t in MALFORMED])
def test_malformed_sizes_name_the_annotation_and_the_forms(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_annotations({ROOT_VOLUME_SIZE: text}, {})
    message = str(caught.value)
    assert ROOT_VOLUME_SIZE in message and "Gi" in message and "plain bytes" in message and "20G" in message


@pytest.mark.parametrize("text", ["0", "-1Gi", "0Mi"], ids=["zero", "negative", "zero-with-suffix"])
def test_sizes_must_be_positive(text: str) -> None:
    with pytest.raises(InvalidArgument, match=ROOT_VOLUME_SIZE):
        parse_annotations({ROOT_VOLUME_SIZE: text}, {})


def test_out_of_range_is_refused_without_building_a_huge_integer() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        parse_annotations({ROOT_VOLUME_SIZE: "9e999"}, {})
    with pytest.raises(InvalidArgument, match="out of range"):
        parse_annotations({ROOT_VOLUME_SIZE: "99999999Ei"}, {})


def test_container_wins_over_sandbox() -> None:
    assert parse_annotations({}, {}) == QmprtAnnotations()
    assert parse_annotations({}, {ROOT_VOLUME_SIZE: "2Gi"}).root_volume_size_bytes == 2 * Gi
    both = parse_annotations({ROOT_VOLUME_SIZE: "3Gi"}, {ROOT_VOLUME_SIZE: "2Gi"})
    assert (both.root_volume_size_bytes, both.root_volume_size) == (3 * Gi, "3Gi")
    # A sandbox value the container overrides is not parsed (its keys are still checked).
    assert parse_annotations({ROOT_VOLUME_SIZE: "3Gi"}, {ROOT_VOLUME_SIZE: "junk"}).root_volume_size_bytes == 3 * Gi


def test_other_annotations_are_ignored() -> None:
    other = {"kubernetes.io/config.source": "api", "io.kubernetes.container.hash": "abc", "qmprt.io.example/x": "y"}
    assert parse_annotations(other, other) == QmprtAnnotations()


@pytest.mark.parametrize("where", ["container", "sandbox"])
def test_unknown_qmprt_keys_are_refused_by_name(where: str) -> None:
    typo = {"qmprt.io/root-volume-sise": "10Gi"}
    container, sandbox = (typo, {}) if where == "container" else ({}, typo)
    with pytest.raises(InvalidArgument) as caught:
        parse_annotations(container, sandbox)
    assert "qmprt.io/root-volume-sise" in str(caught.value) and where in str(caught.value)
    assert ROOT_VOLUME_SIZE in str(caught.value)  # and says what it knows


def test_the_table_of_known_keys() -> None:
    assert all(key.startswith(PREFIX) for key in KNOWN_KEYS)
    assert ROOT_VOLUME_SIZE in KNOWN_KEYS


def test_root_volume_against_the_image_and_the_limit() -> None:
    requested = parse_annotations({ROOT_VOLUME_SIZE: "1Gi"}, {})
    assert requested.check_root_volume(256 * Mi, 256 * Gi) == Gi
    assert requested.check_root_volume(Gi, 256 * Gi) == Gi  # equal is fine: no growth
    with pytest.raises(InvalidArgument, match=r"smaller than the image's virtual size .*can only grow") as small:
        requested.check_root_volume(2 * Gi, 256 * Gi)
    assert ROOT_VOLUME_SIZE in str(small.value) and "1Gi" in str(small.value)
    with pytest.raises(InvalidArgument, match=r"above the limit .*max_virtual_size_bytes") as absurd:
        parse_annotations({ROOT_VOLUME_SIZE: "1Ei"}, {}).check_root_volume(Gi, 256 * Gi)
    assert ROOT_VOLUME_SIZE in str(absurd.value)


@pytest.mark.parametrize(
    ("annotations", "granted", "expected"),
    [({}, 2, (2, 1)), ({"qmprt.io/vcpus": "1"}, 2, (1, 1)), ({"qmprt.io/numa-nodes": "2"}, 2, (2, 2))],
    ids=["defaults", "fewer-vcpus", "two-numa-nodes"],
)
def test_vcpus_and_numa_nodes(annotations, granted, expected) -> None:
    parsed = parse_annotations(annotations, {})
    vcpus = parsed.vcpu_count(granted)
    assert (vcpus, parsed.guest_numa_nodes(vcpus)) == expected


@pytest.mark.parametrize(
    ("annotations", "message"),
    [({"qmprt.io/vcpus": "0"}, "positive whole number"), ({"qmprt.io/vcpus": "1.5"}, "positive whole number"),
     ({"qmprt.io/numa-nodes": "-1"}, "positive whole number")],
    ids=["zero", "fraction", "negative"],
)
def test_bad_counts(annotations, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_annotations(annotations, {})


def test_more_vcpus_than_granted_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="more vCPUs"):
        parse_annotations({"qmprt.io/vcpus": "4"}, {}).vcpu_count(2)


RBD = '[{"pool": "rbd", "image": "vol", "monitors": ["192.0.2.1:6789"], "user": "admin", "secret_mount": "/etc/ceph"}]'


def test_guest_configuration_keys() -> None:
    parsed = parse_annotations(
        {
            "qmprt.io/seed-format": "configdrive",
            "qmprt.io/user-data": "#cloud-config\npackages: [htop]\n",
            "qmprt.io/user-data-mode": "replace",
            "qmprt.io/ssh-authorized-keys": "# ops\nssh-ed25519 AAAAC3Nz ops@example\n\nssh-rsa AAAAB3 dev\n",
            "qmprt.io/data-volumes": "2x64Mi, 1Gi",
            "qmprt.io/rbd-volumes": RBD,
            "qmprt.io/iscsi-volumes": '[{"portal": "192.0.2.2:3260", "target": "iqn.2026-01.org.example:t1"}]',
        },
        {},
    )
    assert parsed.seed_format == "configdrive" and parsed.user_data_mode == "replace"
    assert parsed.ssh_authorized_keys == ("ssh-ed25519 AAAAC3Nz ops@example", "ssh-rsa AAAAB3 dev")
    assert parsed.data_volume_sizes == (64 << 20, 64 << 20, 1 << 30)
    assert parsed.rbd_volumes[0].monitors == ("192.0.2.1:6789",)
    assert (parsed.iscsi_volumes[0].lun, parsed.iscsi_volumes[0].user) == (0, "")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"qmprt.io/seed-format": "iso"}, "one of nocloud, configdrive"),
        ({"qmprt.io/user-data-mode": "append"}, "one of merge, replace"),
        ({"qmprt.io/ssh-authorized-keys": "password123"}, "not an OpenSSH public key"),
        ({"qmprt.io/data-volumes": "ten gigs"}, "sizes like 10Gi"),
        ({"qmprt.io/data-volumes": "17x1Mi"}, "at most 16"),
        ({"qmprt.io/data-volumes": "512"}, "under 1Mi"),
        ({"qmprt.io/rbd-volumes": "{not json"}, "not JSON"),
        ({"qmprt.io/rbd-volumes": '[{"pool": "rbd"}]'}, "'image' is missing"),
        ({"qmprt.io/rbd-volumes": RBD.replace('"user"', '"usr"')}, "unknown field"),
        ({"qmprt.io/iscsi-volumes": '[{"portal": "p", "target": "t", "lun": "0"}]'}, "expected a whole number"),
    ],
    ids=["seed-format", "user-data-mode", "ssh-key", "size-words", "too-many-volumes", "tiny-volume",
         "rbd-not-json", "rbd-missing-field", "rbd-unknown-field", "iscsi-lun-type"],
)
def test_guest_configuration_refusals(annotations, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_annotations(annotations, {})


def test_command_exit_defaults_to_the_node_and_is_checked() -> None:
    from qmprt.pod.annotations import COMMAND_EXIT

    assert parse_annotations({}, {}).command_exit is None  # the node's vm.command_exit decides
    assert parse_annotations({}, {COMMAND_EXIT: "poweroff"}).command_exit == "poweroff"
    assert parse_annotations({COMMAND_EXIT: "keep"}, {COMMAND_EXIT: "poweroff"}).command_exit == "keep"
    with pytest.raises(InvalidArgument, match="keep, poweroff"):
        parse_annotations({COMMAND_EXIT: "halt"}, {})


@pytest.mark.parametrize(
    "annotations",
    [{"qmprt.io/seed-format": "nocloud\n"}, {"qmprt.io/vcpus": " 2"}, {"qmprt.io/data-volumes": "99999999999x1Mi"}],
    ids=["trailing-newline", "leading-space", "huge-count"],
)
def test_values_are_taken_exactly_and_counts_bounded(annotations: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        parse_annotations(annotations, {})


def test_data_volumes_are_bounded_by_the_disk_limit() -> None:
    parsed = parse_annotations({"qmprt.io/data-volumes": "2x1Ei"}, {})
    with pytest.raises(InvalidArgument, match="above the limit"):
        parsed.check_data_volumes(256 << 30)
    parse_annotations({"qmprt.io/data-volumes": "16x1Gi"}, {}).check_data_volumes(256 << 30)
