"""nox sessions: `nox -s cpu` (default), `gpu`, `lint`, `regress` (GPU tier if a GPU is visible, and CPU).

Every session passes its positional arguments on to pytest: `nox -s cpu -- -k window -x`.
The Unsloth release under test is chosen with GEMMA2_REGRESS_UNSLOTH:
  latest (default)   the newest release on PyPI, with neighbours it accepts (gemma2_regress/builds/install.py)
  2026.10.9          an exact release
  installed          whatever is already installed in the session's environment (no install step)
Where a GPU is expected (GEMMA2_REGRESS_REQUIRE_GPU=1, or `-- --require-gpu`), `gpu` and `regress` fail
without one instead of skipping (gemma2_regress/gpu_check.py). Reports: reports/<tier>/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
from gemma2_regress import gpu_check, records, suite, toolslock  # noqa: E402
from gemma2_regress.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from gemma2_regress.builds import envs, install  # noqa: E402
from gemma2_regress.plugins.summary import whole_tier_passed  # noqa: E402

nox.options.sessions = ["cpu"]
# uv where nox finds it installed (environments in seconds, files hard-linked from uv's cache), else venv.
nox.options.default_venv_backend = "uv|venv"
# A uv-made environment gets pip (and, before Python 3.12, setuptools) as `python -m venv` gives it: code
# run inside the environment under test calls `python -m pip` (the GPU bundle's build and its self-test).
os.environ.setdefault("UV_VENV_SEED", "1")
if hasattr(nox.options, "reuse_venv"):
    nox.options.reuse_venv = "yes"
else:  # older nox
    nox.options.reuse_existing_virtualenvs = True

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
MARKER = ".gemma2-regress-installed.json"
# How each tier ended in this nox run (sessions run one after another in this process), for the
# closing lines of `nox -s regress`.
TIER_OUTCOMES: dict[str, str] = {}


def _venv_python(session: nox.Session) -> str | None:
    if not isinstance(session.virtualenv, nox.virtualenv.VirtualEnv):
        return None  # --no-venv / python=False: the current interpreter
    return str(Path(session.bin) / "python")


def _pip(session: nox.Session, python: str, *args: str) -> None:
    """Install ``args`` into the environment of ``python``: `uv pip install --python` where uv is installed
    (with pip's find-links and constraints), else `python -m pip install` (envs.install_argv)."""
    session.run(*envs.install_argv(python), *args, external=True)


def _log_installer(session: nox.Session) -> None:
    """One line in the session's log: which installer `_pip` and `install.install` use."""
    uv = envs.pick_uv()
    session.log(f"installer: uv ({uv})" if uv else "installer: pip (uv is not installed)")


def install_unsloth(session: nox.Session, python: str | None = None) -> str:
    """Install the chosen Unsloth release (once per environment) into the session's environment, or
    into that of ``python``; return its version."""
    wanted = os.environ.get("GEMMA2_REGRESS_UNSLOTH", "latest")
    python = python or _venv_python(session)
    marker = Path(python).parent.parent / MARKER if python else None
    if python:
        _log_installer(session)
    if wanted == "installed" or python is None:
        session.log("GEMMA2_REGRESS_UNSLOTH=installed or --no-venv: using the Unsloth already installed")
        _pip(session, python, "-e", ".", "--no-deps") if python else None
        return "installed"
    have = json.loads(marker.read_text()) if marker and marker.exists() else None
    try:
        tools = toolslock.digest(toolslock.read(toolslock.TEST_LOCK))
    except toolslock.LockError as exc:
        session.error(str(exc))
    try:
        version = install.resolve_version(wanted)
    except install.InstallError as exc:
        if have and wanted == "latest":
            session.warn(f"{exc}; reusing the environment's unsloth {have['unsloth']}")
            return have["unsloth"]
        session.error(str(exc))
    if have and have.get("unsloth") == version:
        session.log(f"unsloth {version} already installed in {marker.parent}")
        if have.get("tools_lock") != tools:  # requirements/test.txt changed since this env was built
            session.log(f"test tools: lock {have.get('tools_lock')} -> {tools}, installing them from it")
            _pip(session, python, *install.TEST_TOOLS)
            _write_marker(marker, {**have, "tools_lock": tools})
    else:
        session.log(f"installing unsloth {version} and the neighbours it accepts (CPU builds)")
        try:
            steps = install.install(version, python=python)
        except (install.InstallError, subprocess.CalledProcessError) as exc:
            session.error(f"installing unsloth {version} failed: {exc}")
        _pip(session, python, "-e", ".", "--no-deps")
        _write_marker(marker, {"unsloth": version, "plan": steps, "tools_lock": tools})
    return version


def _write_marker(marker: Path, data: dict) -> None:
    write_json_atomic(marker, data)  # written last and whole: a half-built env is rebuilt next time


def _pytest(session: nox.Session, *args: str) -> None:
    python = _venv_python(session) or sys.executable
    # interrupt_timeout: on Ctrl-C / SIGINT give pytest time to print its summary and write reports.
    session.run(python, "-m", "pytest", *args, *session.posargs, external=True, interrupt_timeout=60)


def _compile_cache(session: nox.Session) -> Path:
    """Inductor's cache for every tier and run: beside the session environments (``.nox/compile-cache``),
    so that it outlives /tmp and a CI cache of ``.nox/compile-cache`` carries it from run to run."""
    location = getattr(session.virtualenv, "location", None)
    return (Path(location).parent if location else ROOT / ".nox") / "compile-cache"


def _tier_args(
    session: nox.Session,
    tier: str,
    gpus: int = 0,
    gpu_gib: float | None = None,
    cores: int | None = None,
    warm: bool = False,
) -> list[str]:
    """The tier's pytest arguments, its variables set in the session (gemma2_regress/suite.py: the tier
    means what it means in `gemma2-regress test`)."""
    try:
        args = suite.tier_args(tier, gpus, gpu_gib=gpu_gib, cores=cores, warm=warm)
    except suite.SuiteError as exc:
        session.error(str(exc))
    session.env.update(
        suite.tier_env(tier, gpus, compile_cache=_compile_cache(session), cores=cores, warm=warm)
    )
    return args


def _run_tier(session: nox.Session, tier: str, *args: str) -> None:
    """Run the tier's pytest with its reports under reports/<tier>/ and note how it ended."""
    session.env[suite.TIER_ENV] = tier  # summary.json and costs.json go to reports/<tier>/ too
    TIER_OUTCOMES[tier] = "started, did not finish (see its session above)"
    try:
        _pytest(session, *args, "--junitxml", f"reports/{tier}/junit.xml")
    except BaseException as exc:
        code = getattr(exc, "return_code", None)  # nox's CommandFailed carries pytest's exit status
        TIER_OUTCOMES[tier] = (
            f"ran: FAILED ({f'pytest exit {code}' if code is not None else type(exc).__name__})"
        )
        raise
    summary = suite.report_path("summary.json", "GEMMA2_REGRESS_REPORT", tier)
    TIER_OUTCOMES[tier] = f"ran: passed (summary: {summary}, JUnit: reports/{tier}/junit.xml)"


def _gpu_required(session: nox.Session) -> str | None:
    """What requires a GPU (GEMMA2_REGRESS_REQUIRE_GPU=1 or `--require-gpu` in the posargs), or None."""
    try:
        return gpu_check.required_by(session.posargs)
    except ValueError as exc:
        session.error(str(exc))


def _no_gpu(session: nox.Session, problem: str, required: str | None) -> NoReturn:
    """The GPU tier cannot run: fail in one line where a GPU is required, else skip with the reason."""
    if required:
        TIER_OUTCOMES["gpu"] = f"FAILED: {problem}"
        session.error(f"GPU tier required ({required}) but {problem}")
    TIER_OUTCOMES["gpu"] = f"skipped: {problem}"
    session.skip(f"{problem} ({gpu_check.REQUIRE_ENV}=1 makes this a failure)")


@nox.session(python=PYTHON)
def cpu(session: nox.Session) -> None:
    """Everything that needs no GPU: the oracle, Unsloth's kernels on CPU, fixtures, self-tests."""
    args = _tier_args(session, "cpu", cores=gpu_check.cpu_cores())
    version = install_unsloth(session)
    settings = [
        f"{k}={session.env[k]}"
        for k in (suite.THREADS_ENV, suite.COMPILE_THREADS_ENV, suite.MALLOC_ENV)
        if k in session.env
    ]
    if settings:
        session.log(f"cpu tier: {suite.cpu_workers()} worker(s), {', '.join(settings)} each")
    session.log(f"CPU tier against unsloth {version}")
    # Deterministic draws (the ci profile), as the GPU tier's: a regression run's verdict must not depend
    # on luck. Random search (HYPOTHESIS_PROFILE=dev or nightly) can also hit torch's CPU recompile crash.
    _run_tier(session, "cpu", *args)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The GPU tier. On an air-gapped runner: `nox -s gpu --no-venv` uses the current interpreter.

    Without a usable GPU it skips with the reason, or fails in one line where a GPU is required.
    """
    required = _gpu_required(session)
    _tier_args(session, "gpu")  # a bad worker setting fails here, before anything is installed
    problem = gpu_check.driver_problem()  # before the install: a runner without a driver stops here
    if problem:
        _no_gpu(session, problem, required)
    install_unsloth(session)
    python = _venv_python(session) or sys.executable
    n, problem, stack = gpu_check.torch_stack(python)
    # A pass of `import unsloth` (seconds) is recorded in the tier's compile cache under the stack the torch
    # probe saw, so a warm run does not import it once more before pytest imports it in every worker.
    cache = Path(session.env.get(suite.COMPILE_CACHE_ENV) or os.environ[suite.COMPILE_CACHE_ENV])
    record = records.path(cache, records.UNSLOTH_IMPORT, stack)
    if not problem and gpu_check.unsloth_recorded(record, stack):
        session.log(f"Unsloth: imported in this stack before, not asked again ({record})")
    else:
        problem = problem or gpu_check.unsloth_problem(python, record=record, stack=stack)
    if problem:
        _no_gpu(session, problem, required)
    # Workers per GPU from its memory and the CPU cores (suite.workers_per_gpu), each pinned to its own
    # device (conftest.py): several per GPU overlap the cold compiles, which are CPU-bound, and more of them
    # a warm run's tracing: warm where a whole tier passed before on this stack and cache (docs/gpu.md).
    passed = records.path(cache, records.GPU_TIER_PASSED, stack)
    warm = records.holds(passed, stack)
    gib, cores = gpu_check.gpu_memory_gib(), gpu_check.cpu_cores()
    per_gpu, why = suite.workers_per_gpu(n, gib, cores, warm=warm)
    args = _tier_args(session, "gpu", n, gpu_gib=gib, cores=cores, warm=warm)
    session.log(f"gpu tier: {per_gpu} xdist worker(s) per GPU x {n} GPU(s) ({why})")
    threads = session.env.get(suite.COMPILE_THREADS_ENV) or os.environ.get(suite.COMPILE_THREADS_ENV)
    if warm and threads:  # suite.tier_env sets 1 when warm, unless the caller chose
        session.log(
            f"gpu tier: Inductor's compile workers {suite.COMPILE_THREADS_ENV}={threads} in each worker"
        )
    _run_tier(session, "gpu", *args)
    if stack and whole_tier_passed(suite.report_path("summary.json", "GEMMA2_REGRESS_REPORT", "gpu")):
        write_json_atomic(passed, {"key": stack})  # every graph compiled and every peak recorded


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("-c", "requirements/tools.txt", "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=False)
def regress(session: nox.Session) -> None:
    """The suite's main job: the GPU tier where a GPU is visible or required, then the CPU tier.

    Where a GPU is required (GEMMA2_REGRESS_REQUIRE_GPU=1, `-- --require-gpu`) the GPU tier fails without
    one. At the end the `regress-tiers` session says which tiers ran, and which were skipped and why.
    """
    required = _gpu_required(session)
    problem = gpu_check.driver_problem()
    queued = "queued, did not reach pytest (see its session above)"
    if problem is None or required:
        TIER_OUTCOMES["gpu"] = queued
        session.notify("gpu", session.posargs)
    else:
        TIER_OUTCOMES["gpu"] = f"skipped: {problem}"
        session.log(f"GPU tier skipped: {problem} ({gpu_check.REQUIRE_ENV}=1 makes this a failure)")
    TIER_OUTCOMES["cpu"] = queued
    session.notify("cpu", session.posargs)
    session.notify("regress-tiers")


@nox.session(name="regress-tiers", python=False)
def regress_tiers(session: nox.Session) -> None:
    """Queued last by `regress`: which tiers ran in this nox run, and which were skipped and why."""
    if not TIER_OUTCOMES:
        session.log("no tier ran in this nox run (`nox -s regress` runs this session after its tiers)")
    for tier in ("gpu", "cpu"):
        session.log(f"{tier} tier: {TIER_OUTCOMES.get(tier, 'not run')}")


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """Unsloth's slow softcapping path vs flex attention vs an SDPA floor, timed side by side (docs/perf.md).

    On a GPU the --quick grid (about 4 minutes on one H200), without one the tiny CPU smoke grid.
    Arguments go to `python -m gemma2_regress.perf run`, e.g. `nox -s perf -- --full --gate-demo`.
    On an air-gapped runner: `nox -s perf --no-venv` (the current interpreter).
    """
    from gemma2_regress.perf.cli import check_run_args

    try:  # before the install: bad input fails at once
        check_run_args(list(session.posargs))
    except ValueError as exc:
        session.error(f"perf: {exc}")
    install_unsloth(session)
    if _venv_python(session):
        # plots are optional: without matplotlib the JSON and table are written
        session.install("-c", "requirements/test.txt", "matplotlib")
    python = _venv_python(session) or sys.executable
    session.run(python, "-m", "gemma2_regress.perf", "run", *session.posargs, external=True)


def _gemma2_regress_cli(session: nox.Session, command: str) -> None:
    """Run `python -m gemma2_regress.cli <command> ...` with nox's own interpreter: bisect and gate build
    an isolated environment per Unsloth build themselves (uv if installed:
    `pip install -c requirements/tools.txt uv`)."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    session.run(sys.executable, "-m", "gemma2_regress.cli", command, *session.posargs, external=True, env=env)


@nox.session(python=False)
def bisect(session: nox.Session) -> None:
    """First bad (or --find-fix: first good) Unsloth build for a pytest selection (docs/bisect.md).

    `nox -s bisect -- --good 2026.10.1 --bad 2026.10.9 -- tests/kernel/test_slow_kernel.py -k small_windows`
    """
    _gemma2_regress_cli(session, "bisect")


@nox.session(python=False)
def nightly(session: nox.Session) -> None:
    """Gate the newest build against the last good one, rerun its failures, bisect the stable ones, write
    the issue text (gemma2_regress/builds/nightly.py).

    `nox -s nightly -- --candidate latest --baseline 2026.10.9 [--repo ~/unsloth --candidate main] [-- pytest args]`
    """
    _gemma2_regress_cli(session, "nightly")


@nox.session(python=False)
def gate(session: nox.Session) -> None:
    """Release gate: fail on tests that pass on the baseline and fail on the candidate (docs/bisect.md).

    `nox -s gate -- --candidate 2026.10.9 [--baseline 2026.10.1] [-- pytest args]`
    """
    _gemma2_regress_cli(session, "gate")


@nox.session(python=False)
def mutants(session: nox.Session) -> None:
    """Kill matrix: the suite once per planted bug in the installed Unsloth (docs/mutants.md).

    `nox -s mutants` (all mutants, the tier this machine has), `nox -s mutants -- crash2024 softcap_dropped`,
    `nox -s mutants -- --tier gpu --jobs 4`; on an air-gapped GPU runner add `--no-venv`. The bugs are
    planted into the cpu session's environment (.nox/cpu), which it shares.
    """
    from gemma2_regress.mutants import catalogue, killmatrix

    unknown = [n for n in killmatrix.parse_args(list(session.posargs)).names if n not in catalogue.CATALOGUE]
    if unknown:  # before the install: bad input fails at once
        session.error(f"unknown mutant {', '.join(unknown)}; known: {', '.join(catalogue.CATALOGUE)}")
    python = _cpu_env(session)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    session.run(python, "-m", "gemma2_regress.mutants.killmatrix", *session.posargs, external=True, env=env)


def _venv_backend(session: nox.Session) -> str:
    """The backend nox gives the cpu session: --force-venv-backend, else the default ("uv|venv"), its first
    choice that is installed: nox rebuilds an environment made by uv when asked for venv, so both agree."""
    config = session._runner.global_config
    choices = (config.force_venv_backend or config.default_venv_backend or "virtualenv").split("|")
    backend = next((b for b in choices if nox.virtualenv.OPTIONAL_VENVS.get(b, True)), choices[-1])
    return backend if backend in ("uv", "venv", "virtualenv") else "venv"


def _cpu_env(session: nox.Session) -> str:
    """The interpreter of the cpu session's environment (.nox/cpu), made here if missing: mutants,
    portability and flakes run the CPU tier's tests and share it. Under `--no-venv`, the current interpreter."""
    if getattr(session._runner.global_config, "force_venv_backend", None) == "none":  # --no-venv
        return sys.executable
    venv = nox.virtualenv.VirtualEnv(
        str(ROOT / ".nox" / "cpu"),
        interpreter=PYTHON,
        reuse_existing=True,
        venv_backend=_venv_backend(session),
    )
    venv.create()
    python = str(Path(venv.bin) / "python")
    install_unsloth(session, python)
    return python


def _reruns(session: nox.Session, command: str, *args: str) -> None:
    python = _cpu_env(session)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    session.run(python, "-m", "gemma2_regress.builds.reruns", command, *args, external=True, env=env)


@nox.session(python=False)
def portability(session: nox.Session) -> None:
    """The oracle and kernel tests once per CPU kernel choice: green on each, or a bound depends on the CPU.

    Settings: ATEN_CPU_CAPABILITY, MKL_CBWR, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA, 1 and 2 threads
    (gemma2_regress/builds/reruns.py). Runs in the cpu session's environment.

    `nox -s portability -- --list`, `-- --settings aten-default,threads-1`, `-- -- tests/oracle`.
    """
    _reruns(session, "portability", *session.posargs)


@nox.session(name="portability-quick", python=False)
def portability_quick(session: nox.Session) -> None:
    """What CI runs of `portability`: the oracle tests under scalar kernels, MKL's other order, one thread."""
    _reruns(
        session,
        "portability",
        "--settings",
        "quick",
        "--out",
        "reports/portability-quick",
        *session.posargs,
        "--",
        "tests/oracle",
        "-p",
        "no:xdist",
    )


@nox.session(python=False)
def flakes(session: nox.Session) -> None:
    """Flake census: the CPU tier run N times, per test how often it passed; exit 1 on a flaky test.

    `nox -s flakes -- --runs 10 [--settings all] [-- pytest args]` (ci profile; resumes when run again).
    """
    _reruns(session, "flakes", *session.posargs)


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Refresh the pinned tools, requirements/{test,tools}.txt from their .in files (uv, one universal
    resolve for Python 3.10+), then the pins that repeat them in pyproject.toml and gpu/bundle-*.txt.

    `nox -s lock` keeps every pin that still resolves and adds what the .in files gained;
    `nox -s lock -- --upgrade` moves every tool to its newest release, `-- --upgrade-package hypothesis`
    one of them. Arguments go to `uv pip compile`.
    """
    session.install("-c", "requirements/tools.txt", "uv")
    compile_ = ["uv", "pip", "compile", "--quiet", "--universal", "--python-version", toolslock.PYTHONS[0]]
    compile_ += ["--custom-compile-command", "nox -s lock", *session.posargs]
    no_emit = [arg for name in toolslock.NO_EMIT for arg in ("--no-emit-package", name)]
    req = ROOT / "requirements"
    with tempfile.TemporaryDirectory() as tmp:
        # Both compiled in a copy, then both replaced: a failed refresh leaves the old pair. The copy of
        # each .txt is what uv keeps pins from; tools.txt agrees with test.txt where they share a package.
        work = Path(tmp) / "requirements"
        shutil.copytree(req, work, ignore=shutil.ignore_patterns(".*"))
        with session.chdir(tmp):
            for name, extra in (("test", no_emit), ("tools", ["-c", "requirements/test.txt"])):
                session.run(*compile_, *extra, f"requirements/{name}.in", "-o", f"requirements/{name}.txt")
        try:
            pins = toolslock.read(work / "test.txt", work / "tools.txt")
            for python in toolslock.PYTHONS:
                toolslock.for_env(pins, toolslock.python_env(python))
        except toolslock.LockError as exc:
            session.error(f"the new lock is unusable: {exc}")
        for name in ("test.txt", "tools.txt"):
            if write_text_atomic(req / name, (work / name).read_text()):
                session.log(f"updated requirements/{name}")
    for path in [ROOT / "pyproject.toml", *sorted((ROOT / "gpu").glob("bundle-*.txt"))]:
        sync = toolslock.sync_pyproject if path.suffix == ".toml" else toolslock.sync_bundle
        try:
            text = sync(path.read_text(), pins)
        except toolslock.LockError as exc:
            session.error(f"{path.relative_to(ROOT)}: {exc}")
        if write_text_atomic(path, text):
            session.log(f"updated the pins in {path.relative_to(ROOT)}")
