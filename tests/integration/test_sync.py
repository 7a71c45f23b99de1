"""Templates pushed to and pulled from real remotes (a folder, and SFTP on an sshd this test
starts), moved as content-addressed blobs, verified, refused when they conflict or are
damaged, and still bootable after the trip."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.sshd import LocalSshd
from vboxlab.errors import HostError
from vboxlab.lab import Lab
from vboxlab.sync.remotes import Remote
from vboxlab.sync.signing import SignatureError, SigningKey, TrustStore
from vboxlab.sync.store import SyncError, TemplateStore
from vboxlab.templates import TemplateRepository

CLI = [sys.executable, "-m", "vboxlab.cli"]


@pytest.fixture(scope="module")
def tiny():
    return TemplateRepository().built("tiny")


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    """A signing key of a team member."""
    return SigningKey.generate("alice@build1", folder=tmp_path_factory.mktemp("alice"))


@pytest.fixture
def trust(tmp_path, alice):
    """A machine that trusts alice's key (and has no key of its own)."""
    store = TrustStore(tmp_path / "trusted-keys.json", own=None)
    store.add(alice.public)
    return store


def blobs(folder):
    return sorted(p.name for p in (folder / "blobs").iterdir())


def test_a_folder_remote_moves_only_missing_blobs_and_pulls_verified(tiny, alice, trust,
                                                                    tmp_path):
    remote = tmp_path / "remote"
    store = TemplateStore(Remote.parse(str(remote)))
    first = store.push(tiny, alice)
    assert (first.moved_files, first.already) == (3, False)
    assert blobs(remote) == sorted(tiny.manifest["files"].values())
    assert store.templates() == [("tiny", tiny.template.version)]
    assert store.push(tiny, alice).already  # nothing moves the second time
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    pulled = store.pull("tiny", tiny.template.version, other, trust)
    assert (pulled.moved_files, pulled.moved_bytes > 20e6) == (3, True)
    (got,) = other.installed("tiny")
    assert got.manifest["files"] == tiny.manifest["files"]
    assert got.manifest["imported"]["from"] == store.remote.url
    assert store.pull("tiny", tiny.template.version, other, trust).already


def test_conflicts_and_damaged_blobs_are_refused_and_nothing_half_appears(tiny, alice, trust,
                                                                         tmp_path):
    remote = tmp_path / "remote"
    store = TemplateStore(Remote.parse(str(remote)))
    store.push(tiny, alice)
    manifest_path = remote / "templates" / "tiny" / tiny.template.version / "manifest.json"
    theirs = json.loads(manifest_path.read_text())
    theirs["files"]["initrd.cpio"] = "0" * 64  # someone else built other contents
    manifest_path.write_text(json.dumps(theirs))
    with pytest.raises(SyncError, match=r"differs on .* remote holds contents [0-9a-f]{16}.*"
                                        r"this machine [0-9a-f]{16}"):
        store.push(tiny, alice)
    assert json.loads(manifest_path.read_text()) == theirs  # never overwritten
    # a blob damaged on the remote: the pull refuses it and installs nothing
    store2 = TemplateStore(Remote.parse(str(tmp_path / "remote2")))
    store2.push(tiny, alice)
    kernel = tmp_path / "remote2" / "blobs" / tiny.manifest["files"]["vmlinuz"]
    kernel.write_bytes(kernel.read_bytes()[:-1] + b"X")
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    with pytest.raises(SyncError, match=r"vmlinuz of tiny .* has SHA-256 .* not installed"):
        store2.pull("tiny", tiny.template.version, other, trust)
    assert other.installed() == [] and not list(other.images.glob(".import-*"))


