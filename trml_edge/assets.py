"""Where the files that the three uses read at run time are: the Triton templates, the export recipes and the
calibration sets.

Their one source is the top-level folders of the source tree (``triton_models/``, ``export/``,
``calibration/``), which a git clone and an editable install read in place. A wheel carries a copy of them in
``trml_edge/_assets/``, made at build time by ``setup.py`` (``SHIPPED`` below lists what is copied). Standard
library only: the runtime, the CLI's ``--help`` and the router's build step use it without torch.

Recipes and calibration sets resolve by name as well as by path: ``cpu-int8`` (or the design card's
``export/cpu-int8.toml``) is the shipped recipe when no such file exists where the command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trml_edge.errors import ConfigError, TrmlEdgeError

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent
WHEEL_ROOT = _PACKAGE / "_assets"  # in a wheel install
SOURCE_ROOT = _PACKAGE.parent  # in a clone / editable install: the repository root
# folder -> the files of it that a wheel ships (setup.py copies exactly these; tests/test_install.py checks it)
SHIPPED = {
    "triton_models": ("**/*.py", "**/*.md"),  # every template and shared source, whatever folder holds it
    "export": ("*.toml",),
    "calibration": ("README.md", "default/*"),
}
_MARKER = Path("triton_models") / "trml" / "model.py"


def root() -> Path:
    """The folder holding ``triton_models/``, ``export/`` and ``calibration/``: the wheel's copy, or the source
    tree's folders."""
    for base in (WHEEL_ROOT, SOURCE_ROOT):
        if (base / _MARKER).is_file():
            return base
    raise TrmlEdgeError(f"trml-edge's data files are missing (neither {WHEEL_ROOT} nor {SOURCE_ROOT / 'triton_models'} "
                        "exists): reinstall it with pip install --force-reinstall trml-edge, or from a clone with "
                        "pip install -e .")


def triton_templates() -> Path:
    """The Triton model-repository templates (``triton_models/``)."""
    return root() / "triton_models"


def recipes() -> dict[str, Path]:
    """Shipped export recipes: name -> file, sorted by name."""
    return {p.stem: p for p in sorted((root() / "export").glob("*.toml"))}


def calibration_sets() -> dict[str, Path]:
    """Shipped calibration sets: name -> folder, sorted by name."""
    return {p.parent.name: p.parent for p in sorted((root() / "calibration").glob("*/manifest.json"))}


def _shipped_name(value: str, folder: str, suffix: str) -> str | None:
    """``NAME`` or ``FOLDER/NAME[SUFFIX]`` (the form the docs use) -> NAME; any other path -> None."""
    p = Path(value)
    if p.is_absolute():
        return None
    if len(p.parts) == 1:  # a bare file name such as mine.toml is a path, never a shipped name
        return None if suffix and p.name.endswith(suffix) else p.name
    if len(p.parts) == 2 and p.parts[0] == folder:
        return p.name[: -len(suffix)] if suffix and p.name.endswith(suffix) else p.name
    return None


def recipe(value: str | Path) -> Path:
    """A recipe file, or the shipped recipe ``value`` names (``cpu-int8`` or ``export/cpu-int8.toml``)."""
    path = Path(value)
    if path.is_file():
        return path
    name = _shipped_name(str(value), "export", ".toml")
    shipped = recipes()
    if name in shipped:
        if str(value) != name:
            log.info("recipe %s: no such file here, using the shipped recipe %s", value, shipped[name])
        return shipped[name]
    raise ConfigError(f"recipe {value} not found: give a .toml file or a shipped recipe name "
                      f"({', '.join(shipped)}; `trml-edge recipes` lists them)")


def calibration(value: str | Path) -> Path:
    """A calibration-set folder, or the shipped set ``value`` names (``default`` or ``calibration/default``).
    A value that is neither comes back as it is, for the loader to say what is wrong with it."""
    path = Path(value)
    if path.exists():
        return path
    name = _shipped_name(str(value), "calibration", "")
    shipped = calibration_sets()
    if name in shipped:
        log.info("calibration %s: no such folder here, using the shipped set %s", value, shipped[name])
        return shipped[name]
    return path
