"""A hypervisor host reached over SSH: ``qemu+ssh://user@host[:port]/system``.

One paramiko connection per host, its host key pinned (a ``known_hosts`` file;
an unknown or changed key is refused, never learned), carries everything the
libvirt provider needs besides libvirt's own protocol: commands on the host
(``qemu-img``; argv lists joined with ``shlex``, never shell strings built from
input), files (SFTP: template files as content-addressed blobs, uploaded once
and verified by SHA-256 before they become visible; each machine's initrd), and
TCP tunnels to ports on the host's loopback (the guests' SSH and forwarded
ports), served on this machine's 127.0.0.1.

libvirt itself is opened over ``qemu+libssh://`` with the same key and the same
``known_hosts`` (``known_hosts_verify=normal``), so both paths pin the same key
and no ``~/.ssh/config`` is involved.

Everything vboxlab puts on a host lives under ``~/.cache/vboxlab-remote`` of the
SSH user there (mode 0700): ``blobs/SHA256`` and ``labs/LAB/MACHINE/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import re
import secrets
import select
import shlex
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from vboxlab.errors import ConfigError, HostError, ProviderError

SCHEMES = ("qemu+ssh", "qemu+libssh")
PARAMETERS = ("keyfile", "known_hosts")
REMOTE_ROOT = ".cache/vboxlab-remote"
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
log = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    """Whether a libvirt URI names a host reached over SSH."""
    return urllib.parse.urlsplit(uri).scheme in SCHEMES


@dataclass(frozen=True)
class RemoteTarget:
    """A ``qemu+ssh://`` URI taken apart and checked."""

    uri: str
    user: str
    host: str
    port: int
    keyfile: Path | None
    known_hosts: Path

    @classmethod
    def parse(cls, uri: str) -> RemoteTarget:
        """Check every part of ``uri``; the error names the part and how to fix it."""
        hint = "write it as qemu+ssh://USER@HOST[:PORT]/system[?keyfile=PATH&known_hosts=PATH]"
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in SCHEMES:
            raise ConfigError(f"libvirt URI {uri!r}: scheme {parts.scheme!r} is not a remote "
                              f"one; {hint}")
        try:
            port = parts.port or 22
        except ValueError:
            raise ConfigError(f"libvirt URI {uri!r}: the port is not a number from 1 to "
                              f"65535; {hint}") from None
        host = parts.hostname or ""
        if not _HOST_RE.match(host):
            raise ConfigError(f"libvirt URI {uri!r}: host {host!r} is not a host name or IPv4 "
                              f"address; {hint}")
        user = urllib.parse.unquote(parts.username or "root")
        if not _USER_RE.match(user):
            raise ConfigError(f"libvirt URI {uri!r}: user {user!r} is not a valid user name")
        if parts.path != "/system":
            raise ConfigError(f"libvirt URI {uri!r}: path {parts.path!r}; vboxlab runs domains "
                              "on the host's system instance: end the URI with /system")
        if parts.password is not None:
            raise ConfigError(f"libvirt URI {uri!r}: holds a password; use a key (keyfile=) "
                              "or the SSH agent")
        try:
            params = urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query))
        except ValueError:
            raise ConfigError(f"libvirt URI {uri!r}: its query {parts.query!r} is not "
                              f"name=value pairs; {hint}") from None
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown or any(len(v) > 1 for v in params.values()):
            named = ", ".join(unknown) or "given twice"
            raise ConfigError(f"libvirt URI {uri!r}: parameters {named} are not understood; "
                              f"vboxlab takes {', '.join(PARAMETERS)}, once each")
        keyfile = Path(params["keyfile"][0]).expanduser() if "keyfile" in params else None
        if keyfile is not None:
            if not keyfile.is_file():
                raise ConfigError(f"libvirt URI {uri!r}: keyfile {keyfile} does not exist")
            if keyfile.stat().st_mode & 0o077:
                raise ConfigError(f"libvirt URI {uri!r}: keyfile {keyfile} is readable by "
                                  f"others; make it private: chmod 600 {keyfile}")
        known_hosts = Path(params.get("known_hosts", ["~/.ssh/known_hosts"])[0]).expanduser()
        if not known_hosts.is_file():
            raise ConfigError(f"libvirt URI {uri!r}: no known_hosts file at {known_hosts}; pin "
                              "the host's key there first (check its fingerprint, then "
                              f"`ssh-keyscan -p {port} {host} >> {known_hosts}`)")
        return cls(uri, user, host, port, keyfile, known_hosts)

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def libvirt_uri(self) -> str:
        """The URI libvirt opens: its libssh transport, the same key and pinned host keys."""
        query = {"known_hosts": str(self.known_hosts), "known_hosts_verify": "normal",
                 "sshauth": "privkey" if self.keyfile else "agent,privkey"}
        if self.keyfile is not None:
            query["keyfile"] = str(self.keyfile)
        return (f"qemu+libssh://{urllib.parse.quote(self.user)}@{self.host}:{self.port}/system?"
                f"{urllib.parse.urlencode(query)}")


