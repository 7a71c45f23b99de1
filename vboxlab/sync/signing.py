"""Who pushed what: ed25519 signing keys, signatures over manifests, the keys a machine trusts.

A person's key lives in ``$XDG_CONFIG_HOME/vboxlab/signing/`` (``key``, PKCS#8,
mode 0600, and ``key.pub``, one line ``vboxlab-ed25519 BASE64 NAME``). Its
fingerprint is ``SHA256:`` and the unpadded base64 of the SHA-256 of the raw
public key, as OpenSSH prints them. The keys this machine trusts are pinned in
``trusted-keys.json`` beside it (its own key is always trusted). Every signature
covers a purpose label and the exact bytes it vouches for (``manifest`` or
``log``), so a signed log entry can never pass for a signed manifest.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from vboxlab.errors import ConfigError, VboxlabError
from vboxlab.paths import config_dir, write_private

KEY_TYPE = "vboxlab-ed25519"
PURPOSES = ("manifest", "log", "project", "backup")
_MAX_NAME = 100


class SignatureError(VboxlabError):
    """A manifest or log entry that is unsigned, badly signed or signed by an untrusted key."""


def default_signer_name() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _check_name(name: str, where: str) -> str:
    if not name or len(name) > _MAX_NAME or not name.isprintable() or any(c.isspace()
                                                                          for c in name):
        raise ConfigError(f"{where}: signer name {name!r} must be 1-{_MAX_NAME} printable "
                          "characters without spaces (for example alice@build1)")
    return name


def _payload(purpose: str, data: bytes) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown signature purpose {purpose!r}")
    return f"vboxlab-{purpose}\0".encode() + data


@dataclass(frozen=True)
class PublicKey:
    """Someone's public key and the name they gave it."""

    name: str
    raw: bytes

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.raw).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{KEY_TYPE} {base64.b64encode(self.raw).decode()} {self.name}"

    @classmethod
    def parse_line(cls, text: str, where: str) -> PublicKey:
        """A key from its one-line form; ``where`` names the file or remote it came from."""
        parts = text.strip().split()
        if len(parts) != 3 or parts[0] != KEY_TYPE:
            raise ConfigError(f"{where}: not a vboxlab public key; expected one line "
                              f"'{KEY_TYPE} BASE64 NAME' (as `vboxlab keys show` prints)")
        return cls(_check_name(parts[2], where), _raw_key(parts[1], where))

    def verify(self, signature: bytes, purpose: str, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature,
                                                                _payload(purpose, data))
        except InvalidSignature:
            return False
        return True


def _raw_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the key is not base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: an ed25519 public key has 32 bytes, this one {len(raw)}")
    return raw


def signing_dir() -> Path:
    return config_dir() / "signing"


class SigningKey:
    """This person's private key (see the module's docstring for where it lives)."""

    def __init__(self, private: Ed25519PrivateKey, name: str) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        self.public = PublicKey(name, raw)

    @classmethod
    def generate(cls, name: str | None = None, folder: Path | None = None,
                 replace: bool = False) -> SigningKey:
        """Make a new key and write it (refused if one exists, unless ``replace``)."""
        folder = folder or signing_dir()
        name = _check_name(name or default_signer_name(), "vboxlab keys generate --name")
        if (folder / "key").exists() and not replace:
            raise ConfigError(f"a signing key exists already in {folder}; keep it (`vboxlab "
                              "keys show`) or replace it with --force (teams that trust the "
                              "old one must then trust the new one)")
        key = cls(Ed25519PrivateKey.generate(), name)
        pem = key._private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        write_private(folder / "key", pem)
        write_private(folder / "key.pub", (key.public.line + "\n").encode())
        return key

    @classmethod
    def load(cls, folder: Path | None = None) -> SigningKey:
        folder = folder or signing_dir()
        path = folder / "key"
        if not path.is_file():
            raise ConfigError(f"no signing key in {folder}: make one with `vboxlab keys "
                              "generate` (or push with --unsigned)")
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: chmod 600 {path}")
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an ed25519 key")
        public = PublicKey.parse_line((folder / "key.pub").read_text(), str(folder / "key.pub"))
        key = cls(private, public.name)
        if key.public.raw != public.raw:
            raise ConfigError(f"{folder}: key.pub does not belong to key; regenerate with "
                              "`vboxlab keys generate --force`")
        return key

    @classmethod
    def find(cls, folder: Path | None = None) -> SigningKey | None:
        """The key if one was made, else None."""
        return cls.load(folder) if ((folder or signing_dir()) / "key").is_file() else None

    def sign(self, purpose: str, data: bytes) -> dict[str, str]:
        """A signature document for ``data``: signer name, public key and signature."""
        signature = self._private.sign(_payload(purpose, data))
        return {"signer": self.public.name,
                "key": base64.b64encode(self.public.raw).decode(),
                "signature": base64.b64encode(signature).decode()}


