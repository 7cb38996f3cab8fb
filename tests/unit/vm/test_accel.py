
import pytest

from qmprt.vm import accel


@pytest.fixture
def fake_host(tmp_path):
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    modules = tmp_path / "module"
    modules.mkdir()
    return kvm, modules


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\ncpu MHz\t\t: 2600.5\n")
    return str(path)


@pytest.mark.parametrize(
    ("flags", "module", "expected"),
    [("vmx", None, "kvm"), ("", None, "tcg"), ("svm", "kvm_pvm", "tcg")],
    ids=["hardware", "no-vmx-flag", "software-kvm"],
)
def test_detect(tmp_path, fake_host, monkeypatch, flags, module, expected) -> None:
    monkeypatch.delenv("QMPRT_ACCEL", raising=False)
    kvm, modules = fake_host
    if module:
        (modules / module).mkdir()
    choice = accel.detect(dev_kvm=str(kvm), cpuinfo_path=_cpuinfo(tmp_path, flags), modules_dir=str(modules))
    assert choice.accel == expected


def test_missing_device_means_tcg(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("QMPRT_ACCEL", raising=False)
    choice = accel.detect(dev_kvm=str(tmp_path / "absent"), cpuinfo_path=_cpuinfo(tmp_path, "vmx"))
    assert choice.accel == "tcg"


def test_override(monkeypatch) -> None:
    monkeypatch.setenv("QMPRT_ACCEL", "kvm")
    assert accel.detect().accel == "kvm"
    with pytest.raises(ValueError):
        accel.detect("hvf")
