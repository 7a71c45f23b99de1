"""Fixtures shared by the unit tests."""

import pytest

from vboxlab.templates import TemplateRepository

from .helpers import install


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A repository with the template ``shared`` 1.2.0 installed."""
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    repo = TemplateRepository(cache=tmp_path / "a", search=[])
    install(repo, "shared", "1.2.0")
    return repo


@pytest.fixture
def target(tmp_path):
    """An empty repository to import into."""
    return TemplateRepository(cache=tmp_path / "b", search=[])
