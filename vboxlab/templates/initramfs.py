"""The ``initramfs`` recipe: a Debian kernel, busybox and chosen binaries in one initramfs.

Everything comes out of Debian packages unpacked into a scratch sysroot (nothing
is installed on the host). The image holds:

* ``vmlinuz``: the kernel of ``kernel_package``;
* ``initrd.cpio``: busybox with its applet links, each of ``binaries`` with the
  shared libraries it needs (found from the ELF headers), the kernel modules in
  ``modules`` with their dependencies (in load order, listed in
  ``/etc/vboxlab/modules``), and the template's ``rootfs/`` folder; its ``/init``
  unpacks the VM's own files from QEMU's fw_cfg (``qemu_fw_cfg`` module) and then
  runs busybox init, so one initrd serves every VM of the template;
* ``disk.qcow2``: an empty ext4 data disk that VMs see as ``/dev/vda``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from elftools.elf.elffile import ELFFile

from vboxlab.errors import BuildError
from vboxlab.hosttools import require, run
from vboxlab.providers.qemu_argv import FW_CFG_GUEST_PATH
from vboxlab.templates import debs
from vboxlab.templates.cpio import CpioWriter
from vboxlab.templates.definition import Template
from vboxlab.templates.elf import library_closure

log = logging.getLogger(__name__)

RECIPE_VERSION = "2"
#: /init: the VM's own files (see vboxlab.providers.vmfiles) into /, then busybox init
INIT = """\
#!/bin/sh
# vboxlab: unpack this VM's own files (host key, authorized key, names, lab interfaces) from
# QEMU's fw_cfg, then hand over to busybox init (which runs the template's inittab)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
{insmods}
if [ -r {blob} ]; then
    cpio -i -d -m -u < {blob} 2>/dev/null || echo "vboxlab: VM files not unpacked" >/dev/console
elif [ ! -f /etc/ssh/ssh_host_ed25519_key ]; then  # boot media carry them in the initrd
    echo "vboxlab: no VM files in fw_cfg ({blob})" >/dev/console
fi
umount /sys
umount /proc
exec /bin/busybox init
"""
Progress = Callable[[str], None]


def kernel_package(name: str) -> debs.Package:
    """Resolve a kernel metapackage (linux-image-amd64) to the package with the kernel."""
    package = debs.resolve([name])[name]
    real = [d for d in package.depends if re.match(r"^linux-image-\d", d)]
    if real and not re.match(r"^linux-image-\d", name):
        return debs.resolve([real[0]])[real[0]]
    return package


def resolve_inputs(template: Template) -> list[debs.Package]:
    """Every package the build takes files from, kernel first."""
    build = template.definition.build
    kernel = kernel_package(build.kernel_package)
    closure = debs.library_closure(list(build.packages))
    return [kernel, *sorted(closure.values(), key=lambda p: p.name)]


def inputs_digest(template: Template, packages: list[debs.Package]) -> str:
    """SHA-256 of everything a build depends on: definition files, package pins, recipe."""
    digest = hashlib.sha256()
    digest.update(f"initramfs-recipe-{RECIPE_VERSION}\n".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(template.source_digest().encode())
    for package in packages:
        digest.update(package.pin.encode() + b"\n")
    return digest.hexdigest()


def _modinfo_depends(path: Path) -> list[str]:
    """The ``depends=`` names from a kernel module's .modinfo section."""
    with path.open("rb") as handle:
        section = ELFFile(handle).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    for field in data.split(b"\0"):
        if field.startswith(b"depends="):
            return [n for n in field[len(b"depends="):].decode().split(",") if n]
    return []


def add_modules(cpio: CpioWriter, modroot: Path, kver: str, modules: list[str]) -> str:
    """The template's ``modules`` (files relative to ``modroot``, deps first) and
    ``qemu_fw_cfg`` (with its deps) into the image, each once;
    ``/etc/vboxlab/modules`` lists what rcS loads. Returns the insmod lines of ``/init``,
    which loads ``qemu_fw_cfg`` first (rcS would run after ``/init`` looked for the VM's files;
    a module ``/init`` loaded is left out of rcS's list, where it would fail as loaded)."""
    early = _module_order(modroot, ("qemu_fw_cfg",))
    for rel in dict.fromkeys([*modules, *early]):
        target = f"lib/modules/{kver}/{rel}"
        cpio.add_tree_dirs(str(Path(target).parent))
        cpio.add_file(target, (modroot / rel).read_bytes())
    cpio.add_file("etc/vboxlab/modules", "".join(f"/lib/modules/{kver}/{rel}\n"
                                                 for rel in modules if rel not in early).encode())
    return "\n".join(f"insmod /lib/modules/{kver}/{rel}" for rel in early)


