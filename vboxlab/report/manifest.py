"""``lab-manifest.json``: what it takes to run a lab report's tests again, and to compare runs.

It records the vboxlab and Python versions, pytest's arguments, every template
a machine was made from (name, version and the SHA-256 of its manifest, which
lists each file's digest), every topology file with its digest, the seed each
network test ran with (drawn ones too), each test's outcome, QEMU's version, the
accelerator and the host kernel. :func:`plan_reproduction` checks a manifest
against this machine (templates by digest, topologies by digest) and returns
the pytest command that reruns the same tests with the same seeds;
:func:`diff_manifests` says what differs between two runs.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vboxlab import __version__
from vboxlab.errors import ConfigError, TemplateNotBuilt
from vboxlab.hosttools import QEMU_BINARY
from vboxlab.names import check_name
from vboxlab.templates.repository import file_sha256
from vboxlab.templates.versions import parse_version

MANIFEST_NAME = "lab-manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class TemplateUse(BaseModel):
    """A template a machine of the run was made from (checked: names reach the CLI)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_name(value, "template")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            parse_version(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class RunManifest(BaseModel):
    """Everything a rerun needs; checked field by field when read (it may come from anyone)."""

    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT
    created: str
    vboxlab: str
    python: str
    pytest_args: list[str]
    #: the --lab-* options that shape what the tests do (not where results go)
    lab_options: dict[str, str | list[str] | bool] = {}
    rootdir: str
    templates: dict[str, TemplateUse] = {}  # "name@version" -> use
    topologies: dict[str, str] = {}  # path (relative to rootdir when inside) -> sha256
    seeds: dict[str, int] = {}  # test id -> seed of its network's randomness
    tests: dict[str, str] = {}  # test id -> outcome

    @field_validator("tests", "seeds")
    @classmethod
    def _test_ids(cls, value: dict[str, object]) -> dict[str, object]:
        """Test ids go to pytest's command line: a path inside the project, never an option."""
        for test in value:
            path = test.split("::", 1)[0]
            if (not test or test.startswith("-") or Path(path).is_absolute()
                    or ".." in Path(path).parts or "\0" in test):
                raise ValueError(f"{test!r} is not a test id of the project (want "
                                 "path/to/test_file.py::test_name, relative, not an option)")
        return value
    qemu: str = ""
    accelerators: dict[str, str] = {}
    kernel: str = ""
    machine: str = ""


def qemu_version() -> str:
    """``QEMU emulator version 7.2.x``, or why it is not known."""
    try:
        done = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


def new_manifest(pytest_args: list[str], rootdir: Path,
                 lab_options: dict[str, str | list[str] | bool] | None = None) -> RunManifest:
    """A manifest for a run starting now on this machine (filled in as tests run)."""
    return RunManifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"), vboxlab=__version__,
        python=platform.python_version(), pytest_args=list(pytest_args),
        lab_options=dict(lab_options or {}), rootdir=str(rootdir), kernel=platform.release(),
        machine=platform.machine())  # QEMU's version is asked when the manifest is written


def option_args(options: dict[str, str | list[str] | bool]) -> list[str]:
    """``{"--lab-template": "debian-12", "--lab-rules": ["a", "b"]}`` back into arguments."""
    argv: list[str] = []
    for name, value in sorted(options.items()):
        if not name.startswith("--lab-") or "=" in name or " " in name:
            raise ConfigError(f"lab_options: {name!r} is not a --lab-* option name")
        if value is True:
            argv.append(name)
        elif isinstance(value, list):
            argv += [f"{name}={item}" for item in value]
        elif isinstance(value, str):
            argv.append(f"{name}={value}")
    return argv


def topology_key(path: Path, rootdir: Path) -> str:
    """A topology file as the manifest names it: relative to the rootdir when inside it."""
    try:
        return str(path.resolve().relative_to(rootdir.resolve()))
    except ValueError:
        return str(path.resolve())


