"""Build hook (the rest of the configuration is in pyproject.toml): a wheel carries the data files the three
uses read at run time, the top-level ``triton_models/``, ``export/`` and ``calibration/`` folders.

Those folders stay the one source, where the design card puts them; the build copies the files that
``trml_edge.assets.SHIPPED`` names into ``trml_edge/_assets/`` of the wheel (never into the source tree).
An editable install reads the folders in place, so it copies nothing.
"""

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def shipped() -> dict:
    """``SHIPPED`` from trml_edge/assets.py, read without importing the package (one list, used by both)."""
    tree = ast.parse((ROOT / "trml_edge" / "assets.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHIPPED" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("trml_edge/assets.py defines no SHIPPED")


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "trml_edge" / "_assets"
        for folder, patterns in shipped().items():
            files = sorted({f for p in patterns for f in (ROOT / folder).glob(p)
                     if f.is_file() and "__pycache__" not in f.parts})
            if not files:
                raise RuntimeError(f"{folder}/ has none of {patterns}: the wheel would lack its data files")
            for src in files:
                out = dest / src.relative_to(ROOT)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out)


setup(cmdclass={"build_py": BuildPyWithAssets})
