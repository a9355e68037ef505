"""Self-tests of the mutant mechanism and the kill matrix: fast, no kernel compile, no test run.

The anchor test imports the installed Unsloth and builds every mutant (edits applied, source
compiled, decorators re-applied lazily): a release that moves the edited code turns it red, so the
catalogue is updated before the kill matrix would quietly report "n/a".
"""

from __future__ import annotations

import json
import sys

import pytest

from gemma2_regress import unsloth_adapter
from gemma2_regress.mutants import catalogue, killmatrix, matrix, patching

REQUIRED = {
    "crash2024",
    "window_off_by_one_wide",
    "window_off_by_one_narrow",
    "window_ignored",
    "softcap_dropped",
    "softcap_after_mask",
    "scale_head_dim",
    "gqa_interleaved",
    "batch_rows_mixed",
    "eval_padding_dropped",
    "q_offset_wrong",
    "softmax_input_dtype",
}


def _unsloth():
    try:
        return unsloth_adapter.load()
    except unsloth_adapter.UnslothUnavailable as exc:
        pytest.skip(f"Unsloth is not usable here: {exc}")


# --- the catalogue ---------------------------------------------------------------------------------
def test_catalogue_is_well_formed() -> None:
    assert len(catalogue.CATALOGUE) >= 10
    assert REQUIRED <= set(catalogue.CATALOGUE)
    for name, m in catalogue.CATALOGUE.items():
        assert m.name == name and m.summary and m.patches, name
        assert set(m.tiers) <= set(catalogue.TIERS) and m.tiers, name
        if "cpu" in m.tiers:
            assert m.cpu_select, f"{name}: a CPU-reachable mutant needs a CPU selection"
        for p in m.patches:
            assert p.owner in catalogue.OWNERS, (name, p.owner)
            assert p.edits and all(e.old and e.old != e.new for e in p.edits), (name, p.label)
        json.dumps(catalogue.describe(name))


def test_crash2024_expects_the_original_failure_class() -> None:
    m = catalogue.get("crash2024")
    assert any(e.startswith("crash:AttributeError") or e.startswith("crash:TypeError") for e in m.expect)


def test_unknown_mutant_names_the_known_ones() -> None:
    with pytest.raises(catalogue.UnknownMutant) as err:
        catalogue.get("no_such_bug")
    assert "no_such_bug" in str(err.value) and "crash2024" in str(err.value)


