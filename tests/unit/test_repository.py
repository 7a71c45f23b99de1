import json
import shutil

import pytest

from vboxlab.errors import TemplateNotBuilt, TemplateNotFound
from vboxlab.templates import TemplateRepository

DEFINITION = """
name = "mini"
version = "0.1.0"
description = "test"
[build]
recipe = "initramfs"
"""


@pytest.fixture
def repo(tmp_path):
    defs = tmp_path / "defs"
    (defs / "mini").mkdir(parents=True)
    (defs / "mini" / "template.toml").write_text(DEFINITION)
    return TemplateRepository(cache=tmp_path / "cache", search=[defs])


def test_unknown_template_lists_the_known_ones(repo):
    with pytest.raises(TemplateNotFound, match=r"unknown template 'nope'; known templates: mini"):
        repo.definition("nope")


def test_template_not_built_says_the_command_that_builds_it(repo):
    with pytest.raises(TemplateNotBuilt, match="vboxlab templates build mini"):
        repo.built("mini")
    assert repo.status("mini") == "not built"


def fake_build(repo):
    template = repo.definition("mini")
    folder = repo.image_dir(template)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"source_digest": template.source_digest()}))
    return template


def test_built_template_is_found_and_goes_stale_when_its_definition_changes(repo):
    template = fake_build(repo)
    assert repo.built("mini").folder == repo.image_dir(template)
    assert repo.status("mini") == "built"
    (template.folder / "extra").write_text("changed")
    with pytest.raises(TemplateNotBuilt, match="changed since it was built"):
        repo.built("mini")
    assert repo.status("mini") == "stale"


def test_a_users_own_templates_come_first(tmp_path, monkeypatch):
    own = tmp_path / "project" / "fixtures" / "templates" / "tiny"
    shutil.copytree(TemplateRepository().definition("tiny").folder, own)
    text = (own / "template.toml").read_text().replace('version = "1.0.0"', 'version = "9.9.9"')
    (own / "template.toml").write_text(text)
    monkeypatch.chdir(tmp_path / "project")
    assert TemplateRepository().definition("tiny").version == "9.9.9"
