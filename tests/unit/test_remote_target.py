"""Remote libvirt URIs are checked part by part before anything connects."""

import urllib.parse

import pytest

from vboxlab.errors import ConfigError
from vboxlab.providers.remote_host import RemoteTarget, is_remote


@pytest.fixture
def files(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("key")
    key.chmod(0o600)
    known = tmp_path / "known_hosts"
    known.write_text("")
    return key, known


def uri(files, rest="root@10.0.0.5:2222/system"):
    key, known = files
    return f"qemu+ssh://{rest}?" + urllib.parse.urlencode({"keyfile": key, "known_hosts": known})


def test_a_good_uri_becomes_libssh_with_the_same_key_and_pinned_hosts(files):
    target = RemoteTarget.parse(uri(files))
    assert (target.user, target.host, target.port) == ("root", "10.0.0.5", 2222)
    opened = urllib.parse.urlsplit(target.libvirt_uri())
    assert opened.scheme == "qemu+libssh" and opened.netloc == "root@10.0.0.5:2222"
    query = dict(urllib.parse.parse_qsl(opened.query))
    assert query == {"keyfile": str(files[0]), "known_hosts": str(files[1]),
                     "known_hosts_verify": "normal", "sshauth": "privkey"}
    assert is_remote(target.uri) and not is_remote("qemu:///system")


@pytest.mark.parametrize(("rest", "message"), [
    ("root@host:99999/system", "port is not a number"),
    ("root@-bad/system", "is not a host name"),
    ("root@host;rm/system", "is not a host name"),
    ("Root Admin@host/system", "is not a valid user name"),
    ("root@host/session", "end the URI with /system"),
    ("root:secret@host/system", "holds a password"),
])
def test_bad_parts_are_named(files, rest, message):
    with pytest.raises(ConfigError, match=message):
        RemoteTarget.parse(uri(files, rest))


def test_bad_parameters_and_files_are_named(files, tmp_path):
    key, _ = files
    with pytest.raises(ConfigError, match="parameters command are not understood"):
        RemoteTarget.parse(uri(files) + "&command=/bin/sh")
    with pytest.raises(ConfigError, match="scheme 'qemu' is not a remote one"):
        RemoteTarget.parse("qemu:///system")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        RemoteTarget.parse(uri(files))
    key.chmod(0o600)
    missing = f"qemu+ssh://root@h/system?keyfile={key}&known_hosts={tmp_path / 'none'}"
    with pytest.raises(ConfigError, match="no known_hosts file"):
        RemoteTarget.parse(missing)
