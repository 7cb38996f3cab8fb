import pytest

from qmprt import config
from qmprt.errors import InvalidArgument


def test_defaults_are_valid(monkeypatch) -> None:
    monkeypatch.delenv("QMPRT_ACCEL", raising=False)
    loaded = config.load()
    assert loaded.runtime.socket == "/run/qmprt/qmprt.sock"
    assert loaded.vm.accel == "auto"


def test_file_env_and_overrides(tmp_path, monkeypatch) -> None:
    path = tmp_path / "qmprt.toml"
    path.write_text('[vm]\nmachine = "microvm"\nmemory_mib = 256\n[cni]\nbin_dirs = ["/x"]\n')
    monkeypatch.setenv("QMPRT_ACCEL", "tcg")
    loaded = config.load(path, state_dir="/tmp/s")
    assert (loaded.vm.machine, loaded.vm.memory_mib, loaded.vm.accel) == ("microvm", 256, "tcg")
    assert loaded.cni.bin_dirs == ("/x",)
    assert loaded.runtime.state_dir == "/tmp/s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[vm]\nmachine = 'pc'\n", "vm.machine"),
        ("[vm]\nmemory_mib = '1G'\n", "vm.memory_mib must be a int"),
        ("[vm]\nturbo = true\n", "unknown keys: turbo"),
        ("[gpu]\n", "unknown tables: gpu"),
        ("[runtime]\nstate_dir = 'rel'\n", "absolute"),
        ("[vm\n", "config file"),
        ("[vm]\nuid_base = 0\n", "vm.uid_base"),
        ("[vm]\nuid_base = 4294967000\n", "vm.uid_base"),
        ("[vm]\nuid_count = 0\n", "vm.uid_base"),
    ],
    ids=["bad-machine", "wrong-type", "unknown-key", "unknown-table", "relative-path", "bad-toml",
         "uid-base-root", "uid-range-too-high", "no-uids"],
)
def test_rejects(tmp_path, monkeypatch, text, message) -> None:
    monkeypatch.delenv("QMPRT_ACCEL", raising=False)
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        config.load(path)


def test_image_table_reaches_the_store(tmp_path, monkeypatch) -> None:
    from qmprt.image import open_store

    monkeypatch.delenv("QMPRT_ACCEL", raising=False)
    roots = tmp_path / "images-here"
    roots.mkdir()
    path = tmp_path / "c.toml"
    path.write_text(f'[image]\nfile_roots = ["{roots}"]\nmax_virtual_size_bytes = 1073741824\n')
    loaded = config.load(path, state_dir=str(tmp_path / "state"))
    store = open_store(loaded)
    assert store.config.file_roots == (str(roots),)
    assert store.config.max_virtual_size_bytes == 1 << 30
    bad = tmp_path / "bad.toml"
    bad.write_text("[image]\nmax_virtual_size_bytes = 'huge'\n")
    with pytest.raises(InvalidArgument):
        open_store(config.load(bad, state_dir=str(tmp_path / "state2")))


def test_a_socket_elsewhere_takes_the_run_dir_with_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("QMPRT_RUN_DIR", raising=False)
    moved = config.load(socket=str(tmp_path / "sock" / "qmprt.sock"), state_dir=str(tmp_path / "state"))
    assert moved.runtime.run_dir == str(tmp_path / "sock" / "run")
    assert config.load(state_dir=str(tmp_path / "state")).runtime.run_dir == "/run/qmprt"
    named = config.load(socket=str(tmp_path / "s.sock"), run_dir=str(tmp_path / "r"))
    assert named.runtime.run_dir == str(tmp_path / "r")
    (tmp_path / "c.toml").write_text(f'[runtime]\nsocket = "{tmp_path}/s.sock"\nrun_dir = "{tmp_path}/mine"\n')
    assert config.load(tmp_path / "c.toml").runtime.run_dir == f"{tmp_path}/mine"
