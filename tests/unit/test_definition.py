import textwrap
from pathlib import Path

import pytest

from vboxlab.errors import ConfigError
from vboxlab.templates.definition import load_template

GOOD = """
name = "demo"
version = "1.2.3"
description = "a demo"
[resources]
memory = 128
[build]
recipe = "initramfs"
packages = ["busybox-static"]
"""


def write(tmp_path, text, folder="demo"):
    path = tmp_path / folder
    path.mkdir()
    (path / "template.toml").write_text(textwrap.dedent(text))
    return path


def test_valid_definition_loads_with_defaults(tmp_path):
    template = load_template(write(tmp_path, GOOD))
    assert template.name == "demo" and template.version == "1.2.3"
    assert template.definition.resources.memory == 128
    assert template.definition.resources.cpus == 1
    assert template.definition.access.user == "root"
    assert template.definition.access.channels == ["ssh"]  # no agent unless declared


@pytest.mark.parametrize(("change", "field", "reason"), [
    (("1.2.3", "one"), "version", "semantic version"),
    (("memory = 128", "memory = 1"), "resources.memory", "greater than or equal to 64"),
    (('recipe = "initramfs"', 'recipe = "magic"'), "build.recipe", "initramfs"),
    (("[build]", "colour = 1\n[build]"), "resources.colour", "Extra inputs"),
    (("[build]", '[access]\nchannels = ["agent"]\n[build]'), "access.channels", "ssh always"),
    (("[build]", '[access]\nchannels = ["telnet", "ssh"]\n[build]'), "access.channels.0",
     "'agent' or 'ssh'"),
])
def test_errors_name_file_field_and_reason(tmp_path, change, field, reason):
    folder = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_template(folder)
    message = str(info.value)
    assert str(folder / "template.toml") in message
    assert f"field {field}" in message
    assert reason in message


def test_name_must_match_folder(tmp_path):
    folder = write(tmp_path, GOOD, folder="other")
    with pytest.raises(ConfigError, match="differs from its folder name 'other'"):
        load_template(folder)


def test_bad_toml_names_the_file(tmp_path):
    folder = write(tmp_path, "name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_template(folder)


def test_missing_file(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="no such file"):
        load_template(tmp_path / "x")


def test_source_digest_follows_every_file(tmp_path):
    folder = write(tmp_path, GOOD)
    template = load_template(folder)
    before = template.source_digest()
    (folder / "rootfs").mkdir()
    (folder / "rootfs" / "motd").write_text("hi")
    assert template.source_digest() != before


@pytest.mark.parametrize(("name", "channels"), [("tiny", ["agent", "ssh"]),
                                               ("debian-12", ["agent", "ssh"]),
                                               ("vulnlab", ["ssh"])])
def test_shipped_templates_declare_their_channels(name, channels):
    folder = Path(__file__).parents[2] / "fixtures" / "templates" / name
    assert load_template(folder).definition.access.channels == channels


def test_shipped_tiny_definition_is_valid():
    from vboxlab.templates import TemplateRepository

    tiny = TemplateRepository().definition("tiny")
    assert tiny.definition.build.recipe == "initramfs"
    assert "/usr/sbin/sshd" in tiny.definition.build.binaries
