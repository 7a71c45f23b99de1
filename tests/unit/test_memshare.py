"""KSM's state is read from sysfs as the kernel writes it; doctor tells how to switch it on."""

import os

from vboxlab import doctor
from vboxlab.memshare import SWITCH_ON, ksm_state


def _ksm(folder, **values):
    folder.mkdir()
    for name, value in values.items():
        (folder / name).write_text(f"{value}\n")
    return folder


def test_a_kernel_without_ksm_says_so(tmp_path):
    assert ksm_state(tmp_path / "missing").available is False


def test_running_ksm_reports_the_memory_it_saves(tmp_path):
    folder = _ksm(tmp_path / "ksm", run=1, pages_shared=10, pages_sharing=512, full_scans=3)
    state = ksm_state(folder)
    assert state.available and state.running and state.full_scans == 3
    assert state.saved_mb == 512 * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def test_ksm_off_is_a_doctor_line_with_the_command(tmp_path, monkeypatch):
    folder = _ksm(tmp_path / "ksm", run=0, pages_sharing=0)
    monkeypatch.setattr(doctor, "ksm_state", lambda: ksm_state(folder))
    check = doctor._ksm()
    assert not check.ok and not check.essential and SWITCH_ON in check.fix
    (folder / "run").write_text("1\n")
    (folder / "pages_sharing").write_text("25600\n")
    check = doctor._ksm()
    assert check.ok and "MiB saved now" in check.detail