def read_signature(document: Any, where: str) -> tuple[PublicKey, bytes]:
    """The key and signature bytes of a signature document (shape checked)."""
    if not isinstance(document, dict) or not all(
            isinstance(document.get(k), str) for k in ("signer", "key", "signature")):
        raise SignatureError(f"{where}: not a signature document (signer, key, signature)")
    try:
        name = _check_name(document["signer"], where)
        key = PublicKey(name, _raw_key(document["key"], where))
        signature = base64.b64decode(document["signature"], validate=True)
    except (ConfigError, binascii.Error, ValueError) as exc:
        raise SignatureError(f"{where}: damaged signature: {exc}") from None
    return key, signature


class TrustStore:
    """The public keys this machine accepts signatures from (pinned by fingerprint)."""

    def __init__(self, path: Path | None = None, own: SigningKey | None = None) -> None:
        self.path = path or config_dir() / "trusted-keys.json"
        self.own = own if own is not None else SigningKey.find(
            self.path.parent / "signing")

    def keys(self) -> dict[str, PublicKey]:
        """Fingerprint -> key of every trusted key, this machine's own included."""
        found: dict[str, PublicKey] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise ConfigError(f"{self.path}: not JSON ({exc}); fix or remove it") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{self.path}: expected an object of fingerprint -> key")
            for fingerprint, line in data.items():
                key = PublicKey.parse_line(str(line), f"{self.path} ({fingerprint})")
                if key.fingerprint != fingerprint:
                    raise ConfigError(f"{self.path}: the key pinned as {fingerprint} has "
                                      f"fingerprint {key.fingerprint}; remove that entry")
                found[fingerprint] = key
        if self.own is not None:
            found[self.own.public.fingerprint] = self.own.public
        return found

    def _save(self, keys: dict[str, PublicKey]) -> None:
        own = self.own.public.fingerprint if self.own else None
        data = {fp: key.line for fp, key in sorted(keys.items()) if fp != own}
        write_private(self.path, (json.dumps(data, indent=2) + "\n").encode())

    def add(self, key: PublicKey) -> bool:
        """Pin ``key``; False if it was trusted already."""
        keys = self.keys()
        if key.fingerprint in keys:
            return False
        keys[key.fingerprint] = key
        self._save(keys)
        return True

    def remove(self, fingerprint: str) -> PublicKey:
        keys = self.keys()
        if self.own is not None and fingerprint == self.own.public.fingerprint:
            raise ConfigError(f"{fingerprint} is this machine's own signing key")
        if fingerprint not in keys:
            raise ConfigError(f"no trusted key {fingerprint}; trusted: "
                              + (", ".join(keys) or "none"))
        key = keys.pop(fingerprint)
        self._save(keys)
        return key

    def check(self, document: Any, purpose: str, data: bytes, where: str) -> PublicKey:
        """The trusted key that signed ``data``, or SignatureError saying what is wrong."""
        if document is None:
            raise SignatureError(f"{where} is not signed; pull it anyway only if you know "
                                 "where it came from (--allow-unsigned)")
        key, signature = read_signature(document, where)
        trusted = self.keys().get(key.fingerprint)
        if not key.verify(signature, purpose, data):
            raise SignatureError(f"{where}: the signature by {key.name} ({key.fingerprint}) "
                                 "does not match the contents: altered after signing")
        if trusted is None:
            raise SignatureError(
                f"{where} is signed by {key.name} ({key.fingerprint}), a key this machine "
                "does not trust; after checking that fingerprint with its owner: `vboxlab "
                f"keys trust --remote REMOTE {key.fingerprint}`")
        return trusted