def test_an_interrupted_push_is_invisible_and_resumes(tiny, alice, tmp_path, monkeypatch):
    store = TemplateStore(Remote.parse(str(tmp_path / "remote")))
    real_put = store.fs.put_file
    sent = []

    def failing_put(local, remote_path, *args, **kwargs):
        if sent:
            raise OSError("connection lost")
        sent.append(local)
        return real_put(local, remote_path, *args, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", failing_put)
    with pytest.raises(OSError, match="connection lost"):
        store.push(tiny, alice)
    assert store.templates() == []  # no manifest: not visible
    monkeypatch.setattr(store.fs, "put_file", real_put)
    resumed = store.push(tiny, alice)
    assert resumed.moved_files == 2  # the blob sent before the break is not sent again


def test_sftp_round_trip_boots_and_an_unpinned_host_is_refused(tiny, alice, trust, tmp_path):
    with LocalSshd(tmp_path / "host") as host:
        url = (f"sftp://root@127.0.0.1:{host.port}/{host.home}/templates?keyfile="
               f"{host.user_key}&known_hosts={host.known_hosts}")
        store = TemplateStore(Remote.parse(url))
        assert store.push(tiny, alice).moved_files == 3
        assert sorted(p.name for p in (host.home / "templates" / "blobs").iterdir()) == \
            sorted(tiny.manifest["files"].values())
        other = TemplateRepository(cache=tmp_path / "other", search=[])
        assert store.pull("tiny", tiny.template.version, other, trust).moved_files == 3
        with Lab(base=tmp_path / "labs", repository=other, accel="tcg") as lab:
            assert lab.vm("pulled").succeed("hostname") == "pulled\n"
        (tmp_path / "empty_known_hosts").write_text("")
        with pytest.raises(HostError, match="cannot connect over SFTP"):
            TemplateStore(Remote.parse(url.replace(str(host.known_hosts),
                                                   str(tmp_path / "empty_known_hosts"))))


def test_the_command_line_signs_pushes_and_a_second_machine_trusts_the_team_key(tiny,
                                                                              tmp_path):
    remote = tmp_path / "remote"

    def runner(machine):
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / machine / "config"),
               "VBOXLAB_CACHE": str(tmp_path / machine / "cache")}
        if machine == "one":
            env.pop("VBOXLAB_CACHE")  # the machine that built tiny

        def run(*args):
            result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                                    timeout=300, check=False)
            return result.returncode, result.stdout + result.stderr
        return run

    one, two = runner("one"), runner("two")
    assert one("remote", "add", "team", str(remote))[0] == 0
    assert (tmp_path / "one" / "config" / "vboxlab" / "remotes.json").stat().st_mode \
        & 0o777 == 0o600
    code, out = one("sync", "push", "tiny")
    assert code == 2 and "no signing key" in out and "vboxlab keys generate" in out, out
    code, out = one("keys", "generate", "--name", "alice@one")
    assert code == 0 and "fingerprint SHA256:" in out, out
    fingerprint = out.split("fingerprint ")[1].strip()
    assert (tmp_path / "one" / "config" / "vboxlab" / "signing" / "key").stat().st_mode \
        & 0o777 == 0o600
    assert one("keys", "publish", "--remote", "team")[0] == 0
    code, out = one("sync", "push", "tiny")
    assert code == 0 and f"pushed tiny {tiny.template.version}: 3 of 3 files" in out, out
    code, out = one("sync", "push", "tiny", "--remote", "team")
    assert code == 0 and "already there" in out
    code, out = one("remote", "add", "bad", "ftp://example.org/x")
    assert code == 2 and "scheme 'ftp' is not supported" in out
    # the second machine: refuses the manifest until it pins alice's key
    assert two("remote", "add", "team", str(remote))[0] == 0
    code, out = two("sync", "pull", "tiny")
    assert code != 0 and "a key this machine does not trust" in out and fingerprint in out, out
    code, out = two("keys", "trust", "--remote", "team")
    assert code == 0 and fingerprint in out and "alice@one\tno" in out, out
    code, out = two("keys", "trust", "--remote", "team", "SHA256:" + "A" * 43)
    assert code == 2 and "the remote lists no key" in out
    code, out = two("keys", "trust", "--remote", "team", fingerprint)
    assert code == 0 and f"trusting {fingerprint} (alice@one)" in out, out
    code, out = two("sync", "pull", "tiny")
    assert code == 0 and f"pulled tiny {tiny.template.version}: 3 of 3 files" in out, out
    installed = json.loads(next((tmp_path / "two" / "cache").glob(
        "templates/tiny/*/manifest.json")).read_text())
    assert installed["signed_by"] == {"name": "alice@one", "fingerprint": fingerprint}
    code, out = two("sync", "pull", "nosuch", "--remote", "team")
    assert code == 2 and "no template nosuch; there are: tiny@" in out
    code, out = two("sync", "log")
    assert code == 0 and f"tiny@{tiny.template.version}" in out and "alice@one" in out \
        and "trusted" in out, out


