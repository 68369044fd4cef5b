"""Moved to :mod:`hashflex.frames` (the one time-series contract); this name stays importable."""

from hashflex.frames import *  # noqa: F401,F403
from hashflex.frames import __all__  # noqa: F401
