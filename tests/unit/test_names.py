"""One name rule for machines, nodes, segments and templates, applied the same everywhere."""

import pytest

from vboxlab.errors import ConfigError
from vboxlab.lab import Lab
from vboxlab.names import MAX_LENGTH, check_name, is_valid_name
from vboxlab.net import Topology
from vboxlab.templates.definition import load_template

GOOD = ["a", "web", "web-1", "h1", "a" * MAX_LENGTH, "r1-core-2"]
BAD = ["", "Web", "café", "1web", "-web", "web-", "a--b", "a_b", "a.b", "a" * (MAX_LENGTH + 1),
       "wéb", "\uff57\uff45\uff42", "a b", "a/b", "a\n"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name):
    assert is_valid_name(name) and check_name(name, "machine") == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_by_every_part_alike(name, tmp_path):
    assert not is_valid_name(name)
    with pytest.raises(ConfigError, match=r"invalid machine name .*: use 1-20 lower-case"):
        check_name(name, "machine")
    if name:
        with pytest.raises(ConfigError, match="1-20 lower-case letters"):
            Topology.from_dict({"nodes": {name: None}})
        with pytest.raises(ConfigError, match="1-20 lower-case letters"):
            Topology.from_dict({"nodes": {"a": None}, "segments": {name: None}})
    with Lab(base=tmp_path / "labs") as lab, pytest.raises(ConfigError, match="machine name"):
        lab.vm(name, boot=False)


def test_a_template_definition_follows_the_rule_too(tmp_path):
    folder = tmp_path / "café"
    folder.mkdir()
    (folder / "template.toml").write_text(
        'name = "café"\nversion = "1.0.0"\ndescription = "x"\n[build]\nrecipe = "initramfs"\n')
    with pytest.raises(ConfigError, match=r"field name: .*1-20 lower-case letters"):
        load_template(folder)
