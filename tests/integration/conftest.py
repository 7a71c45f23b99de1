"""Fixtures shared by the integration tests."""

import pytest

from .helpers import qemu_pids


@pytest.fixture
def base(tmp_path):
    """A state folder for the labs of one test; no QEMU of it may outlive the test."""
    folder = tmp_path / "labs"
    yield folder
    assert qemu_pids(str(folder)) == []
    assert not folder.exists() or list(folder.iterdir()) == []
