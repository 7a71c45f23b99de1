"""A VM's own files and the initrd its template's VMs share."""

import io
import os
import stat
import threading

from vboxlab.agent import GUEST_PATH, agent_binary
from vboxlab.providers.vmfiles import (
    ROOTFS_PREFIX,
    cpio_of,
    shared_initrd,
    uses_fw_cfg,
    write_initrd,
)


def entries(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) of a newc archive (as the kernel reads it)."""
    found, stream = {}, io.BytesIO(archive)
    while True:
        while stream.read(1) == b"\0":  # padding between archives
            pass
        stream.seek(-1, 1)
        header = stream.read(110)
        assert header[:6] == b"070701", header
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = stream.read(namesize)[:-1].decode()
        stream.read(-(110 + namesize) % 4)
        data = stream.read(size)
        stream.read(-size % 4)
        if name == "TRAILER!!!":
            return found
        found[name] = (mode, data)


def test_cpio_of_puts_each_file_with_its_mode_and_its_folders(tmp_path):
    archive = cpio_of([("etc/ssh/key", b"secret\n", 0o600), ("etc/hostname", b"a\n", 0o644)],
                      ROOTFS_PREFIX)
    found = entries(archive)
    assert found["vboxlab/root/etc/ssh/key"] == (stat.S_IFREG | 0o600, b"secret\n")
    assert stat.S_ISDIR(found["vboxlab/root/etc/ssh"][0])
    assert found["vboxlab/root/etc/hostname"][1] == b"a\n"


def test_write_initrd_appends_at_a_boundary_with_the_mode_asked(tmp_path):
    base = tmp_path / "base.cpio"
    base.write_bytes(b"x" * 1001)  # a compressed base ends anywhere
    target = tmp_path / "initrd.img"
    extra = cpio_of([("etc/hostname", b"a\n", 0o644)])
    write_initrd(target, base, extra)
    data = target.read_bytes()
    assert data[:1001] == b"x" * 1001 and data.endswith(extra)
    assert (len(data) - len(extra)) % 512 == 0
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_the_shared_initrd_is_made_once_per_template_and_agent(source, tmp_path):
    built = source.built("shared")
    assert not uses_fw_cfg(built)  # an older build: its manifest does not say fw_cfg
    assert shared_initrd(built, agent=False, cache=tmp_path / "initrds") == built.initrd
    made = []
    threads = [threading.Thread(target=lambda: made.append(
        shared_initrd(built, agent=True, cache=tmp_path / "initrds"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 1 and len(made) == 4
    path = made[0]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no scratch left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # no secrets: the agent only
    data = path.read_bytes()
    assert data.startswith(built.initrd.read_bytes())
    agent = entries(data[data.index(b"070701"):])[GUEST_PATH]
    assert agent == (stat.S_IFREG | 0o755, agent_binary().read_bytes())
    before = os.stat(path).st_mtime_ns
    assert shared_initrd(built, agent=True, cache=tmp_path / "initrds") == path
    assert os.stat(path).st_mtime_ns == before  # reused, not rewritten


def test_removing_a_template_version_removes_its_shared_initrds(source):
    built = source.built("shared")
    cache = source.cache / "initrds"
    path = shared_initrd(built, agent=True, cache=cache)
    assert path.name.startswith("shared-1.2.0-")
    other = cache / "shared-1.2.0-rc1-0123456789abcdef.cpio"  # another version's, kept
    other.write_bytes(b"")
    source.remove("shared", "1.2.0")
    assert not path.exists() and other.exists()