def test_runner_rejects_unknown_mutant(capsys: pytest.CaptureFixture[str]) -> None:
    assert killmatrix.main(["no_such_bug", "--tier", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown mutant 'no_such_bug'" in err and "softcap_dropped" in err


def test_runner_rejects_unknown_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert killmatrix.main(["crash2024", "--tier", "tpu"]) == 2
    assert "unknown tier" in capsys.readouterr().err


# --- against the installed Unsloth -------------------------------------------------------------------
@pytest.mark.unsloth
@pytest.mark.parametrize("name", sorted(catalogue.CATALOGUE))
def test_anchors_present_in_installed_unsloth(name: str) -> None:
    """Every edit's anchor occurs exactly once in the installed release, and the edit compiles."""
    _unsloth()
    built = patching.check(name)
    assert len(built) == len(catalogue.get(name).patches)
    for patch, obj, _ in built:
        func = getattr(obj, "_torchdynamo_orig_callable", obj)
        assert getattr(func, "_gemma2_mutant", None) == name, patch.label


def _references() -> dict[tuple, int]:
    """id() of every callable / class attribute in the modules a mutant may touch."""
    snap: dict[tuple, int] = {}
    for modname, mod in list(sys.modules.items()):
        if mod is None or not modname.startswith(patching.REBIND_PREFIXES):
            continue
        for key, value in list(vars(mod).items()):
            snap[(modname, key)] = id(value)
            if isinstance(value, type) and getattr(value, "__module__", "") == modname:
                for akey, avalue in list(vars(value).items()):
                    snap[(modname, key, akey)] = id(avalue)
    return snap


@pytest.mark.unsloth
@pytest.mark.parametrize("name", sorted(catalogue.CATALOGUE))
def test_apply_then_unapply_restores_every_original(name: str) -> None:
    u = _unsloth()
    before = _references()
    planted = patching.apply(name)
    try:
        assert planted.mutant.name == name
        assert planted.slots, "a mutant that replaces nothing cannot be killed"
        for slot in planted.slots:
            now = vars(slot.holder)[slot.key]
            func = getattr(now, "__func__", now)
            func = getattr(func, "_torchdynamo_orig_callable", func)
            assert getattr(func, "_gemma2_mutant", None) == name, slot.key
        with pytest.raises(RuntimeError, match="already applied"):
            patching.apply(name)
    finally:
        planted.undo()
    assert not planted.slots
    planted.undo()  # a second undo changes nothing
    after = _references()
    changed = sorted(str(k) for k in before if after.get(k) != before[k])
    assert not changed, f"not restored: {changed[:5]}"
    assert u.kernel("slow_attention_softcapping") is not None


@pytest.mark.unsloth
def test_compiled_kernel_is_rewrapped_by_torch_compile() -> None:
    """The compiled kernel's mutant is itself torch.compile'd, from the same decorator expression."""
    u = _unsloth()
    original = u.kernels_module._compiled_slow_attention_softcapping
    with patching.apply("softcap_dropped"):
        now = u.kernels_module._compiled_slow_attention_softcapping
        assert now is not original
        assert hasattr(now, "_torchdynamo_orig_callable"), (
            "the mutant kernel must be compiled like the original"
        )
        assert now._torchdynamo_orig_callable.__globals__ is original._torchdynamo_orig_callable.__globals__
    assert u.kernels_module._compiled_slow_attention_softcapping is original


@pytest.mark.unsloth
def test_eager_mutant_changes_the_eager_kernel_output() -> None:
    """Cheap behavioural check (the eager generation kernel, no compile): the mutant really bites."""
    import torch

    from gemma2_regress.kernel import targets
    from gemma2_regress.kernel.cases import Case, make_inputs

    _unsloth()
    case = Case(bsz=1, n_heads=4, n_kv_heads=2, head_dim=16, q_len=6, kv_len=6, window=None, logit_std=50.0)
    target = targets.get("slow_inference_attention_softcapping[oracle-4d]")
    inputs = make_inputs(case)
    clean = target.run(case, inputs)
    with patching.apply("softcap_dropped"):
        planted = target.run(case, inputs)
    assert not torch.allclose(clean, planted)
    assert torch.equal(clean, target.run(case, inputs))


@pytest.mark.unsloth
def test_missing_anchor_is_not_applicable() -> None:
    _unsloth()
    patch = catalogue.Patch(
        "kernels", "slow_inference_attention_softcapping", (catalogue.Edit("no such text", "x"),)
    )
    raw = patching._resolve(patch, patching._handles())[3]
    with pytest.raises(patching.NotApplicable, match="found 0 times"):
        patching.mutated_function(patch, raw, "probe")
    gone = catalogue.Patch("kernels", "a_function_this_release_lacks", (catalogue.Edit("a", "b"),))
    with pytest.raises(patching.NotApplicable):
        patching._resolve(gone, patching._handles())


# --- the pytest plugin ------------------------------------------------------------------------------
PLUGIN = ("-p", "gemma2_regress.mutants.plugin", "-p", "no:xdist", "-p", "no:cacheprovider")


def test_plugin_rejects_unknown_mutant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_probe="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess(*PLUGIN, "--mutant", "no_such_bug")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown mutant 'no_such_bug'" in result.stderr.str() and "crash2024" in result.stderr.str()


@pytest.mark.unsloth
def test_plugin_plants_for_the_run_and_undoes_it(
    pytester: pytest.Pytester, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    u = _unsloth()
    original = u.kernels_module._compiled_slow_attention_softcapping
    pytester.makepyfile(
        test_probe="""
        from gemma2_regress import unsloth_adapter

        def test_planted():
            kernel = unsloth_adapter.load().kernels_module._compiled_slow_attention_softcapping
            assert kernel._torchdynamo_orig_callable._gemma2_mutant == "softcap_dropped"
        """
    )
    status = tmp_path / "status.json"
    monkeypatch.setenv(catalogue.STATUS_ENV, str(status))
    result = pytester.runpytest_inprocess(*PLUGIN, "--mutant", "softcap_dropped")
    result.assert_outcomes(passed=1)
    assert "MUTANT ACTIVE: softcap_dropped" in result.stdout.str()
    assert json.loads(status.read_text())["applied"] is True
    assert u.kernels_module._compiled_slow_attention_softcapping is original


# --- the kill matrix's rows and JSON (its reading of the summary JSON: test_runner.py) ---------------
def _run(tests: list[dict], status: dict | None, rc: int = 1) -> killmatrix.Run:
    return killmatrix.Run("m", rc, 1.0, tests, status, "", ["python", "-m", "pytest"])


def test_matrix_rows_and_json_schema(tmp_path) -> None:
    cols = ["tests/kernel/test_slow_kernel.py", "tests/model/test_unsloth_forward.py"]
    fail = {"verdict": "crash:TypeError@f.py:g", "message": "TypeError: x", "counterexample": "Case(q_len=2)"}
    killed = {"module": cols[0], "test": "t", "outcome": "failed", "message": "m", "failures": [fail], **fail}
    crash = catalogue.get("crash2024")
    row = matrix.summarize(_run([killed], {"applied": True}), crash, "cpu", cols)
    assert row["status"] == "killed" and row["cells"] == {cols[0]: "KILLED", cols[1]: "unreachable"}
    assert row["first_kill"]["counterexample"] == "Case(q_len=2)"
    # Hypothesis may report several distinct failures: the expected one is quoted first
    both = dict(killed, failures=[dict(fail, verdict="nan"), fail])
    row2 = matrix.summarize(_run([both], {"applied": True}), crash, "cpu", cols)
    assert row2["status"] == "killed" and row2["first_kill"]["verdict"].startswith("crash:TypeError")
    assert row2["verdicts"] == ["crash:TypeError@f.py:g", "nan"]
    wrong = dict(killed, failures=[dict(fail, verdict="mismatch")])
    assert (
        matrix.summarize(_run([wrong], {"applied": True}), crash, "cpu", cols)["status"]
        == "killed_unexpected"
    )
    passed = dict(killed, outcome="passed")
    soft = catalogue.get("softcap_dropped")
    survived = matrix.summarize(_run([passed], {"applied": True}, rc=0), soft, "cpu", cols)
    assert survived["status"] == "survived" and survived["cells"][cols[0]] == "survived"
    na = matrix.summarize(_run([], {"applied": False, "reason": "anchor"}, rc=4), soft, "cpu", cols)
    assert na["status"] == "not_applicable" and set(na["cells"].values()) == {"n/a"}
    gpu_only = matrix.summarize(None, soft, "cpu", cols)
    assert gpu_only["status"] == "unreachable"
    rows = [row, survived]
    base = {"ok": True, "rc": 0, "passed": 3, "failed": 0, "wall_s": 1.0, "failures": []}
    assert matrix.exit_status(base, [row]) == 0
    assert matrix.exit_status(base, rows) == 1
    assert matrix.exit_status(dict(base, ok=False), [row]) == 1
    assert matrix.exit_status(base, [row, na]) == 3
    assert matrix.worst(0, 3) == 3 and matrix.worst(3, 1) == 1 and matrix.worst(1, 0) == 1
    assert matrix.baseline(_run([passed], None, rc=0))["ok"]
    failing = matrix.baseline(_run([passed, killed], None, rc=1))
    assert not failing["ok"] and failing["failed"] == 1 and "output_tail" in failing
    assert not matrix.baseline(_run([], None, rc=5))["ok"]  # nothing ran: proves nothing
    text = matrix.render("cpu", rows, cols, base)
    assert "crash2024" in text and "KILLED" in text and "survived" in text
    out = tmp_path / "km.json"
    from gemma2_regress.atomic import write_json_atomic

    write_json_atomic(out, {"schema": matrix.SCHEMA, "mutants": rows, "columns": cols, "baseline": base})
    data = json.loads(out.read_text())
    assert data["schema"] == matrix.SCHEMA
    for r in data["mutants"]:
        assert {"name", "status", "cells"} <= set(r)
        assert set(r["cells"]) == set(cols) and set(r["cells"].values()) <= set(matrix.STATES)


def test_matrix_columns_are_the_test_modules() -> None:
    columns = matrix.modules(killmatrix.ROOT)
    assert "tests/kernel/test_slow_kernel.py" in columns and "tests/trainer/test_evaluate.py" in columns
    assert all(c.startswith(matrix.MODULE_DIRS) and c.endswith(".py") for c in columns)


def test_union_selection_covers_every_mutant() -> None:
    chosen = list(catalogue.CATALOGUE.values())
    paths, k = matrix.union_selection(chosen, "cpu")
    assert paths == matrix.CPU_PATHS
    for m in chosen:
        if "cpu" in m.tiers:
            assert f"({m.cpu_select})" in k
    assert matrix.union_selection(chosen, "cpu", full=True) == (matrix.CPU_PATHS, "")
    assert matrix.union_selection(chosen, "gpu", full=True) == (matrix.MODULE_DIRS, "")


def test_options_from_the_command_line() -> None:
    args = killmatrix.parse_args(["softcap_dropped", "--full", "--shrink", "--no-baseline"])
    cpu, gpu = killmatrix.options(args, "cpu"), killmatrix.options(args, "gpu")
    assert (cpu.jobs, gpu.jobs, cpu.workers) == (2, 4, 0)
    assert cpu.full and cpu.shrink and not cpu.baseline
    assert cpu.argv == ("softcap_dropped", "--full", "--shrink", "--no-baseline")
    assert killmatrix.options(killmatrix.parse_args([]), "cpu") == killmatrix.Options(argv=())


def test_gpu_runs_spread_over_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert killmatrix.gpu_slots("gpu") == ["0", "1"]
    assert killmatrix.gpu_slots("cpu") == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # the caller pinned one: leave it alone
    assert killmatrix.gpu_slots("gpu") == [None]
