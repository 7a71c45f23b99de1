"""Options every ``vboxlab`` command group shares (kept apart so command groups in other
packages can import them without importing the whole command line)."""

from __future__ import annotations

from pathlib import Path

import click

from vboxlab.paths import state_base


def lab_base(lab_dir: str | None) -> Path:
    """The folder that holds the labs: ``--lab-dir`` or the default state folder."""
    return Path(lab_dir) if lab_dir else state_base()


lab_dir_option = click.option("--lab-dir", default=None, envvar="VBOXLAB_STATE_DIR",
                              help="Folder holding the labs (as pytest's --lab-dir)")