def test_unsigned_altered_and_untrusted_manifests_are_refused_and_logged(tiny, alice, trust,
                                                                         tmp_path):
    remote = tmp_path / "remote"
    store = TemplateStore(Remote.parse(str(remote)))
    store.push(tiny, None)
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    with pytest.raises(SignatureError, match=r"is not signed.*--allow-unsigned"):
        store.pull("tiny", tiny.template.version, other, trust)
    assert other.installed() == []
    shutil.rmtree(remote / "templates")  # pushed again, now by mallory
    mallory = SigningKey.generate("mallory@x", folder=tmp_path / "mallory")
    store.push(tiny, mallory)
    with pytest.raises(SignatureError, match=r"signed by mallory@x \(SHA256:.*does not trust"):
        store.pull("tiny", tiny.template.version, other, trust)
    shutil.rmtree(remote / "templates")
    store.push(tiny, alice)
    manifest_path = remote / "templates" / "tiny" / tiny.template.version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["description"] += " (and a backdoor)"  # changed after alice signed
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(SignatureError, match="does not match the contents: altered"):
        store.pull("tiny", tiny.template.version, other, trust)
    assert other.installed() == []
    assert store.pull("tiny", tiny.template.version, other, None).moved_files == 3  # told to
    entries = store.log(trust)
    assert [(e.signer, e.trusted) for e in entries] == \
        [("-", None), ("mallory@x", False), ("alice@build1", True)]
    assert {e.subject for e in entries} == {f"tiny@{tiny.template.version}"}
    log_file = sorted((remote / "log").iterdir())[-1]
    record = json.loads(log_file.read_text())
    record["entry"]["subject"] = "tiny@9.9.9"  # a rewritten entry loses its signature
    log_file.write_text(json.dumps(record))
    assert store.log(trust)[-1].trusted is None


def test_s3_round_trip_and_wrong_keys_are_refused(tiny, alice, trust, tmp_path,
                                                  monkeypatch):
    from tests.s3server import LocalS3

    with LocalS3(tmp_path / "s3") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        url = f"s3://templates/team?endpoint={s3.endpoint}"
        store = TemplateStore(Remote.parse(url))
        assert store.push(tiny, alice).moved_files == 3
        assert store.templates() == [("tiny", tiny.template.version)]
        assert store.push(tiny, alice).already
        other = TemplateRepository(cache=tmp_path / "other", search=[])
        assert store.pull("tiny", tiny.template.version, other, trust).moved_files == 3
        assert other.installed("tiny")[0].manifest["files"] == tiny.manifest["files"]
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(HostError, match="refused"):
            TemplateStore(Remote.parse(url)).templates()


def test_a_pull_that_would_fill_the_disk_is_refused_before_fetching(tiny, alice, trust,
                                                                    tmp_path, monkeypatch):
    from collections import namedtuple

    store = TemplateStore(Remote.parse(str(tmp_path / "remote")))
    store.push(tiny, alice)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("vboxlab.sync.store.shutil.disk_usage",
                        lambda _: usage(1 << 30, 1 << 30, 270 << 20))  # 14 MiB to spare
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    needs = sum((tiny.folder / file).stat().st_size for file in tiny.manifest["files"]) / 1e6
    with pytest.raises(SyncError, match=rf"needs {needs:.0f} MB .* has 15 MB to spare; "
                                        "nothing fetched"):
        store.pull("tiny", tiny.template.version, other, trust)
    assert other.installed() == []
