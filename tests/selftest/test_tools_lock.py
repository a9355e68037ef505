"""The suite's own tools are pinned (README "Pinned tools"): the lock files parse and serve Python
3.10 to 3.12, every place that installs a tool takes it from them, the pins repeated elsewhere agree,
and the run header reports the lock's digest and any drift from it."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gemma2_regress import toolslock, versions
from gemma2_regress.builds import install

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {"requirements/test.txt": toolslock.TEST_LOCK, "requirements/tools.txt": toolslock.TOOLS_LOCK}
# Unsloth's stack: the test lock is a constraints file beside it and must never pin these.
SUBJECT = {"torch", "transformers", "trl", "unsloth", "unsloth-zoo", "accelerate", "peft", "datasets"}


def _all_pins() -> list[toolslock.Pin]:
    return toolslock.read(toolslock.TEST_LOCK, toolslock.TOOLS_LOCK)


def _check_install(args: list[str], where: str) -> None:
    """``args`` of one install: ``-c <a lock> NAME...`` with each NAME bare and locked for every Python."""
    assert args[:1] == ["-c"] and len(args) > 2, f"{where}: {args} does not install from a lock (-c)"
    lock = args[1].replace("{toxinidir}/", "")
    assert lock in LOCKS, f"{where}: constraints {args[1]} is not one of {sorted(LOCKS)}"
    pins = toolslock.read(LOCKS[lock])
    for name in args[2:]:
        req = Requirement(name)
        assert not req.specifier and not req.url, f"{where}: {name} carries its own version; the lock sets it"
        for python in toolslock.PYTHONS:
            assert canonicalize_name(req.name) in toolslock.for_env(pins, toolslock.python_env(python)), (
                f"{where}: {name} is not pinned in {lock} for Python {python}"
            )


def test_locks_parse_and_pin_every_tool_for_each_python() -> None:
    for rel, path in LOCKS.items():
        pins = toolslock.read(path)
        assert pins, rel
        lines = [ln.split("#", 1)[0].strip() for ln in path.with_suffix(".in").read_text().splitlines()]
        tools = [Requirement(line) for line in lines if line]  # a bound in the .in file (pytest<9.2) holds
        for python in toolslock.PYTHONS:
            locked = toolslock.for_env(pins, toolslock.python_env(python))  # one version a package
            for tool in tools:
                name = canonicalize_name(tool.name)
                assert name in locked, f"{tool} ({rel}.in) not locked for Python {python}"
                assert tool.specifier.contains(locked[name], prereleases=True), (
                    f"{tool} ({rel}.in): the lock has {locked[name]} for Python {python}"
                )
    test_names = {p.name for p in toolslock.read(toolslock.TEST_LOCK)}
    assert not test_names & (SUBJECT | set(toolslock.NO_EMIT)), "the test lock would force Unsloth's stack"
    # Where the two locks share a package (packaging) they agree, so one interpreter can hold both.
    for python in toolslock.PYTHONS:
        toolslock.for_env(_all_pins(), toolslock.python_env(python))


def test_a_loose_or_broken_line_is_refused_with_its_place() -> None:
    good = (
        "pytest==9.2.0\n    # via -r requirements/test.in\nhypothesis==6.1.0 ; python_full_version < '3.11'\n"
    )
    assert [p.line() for p in toolslock.parse(good)] == [
        "pytest==9.2.0",
        'hypothesis==6.1.0 ; python_full_version < "3.11"',
    ]
    for bad in ("pytest>=8", "pytest", "pytest==9.*", "pytest @ https://example.invalid/p.whl", "!!"):
        with pytest.raises(toolslock.LockError, match=r"x\.txt:2: "):
            toolslock.parse("ruff==0.17.6\n" + bad + "\n", "x.txt")
    with pytest.raises(toolslock.LockError, match="nox -s lock"):
        toolslock.read(ROOT / "requirements" / "no-such.txt")


def test_every_nox_install_comes_from_a_lock() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id == "_pip":  # _pip(session, python, *args)
            node = ast.copy_location(ast.Call(node.func, node.args[2:], node.keywords), node)
        elif not (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
            continue
        elif node.func.attr != "install":
            continue
        elif node.func.value.id == "install":  # install.install(version, python=...): TEST_TOOLS, below
            assert not any(k.arg == "extra" for k in node.keywords), "install.install given other tools"
            continue
        where = f"noxfile.py:{node.lineno}"
        if len(node.args) == 1 and isinstance(node.args[0], ast.Starred):
            assert ast.unparse(node.args[0].value) == "install.TEST_TOOLS", where
            continue
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        assert len(args) == len(node.args), f"{where}: install arguments must be literal to be checked"
        if "-e" in args:
            assert args == ["-e", ".", "--no-deps"], f"{where}: the project itself installs with --no-deps"
            continue
        _check_install(args, where)
        checked += 1
    assert checked >= 3, "lint, perf and lock install tools; the noxfile scan found fewer"
    # The one pip call outside session.install is _pip's, whose callers are checked above.
    pip_def = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_pip")
    inside = {id(n) for n in ast.walk(pip_def)}
    runs = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "session.run" and id(n) not in inside
    ]
    assert runs and not [r for r in runs if "'install'" in r], "a session runs pip install past the lock"


def test_test_tools_come_from_the_test_lock() -> None:
    assert install.TEST_TOOLS[:2] == ("-c", str(toolslock.TEST_LOCK))
    _check_install(["-c", "requirements/test.txt", *install.TEST_TOOLS[2:]], "install.TEST_TOOLS")
    assert {canonicalize_name(n) for n in install.TEST_TOOLS[2:]} >= {"pytest", "hypothesis", "pytest-xdist"}
    assert install.install.__defaults__[-1] is install.TEST_TOOLS  # type: ignore[index]


def test_tox_deps_come_from_a_lock() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    seen = 0
    for section in ini.sections():
        if "deps" not in ini[section]:
            continue
        deps = [ln.strip() for ln in ini[section]["deps"].splitlines() if ln.strip()]
        args = [a for d in deps for a in shlex.split(d)]
        _check_install(args, f"tox.ini [{section}]")
        seen += 1
    assert seen >= 2


@pytest.mark.parametrize("path", [".ci/run", "README.md"])
def test_nox_itself_is_installed_from_the_lock(path: str) -> None:
    lines = [ln for ln in (ROOT / path).read_text().splitlines() if ln.startswith("python3 -m pip install")]
    assert lines, f"{path}: no `python3 -m pip install` line"
    for line in lines:
        cmd = line.split("&&")[0].split("#")[0]
        args = [a for a in shlex.split(cmd)[4:] if a not in ("-q", "--disable-pip-version-check")]
        _check_install(args, f"{path}: {line}")
        assert "nox" in args


def test_pyproject_pins_agree_with_the_lock() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pins = _all_pins()
    assert toolslock.sync_pyproject(text, pins) == text, "pyproject.toml drifted from the lock: nox -s lock"
    exact = re.findall(r'"([A-Za-z0-9._-]+)==', text)
    assert {canonicalize_name(n) for n in exact} >= {"setuptools", "pytest", "hypothesis", "ruff", "nox"}
    assert all(canonicalize_name(n) in {p.name for p in pins} for n in exact), exact
    # Stale pins are put right, names outside the lock left alone, and a pin that covers Pythons
    # locked at different versions is refused rather than guessed.
    hyp310 = toolslock.pinned_for(pins, "hypothesis", "python_version < '3.11'")
    stale = '["pytest==1.0", "hypothesis==1.0; python_version < \'3.11\'", "torch>=2.4", "foo==1.0"]'
    fixed = toolslock.sync_pyproject(stale, pins)
    assert f'"pytest=={toolslock.pinned_for(pins, "pytest")}"' in fixed
    assert f"\"hypothesis=={hyp310}; python_version < '3.11'\"" in fixed
    assert '"torch>=2.4"' in fixed and '"foo==1.0"' in fixed
    with pytest.raises(toolslock.LockError, match="split the pin by python_version"):
        toolslock.sync_pyproject('["hypothesis==1.0"]', pins)


def _requires_closure(names: list[str], python: str) -> set[str]:
    """The installed distributions ``names`` need on CPython ``python`` (Linux), names included."""
    env, todo, out = toolslock.python_env(python), list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in out:
            continue
        out.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return out


def _bundle_stacks() -> dict[str, list[Path]]:
    """The bundles as they travel: each old release's stack of layers (gpu/old-releases.txt, one
    ``PYTHONPATH``), every other bundle alone."""
    from gemma2_regress.builds import old_releases

    stacks: dict[str, list[Path]] = {}
    for release in old_releases.read_plan(old_releases.PLAN):
        stacks[f"{release.version}-stack"] = [ROOT / "gpu" / f"bundle-{b}.txt" for b in release.bundles]
    layered = {b for files in stacks.values() for b in files}
    for bundle in sorted((ROOT / "gpu").glob("bundle-*.txt")):
        if bundle not in layered:
            stacks[bundle.name] = [bundle]
    return stacks


@pytest.mark.parametrize(("name", "bundles"), list(_bundle_stacks().items()), ids=list(_bundle_stacks()))
def test_gpu_bundles_carry_the_locked_tools(name: str, bundles: list[Path]) -> None:
    """Each bundle file pins the lock's versions; each stack that travels (a bundle alone, or an old
    release's layers together) carries the test tools."""
    pins, listed = _all_pins(), set()
    for bundle in bundles:
        text = bundle.read_text()
        assert toolslock.sync_bundle(text, pins) == text, f"{bundle.name} drifted from the lock: nox -s lock"
        listed |= {canonicalize_name(m) for m in re.findall(r"^([A-Za-z0-9._-]+)==", text, re.M)}
    need = _requires_closure(["pytest", "hypothesis", "pytest-xdist"], "3.12")
    assert need <= listed, f"{name} lacks {sorted(need - listed)} of the test tools"
    stale = toolslock.sync_bundle("hypothesis==1.0\nunsloth==2026.10.9\n", pins)
    assert stale == f"hypothesis=={toolslock.for_env(pins, toolslock.python_env('3.12'))['hypothesis']}\n" + (
        "unsloth==2026.10.9\n"
    )


