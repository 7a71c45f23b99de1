"""The initramfs recipe's kernel modules: qemu_fw_cfg loaded first by /init, each module once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.unit.test_cpio import parse_newc
from vboxlab.templates import initramfs
from vboxlab.templates.cpio import CpioWriter

DEPENDS = {"qemu_fw_cfg": ["fw_core"], "virtio_net": ["net_failover"], "net_failover": [],
           "fw_core": []}


@pytest.fixture
def modroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernel's module folder whose modules depend as DEPENDS says."""
    root = tmp_path / "6.1.0-test"
    for name in DEPENDS:
        (root / "kernel" / f"{name}.ko").parent.mkdir(parents=True, exist_ok=True)
        (root / "kernel" / f"{name}.ko").write_bytes(name.encode())
    monkeypatch.setattr(initramfs, "_modinfo_depends",
                        lambda path: DEPENDS[path.name.removesuffix(".ko")])
    return root


def modules_of(modroot: Path, wanted: tuple[str, ...]) -> tuple[str, list[str], list[str]]:
    """/init's insmod lines, rcS's module list and the module files in the image."""
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    insmods = initramfs.add_modules(cpio, modroot, "6.1.0-test",
                                    initramfs._module_order(modroot, wanted))
    cpio.close()
    entries = parse_newc(buffer.getvalue())
    listed = entries["etc/vboxlab/modules"][1].decode().split()
    files = sorted(name for name in entries if name.endswith(".ko"))
    return insmods, listed, files


def test_init_loads_qemu_fw_cfg_and_its_deps_first_and_rcs_the_rest(modroot):
    insmods, listed, files = modules_of(modroot, ("virtio_net",))
    assert insmods.splitlines() == ["insmod /lib/modules/6.1.0-test/kernel/fw_core.ko",
                                    "insmod /lib/modules/6.1.0-test/kernel/qemu_fw_cfg.ko"]
    assert listed == ["/lib/modules/6.1.0-test/kernel/net_failover.ko",
                      "/lib/modules/6.1.0-test/kernel/virtio_net.ko"]
    assert files == [f"lib/modules/6.1.0-test/kernel/{name}.ko" for name in sorted(DEPENDS)]


def test_a_template_listing_qemu_fw_cfg_gets_it_once_loaded_by_init_only(modroot):
    insmods, listed, files = modules_of(modroot, ("qemu_fw_cfg", "virtio_net"))
    assert "qemu_fw_cfg.ko" in insmods and "fw_core.ko" in insmods
    assert not any("qemu_fw_cfg" in line or "fw_core" in line for line in listed)
    assert len(files) == len(set(files)) == 4
