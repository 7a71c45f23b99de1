"""SSH keys: generated per lab (user key) and per VM (host key), written 0600."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair: the OpenSSH private key and the public key line."""

    private_openssh: bytes
    public_line: str

    @classmethod
    def generate(cls, comment: str) -> KeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        return cls(private, f"{public.decode()} {comment}")

    def paramiko_key(self) -> paramiko.PKey:
        """The private key as paramiko uses it."""
        from io import StringIO

        return paramiko.Ed25519Key.from_private_key(StringIO(self.private_openssh.decode()))


def public_key_from_line(line: str) -> paramiko.PKey:
    """A paramiko public key from an OpenSSH line (``ssh-ed25519 AAAA... comment``)."""
    from vboxlab.errors import ConfigError

    parts = line.split()
    if len(parts) < 2:
        raise ConfigError(f"not an OpenSSH public key line: {line[:60]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (ValueError, paramiko.SSHException) as exc:
        raise ConfigError(f"not a usable public key ({parts[0]}): {exc}") from None


def write_private(path: Path, data: bytes) -> None:
    """Write a private key file created with mode 0600 from the start (never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load(path: Path) -> KeyPair:
    """The key pair stored at ``path`` (and ``path.pub``)."""
    return KeyPair(path.read_bytes(), path.with_suffix(".pub").read_text().strip())


def load_or_create(path: Path, comment: str) -> KeyPair:
    """The key pair stored at ``path`` (and ``path.pub``), made on first use."""
    if path.is_file():
        return load(path)
    pair = KeyPair.generate(comment)
    write_private(path, pair.private_openssh)
    path.with_suffix(".pub").write_text(pair.public_line + "\n")
    return pair
