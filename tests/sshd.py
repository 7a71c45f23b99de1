"""A real OpenSSH sshd on 127.0.0.1, started by a test: a second host, simulated.

Keys are made for the run (``ssh-keygen``): the server's host key is pinned in a
``known_hosts`` file of the test, the client's key is the only authorised one.
The server binds only 127.0.0.1 on a free port, gives its sessions a HOME of
the test's own (so what a "remote host" stores stays in the test's folder), and
is tied to the test process (it dies with it, SIGKILL included).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import paramiko

from vboxlab import procs
from vboxlab.pytest.policy import missing_capability

SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalSshd:
    """``with LocalSshd(folder) as host: host.libvirt_uri`` (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalSshd:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def user_key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def libvirt_uri(self) -> str:
        query = urllib.parse.urlencode({"keyfile": str(self.user_key),
                                        "known_hosts": str(self.known_hosts)})
        return f"qemu+ssh://root@127.0.0.1:{self.port}/system?{query}"

    def start(self) -> None:
        if not SSHD.is_file() or shutil.which("ssh-keygen") is None:
            missing_capability("a local sshd: apt-get install openssh-server (make test "
                               "installs it and stops the system one)")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.mkdir(mode=0o700, exist_ok=True)
        for name in ("host_ed25519", "id_ed25519"):
            if not (self.folder / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                                str(self.folder / name)], check=True)
        (self.folder / "authorized_keys").write_text(
            (self.folder / "id_ed25519.pub").read_text())
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        self.port = free_port()
        host_public = (self.folder / "host_ed25519.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_public)}\n")
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}",
            f"HostKey {self.folder / 'host_ed25519'}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "PermitRootLogin prohibit-password", "StrictModes no", "AllowTcpForwarding yes",
            f"PidFile {self.folder / 'sshd.pid'}", f"SetEnv HOME={self.home}",
            "Subsystem sftp internal-sftp", ""]))
        log = (self.folder / "sshd.log").open("ab")
        self._proc = procs.spawn([str(SSHD), "-D", "-e", "-f", str(config)], tied=True,
                                 stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.folder / "sshd.log").read_text()[-1000:]
                    raise RuntimeError(f"sshd did not start: {log_text}") from None
                time.sleep(0.05)

    def client(self) -> paramiko.SSHClient:
        """A paramiko client of the host (its key pinned)."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", self.port, username="root",
                       key_filename=str(self.user_key), allow_agent=False, look_for_keys=False)
        return client

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
