"""Where the suite's tests live, and what one tier of them is for pytest.

The suite is ``conftest.py``, ``tests/`` and ``fixtures/`` plus pytest's settings. Two layouts carry it:

- a checkout of this repository: its root, with the settings in ``pyproject.toml``;
- an installed wheel: ``gemma2_regress/suite_root/`` in site-packages, the same files copied there at build
  time (``setup.py``; ``tests/selftest/`` stays behind: it tests this repository's machinery), with the
  settings written out as ``pytest.ini``.

``gemma2-regress test`` and the nox sessions ask this module, so a tier means the same everywhere:

    cpu   ``-m "not gpu"``: the oracle, Unsloth's kernels on CPU, the fixture model (and, in a checkout,
          the self-tests); HYPOTHESIS_PROFILE ``ci``; GEMMA2_REGRESS_WORKERS xdist workers (default 2)
    gpu   ``-m gpu``: Unsloth's model, trainer and kernels on CUDA; HYPOTHESIS_PROFILE ``gpu``; xdist
          workers per GPU as ``workers_per_gpu`` chooses them from the machine (GEMMA2_REGRESS_WORKERS_PER_GPU
          overrides), each pinned to its GPU (conftest.py); ``--require-gpu``: without a GPU the tier fails
          instead of skipping

Standard library only: the noxfile imports it before any environment exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
INSTALLED = PACKAGE / "suite_root"  # the wheel's copy (setup.py writes it)
ROOT_ENV = "GEMMA2_REGRESS_ROOT"  # a suite root chosen by hand: another checkout of this repository
TIERS = ("cpu", "gpu")
PROFILES = {"cpu": "ci", "gpu": "gpu"}
TIER_MARKS = {"cpu": "not gpu", "gpu": "gpu"}  # each tier's ``-m``
TIER_ENV = (
    "GEMMA2_REGRESS_TIER"  # which tier this run is: set by the nox sessions, tox and `gemma2-regress test`
)


class SuiteError(Exception):
    """No suite to run here, or a bad tier setting; the message names the fix."""


def is_root(path: Path) -> bool:
    """Whether ``path`` holds the suite: ``conftest.py``, ``tests/`` and ``fixtures/known_issues.py``."""
    return (
        (path / "conftest.py").is_file()
        and (path / "tests").is_dir()
        and (path / "fixtures" / "known_issues.py").is_file()
    )


def root(environ: Mapping[str, str] | None = None) -> Path:
    """The suite to run: ``$GEMMA2_REGRESS_ROOT`` if set, else the checkout this package was imported
    from, else the wheel's copy; ``SuiteError`` when none holds the suite."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ROOT_ENV)
    candidates = [Path(chosen).expanduser()] if chosen else [CHECKOUT, INSTALLED]
    for path in candidates:
        if is_root(path):
            return path.resolve()
    where = (
        f"{ROOT_ENV}={chosen}" if chosen else f"{CHECKOUT} (a checkout) nor {INSTALLED} (the wheel's copy)"
    )
    raise SuiteError(
        f"no gemma2-regress suite in {where}: point {ROOT_ENV} at a checkout of gemma2-regress, or "
        "install the wheel (pip install gemma2-regress), which carries the tests"
    )


def config_file(suite: Path) -> Path:
    """pytest's settings for ``suite``: ``pytest.ini`` in the wheel's copy, ``pyproject.toml`` in a checkout."""
    ini = suite / "pytest.ini"
    return ini if ini.is_file() else suite / "pyproject.toml"


def _whole(name: str, value: str, default: str) -> int:
    text = value.strip() or default
    if not text.isdigit() or int(text) < 1:
        raise SuiteError(f"{name}={value!r}: use a whole number >= 1 (default {default})")
    return int(text)


# A GPU-tier worker's share of its GPU: the largest peak of any example (30.2 GiB, logits and loss at 16384
# tokens on an H200, docs/gpu.md) plus the CUDA context and the caching allocator's slack, rounded up.
GPU_GIB_PER_WORKER = 34
# Cold compiles are CPU-bound (Dynamo, Inductor's codegen and its compile worker pool): with fewer cores
# than this per worker they queue behind each other and more workers stop paying.
CORES_PER_WORKER = 4
# A warm run (a whole tier passed before on this stack and compile cache: ``warm`` below) compiles almost
# nothing: each worker traces with Dynamo on one core and waits on its GPU, and the memory budget
# (plugins.gpu_budget) shares the GPU by the peaks that run recorded. So more workers pay, up to where they
# wait for memory and cores: on one H200 (140 GiB, 16 cores) warm, 4 workers took 117.6 s, 6 took 85.2
# and 86.4 s, 8 took 90.7 s; cold, 6 reached 58 tests where 4 reached 135 in the same time (docs/gpu.md).
WARM_CORES_PER_WORKER = 2.5
WARM_OVER_MEMORY = 1.5  # warm: at most this many times the workers that memory alone holds


