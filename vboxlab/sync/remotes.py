"""Named remotes (``vboxlab remote add NAME URL``) and opening them as fsspec filesystems.

A remote is a URL: a folder (``/srv/templates`` or ``file:///srv/templates``),
``sftp://USER@HOST[:PORT]/PATH[?keyfile=PATH&known_hosts=PATH]`` (fsspec's
``sshfs``; the host key is checked against ``known_hosts``, default
``~/.ssh/known_hosts``, and an unknown one is refused) or
``s3://BUCKET/PATH[?endpoint=URL&region=NAME]`` (``s3fs``; any S3 server).
Credentials are never stored: SSH keys come from the given key file, the SSH
agent or the usual files; S3 keys from the environment or ``~/.aws``. The list
lives in ``$XDG_CONFIG_HOME/vboxlab/remotes.json`` (mode 0600), outside any
project.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vboxlab.errors import ConfigError, HostError
from vboxlab.names import is_valid_name
from vboxlab.paths import config_dir, write_private

SCHEMES = ("file", "sftp", "s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def config_file() -> Path:
    return config_dir() / "remotes.json"


@dataclass(frozen=True)
class Remote:
    """A remote's URL taken apart and checked."""

    url: str
    scheme: str
    root: str
    host: str = ""
    port: int = 22
    user: str = ""
    keyfile: Path | None = None
    known_hosts: Path | None = None
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str) -> Remote:
        hint = ("give a folder, file:///PATH, sftp://USER@HOST[:PORT]/PATH"
                "[?keyfile=PATH&known_hosts=PATH] or s3://BUCKET/PATH[?endpoint=URL]")
        if url.startswith("/"):
            url = f"file://{url}"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ConfigError(f"remote {url!r}: scheme {parts.scheme or 'none'!r} is not "
                              f"supported; {hint}")
        root = urllib.parse.unquote(parts.path)
        if not root.startswith("/") or ".." in root.split("/"):
            raise ConfigError(f"remote {url!r}: the path must be absolute, without '..'")
        if parts.scheme == "file":
            if parts.netloc or parts.query:
                raise ConfigError(f"remote {url!r}: a folder remote takes only a path; {hint}")
            return cls(url, "file", root.rstrip("/") or "/")
        if parts.scheme == "s3":
            return cls._parse_s3(url, parts, root)
        host = parts.hostname or ""
        if not _HOST_RE.match(host):
            raise ConfigError(f"remote {url!r}: host {host!r} is not a host name; {hint}")
        if parts.password is not None:
            raise ConfigError(f"remote {url!r}: holds a password; use a key or the SSH agent")
        try:
            port = parts.port or 22
        except ValueError:
            raise ConfigError(f"remote {url!r}: the port is not a number") from None
        params = urllib.parse.parse_qs(parts.query)
        unknown = sorted(set(params) - {"keyfile", "known_hosts"})
        if unknown:
            raise ConfigError(f"remote {url!r}: parameters {', '.join(unknown)} are not "
                              "understood; sftp remotes take keyfile and known_hosts")
        keyfile = Path(params["keyfile"][0]).expanduser() if "keyfile" in params else None
        if keyfile is not None and (not keyfile.is_file() or keyfile.stat().st_mode & 0o077):
            raise ConfigError(f"remote {url!r}: keyfile {keyfile} is missing or readable by "
                              f"others (chmod 600 {keyfile})")
        known = Path(params.get("known_hosts", ["~/.ssh/known_hosts"])[0]).expanduser()
        if not known.is_file():
            raise ConfigError(f"remote {url!r}: no known_hosts file at {known}; pin the "
                              f"host's key there first (`ssh-keyscan -p {port} {host}`, after "
                              "checking its fingerprint)")
        return cls(url, "sftp", root.rstrip("/") or "/", host, port,
                   urllib.parse.unquote(parts.username or os.environ.get("USER", "root")),
                   keyfile, known)

    @classmethod
    def _parse_s3(cls, url: str, parts: urllib.parse.SplitResult, root: str) -> Remote:
        bucket = parts.netloc
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(f"remote {url!r}: {bucket!r} is not an S3 bucket name")
        params = urllib.parse.parse_qs(parts.query)
        unknown = sorted(set(params) - {"endpoint", "region"})
        if unknown:
            raise ConfigError(f"remote {url!r}: parameters {', '.join(unknown)} are not "
                              "understood; s3 remotes take endpoint and region (keys come "
                              "from the environment or ~/.aws, never from the URL)")
        endpoint = params.get("endpoint", [None])[0]
        if endpoint is not None:
            where = urllib.parse.urlsplit(endpoint)
            if where.scheme not in ("http", "https") or not where.hostname or where.path not in \
                    ("", "/") or where.query or where.username:
                raise ConfigError(f"remote {url!r}: endpoint {endpoint!r} is not "
                                  "http(s)://HOST[:PORT]")
        path = root.strip("/")
        return cls(url, "s3", f"{bucket}/{path}" if path else bucket, endpoint=endpoint,
                   region=params.get("region", [None])[0])

    def filesystem(self) -> Any:
        """An fsspec filesystem for the remote (connecting, for SFTP)."""
        import fsspec

        if self.scheme == "file":
            return fsspec.filesystem("file")
        if self.scheme == "s3":
            client: dict[str, str] = {}
            if self.endpoint:
                client["endpoint_url"] = self.endpoint
            if self.region:
                client["region_name"] = self.region
            try:
                # vboxlab checks every blob's size after upload and its SHA-256 on every
                # download; botocore's own per-request CRC (on by default since 1.36) would
                # hash every byte once more in Python: measured 8-12 % of a push here
                return fsspec.filesystem("s3", client_kwargs=client, skip_instance_cache=True,
                                         config_kwargs={
                                             "request_checksum_calculation": "when_required",
                                             "response_checksum_validation": "when_required"})
            except ImportError:
                raise HostError("s3 remotes need the s3fs package: pip install s3fs") from None
        try:
            return fsspec.filesystem(
                "sftp", host=self.host, port=self.port, username=self.user,
                known_hosts=str(self.known_hosts),
                client_keys=[str(self.keyfile)] if self.keyfile else None,
                skip_instance_cache=True)
        except ImportError:
            raise HostError("sftp remotes need the sshfs package: pip install sshfs") from None
        except Exception as exc:  # asyncssh raises its own classes for host key and auth
            raise HostError(f"remote {self.url}: cannot connect over SFTP: "
                            f"{type(exc).__name__}: {exc}") from None