@dataclass
class LocalForward:
    """A listener on this machine's 127.0.0.1 whose connections are tunnelled to a port on
    the remote host's loopback."""

    listener: socket.socket
    remote_port: int
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])


class RemoteHost:
    """The SSH side of a remote hypervisor host (see the module's docstring)."""

    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.RLock()
        self._sftp_lock = threading.Lock()
        self._sftp: paramiko.SFTPClient | None = None
        self._forwards: list[LocalForward] = []
        self._closed = threading.Event()
        self._found: dict[str, str] = {}
        self._root = ""

    def __repr__(self) -> str:
        return f"<RemoteHost {self.target.label}>"

    # -- connection -----------------------------------------------------
    def connect(self) -> None:
        """Connect once (host key pinned); find the home folder and the tools vboxlab needs."""
        with self._lock:
            if self._root:
                return
            if self._client is None:
                self._open()
            home = self.run(["sh", "-c", 'printf %s "$HOME"'], what="finding the home folder")
            if not home.startswith("/"):
                raise HostError(f"{self.target.label}: the SSH user's home folder is {home!r}")
            root = posixpath.join(home, REMOTE_ROOT)
            self.run(["mkdir", "-p", "-m", "700", posixpath.join(root, "blobs"),
                      posixpath.join(root, "labs")], what="creating vboxlab's folders")
            self.run(["chmod", "700", root], what="making vboxlab's folder private")
            self._root = root

    @property
    def root(self) -> str:
        """vboxlab's folder on the host (connecting first if need be)."""
        if not self._root:
            self.connect()
        return self._root

    def _open(self) -> None:
        """The SSH connection, host key pinned."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.target.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key = self.target.keyfile
        try:
            client.connect(self.target.host, self.target.port, username=self.target.user,
                           key_filename=str(key) if key else None, allow_agent=key is None,
                           look_for_keys=key is None, timeout=10, banner_timeout=10,
                           auth_timeout=10)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostError(f"{self.target.label}: the host's SSH key "
                            f"{exc.key.get_name()} {exc.key.get_base64()[:24]}... is not the "
                            f"one pinned in {self.target.known_hosts}; refusing to "
                            "connect") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostError(
                    f"{self.target.label}: its host key is not pinned in "
                    f"{self.target.known_hosts}; check the key's fingerprint, then add it "
                    f"(`ssh-keyscan -p {self.target.port} {self.target.host}`)") from None
            raise HostError(f"{self.target.label}: SSH failed: {exc}") from None
        except OSError as exc:
            client.close()
            raise HostError(f"{self.target.label}: cannot reach the host over SSH: "
                            f"{exc}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        # tunnels carry small request/answer exchanges: no Nagle delay on either hop
        if isinstance(transport.sock, socket.socket):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client

    def _transport(self) -> paramiko.Transport:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._open()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise HostError(f"{self.target.label}: the SSH connection to the host was lost")
        return transport

    def close(self) -> None:
        """Close the tunnels, SFTP and the SSH connection."""
        self._closed.set()
        for forward in self._forwards:
            forward.listener.close()
        self._forwards.clear()
        with self._sftp_lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- commands -------------------------------------------------------
    def run(self, argv: Sequence[str], *, what: str, timeout: float = 120,
            check: bool = True) -> str:
        """Run ``argv`` on the host; its stdout, or ProviderError with its stderr."""
        command = shlex.join(argv)
        channel = self._transport().open_session(timeout=10)
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            stdout, stderr = channel.makefile("rb"), channel.makefile_stderr("rb")
            out, err = stdout.read(), stderr.read()
            status = channel.recv_exit_status()
        except TimeoutError:
            raise ProviderError(f"{self.target.label}: {what} took over {timeout:.0f} s "
                                f"({command})") from None
        finally:
            channel.close()
        if check and status != 0:
            raise ProviderError(f"{self.target.label}: {what} failed (exit status {status}, "
                                f"{command}): {err.decode(errors='replace').strip()[-800:]}")
        return out.decode(errors="replace")

    def exec_channel(self, argv: Sequence[str]) -> paramiko.Channel:
        """``argv`` started on the host, its stdin, stdout and stderr on the returned channel
        (it ends when the channel or the connection closes)."""
        channel = self._transport().open_session(timeout=10)
        channel.exec_command(shlex.join(argv))
        return channel

    def which(self, program: str, why: str) -> str:
        """The path of ``program`` on the host, or HostError saying what to install."""
        if program in self._found:
            return self._found[program]
        found = self.run(["sh", "-c", 'command -v "$1" || true', "sh", program],
                         what=f"looking for {program}").strip()
        if not found.startswith("/"):
            raise HostError(f"{self.target.label}: {program} is not installed on the host; it "
                            f"is needed {why} (Debian: apt-get install qemu-system-x86 "
                            "qemu-utils)")
        self._found[program] = found
        return found

    def address(self) -> str:
        """The host's IPv4 address (its name resolved here)."""
        try:
            found = socket.getaddrinfo(self.target.host, None, socket.AF_INET,
                                       socket.SOCK_DGRAM)
        except OSError as exc:
            raise HostError(f"{self.target.label}: cannot resolve {self.target.host}: "
                            f"{exc}") from None
        return str(found[0][4][0])

    def free_udp_port(self) -> int:
        """A UDP port no socket on the host uses now (from its /proc/net/udp), at random in
        the ephemeral range, for a NIC's end QEMU binds there."""
        used = set()
        for line in self.run(["cat", "/proc/net/udp"], what="listing UDP ports").splitlines()[1:]:
            fields = line.split()
            local = fields[1].rsplit(":", 1)[-1] if len(fields) > 1 else ""
            if re.fullmatch(r"[0-9A-Fa-f]{1,4}", local):  # anything else is not a port line
                used.add(int(local, 16))
        for _ in range(100):
            port = 32768 + secrets.randbelow(28000)
            if port not in used:
                return port
        raise HostError(f"{self.target.label}: found no free UDP port")

    def exists(self, path: str) -> bool:
        with self._sftp_client() as sftp:
            try:
                sftp.stat(path)
            except OSError:
                return False
            return True

    # -- files ----------------------------------------------------------
    @contextlib.contextmanager
    def _sftp_client(self) -> Any:
        with self._sftp_lock:
            if self._sftp is None:
                self._sftp = self._transport().open_sftp_client()
            yield self._sftp

    def upload_blob(self, local: Path, digest: str, *, label: str) -> str:
        """``local`` on the host as ``blobs/DIGEST``: uploaded only if missing, checked by
        SHA-256 on the host before it is renamed into place (a partial one is never used)."""
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"{label}: {digest!r} is not a SHA-256 digest")
        target = posixpath.join(self.root, "blobs", digest)
        if self.exists(target):
            return target
        partial = f"{target}.partial-{threading.get_ident()}"
        log.info("%s: uploading %s (%s, %d bytes)", self.target.label, label, local,
                 local.stat().st_size)
        try:
            with self._sftp_client() as sftp:
                sftp.put(str(local), partial)
                sftp.chmod(partial, 0o600)
            found = self.run(["sha256sum", "--", partial], what=f"checking {label}").split()
            if not found or found[0] != digest:
                raise ProviderError(f"{self.target.label}: {label} arrived with SHA-256 "
                                    f"{found[0] if found else '?'}, not {digest}; not used")
            with self._sftp_client() as sftp:
                sftp.posix_rename(partial, target)
        finally:
            self.run(["rm", "-f", "--", partial], what="removing a partial upload")
        return target

    def put(self, local: Path, remote: str, mode: int = 0o600) -> None:
        """Copy one file to the host (written beside, then renamed into place)."""
        partial = f"{remote}.partial"
        with self._sftp_client() as sftp:
            sftp.put(str(local), partial)
            sftp.chmod(partial, mode)
            sftp.posix_rename(partial, remote)

    def get(self, remote: str, local: Path) -> None:
        """Copy one file from the host (written beside, then renamed into place)."""
        partial = local.with_name(f".{local.name}.partial")
        with self._sftp_client() as sftp:
            sftp.get(remote, str(partial))
        partial.replace(local)

    def tail(self, path: str, lines: int = 20) -> str:
        """The last lines of a file on the host ('' if it cannot be read)."""
        try:
            return self.run(["tail", "-n", str(lines), "--", path], what=f"reading {path}",
                            check=False, timeout=20)
        except (HostError, ProviderError, paramiko.SSHException):
            return ""

    def machine_dir(self, lab_id: str, machine: str) -> str:
        """A machine's folder on the host (created, private)."""
        for value, what in ((lab_id, "lab id"), (machine, "machine name")):
            if not _NAME_RE.match(value):
                raise ConfigError(f"{what} {value!r} cannot name a folder on "
                                  f"{self.target.label}")
        folder = posixpath.join(self.root, "labs", lab_id, machine)
        self.run(["mkdir", "-p", "-m", "700", folder], what=f"creating {folder}")
        return folder

    def remove_machine_dir(self, path: str) -> None:
        """Remove a machine's folder, and its lab's folder once empty; only under labs/."""
        labs = posixpath.join(self.root, "labs") + "/"
        normal = posixpath.normpath(path)
        if not normal.startswith(labs) or normal.count("/") != labs.count("/") + 1:
            raise ValueError(f"refusing to remove {path} on {self.target.label}: not a machine "
                             f"folder under {labs}")
        self.run(["rm", "-rf", "--", normal], what=f"removing {normal}")
        self.run(["rmdir", "--ignore-fail-on-non-empty", "--", posixpath.dirname(normal)],
                 what="removing the lab's folder", check=False)

    # -- tunnels --------------------------------------------------------
    def open_tunnel(self, port: int, timeout: float = 10) -> paramiko.Channel:
        """A channel to ``127.0.0.1:port`` as seen from the host."""
        try:
            return self._transport().open_channel("direct-tcpip", ("127.0.0.1", port),
                                                  ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ProviderError(f"{self.target.label}: cannot open a tunnel to its port {port}: "
                                f"{exc}") from None

    def forward_local(self, remote_port: int) -> int:
        """Serve the host's ``127.0.0.1:remote_port`` on a free port of this machine's
        127.0.0.1; returns that port. Lives until :meth:`close_forward` or :meth:`close`."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        thread = threading.Thread(target=self._accept, args=(listener, remote_port),
                                  name=f"tunnel-{remote_port}", daemon=True)
        forward = LocalForward(listener, remote_port, thread)
        self._forwards.append(forward)
        thread.start()
        return forward.port

    def close_forward(self, local_port: int) -> None:
        for forward in [f for f in self._forwards if f.port == local_port]:
            forward.listener.close()
            self._forwards.remove(forward)

    def _accept(self, listener: socket.socket, remote_port: int) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                channel = self.open_tunnel(remote_port)
            except (ProviderError, HostError, paramiko.SSHException) as exc:
                log.info("%s: tunnel to port %d refused: %s", self.target.label, remote_port,
                         exc)
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, channel), daemon=True,
                             name=f"tunnel-{remote_port}-pump").start()


def _pump(conn: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            ready = select.select([conn.fileno(), channel.fileno()], [], [], 30)[0]
            if conn.fileno() in ready:
                data = conn.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel.fileno() in ready:
                data = channel.recv(65536)
                if not data:
                    break
                conn.sendall(data)
    except (OSError, paramiko.SSHException):
        pass
    finally:
        channel.close()
        conn.close()


def address_toward(address: str) -> str:
    """This machine's address on the route to ``address`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))
        return str(probe.getsockname()[0])


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered by path, size and modification time."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def release_machine_dir(name: str, data: dict[str, Any]) -> None:
    """Remove a machine's folder on a remote host a dead run left (``vboxlab clean``)."""
    host = RemoteHost(RemoteTarget.parse(str(data.get("uri", ""))))
    try:
        host.connect()
        host.remove_machine_dir(str(data.get("path", "")))
    finally:
        host.close()
