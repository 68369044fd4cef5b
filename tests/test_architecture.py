"""The map is the territory: the layer contract in pyproject.toml holds (import-linter), and every
room of the package is placed in it, so a new module has to be given a floor (issue 11)."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import hashflex

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers() -> None:
    binary = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    assert Path(binary).exists(), "import-linter is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([binary, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_room_is_on_a_floor() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    placed = {name.strip() for contract in config if contract["type"] == "layers"
              for layer in contract["layers"] for name in layer.replace(":", "|").split("|")}
    rooms = {f"hashflex.{m.name}" for m in pkgutil.iter_modules(hashflex.__path__)} - {"hashflex.__main__"}
    assert rooms - placed == set(), "place these modules in [tool.importlinter] layers and ARCHITECTURE.md"
    assert placed - rooms == set(), "the contract names modules that do not exist"


def test_architecture_md_names_every_room() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    rooms = {m.name for m in pkgutil.iter_modules(hashflex.__path__)} - {"__main__"}
    missing = sorted(r for r in rooms if f"`{r}" not in text)
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"


def test_every_public_function_and_class_has_a_docstring() -> None:
    """Issue 11: public modules, classes, functions and methods of the package carry docstrings (ruff's
    pydocstyle rules D100-D103 and D106; the numpy sections are reviewed, not linted)."""
    binary = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(binary).exists(), "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([binary, "check", "--no-cache", "--isolated", "--select", "D100,D101,D102,D103,D106",
                             str(ROOT / "src" / "hashflex")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
