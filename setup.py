"""Build hook only (metadata, dependencies and tool settings live in pyproject.toml).

The wheel carries the suite, so that ``gemma2-regress test`` runs it wherever the wheel is installed:
``conftest.py``, ``tests/``, ``fixtures/`` and ``requirements/`` (the test tools' lock the run header
checks) are copied to ``gemma2_regress/suite_root/`` (``tests/selftest/`` stays behind: it tests this
repository's machinery, not Unsloth), with pyproject.toml's pytest settings written out as
``gemma2_regress/suite_root/pytest.ini``. ``gemma2_regress/suite.py`` finds that copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SUITE_FILES = (
    "conftest.py",
    "tests",
    "fixtures",
    "requirements",
)  # requirements: the run header's tools lock
LEFT_OUT = shutil.ignore_patterns("selftest", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


def _pytest_ini() -> str:
    """pyproject.toml's ``[tool.pytest.ini_options]`` as a ``pytest.ini``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: setuptools' own reader
        from setuptools.config.pyprojecttoml import load_file

        options = load_file(HERE / "pyproject.toml")["tool"]["pytest"]["ini_options"]
    else:
        options = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = [
        "# Written by setup.py from pyproject.toml's [tool.pytest.ini_options] (edit that, not this).",
        "[pytest]",
    ]
    for key, value in options.items():
        if isinstance(value, list):
            lines += [f"{key} =", *(f"    {v}" for v in value)]
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def lay_suite(dest: Path) -> None:
    """Copy the suite to ``dest`` (replacing what is there), with its settings as ``pytest.ini``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in SUITE_FILES:
        src = HERE / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=LEFT_OUT)
        else:
            shutil.copy2(src, dest / name)
    (dest / "pytest.ini").write_text(_pytest_ini())


class BuildWithSuite(build_py):
    """``build_py`` that also lays the suite into the build as ``gemma2_regress/suite_root/``."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install runs the checkout's own suite
            lay_suite(Path(self.build_lib) / "gemma2_regress" / "suite_root")


if __name__ == "__main__":  # as setuptools' build backend runs it; importable for the self-tests
    setup(cmdclass={"build_py": BuildWithSuite})
