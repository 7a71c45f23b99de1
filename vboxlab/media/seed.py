"""cloud-init NoCloud seed images: an ISO labelled ``cidata`` with user-data, meta-data and
network-config at its root (what cloud-init's NoCloud datasource reads from a CD)."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

import yaml

from vboxlab.media.iso import IsoResult, build_iso
from vboxlab.media.tree import MediaError

SEED_LABEL = "cidata"
#: first lines cloud-init recognises as user-data formats
USER_DATA_STARTS = ("#cloud-config", "#!", "#include", "#cloud-boothook", "#part-handler",
                    "#cloud-config-archive", "#upstart-job", "Content-Type: multipart/")


def _user_data(value: str | dict[str, Any]) -> str:
    if isinstance(value, dict):
        return "#cloud-config\n" + yaml.safe_dump(value, sort_keys=False)
    if not value.startswith(USER_DATA_STARTS):
        raise MediaError("user-data must start with one of "
                         f"{', '.join(USER_DATA_STARTS)} (cloud-init ignores anything else); "
                         f"it starts with {value[:30]!r}")
    if value.startswith("#cloud-config"):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise MediaError(f"user-data is #cloud-config but not valid YAML: {exc}") from None
        if parsed is not None and not isinstance(parsed, dict):
            raise MediaError("user-data #cloud-config must be a YAML mapping")
    return value


def _yaml_mapping(what: str, value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise MediaError(f"{what} is not valid YAML: {exc}") from None
    if not isinstance(value, dict):
        raise MediaError(f"{what} must be a YAML mapping")
    return value


def build_seed(output: Path, *, user_data: str | dict[str, Any],
               meta_data: str | dict[str, Any] | None = None,
               network_config: str | dict[str, Any] | None = None,
               hostname: str | None = None) -> IsoResult:
    """Write a NoCloud seed image; meta-data gets a fresh ``instance-id`` unless it has one."""
    meta = _yaml_mapping("meta-data", meta_data) if meta_data is not None else {}
    meta.setdefault("instance-id", f"vboxlab-{secrets.token_hex(6)}")
    if hostname is not None:
        meta.setdefault("local-hostname", hostname)
    files = {"user-data": _user_data(user_data),
             "meta-data": yaml.safe_dump(meta, sort_keys=False)}
    if network_config is not None:
        network = _yaml_mapping("network-config", network_config)
        if network.get("version") not in (1, 2):
            raise MediaError("network-config needs 'version: 1' or 'version: 2' at its top "
                             f"level (got {network.get('version')!r})")
        files["network-config"] = yaml.safe_dump(network, sort_keys=False)
    with tempfile.TemporaryDirectory(prefix=".vboxlab-seed-",
                                     dir=Path(output).parent) as scratch:
        extra = {}
        for name, text in files.items():
            (Path(scratch) / name).write_text(text)
            extra[name] = Path(scratch) / name
        return build_iso(None, Path(output), label=SEED_LABEL, extra=extra)
