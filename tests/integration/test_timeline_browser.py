"""The snapshot timeline, rendered by a real headless Chromium, shows what the tree holds."""

import subprocess

import pytest
from PIL import Image

from vboxlab.pytest.policy import require_tool
from vboxlab.report.timeline import COLOURS, LANE_Y, render_svg
from vboxlab.snapshots import SnapshotTree

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]


def chromium():
    return require_tool("chromium", "chromium")


def screenshot(svg_path, png_path, width, height, profile):
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    f"--window-size={width},{height}", f"--screenshot={png_path}",
                    svg_path.as_uri()], check=True, capture_output=True, timeout=120)
    return Image.open(png_path).convert("RGB")


def rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def count(image, colour, box=None):
    region = image.crop(box) if box else image
    colours = region.getcolors(maxcolors=region.width * region.height) or []
    return sum(n for n, pixel in colours if pixel == colour)


def test_chromium_draws_branches_and_outcome_colours(tmp_path):
    tree = SnapshotTree(tmp_path / "snapshots.json")
    tree.add("clean", size=120_000_000, test=None, kind="clean")
    tree.add("after-login", size=121_000_000, test="t.py::test_login", kind="manual")
    tree.restored("clean")
    tree.add("failed-upgrade", size=122_000_000, test="t.py::test_upgrade", kind="failure")
    tree.set_outcome("t.py::test_login", "passed")
    tree.set_outcome("t.py::test_upgrade", "failed")
    svg_path = tmp_path / "timeline.svg"
    svg_text = render_svg(tree, "web", "lab-1")
    svg_path.write_text(svg_text)
    width = int(svg_text.split('width="')[1].split('"')[0])
    height = int(svg_text.split('height="')[1].split('"')[0])
    image = screenshot(svg_path, tmp_path / "shot.png", width, height, tmp_path / "profile")
    green, red, grey = rgb(COLOURS["passed"]), rgb(COLOURS["failed"]), rgb(COLOURS[None])
    # each circle (r=16) is ~800 pixels of solid colour
    assert count(image, green) > 400
    assert count(image, red) > 400
    assert count(image, grey) > 400
    # the failed snapshot sits on a branch lane below the passed one
    red_rows = [y for y in range(image.height) if count(image, red, (0, y, image.width, y + 1))
                > 20]
    green_rows = [y for y in range(image.height)
                  if count(image, green, (0, y, image.width, y + 1)) > 20]
    assert min(red_rows) - min(green_rows) == pytest.approx(LANE_Y, abs=3)
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p2'}",
                          "--dump-dom", svg_path.as_uri()], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    for text in ("clean", "after-login", "failed-upgrade", "test_login", "test_upgrade"):
        assert text in dom