def load_remotes() -> dict[str, str]:
    """Name -> URL of the remotes added with ``vboxlab remote add``."""
    path = config_file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path}: expected an object of remote name -> URL")
    return dict(data)


def add_remote(name: str, url: str) -> Remote:
    """Check and store a remote under ``name``."""
    if not is_valid_name(name):
        raise ConfigError(f"remote name {name!r}: use lowercase letters, digits and dashes")
    remote = Remote.parse(url)
    remotes = load_remotes()
    remotes[name] = remote.url
    _save(remotes)
    return remote


def _save(remotes: dict[str, str]) -> None:
    write_private(config_file(), (json.dumps(remotes, indent=2) + "\n").encode())


def remove_remote(name: str) -> None:
    remotes = load_remotes()
    if name not in remotes:
        raise ConfigError(f"no remote {name!r}; remotes: {', '.join(remotes) or 'none'}")
    del remotes[name]
    _save(remotes)


def resolve_remote(name_or_url: str | None) -> Remote:
    """A remote by name (default: the only one, or the one called ``origin``) or by URL."""
    remotes = load_remotes()
    if name_or_url is None:
        if "origin" in remotes:
            return Remote.parse(remotes["origin"])
        if len(remotes) == 1:
            return Remote.parse(next(iter(remotes.values())))
        raise ConfigError("which remote? give --remote NAME (remotes: "
                          f"{', '.join(remotes) or 'none; add one with vboxlab remote add'})")
    if name_or_url in remotes:
        return Remote.parse(remotes[name_or_url])
    if "/" in name_or_url:
        return Remote.parse(name_or_url)
    raise ConfigError(f"no remote {name_or_url!r}; remotes: {', '.join(remotes) or 'none'}")
