"""The template repository: definitions, installed versions, constraints, pins, prune, outdated."""

import shutil

import pytest

from vboxlab.errors import ConfigError, TemplateNotBuilt, TemplateNotFound
from vboxlab.templates import TemplateRepository
from vboxlab.templates.pins import read_pins, write_pin

from .helpers import install

DEFINITION = """
name = "mini"
version = "0.1.0"
description = "test"
[build]
recipe = "initramfs"
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    defs = tmp_path / "defs"
    (defs / "mini").mkdir(parents=True)
    (defs / "mini" / "template.toml").write_text(DEFINITION)
    return TemplateRepository(cache=tmp_path / "cache", search=[defs])


def test_unknown_template_lists_the_known_ones(repo):
    with pytest.raises(TemplateNotFound, match=r"unknown template 'nope'; known templates: mini"):
        repo.built("nope")


def test_template_not_built_says_the_command_that_builds_it(repo):
    with pytest.raises(TemplateNotBuilt, match="vboxlab templates build mini"):
        repo.built("mini")
    assert repo.status("mini") == "not built"


def test_built_template_is_found_and_goes_stale_when_its_definition_changes(repo):
    template = repo.definition("mini")
    folder = install(repo, "mini", "0.1.0", digest=template.source_digest())
    assert repo.built("mini").folder == folder
    assert repo.status("mini") == "built"
    (template.folder / "extra").write_text("changed")
    with pytest.raises(TemplateNotBuilt, match=r"changed since version 0\.1\.0 was built"):
        repo.built("mini")
    assert repo.status("mini") == "stale"


def test_constraints_pick_the_newest_matching_installed_version(repo):
    for version in ("0.1.0", "1.0.0", "1.2.0", "2.0.0"):
        install(repo, "mini", version)
    assert repo.built("mini>=1.0,<2").template.version == "1.2.0"
    assert repo.built("mini@1.0.0").template.version == "1.0.0"
    assert repo.built("mini==2.0.0").template.version == "2.0.0"
    assert repo.built("mini~=1.0").template.version == "1.2.0"
    with pytest.raises(TemplateNotBuilt) as missing:
        repo.built("mini>=3")
    assert "installed: 0.1.0, 1.0.0, 1.2.0, 2.0.0" in str(missing.value)
    assert "definition (0.1.0) does not match" in str(missing.value)
    with pytest.raises(ConfigError, match="is not a version constraint"):
        repo.built("mini>=banana")
    with pytest.raises(ConfigError, match="write NAME, NAME@VERSION"):
        repo.built("Mini!")


def test_a_bare_name_means_the_pin_else_the_definition_else_the_newest(repo, tmp_path):
    for version in ("0.1.0", "1.0.0", "2.0.0"):
        install(repo, "mini", version)
    assert repo.built("mini").template.version == "0.1.0"  # what the definition says
    write_pin("mini", "1.0.0")
    assert read_pins() == {"mini": "1.0.0"}
    assert repo.built("mini").template.version == "1.0.0"
    assert "mini = \"1.0.0\"" in (tmp_path / "pins.lock").read_text()
    install(repo, "shared", "3.1.0")  # imported: no definition here
    install(repo, "shared", "3.0.0")
    assert repo.built("shared").template.version == "3.1.0"


def test_unfinished_images_are_never_listed(repo):
    install(repo, "mini", "1.0.0")
    (repo.images / "mini" / ".build-1.1.0-123").mkdir()
    (repo.images / "mini" / "1.1.0").mkdir()  # a folder without its manifest
    assert [b.template.version for b in repo.installed("mini")] == ["1.0.0"]


def test_prune_keeps_the_newest_the_defined_and_the_pinned(repo):
    for version in ("0.1.0", "0.5.0", "1.0.0", "1.5.0", "2.0.0"):
        install(repo, "mini", version)
    write_pin("mini", "1.0.0")
    planned = [b.template.version for b in repo.prune(dry_run=True)]
    assert planned == ["0.5.0", "1.5.0"]
    assert len(repo.installed("mini")) == 5
    repo.prune()
    assert [b.template.version for b in repo.installed("mini")] == ["0.1.0", "1.0.0", "2.0.0"]


def test_outdated_names_pinned_versions_with_newer_ones(repo):
    install(repo, "mini", "1.0.0")
    install(repo, "mini", "1.1.0")
    write_pin("mini", "1.0.0")
    assert repo.outdated() == [("mini", "1.0.0 (pinned)", "1.1.0", "installed")]
    write_pin("mini", None)
    assert repo.outdated() == [("mini", "0.1.0", "1.1.0", "installed")]


def test_remove_deletes_one_version_and_says_what_there_is(repo):
    install(repo, "mini", "1.0.0")
    install(repo, "mini", "2.0.0")
    repo.remove("mini", "1.0.0")
    assert [b.template.version for b in repo.installed("mini")] == ["2.0.0"]
    with pytest.raises(TemplateNotBuilt, match=r"installed: 2\.0\.0"):
        repo.remove("mini", "1.0.0")


def test_a_broken_pins_file_is_named(repo, tmp_path):
    (tmp_path / "pins.lock").write_text("[pins]\nmini = 1\n")
    with pytest.raises(ConfigError, match=r"pins.lock: pins.mini: give the version as a string"):
        read_pins()


def test_a_users_own_templates_come_first(tmp_path, monkeypatch):
    own = tmp_path / "project" / "fixtures" / "templates" / "tiny"
    shutil.copytree(TemplateRepository().definition("tiny").folder, own)
    text = (own / "template.toml").read_text().replace('version = "1.0.0"', 'version = "9.9.9"')
    (own / "template.toml").write_text(text)
    monkeypatch.chdir(tmp_path / "project")
    assert TemplateRepository().definition("tiny").version == "9.9.9"
