"""The JUnit reader (gemma2_regress.builds.junit) that the kill matrix, the bisect and the gate share."""

from __future__ import annotations

from pathlib import Path

from gemma2_regress.builds import junit

NATIVE_CRASH = """Traceback (most recent call last):
  File "/x/unsloth/kernels/flex_attention.py", line 90, in slow_attention_softcapping
  File "/x/unsloth/kernels/flex_attention.py", line 60, in _compiled_slow_attention_softcapping
AttributeError: 'bool' object has no attribute 'dim'
Falsifying example: test_small_windows(
    target=T(kernel='k'),
    case=Case(bsz=1,
     q_len=3),
)
"""

# pytest's default style (the bisect and the gate run with it)
DEFAULT_CRASH = (
    "/x/site/unsloth/kernels/flex_attention.py:61: in slow_attention_softcapping\n    A += m\n"
    "/x/site/torch/foo.py:3: in bar\nE   TypeError: 'bool' object is not subscriptable\n"
)

# Trimmed from a real run: the GPU gate's baseline, Unsloth 2026.10.1 on an H200 (2026-11-28), where
# Hypothesis found a crash and a mismatch in one test and pytest printed them as an ExceptionGroup.
GROUP_MESSAGE = "ExceptionGroup: Hypothesis found 2 distinct failures. (2 sub-exceptions)"
GROUP_TEXT = """  + Exception Group Traceback (most recent call last):
  |   File "/work/main/tests/kernel/test_slow_kernel.py", line 37, in test_small_windows
  |   File "/opt/venv/lib/python3.12/site-packages/hypothesis/core.py", line 2295, in wrapped_test
  |     raise the_error_hypothesis_found
  | ExceptionGroup: Hypothesis found 2 distinct failures. (2 sub-exceptions)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/work/main/gemma2_regress/kernel/targets.py", line 73, in run
    |   File "/tmp/gate-base/gpusite/unsloth/kernels/flex_attention.py", line 210, in slow_inference_attention_softcapping
    |     if causal_mask.dim() == 2:
    | AttributeError: 'NoneType' object has no attribute 'dim'
    | Failing test case: test_small_windows(
    |     device='cuda',
    |     data=data(...),
    | )
    | Draw 1 (case): Case(bsz=1,
    |  q_len=1,
    |  kv_len=1)
    |
    +---------------- 2 ----------------
    | Traceback (most recent call last):
    |   File "/work/main/gemma2_regress/kernel/properties.py", line 53, in check_kernel_matches_oracle
    | AssertionError: kernel_matches_oracle failed for slow_inference_attention_softcapping[unsloth-eval]
    |   case: b1 h4/1 d16 q2/kv2 W=1 float32 cap=50.0 s=256.0 std=0.5 seed=0
    |   mismatch: err(target)=1.1 err(baseline)=0 bound=2e-06 ratio=5.51e+05 worst at (0, 1, 34)
    | Failing test case: test_small_windows(
    |     device='cuda',
    |     data=data(...),
    | )
    | Draw 1 (case): Case(bsz=1,
    |  q_len=2,
    |  kv_len=2)
    +------------------------------------
"""


def test_crash_verdict_in_either_traceback_style() -> None:
    msg = "AttributeError: 'bool' object has no attribute 'dim'"
    assert (
        junit.verdict_of(msg, NATIVE_CRASH)
        == "crash:AttributeError@flex_attention.py:_compiled_slow_attention_softcapping"
    )
    msg = "TypeError: 'bool' object is not subscriptable"
    assert (
        junit.verdict_of(msg, DEFAULT_CRASH) == "crash:TypeError@flex_attention.py:slow_attention_softcapping"
    )
    # the default style also prints source lines; a quoted comparison text in them is not a verdict
    quoted = 'E       raise AssertionError("mismatch: err(target)=1")\n' + DEFAULT_CRASH
    assert junit.verdict_of(msg, quoted).startswith("crash:TypeError@")
    # pytest's message may be only text: the last "E   Type: ..." line names the exception
    assert junit.verdict_of("", DEFAULT_CRASH).startswith("crash:TypeError@")


