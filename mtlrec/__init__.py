"""mtlrec: a multi-task ranking pipeline (features → models → training → pipeline → serving)."""

from pathlib import Path

__version__ = "0.1.0"

#: The project checkout this package runs from (conf/ lives here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
