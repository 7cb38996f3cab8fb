"""The safety verdicts: format sniffing, the qcow2 header, and qemu-img's info and check documents.

The qemu-img documents are recorded from qemu-img 7.2 on the hostile images the integration suite
builds for real (tests/integration/test_image_store.py), trimmed to the fields that matter.
"""

from __future__ import annotations

import json
import struct

import pytest

from qmprt.errors import InvalidArgument
from qmprt.image.inspect import ImageInfo, check_qcow2_header, judge_check, judge_info, sniff_format

MiB = 1 << 20
LIMIT = 64 * MiB


def qcow2_header(
    *,
    version: int = 3,
    virtual_size: int = 4 * MiB,
    backing: tuple[int, int] = (0, 0),
    crypt_method: int = 0,
    incompatible: int = 0,
    extensions: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    header = bytearray(4096)
    struct.pack_into(">4sIQIIQI", header, 0, b"QFI\xfb", version, backing[0], backing[1], 16, virtual_size, crypt_method)
    if version == 3:
        struct.pack_into(">QQQII", header, 72, incompatible, 0, 0, 4, 112)
        offset = 112
        for ext_type, data in extensions:
            struct.pack_into(">II", header, offset, ext_type, len(data))
            header[offset + 8 : offset + 8 + len(data)] = data
            offset += 8 + ((len(data) + 7) & ~7)
    return bytes(header)


@pytest.mark.parametrize(
    ("header", "trailer", "expected"),
    [
        (qcow2_header(), b"", "qcow2"),
        (b"\x00" * 4096, b"", "raw"),
        (b"\xeb\x63\x90" + b"\x00" * 509 + b"\x55\xaa", b"", "raw"),
        (b"", b"", "raw"),
        (b"\x00" * 4096, b"\x00" * 512, "raw"),
    ],
    ids=["qcow2", "zeros", "mbr", "empty", "zero-trailer"],
)
def test_sniff_accepts_qcow2_and_raw(header: bytes, trailer: bytes, expected: str) -> None:
    assert sniff_format(header, trailer) == expected


VDI_HEADER = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\x00") + b"\x7f\x10\xda\xbe"


@pytest.mark.parametrize(
    ("header", "trailer", "what"),
    [
        (b"KDMV\x01\x00\x00\x00" + bytes(100), b"", "VMDK"),
        (b"# Disk DescriptorFile\nversion=1\n", b"", "VMDK descriptor"),
        (b"conectix" + bytes(100), b"", "VHD"),
        (bytes(4096), b"conectix" + bytes(504), "VHD"),
        (b"vhdxfile" + bytes(100), b"", "VHDX"),
        (VDI_HEADER, b"", "VDI"),
        (bytes(64) + b"\x7f\x10\xda\xbe", b"", "VDI"),
        (b"QED\x00" + bytes(100), b"", "QED"),
        (b"LUKS\xba\xbe\x00\x01" + bytes(100), b"", "LUKS"),
        (b"WithoutFreeSpace" + bytes(100), b"", "Parallels"),
        (b"\x1f\x8b\x08\x00", b"", "gzip"),
        (b"\xfd7zXZ\x00\x00", b"", "xz"),
        (b"\x28\xb5\x2f\xfd", b"", "zstd"),
        (b"BZh91AY&SY" + bytes(10), b"", "bzip2"),
        (bytes(4096), b"koly" + bytes(508), "DMG"),
    ],
    ids=["vmdk", "vmdk-descriptor", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi-text", "vdi-magic", "qed",
         "luks", "parallels", "gzip", "xz", "zstd", "bzip2", "dmg"],
)
def test_sniff_refuses_other_formats(header: bytes, trailer: bytes, what: str) -> None:
    with pytest.raises(InvalidArgument, match=what):
        sniff_format(header, trailer)


def test_qcow2_header_clean() -> None:
    assert check_qcow2_header(qcow2_header(), LIMIT) == 4 * MiB
    assert check_qcow2_header(qcow2_header(version=2)[:72], LIMIT) == 4 * MiB


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (qcow2_header(backing=(0x200, 11)), "backing file"),
        (qcow2_header(incompatible=1 << 2), "external data file"),
        (qcow2_header(extensions=((0x44415441, b"/etc/passwd"),)), "external data file"),
        (qcow2_header(crypt_method=2), "encrypted"),
        (qcow2_header(extensions=((0x0537BE77, bytes(16)),)), "encrypted"),
        (qcow2_header(incompatible=1 << 1), "corrupt"),
        (qcow2_header(incompatible=1 << 9), "unknown incompatible"),
        (qcow2_header(version=1), "version 1"),
        (qcow2_header(virtual_size=LIMIT + 1), "above the limit"),
        (qcow2_header()[:40], "truncated"),
    ],
    ids=["backing", "data-file-bit", "data-file-extension", "crypt-method", "luks-extension", "corrupt-bit",
         "unknown-feature", "qcow-v1", "oversize", "truncated"],
)
def test_qcow2_header_refusals(header: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_qcow2_header(header, LIMIT)


def _info(**extra: object) -> dict[str, object]:
    document: dict[str, object] = {
        "virtual-size": 4194304,
        "filename": "ok.qcow2",
        "cluster-size": 65536,
        "format": "qcow2",
        "actual-size": 200704,
        "format-specific": {
            "type": "qcow2",
            "data": {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False, "refcount-bits": 16,
                     "corrupt": False, "extended-l2": False},
        },
        "dirty-flag": False,
    }
    document.update(extra)
    return document


RAW_INFO = json.loads('{"virtual-size": 1048576, "filename": "data.raw", "format": "raw", '
                      '"actual-size": 4096, "dirty-flag": false}')
BACKING_INFO = _info(**{"backing-filename-format": "raw", "virtual-size": 1536,
                        "full-backing-filename": "/etc/passwd", "backing-filename": "/etc/passwd"})
DATA_FILE_INFO = _info(**{"format-specific": {"type": "qcow2", "data": {
    "compat": "1.1", "data-file": "/tmp/qi/data.raw", "data-file-raw": False, "corrupt": False}}})
ENCRYPTED_INFO = _info(encrypted=True, **{"format-specific": {"type": "qcow2", "data": {
    "compat": "1.1", "encrypt": {"format": "luks", "cipher-alg": "aes-256"}, "corrupt": False}}})
VMDK_INFO = {"virtual-size": 1048576, "filename": "x.vmdk", "format": "vmdk",
             "format-specific": {"type": "vmdk", "data": {"create-type": "monolithicSparse"}}}


def test_info_verdict_accepts_clean_images() -> None:
    assert judge_info(_info(), "qcow2", LIMIT) == ImageInfo("qcow2", 4194304)
    assert judge_info(RAW_INFO, "raw", LIMIT) == ImageInfo("raw", 1048576)


@pytest.mark.parametrize(
    ("info", "fmt", "message"),
    [
        (BACKING_INFO, "qcow2", "backing file"),
        (DATA_FILE_INFO, "qcow2", "external data file"),
        (ENCRYPTED_INFO, "qcow2", "encrypted"),
        (_info(**{"virtual-size": LIMIT + 512}), "qcow2", "above the limit"),
        (VMDK_INFO, "qcow2", "'vmdk'"),
        (_info(format="qcow"), "qcow2", "not the qcow2"),
        (_info(), "raw", "not the raw"),
        (_info(**{"dirty-flag": True}), "qcow2", "dirty"),
        (_info(**{"format-specific": {"type": "qcow2", "data": {"corrupt": True}}}), "qcow2", "corrupt"),
        (_info(**{"virtual-size": None}), "qcow2", "virtual size"),
        (_info(**{"virtual-size": 0}), "qcow2", "virtual size"),
    ],
    ids=["backing-file", "data-file", "encrypted", "oversize", "unknown-format", "other-format", "format-mismatch",
         "dirty", "corrupt-flag", "no-size", "zero-size"],
)
def test_info_verdict_refusals(info: dict[str, object], fmt: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        judge_info(info, fmt, LIMIT)  # type: ignore[arg-type]


CLEAN_CHECK = '{"image-end-offset": 262144, "total-clusters": 64, "check-errors": 0, "filename": "ok.qcow2", "format": "qcow2"}'
LEAKS_CHECK = '{"image-end-offset": 262144, "total-clusters": 64, "check-errors": 0, "leaks": 3, "filename": "x", "format": "qcow2"}'
CORRUPT_CHECK = ('{"image-end-offset": 1376256, "total-clusters": 64, "corruptions": 3, "check-errors": 0, '
                 '"leaks": 17, "filename": "c.qcow2", "format": "qcow2"}')


def test_check_verdicts() -> None:
    judge_check(0, CLEAN_CHECK, "")
    judge_check(3, LEAKS_CHECK, "Leaked cluster 4 refcount=1 reference=0\n")
    with pytest.raises(InvalidArgument, match="3 corruptions"):
        judge_check(2, CORRUPT_CHECK, "ERROR l2_offset=7fff00010200: Table is not cluster aligned; L1 entry corrupted\n")
    with pytest.raises(InvalidArgument, match="Reference count table offset invalid"):
        judge_check(1, "", "qemu-img: Could not open 'd.qcow2': Reference count table offset invalid\n")
    with pytest.raises(InvalidArgument, match="could not check"):
        judge_check(0, '{"check-errors": 2}', "")
    with pytest.raises(InvalidArgument, match="exit 63"):
        judge_check(63, "", "")