def test_comparison_verdicts() -> None:
    msg = "AssertionError: kernel_matches_oracle failed for k[m]"
    assert (
        junit.verdict_of(msg, msg + "\n  mismatch: err(target)=1.97 err(baseline)=0 bound=2e-06")
        == "mismatch"
    )
    assert junit.verdict_of(msg, msg + "\n  nan: err(target)=inf ...") == "nan"
    # model properties put every part on one line; an ok part before the failing one must not win
    line = "  logits: ok: err(target)=0.1 err(baseline)=0.1 bound=1; loss: mismatch: err(target)=9 ..."
    assert junit.verdict_of("AssertionError: model_logits_loss failed", line) == "mismatch"
    line = "  logits: mismatch: err(target)=9 ...; loss: nan: err(target)=inf ..."
    assert junit.verdict_of("AssertionError: model_logits_loss failed", line) == "nan"
    # a property check with no comparison line (the window probe's "no change") is a mismatch
    assert (
        junit.verdict_of("AssertionError: output changed", "E   AssertionError: output changed") == "mismatch"
    )


def test_hypothesis_exception_group_gives_each_failure() -> None:
    found = junit.failures_in(GROUP_MESSAGE, GROUP_TEXT)
    assert [f.verdict for f in found] == [
        "crash:AttributeError@flex_attention.py:slow_inference_attention_softcapping",
        "mismatch",
    ]
    assert (
        found[0].counterexample == "test_small_windows(device='cuda', case=Case(bsz=1, q_len=1, kv_len=1),)"
    )
    assert "q_len=2" in (found[1].counterexample or "")


def test_counterexample_substitutes_interactive_draws() -> None:
    text = (
        "Failing test case: test_small_windows(\n    target=T(kernel='k'),\n    device='cpu',\n"
        "    data=data(...),\n)\nDraw 1 (case): Case(bsz=1,\n q_len=2,\n seed=0)\nExplanation:\n"
    )
    expected = "test_small_windows(target=T(kernel='k'), device='cpu', case=Case(bsz=1, q_len=2, seed=0),)"
    assert junit.counterexample(text) == expected
    # the same in pytest's default style, every line prefixed "E   "
    assert junit.counterexample("".join(f"E   {ln}\n" for ln in text.splitlines())) == expected


def _junit_file(path: Path, failure: tuple[str, str]) -> Path:
    """A JUnit file of three tests: one passed, one failed with (message, text), one skipped."""
    msg, text = (x.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for x in failure)
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.kernel.test_slow_kernel" name="a" time="1"/>'
        f'<testcase classname="tests.kernel.test_slow_kernel" name="b" time="1"><failure message="{msg}">'
        f"{text}</failure></testcase>"
        '<testcase classname="tests.model.test_x" name="c" time="0"><skipped message="no GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    return path


def test_read_a_junit_file(tmp_path: Path) -> None:
    a, b, c = junit.read(_junit_file(tmp_path / "j.xml", (GROUP_MESSAGE, GROUP_TEXT)))
    assert (a.outcome, a.verdict, a.verdicts) == ("passed", "ok", ["ok"])
    assert b.nodeid == "tests.kernel.test_slow_kernel::b" and b.module == "tests/kernel/test_slow_kernel.py"
    assert b.verdict.startswith("crash:AttributeError@") and b.verdicts[1] == "mismatch"
    assert (c.outcome, c.verdict, c.message) == ("skipped", "skipped", "no GPU")
    assert junit.read(tmp_path / "missing.xml") == []


def test_kill_matrix_rows_from_a_junit_file(tmp_path: Path) -> None:
    from gemma2_regress.mutants import killmatrix

    msg = "AttributeError: 'bool' object has no attribute 'dim'"
    tests = killmatrix.parse_junit(_junit_file(tmp_path / "j.xml", (msg, NATIVE_CRASH)))
    assert [t["outcome"] for t in tests] == ["passed", "failed", "skipped"]
    bad = tests[1]
    assert bad["module"] == "tests/kernel/test_slow_kernel.py"
    assert bad["verdict"] == "crash:AttributeError@flex_attention.py:_compiled_slow_attention_softcapping"
    assert bad["counterexample"] == "test_small_windows(target=T(kernel='k'), case=Case(bsz=1, q_len=3),)"
    assert bad["failures"] == [
        {"verdict": bad["verdict"], "message": msg, "counterexample": bad["counterexample"]}
    ]
