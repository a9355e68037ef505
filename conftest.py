"""Suite-wide pytest set-up: Hypothesis profiles, the plugins, the device fixture, the header, the
recorded upstream bugs (``fixtures/known_issues.py``) marked as strict xfails, and Unsloth imported once
the tests are collected where one of them runs it (``fixtures/model.py``).

Profiles (pick with ``--hypothesis-profile`` or ``HYPOTHESIS_PROFILE``; ``CI`` set picks ``ci``):
  ci       deterministic (derandomize, no database), few examples: what CI and `nox -s cpu` run
  dev      random, a local database, a few more examples: day-to-day work
  gpu      deterministic, sized for the GPU tier on one H200
  nightly  random, many examples: a long search for new counterexamples
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fixtures.model import pytest_runtestloop  # Unsloth imported before the first test, in every run
from gemma2_regress import versions

__all__ = ["pytest_runtestloop"]

pytest_plugins = [
    "gemma2_regress.plugins.markers",  # gpu, unsloth, slow, xdist_group
    "gemma2_regress.plugins.report",  # per-test verdicts, per-example records, reports/<tier>/summary.json
    "gemma2_regress.plugins.costs",  # the suite's own cost per tier/target (docs/perf.md)
    "gemma2_regress.plugins.compile_artifacts",  # GEMMA2_REGRESS_COMPILE_ARTIFACTS: a compile cache to carry
    "gemma2_regress.plugins.fresh_dynamo",  # each test compiles from a fresh Dynamo, whatever ran before it
    "gemma2_regress.plugins.aot_cache",  # AOTAutograd's cache keeps Unsloth's kernel graphs (no trace on a hit)
    "gemma2_regress.plugins.vec_isa",  # Inductor's CPU ISA probe once per compile cache, not once per process
    "gemma2_regress.mutants.plugin",  # --mutant NAME: planted bugs in the installed Unsloth (docs/mutants.md)
    "gemma2_regress.plugins.require_gpu",  # --require-gpu / GEMMA2_REGRESS_REQUIRE_GPU=1: no GPU fails, not skips
    # Each before any plugin that imports it: pytest rewrites the asserts only of a module it imports first.
    "gemma2_regress.plugins.gpu_budget",  # xdist workers on one GPU: each test holds its memory claim
    "gemma2_regress.plugins.schedule",  # the GPU tier under xdist: costliest tests first
    "gemma2_regress.plugins.compile_canary",  # a wrong torch.compile stops the run before it blames Unsloth
    "gemma2_regress.plugins.profile_calls",  # --profile-calls TEXT: cProfile of those test calls
    "gemma2_regress.plugins.cache_keys",  # --cache-keys TEXT: the compile-cache keys of those calls, to diff
    "gemma2_regress.plugins.gc_freeze",  # what a process holds for good, frozen: full collections skip it
    "gemma2_regress.plugins.worker_exit",  # an xdist worker ends without Python's finalization
]

_COMMON = dict(
    deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", derandomize=True, database=None, max_examples=12, **_COMMON)
settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("gpu", derandomize=True, database=None, max_examples=40, **_COMMON)
settings.register_profile("nightly", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.hookimpl(tryfirst=True)  # before the other plugins' and conftests' configure import anything
def pytest_configure(config: pytest.Config) -> None:
    # One xdist worker per GPU, each pinned to its own device before CUDA is initialised.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    gpus = os.environ.get("GEMMA2_REGRESS_GPUS")  # set by `nox -s gpu` to the device count
    if worker.startswith("gw") and gpus and int(gpus) > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker[2:]) % int(gpus))
    # `import flash_attn` gives flash-attn's reference stand-in in this process where no real one imports
    # (docs/flash.md). Unsloth is imported with it hidden and takes it only inside unsloth_flash.flash_path.
    from gemma2_regress.standins import use_flash_attn_standin

    use_flash_attn_standin()
    try:  # Unsloth's kernel is torch.compile'd; Hypothesis draws many configurations, and past
        import torch._dynamo  # dynamo's default 8 recompiles it would silently run eagerly instead.

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 512)
    except ImportError:
        pass


@pytest.hookimpl(trylast=True)  # after `-m` / `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fixtures.known_issues import KNOWN_ISSUES
    from gemma2_regress.plugins.strict_xfail import mark_items
    from gemma2_regress.unsloth_adapter import installed_version

    mark_items(items, KNOWN_ISSUES, installed_version(), suite_root=Path(__file__).parent)


def pytest_report_header(config: pytest.Config) -> list[str]:
    import torch  # noqa: F401  (every test of the suite needs it; versions() then names the GPU)
    from hypothesis import settings as s

    from gemma2_regress.plugins.strict_xfail import IGNORE_ENV, records_ignored
    from gemma2_regress.standins import STANDIN, flash_attn_in_use

    flash = flash_attn_in_use()
    if flash == STANDIN:
        flash += " (Unsloth's flash path only inside unsloth_flash.flash_path)"
    return [
        f"gemma2-regress: {versions.one_line()}",
        versions.tools_line(),
        f"hypothesis profile: {s._current_profile}",
        f"flash-attn: {flash}",
        f"known issues: {'set aside (' + IGNORE_ENV + '=ignore)' if records_ignored() else 'strict xfails'}",
    ]


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES, scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """Every device-generic property runs once per device; ``cuda`` only in the GPU tier. Without a CUDA
    device ``cuda`` skips, or fails where a GPU is required (``--require-gpu``, GEMMA2_REGRESS_REQUIRE_GPU=1)."""
    if request.param == "cuda":
        from gemma2_regress.plugins.require_gpu import (
            need_cuda,  # here: a plugin, imported by pytest_plugins first
        )

        need_cuda(request.config)
    return request.param
