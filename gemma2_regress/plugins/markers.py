"""The suite's pytest markers, declared once.

Loaded by the suite's ``conftest.py`` and, where the gemma2-regress wheel is installed, by pytest itself
through the ``pytest11`` entry point of the same name (pyproject.toml): so a file of the suite collects
under ``--strict-markers`` even when another project's pytest settings are in force. It declares
markers and reads one (``group_of``): the rest of the suite's set-up (profiles, reports, strict xfails) comes from its ``conftest.py``,
so other projects' test runs in the same environment are left as they were.
"""

from __future__ import annotations

import pytest

MARKERS = {
    "gpu": "needs a CUDA GPU (the GPU tier: `nox -s gpu`, `gemma2-regress test --tier gpu`)",
    "unsloth": "runs the installed Unsloth",
    "slow": "a few expensive examples at Gemma-2's real 4096 window",
    "xdist_group(name)": "tests that share one xdist worker (declared here for runs without xdist)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def group_of(item: pytest.Item) -> str | None:
    """The item's ``xdist_group`` name, or None outside any group."""
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
