"""Environments at uv speed (README "Sessions"): nox makes its environments with uv where uv is installed,
and every install into them, Unsloth's included, takes the one installer choice (``envs.install_argv``):
uv where a uv binary is found, with pip's own find-links and constraints handed to it, pip where not."""

from __future__ import annotations

import ast
import itertools
import subprocess
from pathlib import Path

import pytest

from gemma2_regress.builds import envs, install

ROOT = Path(__file__).resolve().parents[2]
UV = "/opt/uv/bin/uv"
PY = "/env/bin/python"


def _pairs(argv: list[str], option: str) -> list[str]:
    return [value for flag, value in itertools.pairwise(argv) if flag == option]


@pytest.fixture
def pip_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip's configuration as on this project's machines: a find-links folder and a constraint file."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /wheels\nconstraint = /caps.txt\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))  # read last, over the machine's own files
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    return conf


def test_the_noxfile_makes_environments_with_uv_where_installed() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    backends = [
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and [ast.unparse(t) for t in node.targets] == ["nox.options.default_venv_backend"]
    ]
    assert backends == ["uv|venv"]
    # _cpu_env (mutants, portability, flakes) makes .nox/cpu as nox makes it for the cpu session, not venv
    fixed = [
        ast.unparse(k)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for k in node.keywords
        if k.arg == "venv_backend" and isinstance(k.value, ast.Constant)
    ]
    assert not fixed, f"a backend fixed in the noxfile: {fixed}"
    pip = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_pip")
    assert "envs.install_argv(python)" in ast.unparse(pip), "_pip does not take the installer choice"


def test_uv_where_a_uv_binary_is_found_pip_where_not(pip_conf: Path) -> None:
    uv = envs.install_argv(PY, find_uv=lambda: UV)
    assert uv[:3] == [UV, "pip", "install"] and _pairs(uv, "--python") == [PY]
    # uv reads no pip configuration: pip's find-links (the local CPU torch) and constraints are passed on
    assert _pairs(uv, "--find-links") == ["/wheels"] and _pairs(uv, "--constraint") == ["/caps.txt"]
    assert "--compile-bytecode" in uv  # .pyc at install, as pip: a test process does not recompile torch
    pip = envs.install_argv(PY, find_uv=lambda: None)
    assert pip == [PY, "-m", "pip", "install", "-q", "--disable-pip-version-check"]  # pip reads its own
    assert envs.install_argv(PY, installer="pip", find_uv=lambda: UV)[:4] == [PY, "-m", "pip", "install"]
    with pytest.raises(envs.BuildError, match="uv is not installed"):
        envs.install_argv(PY, installer="uv", find_uv=lambda: None)
    with pytest.raises(ValueError, match="conda"):
        envs.install_argv(PY, installer="conda")


def test_pip_settings_reach_uv_as_pip_reads_them(
    pip_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip_conf.write_text(
        "[global]\nfind-links = /wheels\nconstraint = /caps.txt\n[install]\nfind-links = /a /b\n"
    )  # [install] over [global]
    assert _pairs(envs.pip_config_for_uv(), "--find-links") == ["/a", "/b"]
    monkeypatch.setenv("PIP_FIND_LINKS", "/env-wheels")  # the environment over any file
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    assert envs.pip_config_for_uv() == ["--find-links", "/env-wheels"]
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.delenv("PIP_CONSTRAINT")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # pip's "no configuration at all"
    assert envs.pip_config_for_uv() == []


def test_the_unsloth_install_takes_the_same_choice(monkeypatch: pytest.MonkeyPatch, pip_conf: Path) -> None:
    steps = {
        "torch": ["torch==2.13.0"],
        "unsloth": ["unsloth==1.0", "unsloth_zoo==2.0"],
        "neighbours": ["trl<1"],
    }
    monkeypatch.setattr(install, "plan", lambda version: steps)
    monkeypatch.setattr(install, "wheel", lambda project, version: Path(f"/cache/{project}-{version}.whl"))
    runs: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda argv, check: runs.append(argv))
    for found, head in ((UV, [UV, "pip", "install"]), (None, [PY, "-m", "pip", "install"])):
        monkeypatch.setattr(envs, "uv_binary", lambda found=found: found)
        runs.clear()
        assert install.install("1.0", python=PY, extra=("pytest",)) == steps
        assert [r[: len(head)] for r in runs] == [head] * 3, runs
        assert runs[0][-1] == "torch==2.13.0" and runs[2][-2:] == ["trl<1", "pytest"]
    monkeypatch.setattr(envs, "uv_binary", lambda: None)
    with pytest.raises(install.InstallError, match="uv is not installed"):
        install.install("1.0", python=PY, installer="uv")
