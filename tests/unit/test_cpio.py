import io
import stat

import pytest

from vboxlab.templates.cpio import CpioWriter


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """A reader written from the format spec, to check the writer independently."""
    entries = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + i * 8: pos + 14 + i * 8], 16) for i in range(13)]
        mode, filesize, rdev = fields[1], fields[6], (fields[9], fields[10])
        namesize = fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, rdev)


def test_round_trip_of_every_entry_kind():
    buf = io.BytesIO()
    writer = CpioWriter(buf)
    writer.add_tree_dirs("usr/lib/deep")
    writer.add_file("usr/lib/deep/odd", b"12345", 0o751)
    writer.add_file("/etc/empty", b"")
    writer.add_symlink("bin/sh", "/bin/busybox")
    writer.add_chardev("dev/console", 5, 1)
    writer.close()
    entries = parse_newc(buf.getvalue())
    assert set(entries) == {"usr", "usr/lib", "usr/lib/deep", "usr/lib/deep/odd", "etc/empty",
                            "bin/sh", "dev/console"}
    mode, body, _ = entries["usr/lib/deep/odd"]
    assert stat.S_ISREG(mode) and mode & 0o777 == 0o751 and body == b"12345"
    mode, body, _ = entries["bin/sh"]
    assert stat.S_ISLNK(mode) and body == b"/bin/busybox"
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert stat.S_ISDIR(entries["usr/lib"][0])
    assert len(buf.getvalue()) % 4 == 0


def test_duplicate_entries_are_refused():
    writer = CpioWriter(io.BytesIO())
    writer.add_file("a", b"1")
    with pytest.raises(ValueError, match="duplicate cpio entry 'a'"):
        writer.add_file("/a", b"2")
