"""Helpers for the unit tests: template images as a build leaves them."""

import hashlib
import json
import subprocess

from vboxlab.pytest.policy import require_tool


def small_qcow2(path, size="1M"):
    """A real, self-contained qcow2 image (what template disks must be)."""
    subprocess.run([require_tool("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2",
                    str(path), size], check=True)
    return path


def install(repo, name, version, *, digest=None):
    """An installed image as a build leaves it: files, then the manifest."""
    folder = repo.images / name / version
    folder.mkdir(parents=True)
    files = {}
    for file in ("vmlinuz", "initrd.cpio"):
        data = f"{name} {version} {file}".encode()
        (folder / file).write_bytes(data)
        files[file] = hashlib.sha256(data).hexdigest()
    small_qcow2(folder / "disk.qcow2")
    files["disk.qcow2"] = hashlib.sha256((folder / "disk.qcow2").read_bytes()).hexdigest()
    definition = {"name": name, "version": version, "description": f"{name} {version}",
                  "build": {"recipe": "initramfs"}}
    manifest = {"name": name, "version": version, "files": files, "definition": definition,
                "source_digest": digest, "built_at": "2026-11-27T00:00:00Z"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def install_layer(repo, name, version, base_name, base_version, *, backing=None):
    """An installed layer as the layer recipe leaves it: a qcow2 over its base's disk named
    relatively, the base's kernel and initrd, a manifest recording the base's files."""
    base_folder = repo.images / base_name / base_version
    base_manifest = json.loads((base_folder / "manifest.json").read_text())
    folder = repo.images / name / version
    folder.mkdir(parents=True)
    files = {}
    for file in ("vmlinuz", "initrd.cpio"):
        (folder / file).hardlink_to(base_folder / file)
        files[file] = base_manifest["files"][file]
    subprocess.run([require_tool("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2",
                    "-u", "-F", "qcow2", "-b",
                    backing or f"../../{base_name}/{base_version}/disk.qcow2",
                    str(folder / "disk.qcow2"), "1M"], check=True)
    files["disk.qcow2"] = hashlib.sha256((folder / "disk.qcow2").read_bytes()).hexdigest()
    definition = {"name": name, "version": version, "description": f"{name} {version}",
                  "base": f"{base_name}>={base_version}", "build": {"recipe": "layer"}}
    manifest = {"name": name, "version": version, "files": files, "definition": definition,
                "built_at": "2026-11-27T00:00:00Z", "recipe": "layer",
                "base": {"name": base_name, "version": base_version,
                         "files": base_manifest["files"]}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
