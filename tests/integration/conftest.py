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


@pytest.fixture
def browser_page():
    """A page in a real headless Chromium (Debian's, driven by Playwright)."""
    from playwright.sync_api import sync_playwright

    from vboxlab.pytest.policy import require_tool

    chromium = require_tool("chromium", "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1600})
        finally:
            browser.close()