def test_digest_follows_pins_not_comments() -> None:
    text = toolslock.TEST_LOCK.read_text()
    pins = toolslock.parse(text)
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", toolslock.digest(pins))
    assert toolslock.digest(toolslock.parse("# refreshed\n" + text.replace("# via", "#   via"))) == (
        toolslock.digest(pins)
    )
    bumped = text.replace("pytest==", "pytest==0.", 1)
    assert toolslock.digest(toolslock.parse(bumped)) != toolslock.digest(pins)


def test_drift_names_each_tool_that_differs() -> None:
    pins = toolslock.parse(
        "hypothesis==6.170.17\npytest==9.2.0\nmatplotlib==3.11.2\nold==1 ; python_version < '3'\n"
    )
    have = {"hypothesis": "6.155.2", "pytest": "9.2.0"}

    def installed(name: str) -> str:
        if name not in have:
            raise importlib.metadata.PackageNotFoundError(name)
        return have[name]

    assert toolslock.drift(pins, installed) == ["hypothesis 6.155.2 != locked 6.170.17"]
    have["hypothesis"] = "6.170.17"
    assert toolslock.drift(pins, installed) == []


def test_run_header_reports_the_lock(request: pytest.FixtureRequest) -> None:
    lock = toolslock.digest(toolslock.read(toolslock.TEST_LOCK))
    assert versions.versions()["tools_lock"] == lock
    header = request.config.hook.pytest_report_header(config=request.config, start_path=ROOT)
    lines = [ln for group in header for ln in ([group] if isinstance(group, str) else group)]
    tools = [ln for ln in lines if ln.startswith("tools-lock=")]
    assert tools == [versions.tools_line()]
    assert tools[0].startswith(f"tools-lock={lock} (requirements/test.txt): ")
    drift = toolslock.drift(toolslock.read(toolslock.TEST_LOCK))
    assert tools[0].endswith("installed tools match") == (not drift)
    assert all(d in tools[0] for d in drift)
