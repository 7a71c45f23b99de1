"""The boot spec: menu entries, default, timeout; rendered for ISOLINUX (BIOS) and GRUB (UEFI).

Written as TOML for the command line::

    default = "lab"
    timeout = 3          # seconds; 0 boots the default at once
    [[entry]]
    name = "lab"
    title = "vboxlab lab kernel"
    kernel = "boot/vmlinuz"
    initrd = "boot/initrd.img"
    append = "console=ttyS0 quiet lab.role=server"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vboxlab.kernelargs import check_kernel_args
from vboxlab.media.tree import MediaError


class BootEntry(BaseModel):
    """One menu entry: a kernel, an optional initrd and its command line."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    title: str = Field("", max_length=70)
    kernel: str = Field(min_length=1)
    initrd: str | None = None
    append: str = ""

    @field_validator("title")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(c in value for c in "\"'\\$;{}\n\r\t"):
            raise ValueError("use letters, digits, spaces and simple punctuation (no quotes, "
                             "braces, '$', ';' or backslashes)")
        return value

    @field_validator("append")
    @classmethod
    def _args(cls, value: str) -> str:
        return check_kernel_args(value)

    @field_validator("kernel", "initrd")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return value
        clean = value.lstrip("/")
        if not clean or ".." in Path(clean).parts:
            raise ValueError(f"{value!r}: give a path inside the source tree")
        return clean


class BootSpec(BaseModel):
    """What boots from the image and how the menu behaves."""

    model_config = ConfigDict(extra="forbid")

    entries: list[BootEntry] = Field(alias="entry", min_length=1)
    default: str | None = None
    timeout: float = Field(5.0, ge=0, le=600)
    bios: bool = True
    uefi: bool = True

    @model_validator(mode="after")
    def _check(self) -> BootSpec:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"entry names must differ; got {names}")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default {self.default!r} is not an entry; entries: "
                             f"{', '.join(names)}")
        if not (self.bios or self.uefi):
            raise ValueError("bios and uefi are both false: the image would not boot")
        return self

    @property
    def default_entry(self) -> BootEntry:
        return next(e for e in self.entries if e.name == (self.default or self.entries[0].name))

    @classmethod
    def single(cls, kernel: str, initrd: str | None = None, append: str = "",
               **options: object) -> BootSpec:
        """One entry that boots at once: the common case."""
        entry = {"name": "linux", "title": "Linux", "kernel": kernel, "initrd": initrd,
                 "append": append}
        return cls.model_validate({"entry": [entry], "timeout": 0, **options})

    @classmethod
    def from_file(cls, path: Path) -> BootSpec:
        """Read a TOML boot spec; errors name the file and the field."""
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise MediaError(f"{path}: no such boot spec file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MediaError(f"{path}: cannot read it as text: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise MediaError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            raise MediaError(f"{path}: nested too deeply to be a boot spec") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise MediaError(f"{path}: {field}: {err['msg']} (got {err.get('input')!r})") from None


def isolinux_config(spec: BootSpec) -> str:
    """isolinux.cfg (ISOLINUX 6 reads Rock Ridge names, so the tree's own paths)."""
    lines = ["SERIAL 0 115200", "PROMPT 0"]
    if spec.timeout > 0:
        lines += ["UI menu.c32", "MENU TITLE vboxlab boot menu",
                  f"TIMEOUT {max(1, round(spec.timeout * 10))}"]
    lines.append(f"DEFAULT {spec.default_entry.name}")
    for entry in spec.entries:
        lines += ["", f"LABEL {entry.name}", f"  MENU LABEL {entry.title or entry.name}",
                  f"  KERNEL /{entry.kernel}"]
        if entry.initrd:
            lines.append(f"  INITRD /{entry.initrd}")
        if entry.append:
            lines.append(f"  APPEND {entry.append}")
    return "\n".join(lines) + "\n"


def grub_config(spec: BootSpec, marker: str) -> str:
    """grub.cfg for the EFI image: find this medium by its marker file, then the menu."""
    default = [e.name for e in spec.entries].index(spec.default_entry.name)
    lines = [f"search --no-floppy --set=root --file /{marker}",
             f"set default={default}", f"set timeout={spec.timeout:g}",
             "set timeout_style=menu" if spec.timeout > 0 else "set timeout_style=hidden"]
    for entry in spec.entries:
        lines += [f"menuentry '{entry.title or entry.name}' --id {entry.name} {{",
                  f"  linux /{entry.kernel} {entry.append}".rstrip()]
        if entry.initrd:
            lines.append(f"  initrd /{entry.initrd}")
        lines.append("}")
    return "\n".join(lines) + "\n"