def _module_order(modroot: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files (relative to modroot) for ``wanted`` and their deps, deps first.

    Debian's kernel package ships no modules.dep (depmod makes it on install), so
    the dependencies are read from each module's own .modinfo section.
    """
    by_name = {p.name.split(".ko")[0].replace("-", "_"): str(p.relative_to(modroot))
               for p in modroot.rglob("*.ko*")}
    builtin_file = modroot / "modules.builtin"
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_") for line in
               (builtin_file.read_text().splitlines() if builtin_file.is_file() else [])}
    order: list[str] = []

    def visit(name: str, needed_by: str) -> None:
        key = name.replace("-", "_")
        if key in builtin:
            return
        if key not in by_name:
            raise BuildError(f"kernel module {name!r} (wanted by {needed_by}) is neither built in "
                             f"nor shipped with kernel {modroot.name}; fix the template's "
                             "build.modules")
        rel = by_name[key]
        if rel in order:
            return
        for dep in _modinfo_depends(modroot / rel):
            visit(dep, key)
        order.append(rel)

    for name in wanted:
        visit(name, "build.modules")
    return order


def _busybox_applets(busybox: Path) -> list[str]:
    out = run([str(busybox), "--list-full"], what="listing busybox applets", error=BuildError)
    return [line.strip() for line in out.splitlines() if line.strip()]


def build_image(template: Template, packages: list[debs.Package], out: Path, debcache: Path,
                progress: Progress) -> dict[str, str]:
    """Build the template into the empty folder ``out``; return extra manifest fields."""
    build = template.definition.build
    require("qemu-img", "to create the template's base disk")
    require("mke2fs", "to format the template's data disk")
    scratch = out / ".sysroot"
    progress(f"downloading {len(packages)} Debian packages")
    debfiles = debs.download(packages, debcache)
    progress("unpacking packages")
    for deb in debfiles:
        debs.extract(deb, scratch)

    kernels = sorted((scratch / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"{packages[0].pin} holds no /boot/vmlinuz-*; is it a kernel package?")
    kver = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[-1], out / "vmlinuz")
    modroot = scratch / "lib" / "modules" / kver

    progress("composing the initramfs")
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    for folder in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/vboxlab", "proc", "sys", "dev",
                   "run", "root", "var/empty", "var/log", "data", "mnt", "lib/x86_64-linux-gnu",
                   "lib64"):
        cpio.add_tree_dirs(folder)
    cpio.add_dir("tmp", 0o1777)
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_chardev("dev/null", 1, 3, 0o666)

    busybox = scratch / "bin" / "busybox"
    if not busybox.is_file():
        raise BuildError("busybox not found in the packages; add busybox-static to build.packages")
    cpio.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    provided = {b.lstrip("/") for b in build.binaries}
    for applet in _busybox_applets(busybox):
        if applet != "bin/busybox" and applet not in provided:
            cpio.add_tree_dirs(str(Path(applet).parent))
            cpio.add_symlink(applet, "/bin/busybox")

    binaries = []
    for binary in build.binaries:
        source = scratch / binary.lstrip("/")
        if not source.is_file():
            raise BuildError(f"{binary} is in none of the packages {', '.join(build.packages)}; "
                             "fix the template's build.binaries or build.packages")
        cpio.add_tree_dirs(str(Path(binary.lstrip("/")).parent))
        cpio.add_file(binary, source.read_bytes(), 0o755)
        binaries.append(source)
    for image_path, source in sorted(library_closure(scratch, binaries).items()):
        cpio.add_tree_dirs(str(Path(image_path.lstrip("/")).parent))
        cpio.add_file(image_path, source.read_bytes(), 0o755)

    modules = _module_order(modroot, build.modules)
    insmods = add_modules(cpio, modroot, kver, modules)
    cpio.add_file("etc/vboxlab/template", f"{template.name} {template.version}\n".encode())
    cpio.add_file("init", INIT.format(insmods=insmods, blob=FW_CFG_GUEST_PATH).encode(), 0o755)

    files = template.folder / build.files
    if files.is_dir():
        for path in sorted(files.rglob("*")):
            rel = str(path.relative_to(files))
            if path.is_symlink():
                cpio.add_symlink(rel, str(path.readlink()))
            elif path.is_dir():
                cpio.add_tree_dirs(rel)
            else:
                cpio.add_tree_dirs(str(Path(rel).parent))
                cpio.add_file(rel, path.read_bytes(), path.stat().st_mode & 0o777)
    cpio.close()
    (out / "initrd.cpio").write_bytes(buffer.getvalue())

    progress(f"creating the {build.disk_size_mb} MiB data disk")
    raw = out / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate(build.disk_size_mb * 1024 * 1024)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "data", "-E", "root_owner=0:0", str(raw)],
        what="formatting the data disk", error=BuildError)
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
         str(out / "disk.qcow2")], what="converting the data disk", error=BuildError)
    raw.unlink()
    shutil.rmtree(scratch)
    subprocess.run(["sync"], check=False)
    return {"kernel_version": kver, "modules": ",".join(Path(m).name for m in modules),
            "vm_files": "fw_cfg"}