def workers_by_memory(gpu_gib: float) -> int:
    """How many workers a GPU of ``gpu_gib`` GiB holds at ``GPU_GIB_PER_WORKER`` each, each at its largest."""
    return int(gpu_gib // GPU_GIB_PER_WORKER)


def workers_per_gpu(
    gpus: int,
    gpu_gib: float | None,
    cores: int | None,
    environ: Mapping[str, str] | None = None,
    *,
    warm: bool = False,
) -> tuple[int, str]:
    """``(workers per GPU, why)`` for the gpu tier: ``$GEMMA2_REGRESS_WORKERS_PER_GPU`` if set, else as many
    as both the smallest GPU's memory (``gpu_gib``, ``GPU_GIB_PER_WORKER`` each) and the CPU cores shared
    by every GPU's workers (``CORES_PER_WORKER`` each) allow, at least 1; 1 where either is unknown.

    ``warm``: a whole tier passed before on this stack with this compile cache (its graphs cached, its
    tests' peaks recorded); then ``WARM_OVER_MEMORY`` times what memory alone holds and
    ``WARM_CORES_PER_WORKER`` cores each, the GPU shared through the memory budget."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("GEMMA2_REGRESS_WORKERS_PER_GPU", "")
    if chosen.strip():
        n = _whole("GEMMA2_REGRESS_WORKERS_PER_GPU", chosen, "chosen from the machine")
        return n, f"GEMMA2_REGRESS_WORKERS_PER_GPU={n}"
    if not gpu_gib or not cores:
        return 1, "GPU memory or CPU cores unknown; GEMMA2_REGRESS_WORKERS_PER_GPU=N overrides"
    gpus = max(1, gpus)
    over, per_worker = (WARM_OVER_MEMORY, WARM_CORES_PER_WORKER) if warm else (1, CORES_PER_WORKER)
    by_memory = int(workers_by_memory(gpu_gib) * over)
    by_cores = int(cores / (per_worker * gpus))
    n = max(1, min(by_memory, by_cores))
    why = "warm: a whole tier passed before on this stack; " if warm else ""
    times = f" x {over}" if warm else ""
    return n, (
        f"{why}{gpu_gib:.0f} GiB per GPU / {GPU_GIB_PER_WORKER} GiB per worker{times} = {by_memory}, {cores} "
        f"cores / ({per_worker} per worker x {gpus} GPU(s)) = {by_cores}; GEMMA2_REGRESS_WORKERS_PER_GPU=N overrides"
    )


def cpu_workers(environ: Mapping[str, str] | None = None) -> int:
    """xdist workers of the cpu tier: ``GEMMA2_REGRESS_WORKERS``, else 2."""
    environ = os.environ if environ is None else environ
    return _whole("GEMMA2_REGRESS_WORKERS", environ.get("GEMMA2_REGRESS_WORKERS", ""), "2")


def tier_args(
    tier: str,
    gpus: int = 0,
    environ: Mapping[str, str] | None = None,
    *,
    gpu_gib: float | None = None,
    cores: int | None = None,
    warm: bool = False,
) -> list[str]:
    """pytest's arguments for ``tier`` (module doc), with ``gpus`` CUDA devices of ``gpu_gib`` GiB each (the
    smallest) and ``cores`` CPU cores (gpu tier: ``workers_per_gpu``, ``warm`` as there).

    xdist is asked for only with more than one worker; ``-p no:xdist`` otherwise, so that one worker
    runs in the main process (a GPU stays initialised once)."""
    environ = os.environ if environ is None else environ
    if tier == "cpu":
        workers = cpu_workers(environ)
        selection = ["-m", TIER_MARKS[tier]]
    elif tier == "gpu":
        workers = max(1, gpus) * workers_per_gpu(gpus, gpu_gib, cores, environ, warm=warm)[0]
        selection = ["-m", TIER_MARKS[tier]]
    else:
        raise SuiteError(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}")
    xdist = ["-n", str(workers), "--dist", "loadgroup"] if workers > 1 else ["-p", "no:xdist"]
    return [*selection, *xdist]


THREADS_ENV = "OMP_NUM_THREADS"  # torch's intra-op threads (and the compiled CPU kernels' OpenMP threads)
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"  # Inductor's compile workers in each process
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor's on-disk caches (FX graphs, AOTAutograd, kernels)
ATEN_CAPABILITY_ENV = "ATEN_CPU_CAPABILITY"  # ATen's CPU kernels, and the ISA of Inductor's C++
# torch defaults one AOTAutograd setting from $CI (error_on_custom_op_aliasing = bool($CI)) and hashes it
# into every AOTAutograd cache key: a run under CI=true (.ci/run) and one without (the README's commands)
# never shared an entry. Pinned to the default users get; it only decides error or warning on a violation.
ALIASING_ENV = "TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING"
# pytest keeps its assertion rewrites (of the test modules, and of every package that ships a pytest plugin:
# 73 modules of Hypothesis) only where Python may write bytecode. Where a runner sets this (this project's CI
# does), every pytest process, each child pytest of the self-tests too, rewrote them all again.
BYTECODE_ENV = "PYTHONDONTWRITEBYTECODE"
# glibc maps each allocation above its mmap threshold (32 MiB at most by default) afresh and Linux zero-fills
# its pages at first touch: at 8k tokens every (q, kv) temporary of Unsloth's, transformers' and the oracle's
# code paid that again on each call. The cpu tier keeps them in the heap, reused (docs/perf.md); a process
# then holds on to up to its peak. C libraries other than glibc ignore the variable.
MALLOC_ENV = "GLIBC_TUNABLES"
CPU_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def tier_env(
    tier: str,
    gpus: int = 0,
    environ: Mapping[str, str] | None = None,
    *,
    compile_cache: Path | None = None,
    cores: int | None = None,
    warm: bool = False,
) -> dict[str, str]:
    """The variables to set in ``tier``'s test process: its Hypothesis profile (unless ``environ`` picks
    one), where its reports go (``reports/<tier>/``), for the gpu tier how many GPUs it spreads over, and
    Inductor's cache folder ``compile_cache`` (unless ``environ`` sets TORCHINDUCTOR_CACHE_DIR): one
    folder that every xdist worker and every later run shares, kept with the environments (``.nox/``) or
    the reports rather than in /tmp, so that a CI cache of that folder carries compiled kernels over.

    For the cpu tier on ``cores`` CPU cores, each worker's torch threads (``OMP_NUM_THREADS``, unless
    ``environ`` sets it): the cores shared out among the workers, at least 1. Torch's default is every
    core in every worker, so 2 workers on 2 cores ran 4 threads. The tier's bounds do not depend on
    the thread count (``nox -s portability``, setting threads-1). Likewise Inductor's compile workers
    (``TORCHINDUCTOR_COMPILE_THREADS``, unless ``environ`` sets it; not part of its cache keys): torch's
    default is a pool of one Python per core in every process, each importing torch, so 2 workers on 2
    cores started 4 more (and a sidecar each); 1 compiles in the test process. The GPU tier keeps torch's
    default when cold: with 4 compile workers each instead of 16, a cold H200 run spent 505.5 s autotuning
    matmul templates against 256.8 s (docs/gpu.md). When ``warm`` (``workers_per_gpu``) it sets 1 too,
    unless ``environ`` sets it: a warm run hits the cache for all but a few graphs, and each worker's pool
    (a sidecar Python that imports torch, and its forks) only took cores from the workers' own start and
    tracing (docs/gpu.md: 105.66 s against 116.41 s on one H200).

    And ``ALIASING_ENV`` = 0 unless ``environ`` sets it, so that the compile cache's AOTAutograd keys are
    the same with and without ``CI`` set; and ``BYTECODE_ENV`` empty (Python and pytest write their
    caches, into ``__pycache__`` folders that git ignores, of the checkout, the environment and the unpacked
    GPU bundle, which is unpacked anew, whole, when it changes; the warm cpu tier with and without it: the
    README's results). For the cpu tier, ``MALLOC_ENV`` = ``CPU_MALLOC`` unless ``environ`` sets it."""
    environ = os.environ if environ is None else environ
    env = {TIER_ENV: tier}
    if tier == "cpu" and MALLOC_ENV not in environ:
        env[MALLOC_ENV] = CPU_MALLOC
    if tier == "cpu" and cores:
        share = str(max(1, cores // cpu_workers(environ)))
        env.update({k: share for k in (THREADS_ENV, COMPILE_THREADS_ENV) if k not in environ})
    if tier == "gpu" and warm and COMPILE_THREADS_ENV not in environ:
        env[COMPILE_THREADS_ENV] = "1"
    if "HYPOTHESIS_PROFILE" not in environ:
        env["HYPOTHESIS_PROFILE"] = PROFILES[tier]
    if compile_cache is not None and COMPILE_CACHE_ENV not in environ:
        env[COMPILE_CACHE_ENV] = str(compile_cache_for(compile_cache, environ))
    if ALIASING_ENV not in environ:
        env[ALIASING_ENV] = "0"
    env[BYTECODE_ENV] = ""  # Python reads an empty value as unset
    if tier == "gpu":
        env["GEMMA2_REGRESS_GPUS"] = str(gpus)
    return env


def compile_cache_for(folder: Path, environ: Mapping[str, str]) -> Path:
    """Inductor's cache folder for processes run under ``environ``: ``folder``, or its subfolder
    ``aten-<value>`` where ``ATEN_CPU_CAPABILITY`` is set. That setting picks the vector ISA Inductor writes
    its C++ for, and torch's FX-graph cache key leaves it out: a graph cached without the setting was handed
    to a process with it and built for the other ISA (``default``: "'at::vec' has not been declared";
    ``avx2``: a compiled ``x * 2 + 1`` off by NaN; docs/tolerance.md)."""
    capability = environ.get(ATEN_CAPABILITY_ENV)
    return folder / f"aten-{capability}" if capability else folder


def pytest_command(
    tier: str,
    args: list[str],
    *,
    suite: Path,
    reports: Path,
    python: str,
    gpus: int = 0,
    gpu_gib: float | None = None,
    cores: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment defaults)`` that run ``tier`` of ``suite`` with ``python``'s Unsloth, started
    in ``suite`` (pytest's rootdir and settings are the suite's, whatever the caller's folder: nodeids read
    ``tests/...`` as in a checkout, testpaths apply, no other project's pytest settings do).

    ``args`` are pytest's; test paths in them are the suite's (``tests/kernel -k window``). The run's
    reports (summary JSON, costs, JUnit) go to ``<reports>/<tier>/``, Unsloth's compiled code to
    ``<reports>/unsloth_compiled_cache``, Inductor's caches to ``<reports>/compile-cache``: nothing is
    written into the suite."""
    out = reports / tier
    argv = [python, "-m", "pytest", "-c", str(config_file(suite)), "--rootdir", str(suite)]
    argv += [
        "-p",
        "no:cacheprovider",
        *tier_args(tier, gpus, gpu_gib=gpu_gib, cores=cores),
        f"--junitxml={out / 'junit.xml'}",
        *args,
    ]
    env = {
        **tier_env(tier, gpus, compile_cache=reports / "compile-cache", cores=cores),
        "GEMMA2_REGRESS_REPORT": str(out / "summary.json"),
        "GEMMA2_REGRESS_COSTS": str(out / "costs.json"),
        "UNSLOTH_COMPILE_LOCATION": str(reports / "unsloth_compiled_cache"),
    }
    return argv, env


def report_path(name: str, override_env: str, tier: str | None = None) -> str:
    """Where this run writes its report ``name`` (``summary.json``, ``costs.json``): the path in the
    environment variable ``override_env`` if set, else ``reports/<tier>/<name>``, with the tier from
    ``GEMMA2_REGRESS_TIER`` (``cpu``/``gpu``; ``pytest`` for a run outside nox and tox), so that no
    tier or session overwrites another's reports. ``{tier}`` in the override is filled in too; ``tier``
    given: that tier's path (as its run will see it)."""
    tier = tier or os.environ.get(TIER_ENV) or "pytest"
    return os.environ.get(override_env, f"reports/{{tier}}/{name}").replace("{tier}", tier)


def narrowed(paths_given: bool, markexpr: str, keyword: str, deselect: list[str], tier: str) -> list[str]:
    """What made a pytest run of ``tier`` run less than the whole tier (empty: nothing did): test paths or
    node ids on the command line, another ``-m`` than the tier's (``TIER_MARKS``), ``-k``, ``--deselect``."""
    why = ["test paths given"] if paths_given else []
    if markexpr != TIER_MARKS.get(tier, markexpr):
        why.append(f"-m {markexpr!r}")
    if keyword:
        why.append(f"-k {keyword!r}")
    if deselect:
        why.append("--deselect")
    return why
