"""Template definitions: data under ``fixtures/templates/<name>/template.toml``.

A definition says what a template is (name, version, resources), how it boots,
how the guest is reached and how it is built. It is validated on load; an
error names the file, the field and the reason.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vboxlab.errors import ConfigError
from vboxlab.names import NAME_RULE, is_valid_name

DEFINITION_FILE = "template.toml"
_SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Default resources of a VM made from this template."""

    memory: int = Field(256, ge=64, le=65536, description="MiB of RAM")
    cpus: int = Field(1, ge=1, le=64)


class Boot(_Strict):
    """How the template boots: the kernel command line of a direct kernel boot, and where
    each VM's own files (host key, hostname, lab interfaces) go."""

    cmdline: str = "console=ttyS0"
    files_into: Literal["initramfs", "rootfs"] = Field(
        "initramfs", description="initramfs: it is the root; rootfs: a hook copies them to disk")
    firmware: Literal["kernel", "bios", "uefi"] = Field(
        "kernel", description="kernel: QEMU boots the template's kernel and initrd; bios or "
        "uefi: the disk boots with its own bootloader, and each VM's files reach it as a "
        "NoCloud seed (cloud-init)")


class Access(_Strict):
    """How the guest is reached: an SSH user and port, and the command channels it serves."""

    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    channels: list[Literal["agent", "ssh"]] = Field(
        default_factory=lambda: ["ssh"],  # type: ignore[arg-type]
        description="command channels the guest serves, preferred first: agent (vboxlab-agent "
                    "on a virtio-serial port; the template's init starts it) and ssh")

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value) or "ssh" not in value:
            raise ValueError(f"channels {value!r}: list each of agent and ssh at most once, "
                             "and ssh always (vboxlab ssh and SSH tests need it), e.g. "
                             "[\"agent\", \"ssh\"]")
        return value


class NetworkSettings(_Strict):
    """The guest's user network (eth0: how the lab reaches it)."""

    restrict: bool = Field(
        False, description="the guest reaches nothing outside: only the lab's forwards work "
        "(always on for templates imported from another machine unless a lab turns it off)")


_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,120}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,100}(=[A-Za-z0-9.+~:-]{1,100})?$")


class Build(_Strict):
    """The build recipe and what it is based on."""

    recipe: Literal["initramfs", "debootstrap", "import", "layer"]
    base: Literal["debian-12"] = Field(
        "debian-12", description="debootstrap: the distribution (a layer names its base "
        "template with the top-level field base)")
    suite: str = Field("bookworm", pattern=r"^[a-z]+$", description="debootstrap: the suite")
    mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://[^\s]+$",
                        description="debootstrap: the Debian mirror")
    kernel_package: str = "linux-image-amd64"
    packages: tuple[str, ...] = ()
    binaries: tuple[str, ...] = Field((), description="files taken out of the packages")
    modules: tuple[str, ...] = ()
    disk_size_mb: int = Field(64, ge=8, le=1_048_576)
    files: str = Field("rootfs", description="folder beside template.toml copied into the image")
    commands: tuple[str, ...] = Field(
        (), description="layer: shell commands run once in the guest at build, as root, in "
        "order, after the packages and files")
    services: tuple[str, ...] = Field(
        (), description="layer: systemd units enabled at build (they start at every boot)")

    @field_validator("packages")
    @classmethod
    def _check_packages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for package in value:
            if not _PACKAGE_RE.fullmatch(package):
                raise ValueError(f"package {package!r} is not a Debian package name (such as "
                                 "'nginx' or 'nginx=1.22.1-9')")
        return value

    @field_validator("services")
    @classmethod
    def _check_services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for unit in value:
            if not _SERVICE_RE.fullmatch(unit):
                raise ValueError(f"service {unit!r} is not a systemd unit name (such as "
                                 "'nginx' or 'postgresql.service')")
        return value

    @field_validator("files")
    @classmethod
    def _check_files(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts or not value:
            raise ValueError(f"files {value!r}: give a folder inside the template's folder, "
                             "such as 'rootfs'")
        return value


class TemplateDefinition(_Strict):
    """One template definition, as validated from its TOML file."""

    name: str
    version: str
    description: str
    base: str | None = Field(
        None, description="a layer's base template and the versions it accepts, such as "
        "'debian-12>=1.0,<2' (with [build] recipe = \"layer\")")
    resources: Resources = Field(default_factory=Resources)
    boot: Boot = Field(default_factory=Boot)
    access: Access = Field(default_factory=Access)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    build: Build

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError(f"use {NAME_RULE}")
        return value

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _SEMVER_RE.fullmatch(value):
            raise ValueError("must be a semantic version such as 1.0.0")
        return value

    @field_validator("base")
    @classmethod
    def _check_base(cls, value: str | None) -> str | None:
        if value is not None:
            from vboxlab.templates.versions import TemplateRequest

            try:
                TemplateRequest.parse(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _layer_has_base(self) -> TemplateDefinition:
        layered = self.build.recipe == "layer"
        if layered and self.base is None:
            raise ValueError("recipe 'layer' needs base = \"NAME\" (or NAME>=X,<Y) at the top "
                             "of the file: the template it is layered on")
        if not layered and self.base is not None:
            raise ValueError(f"base {self.base!r} is only for [build] recipe = \"layer\"")
        if self.base is not None and _request_name(self.base) == self.name:
            raise ValueError(f"base {self.base!r}: a template cannot be layered on itself")
        return self


def _request_name(request: str) -> str:
    from vboxlab.templates.versions import TemplateRequest

    return TemplateRequest.parse(request).name


def effective_definition(layer: TemplateDefinition,
                         base: TemplateDefinition) -> TemplateDefinition:
    """What a layer boots as: its base's boot and access settings, its own name, build and
    (where it gives them) resources and network."""
    given = layer.model_fields_set
    return layer.model_copy(update={
        "boot": base.boot,
        "access": base.access,
        "resources": layer.resources if "resources" in given else base.resources,
        "network": layer.network if "network" in given else base.network,
    })


class Template:
    """A definition together with the folder it was loaded from."""

    def __init__(self, definition: TemplateDefinition, folder: Path) -> None:
        self.definition = definition
        self.folder = folder

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> str:
        return self.definition.version

    def source_digest(self) -> str:
        """SHA-256 over every file of the definition folder (its build inputs)."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.folder)).encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(oct(path.stat().st_mode & 0o777).encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"Template({self.name!r}, {self.version!r}, {str(self.folder)!r})"


def load_template(folder: Path) -> Template:
    """Load and validate ``folder/template.toml``."""
    path = folder / DEFINITION_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file; a template folder needs a "
                          f"{DEFINITION_FILE}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a template definition") from None
    try:
        definition = TemplateDefinition.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            f" (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    if definition.base is not None:
        inherited = sorted({"boot", "access"} & set(raw))
        if inherited:
            raise ConfigError(
                f"{path}: [{inherited[0]}]: a layer boots its base's kernel with its base's "
                f"access settings; remove [{'] and ['.join(inherited)}] (they come from "
                f"{definition.base})")
    if definition.name != folder.name:
        raise ConfigError(
            f"{path}: field name: {definition.name!r} differs from its folder name "
            f"{folder.name!r}; rename one so they match"
        )
    return Template(definition, folder)
