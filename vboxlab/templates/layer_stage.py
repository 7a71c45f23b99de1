"""A layer's Debian packages, installed at native speed on the host, as a tree of changes.

apt in a TCG guest runs every maintainer script and decompresses every package under
emulation (minutes for a compiler). When the base was built on this machine (so its
programs are as trusted as debootstrap's) and we are root, the packages are installed
instead in a chroot on the host, like debootstrap does: the base's root filesystem is
mounted read-only (a loop device over a raw copy), an overlayfs puts an empty upper
folder over it, and ``apt-get install`` runs in the merged tree with services kept from
starting (``policy-rc.d``). The upper folder then holds exactly what changed: new and
changed files (with their owners, modes and extended attributes such as file
capabilities), whiteouts for deleted files and opaque folders for replaced ones.

Everything runs in a private mount namespace (``unshare --mount``): the mounts, and so
the loop device, vanish with it, even if the build is killed. The booted base then takes
the changes over its command channel (:func:`apply_commands`).
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vboxlab.errors import BuildError
from vboxlab.hosttools import require, run
from vboxlab.templates.trust import is_foreign

if TYPE_CHECKING:
    from vboxlab.templates.initramfs import Progress
    from vboxlab.templates.repository import BuiltTemplate

_OPAQUE = "trusted.overlay.opaque"
STAGE_SCRIPT = r"""
set -e
raw=$1; lower=$2; upper=$3; work=$4; merged=$5; shift 5
mount -o loop,ro,noload "$raw" "$lower"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /sys "$merged/sys"
mount --rbind /dev "$merged/dev"
mount -t tmpfs tmpfs "$merged/tmp"
for d in var/cache/apt var/lib/apt/lists; do mount -t tmpfs tmpfs "$merged/$d"; done
mkdir -p "$merged/var/lib/apt/lists/partial" "$merged/var/cache/apt/archives/partial"
mount --bind /etc/resolv.conf "$merged/etc/resolv.conf"
printf '#!/bin/sh\n# vboxlab: no service starts while a layer is staged\nexit 101\n' \
    > "$merged/usr/sbin/policy-rc.d"
chmod 755 "$merged/usr/sbin/policy-rc.d"
status=0
{ chroot "$merged" apt-get update -q &&
  chroot "$merged" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "$@"; } || status=$?
rm -f "$merged/usr/sbin/policy-rc.d"
exit $status
"""


@dataclass(frozen=True)
class StagedChanges:
    """What a package install changed: a tar of new and changed entries (relative to /),
    the paths it deleted, and folders whose old contents it replaced as a whole."""

    archive: Path
    deleted: tuple[str, ...]
    opaque: tuple[str, ...]


def can_stage_natively(base: BuiltTemplate) -> str | None:
    """None if the packages can be staged on the host, else why not (then apt runs in the
    guest)."""
    if os.geteuid() != 0:
        return "not root (mounting the base and chroot need it)"
    for each in (base, *base.bases):
        if is_foreign(each.manifest):
            return (f"{each.template.name} {each.template.version} was built on another "
                    "machine: its programs do not run on this host")
    return None


def stage_packages(base: BuiltTemplate, packages: tuple[str, ...], folder: Path,
                   report: Progress) -> StagedChanges:
    """Install ``packages`` over ``base``'s root filesystem on the host; the changes."""
    qemu_img = require("qemu-img", "to read the base's disk")
    tar = require("tar", "to pack the layer's changes")
    require("unshare", "to stage the packages in a private mount namespace")
    for part in ("lower", "upper", "work", "merged"):
        (folder / part).mkdir(parents=True)
    raw = folder / "base.raw"
    report(f"reading the root filesystem of {base.template.name} {base.template.version}")
    run([qemu_img, "convert", "-q", "-O", "raw", "-f", "qcow2", str(base.disk), str(raw)],
        what="copying the base's disk", error=BuildError, timeout=900)
    report(f"installing {len(packages)} Debian packages on the host (chroot over the base): "
           f"{', '.join(packages)}")
    run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", STAGE_SCRIPT,
         "stage", str(raw), str(folder / "lower"), str(folder / "upper"), str(folder / "work"),
         str(folder / "merged"), *packages],
        what="installing " + ", ".join(packages), error=BuildError, timeout=3600)
    raw.unlink()
    upper = folder / "upper"
    entries, deleted, opaque = _walk(upper)
    listing = folder / "entries"
    listing.write_bytes(b"\0".join(e.encode() for e in entries) + b"\0")
    archive = folder / "changes.tar"
    run([tar, "--create", "--file", str(archive), "--directory", str(upper), "--null",
         "--no-recursion", "--files-from", str(listing), "--xattrs", "--xattrs-include=*",
         "--numeric-owner"], what="packing the layer's changes", error=BuildError, timeout=900)
    return StagedChanges(archive, tuple(deleted), tuple(opaque))


def _walk(upper: Path) -> tuple[list[str], list[str], list[str]]:
    """(entries to pack, deleted paths, opaque folders) of an overlayfs upper folder."""
    entries: list[str] = []
    deleted: list[str] = []
    opaque: list[str] = []
    for folder, dirs, files in os.walk(upper):
        here = Path(folder)
        relative = here.relative_to(upper)
        if relative != Path():
            entries.append(str(relative))
            try:
                if os.getxattr(here, _OPAQUE) == b"y":
                    opaque.append("/" + str(relative))
            except OSError:
                pass
        for name in sorted(files) + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            info = path.lstat()
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                deleted.append("/" + str(path.relative_to(upper)))
            else:
                entries.append(str(path.relative_to(upper)))
    return entries, deleted, opaque


def apply_commands(changes: StagedChanges, remote_archive: str, remote_deleted: str) -> str:
    """The guest's shell command that makes its root filesystem what the host staged:
    replaced folders emptied, deleted paths removed, the archive unpacked (owners, modes,
    extended attributes kept)."""
    steps = ["set -e"]
    for folder in changes.opaque:  # overlayfs marks new folders opaque too
        quoted = shlex.quote(folder)
        steps.append(f"if [ -d {quoted} ]; then find {quoted} -mindepth 1 -delete; fi")
    if changes.deleted:
        steps.append(f"xargs -0 -r rm -rf -- < {shlex.quote(remote_deleted)}")
    steps.append(f"tar --extract --file {shlex.quote(remote_archive)} --directory / "
                 "--preserve-permissions --same-owner --numeric-owner --xattrs "
                 "--xattrs-include='*'")
    steps.append(f"rm -f {shlex.quote(remote_archive)} {shlex.quote(remote_deleted)}")
    steps.append("systemctl daemon-reload")
    return "\n".join(steps)
