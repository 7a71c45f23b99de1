"""A kept lab backed up to a remote and restored on a "second machine" (its own settings,
template cache and lab folder): the VM comes back from its snapshots there and answers.
The same lab's measured run is priced by `vboxlab cost`."""

import json
import os
import re
import subprocess
import sys

import pytest

from .helpers import CLI, qemu_pids

KEEP_A_LAB = """
import sys
from pathlib import Path
from vboxlab.lab import Lab
with Lab(base=Path(sys.argv[1]), keep=True, accel="tcg") as lab:
    vm = lab.vm("k", memory=2048)  # more than it needs: `vboxlab cost` says so
    vm.snapshot("clean")
    vm.succeed("touch /root/later")
print(lab.id)
"""


@pytest.fixture
def machines(tmp_path):
    """Two command lines: ``one`` (made the lab, has tiny) and ``two`` (an empty machine)."""
    def runner(machine, cache):
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / machine / "config")}
        if cache:
            env["VBOXLAB_CACHE"] = str(tmp_path / machine / "cache")

        def run(*args, check=True):
            result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                                    timeout=300, check=False)
            if check:
                assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout + result.stderr
        return run

    bases = {}
    for name in ("one", "two"):
        bases[name] = tmp_path / name / "labs"
        bases[name].mkdir(parents=True, mode=0o700)
    one, two = runner("one", cache=False), runner("two", cache=True)
    try:
        yield one, two, bases
    finally:
        for name, run in (("one", one), ("two", two)):
            for lab in sorted(bases[name].iterdir()):
                run("clean", "--lab", lab.name, "--lab-dir", str(bases[name]), check=False)
            assert qemu_pids(str(bases[name])) == []


def test_a_kept_lab_restored_elsewhere_comes_back_from_its_snapshots(machines, tmp_path):
    one, two, bases = machines
    made = subprocess.run([sys.executable, "-c", KEEP_A_LAB, str(bases["one"])],
                          capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr
    lab = made.stdout.strip().splitlines()[-1]
    estimate = json.loads(one("cost", lab, "--lab-dir", str(bases["one"]), "--json"))
    (machine,) = estimate["machines"]
    assert machine["instance"] == "t3.small" and 50 < machine["peak_rss_mib"] < 1024, machine
    assert estimate["duration_s"] > 1 and estimate["per_run"] > 0
    assert re.fullmatch(r"k: 2048 MiB asked, \d+ MiB peak -> (512|1024) MiB \(t3\.\w+\) "
                        r"saves \d+\.\d\d USD/month", estimate["recommendations"][0])
    remote = tmp_path / "remote"
    one("remote", "add", "team", str(remote))
    fingerprint = one("keys", "generate", "--name", "alice@one").split("fingerprint ")[1].strip()
    one("keys", "publish")
    one("sync", "push", "tiny")
    out = one("backup", lab, "--lab-dir", str(bases["one"]))
    assert "took snapshot backup-" in out and f"backed up {lab} as {lab}@" in out, out
    stamp = out.split(f"as {lab}@")[1].split(":")[0]
    assert f"{lab}\t{stamp}" in one("backups")
    # the second machine: trusts alice, restores (pulling tiny from the same remote)
    two("remote", "add", "team", str(remote))
    refused = two("restore-backup", lab, "--lab-dir", str(bases["two"]), check=False)
    assert "a key this machine does not trust" in refused, refused
    two("keys", "trust", "--remote", "team", fingerprint)
    out = two("restore-backup", lab, "--as", "copy", "--lab-dir", str(bases["two"]))
    assert "pulling template tiny" in out and "restored" in out, out
    restored = bases["two"] / "copy"
    info = json.loads((restored / "k" / "machine.json").read_text())
    assert info["launch"]["overlay"] == str(restored / "k" / "disk.qcow2")
    assert info["launch"]["base_disk"].startswith(str(tmp_path / "two" / "cache"))
    assert (restored / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert "ledger-origin.jsonl" in os.listdir(restored)
    two("snapshots", "restore", "copy", "k", "clean", "--unplugged", "--lab-dir",
        str(bases["two"]))
    assert two("ssh", "copy", "k", "--lab-dir", str(bases["two"]), "--", "ls", "/root") == ""
    two("snapshots", "restore", "copy", "k", f"backup-{stamp.lower()}", "--lab-dir",
        str(bases["two"]))
    assert two("ssh", "copy", "k", "--lab-dir", str(bases["two"]), "--", "ls",
               "/root") == "later\n"
    # a damaged blob: refused, and nothing half-restored is left
    manifest = json.loads((remote / "backups" / lab / stamp / "manifest.json").read_text())
    blob = remote / "blobs" / manifest["files"]["k/snapshots.json"]
    blob.write_text(blob.read_text() + " ")
    refused = two("restore-backup", lab, "--as", "again", "--lab-dir", str(bases["two"]),
                  check=False)
    assert "k/snapshots.json of backup" in refused and "nothing restored" in refused, refused
    assert sorted(p.name for p in bases["two"].iterdir()) == ["copy"]
