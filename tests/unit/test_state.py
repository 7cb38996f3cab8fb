import dataclasses
import os
import stat

import pytest

from qmprt import state
from qmprt.errors import AlreadyExists, NotFound


@dataclasses.dataclass(frozen=True)
class Counter:
    value: int


def test_atomic_write_is_private_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "s.json"
    state.write_json_atomic(target, {"a": 1})
    assert state.read_json(target) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["s.json"]


def test_metadata_is_written_once(tmp_path) -> None:
    target = tmp_path / "m.json"
    state.write_json_atomic(target, {"v": 1}, exclusive=True)
    with pytest.raises(AlreadyExists):
        state.write_json_atomic(target, {"v": 2}, exclusive=True)
    assert state.read_json(target) == {"v": 1}


def test_status_update_persists_before_memory(tmp_path) -> None:
    path = tmp_path / "status.json"
    status = state.StatusFile.create(path, Counter(0), dataclasses.asdict, lambda d: Counter(**d))
    status.update(lambda c: Counter(c.value + 1))
    assert state.read_json(path) == {"value": 1}

    def failing(_: Counter) -> Counter:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        status.update(failing)
    assert status.value == Counter(1)
    reloaded = state.StatusFile.load(path, dataclasses.asdict, lambda d: Counter(**d))
    assert reloaded.value == Counter(1)


def test_failed_write_keeps_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "s.json"
    state.write_json_atomic(path, {"old": True})

    def broken_replace(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        state.write_json_atomic(path, {"new": True})
    monkeypatch.undo()
    assert state.read_json(path) == {"old": True}
    assert os.listdir(tmp_path) == ["s.json"]


def test_a_short_write_goes_on_and_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    """A nearly full disk takes part of a write: the rest is written, or the next write's ENOSPC
    leaves the old file and no temp file (never a truncated document in place)."""
    import errno

    path = tmp_path / "s.json"
    real_write = os.write
    room = {"bytes": 10}

    def short_write(fd: int, data: bytes) -> int:
        if room["bytes"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = min(len(data), room["bytes"])
        room["bytes"] -= taken
        return real_write(fd, bytes(data[:taken]))

    monkeypatch.setattr(os, "write", short_write)
    room["bytes"] = 1 << 20
    state.write_json_atomic(path, {"whole": "x" * 100})
    room["bytes"] = 10
    with pytest.raises(OSError) as caught:
        state.write_json_atomic(path, {"new": "y" * 100})
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert state.read_json(path) == {"whole": "x" * 100}
    assert os.listdir(tmp_path) == ["s.json"]


def test_private_dir(tmp_path) -> None:
    directory = tmp_path / "a" / "b"
    state.ensure_private_dir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with pytest.raises(NotFound):
        state.read_json(directory / "absent.json")
