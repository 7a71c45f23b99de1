import subprocess
import sys

import pytest

from vboxlab import accel
from vboxlab.errors import ConfigError
from vboxlab.providers import available, load_provider


def test_import_vboxlab_needs_no_hypervisor_library():
    code = ("import sys, vboxlab, vboxlab.pytest.plugin, vboxlab.lab; "
            "print('qemu.qmp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_qemu_provider_is_found_through_the_entry_point_group():
    assert available()["qemu"] == "vboxlab.providers.qemu:QemuProvider"


def test_unknown_provider_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown provider 'vbox'.*qemu"):
        load_provider("vbox")


def test_qemu_missing_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    from vboxlab.errors import HostError

    with pytest.raises(HostError, match="apt-get install qemu-system-x86"):
        load_provider("qemu")


def fake_qemu(tmp_path, body):
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_kvm_probe_that_hangs_falls_back_to_tcg(tmp_path, monkeypatch):
    monkeypatch.setenv("VBOXLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "PROBE_TIMEOUT", 0.5)
    monkeypatch.setattr(accel.os, "access", lambda *a: True)
    choice = accel.probe_kvm(fake_qemu(tmp_path, "sleep 30"), tmp_path / "vmlinuz")
    assert choice.accel == "tcg" and "did not finish" in choice.reason
    cached = accel.probe_kvm(fake_qemu(tmp_path, "exit 0"), tmp_path / "vmlinuz")
    assert cached.accel == "kvm"  # a different binary is a different cache key


def test_kvm_probe_that_boots_picks_kvm_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VBOXLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(accel.os, "access", lambda *a: True)
    qemu = fake_qemu(tmp_path, "exit 0")
    assert accel.probe_kvm(qemu, tmp_path / "k").accel == "kvm"
    assert "cached" in accel.probe_kvm(qemu, tmp_path / "k").reason


def test_requested_accelerator_skips_the_probe():
    assert accel.choose("tcg", "/nonexistent", None).accel == "tcg"  # type: ignore[arg-type]
    assert accel.choose("kvm", "/nonexistent", None).accel == "kvm"  # type: ignore[arg-type]
