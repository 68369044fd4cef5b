"""Data shipped inside the package (real ERCOT price samples, site profiles).

Why a helper: the demo and the tests must find these files whether hashflex runs from a checkout,
an editable install or a wheel, without guessing paths relative to ``__file__`` in every caller.
"""

from __future__ import annotations

import pathlib
from importlib import resources

__all__ = ["bundled_path"]


def bundled_path(name: str) -> pathlib.Path:
    """Filesystem path of a bundled data file.

    Parameters
    ----------
    name : str
        Relative to this package (``"ercot/RTM-2020-02.csv"``) or a bare file name that is unique
        among the bundled files (``"RTM-2020-02.csv"``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        Listing what is bundled when nothing (or more than one file) matches, or when the package
        is installed inside a zip archive.
    """
    root = resources.files(__name__)
    candidate = root.joinpath(*pathlib.PurePosixPath(name).parts)
    if candidate.is_file():
        return _as_path(candidate)
    if "/" not in name:
        matches = [p for p in _walk(root) if p.name == name]
        if len(matches) == 1:
            return _as_path(matches[0])
        if len(matches) > 1:
            raise FileNotFoundError(f"{name!r} is ambiguous among bundled files; give a folder, e.g. "
                                    f"{[_rel(root, m) for m in matches]}")
    available = sorted(_rel(root, p) for p in _walk(root) if not p.name.endswith((".py", ".pyc")))
    raise FileNotFoundError(f"no bundled data file {name!r}; available: {available}")


def _walk(node: resources.abc.Traversable) -> list[resources.abc.Traversable]:
    out = []
    for child in node.iterdir():
        if child.is_dir():
            if child.name != "__pycache__":
                out.extend(_walk(child))
        else:
            out.append(child)
    return out


def _rel(root: resources.abc.Traversable, node: resources.abc.Traversable) -> str:
    return str(pathlib.Path(str(node)).relative_to(pathlib.Path(str(root))).as_posix())


def _as_path(node: resources.abc.Traversable) -> pathlib.Path:
    path = pathlib.Path(str(node))
    if not path.is_file():  # e.g. installed inside a zip archive
        raise FileNotFoundError(f"bundled file {node} is not on the filesystem; install hashflex unzipped")
    return path