def write_manifest(manifest: RunManifest, folder: Path) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(path: Path) -> RunManifest:
    """A manifest from a file, checked: a clear error names the file and the field."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ConfigError(f"{path}: over {MAX_MANIFEST_BYTES} bytes; not a lab manifest")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such lab manifest (a lab report's "
                          f"{MANIFEST_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable lab manifest: {exc}") from None
    try:
        manifest = RunManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: field {field}: {first['msg']}") from None
    if manifest.format != FORMAT:
        raise ConfigError(f"{path}: manifest format {manifest.format}; this vboxlab reads "
                          f"format {FORMAT}")
    return manifest


def diff_manifests(a: RunManifest, b: RunManifest) -> list[str]:
    """What differs between two runs: environment, templates, topologies, seeds, outcomes."""
    lines = []
    for field in ("vboxlab", "python", "qemu", "kernel", "machine"):
        if getattr(a, field) != getattr(b, field):
            lines.append(f"{field}: {getattr(a, field)} -> {getattr(b, field)}")
    if a.accelerators != b.accelerators:
        lines.append(f"accelerators: {a.accelerators} -> {b.accelerators}")
    if a.lab_options != b.lab_options:
        lines.append(f"lab options: {' '.join(option_args(a.lab_options))} -> "
                     f"{' '.join(option_args(b.lab_options))}")
    if a.pytest_args != b.pytest_args:
        lines.append(f"pytest arguments: {' '.join(a.pytest_args)} -> "
                     f"{' '.join(b.pytest_args)}")
    for label, left, right in (
            ("template", {k: v.digest for k, v in a.templates.items()},
             {k: v.digest for k, v in b.templates.items()}),
            ("topology", a.topologies, b.topologies),
            ("seed", a.seeds, b.seeds),
            ("test", a.tests, b.tests)):
        for key in sorted(set(left) | set(right)):
            one, two = left.get(key), right.get(key)
            if one == two:
                continue
            if label in ("template", "topology") and one and two:
                lines.append(f"{label} {key}: content differs ({str(one)[:12]} -> "
                             f"{str(two)[:12]})")
            else:
                lines.append(f"{label} {key}: {one if one is not None else '(absent)'} -> "
                             f"{two if two is not None else '(absent)'}")
    return lines


@dataclass
class Reproduction:
    """How to run a manifest's tests again here: the command, its pins and seeds."""

    argv: list[str]
    cwd: Path
    pins: dict[str, str]
    seeds: dict[str, int]
    warnings: list[str]


def plan_reproduction(manifest: RunManifest, extra: list[str], *,
                      rootdir: Path | None = None, force: bool = False) -> Reproduction:
    """Check the manifest's templates and topologies are here, unchanged; the rerun command.

    It runs in ``rootdir`` (default: the current folder, your checkout; never a
    folder the manifest names). A template missing, or present with another
    digest, stops it (``force`` does not override that: the run would not be the
    same); a topology file that changed stops it unless ``force``.
    """
    from vboxlab.templates import TemplateRepository

    root = rootdir or Path.cwd()
    if not root.is_dir():
        raise ConfigError(f"--rootdir {root}: no such folder; give the project's folder")
    repository = TemplateRepository()
    pins: dict[str, str] = {}
    warnings: list[str] = []
    for key, use in sorted(manifest.templates.items()):
        found = [b for b in repository.installed(use.name) if b.template.version == use.version]
        if not found:
            raise TemplateNotBuilt(
                f"template {key} (digest {use.digest[:12]}) is not installed here; build it "
                f"(`vboxlab templates build {use.name}`) or import the archive of that build")
        digest = found[0].manifest_digest
        if digest != use.digest:
            raise TemplateNotBuilt(
                f"template {key} here is a different build: digest {digest[:12]}, the run "
                f"used {use.digest[:12]}; import the run's build of it to reproduce the run")
        if pins.get(use.name, use.version) != use.version:
            warnings.append(f"the run used several versions of {use.name}; not pinning it")
            pins[use.name] = ""
        else:
            pins[use.name] = use.version
    for name, digest in sorted(manifest.topologies.items()):
        path = Path(name) if Path(name).is_absolute() else root / name  # only hashed
        if not path.is_file():
            problem = f"topology {name} is not in {root}"
        elif file_sha256(path) != digest:
            problem = f"topology {name} changed since the run (digest {digest[:12]} then)"
        else:
            continue
        if not force:
            raise ConfigError(f"{problem}; restore it, or rerun anyway with --force")
        warnings.append(problem)
    tests = [test for test in manifest.tests if "::" in test]
    if not tests:
        raise ConfigError("the manifest lists no tests to run again")
    argv = [sys.executable, "-m", "pytest", *tests, *option_args(manifest.lab_options), *extra]
    return Reproduction(argv, root, {n: v for n, v in pins.items() if v},
                        dict(manifest.seeds), warnings)
