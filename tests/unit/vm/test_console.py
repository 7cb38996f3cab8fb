import os
import re

import pytest

from qmprt.vm.console import MAX_LINE, ConsolePump, CRILogWriter, cri_timestamp

LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([PF]) (.*)$")


def parse(path):
    return [LINE.match(line).groups() for line in path.read_bytes().split(b"\n") if line]


def test_timestamp_has_nine_digits_and_utc() -> None:
    assert cri_timestamp(1_700_000_000_000_000_042) == "2023-11-14T22:13:20.000000042Z"


def test_lines_partials_and_crlf(tmp_path) -> None:
    log = tmp_path / "c.log"
    writer = CRILogWriter(log)
    writer.write(b"hello\r\nwor")
    writer.write(b"ld\n")
    writer.write(b"x" * (MAX_LINE + 10) + b"\n")
    writer.write(b"prompt# ")
    writer.flush_partial()
    writer.close()
    rows = [(stream, tag, text) for _, stream, tag, text in parse(log)]
    assert rows == [
        (b"stdout", b"F", b"hello"),
        (b"stdout", b"F", b"world"),
        (b"stdout", b"P", b"x" * MAX_LINE),
        (b"stdout", b"F", b"x" * 10),
        (b"stdout", b"P", b"prompt# "),
    ]


def test_reopen_creates_a_new_file(tmp_path) -> None:
    log = tmp_path / "c.log"
    writer = CRILogWriter(log)
    writer.write(b"one\n")
    log.rename(tmp_path / "c.log.1")
    writer.reopen()
    assert log.exists()
    writer.write(b"two\n")
    writer.close()
    assert [row[3] for row in parse(log)] == [b"two"]
    assert [row[3] for row in parse(tmp_path / "c.log.1")] == [b"one"]


def test_pump_resumes_from_saved_offset(tmp_path) -> None:
    raw = tmp_path / "console.raw"
    raw.write_bytes(b"a\nb\n")
    log = tmp_path / "c.log"
    first = ConsolePump(raw, tmp_path / "console.offset", CRILogWriter(log))
    assert first.drain() == 4
    with raw.open("ab") as handle:
        handle.write(b"c\n")
    # A new pump (a restarted qmprt) copies only what the first one had not.
    first.close()
    second = ConsolePump(raw, tmp_path / "console.offset", CRILogWriter(log))
    assert second.drain() == 2
    # It keeps the raw log open between polls and still sees what is appended.
    with raw.open("ab") as handle:
        handle.write(b"d\n")
    assert second.drain() == 2 and second.drain() == 0
    second.close()
    assert [row[3] for row in parse(log)] == [b"a", b"b", b"c", b"d"]


def test_a_symlink_or_fifo_at_the_log_path_is_refused(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "link.log").symlink_to(target)
    with pytest.raises(OSError):
        CRILogWriter(tmp_path / "link.log")
    assert target.read_text() == "", "nothing was written through the link"
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(OSError):
        CRILogWriter(tmp_path / "fifo.log")  # returns at once: no reader, no blocking


def test_a_failed_reopen_keeps_the_old_file(tmp_path) -> None:
    writer = CRILogWriter(tmp_path / "c.log")
    (tmp_path / "c.log").rename(tmp_path / "c.log.1")
    (tmp_path / "c.log").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError):
        writer.reopen()
    writer.write(b"still logged\n")
    writer.close()
    assert "still logged" in (tmp_path / "c.log.1").read_text()


def test_the_raw_console_is_freed_behind_the_pump(tmp_path) -> None:
    raw = tmp_path / "console.raw"
    writer = CRILogWriter(tmp_path / "c.log")
    pump = ConsolePump(raw, tmp_path / "console.offset", writer)
    line = b"x" * 99 + b"\n"
    with open(raw, "ab") as qemu:  # QEMU appends (logappend=on)
        for _ in range(8):
            qemu.write(line * 10_000)  # 1 MB a round
            qemu.flush()
            while pump.drain():
                pass
    writer.close()
    pump.close()
    info = raw.stat()
    assert info.st_size == 8 * 1_000_000, "the size and offsets stay"
    assert info.st_blocks * 512 <= 2 * (1 << 20) + (1 << 16), "copied bytes were punched out"
    assert len(parse(tmp_path / "c.log")) == 80_000, "every line reached the CRI log"
    assert raw.read_bytes()[-100:] == line, "the tail (exit inference) is still readable"
