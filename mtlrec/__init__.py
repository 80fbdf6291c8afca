"""mtlrec: a multi-task ranking pipeline (features → models → training → pipeline → serving)."""

from pathlib import Path

__version__ = "0.1.0"

#: The packaged YAML (conf/): package data in an installed wheel, a link to the
#: checkout's conf/ folder in a checkout.
CONF_DIR = Path(__file__).parent / "conf"


def checkout_root() -> Path | None:
    """The source checkout mtlrec runs from, or None when it is installed from a wheel
    (then there is no `../shared/data` next to it and no git history to tag runs with)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf").is_dir() else None
