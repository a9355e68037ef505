"""Verdicts: what one run of a target on one case came to, in a form bisect and reports can match.

``ok`` | ``mismatch`` | ``nan`` | ``crash:<ExceptionType>@<file>:<function>`` (the innermost
frame inside Unsloth, transformers or torch's compiler, else the innermost frame at all).

A failed test's verdicts, from its live exception (``failures``; the pytest plugin
``gemma2_regress.plugins.report`` calls it):

- a Hypothesis ``ExceptionGroup`` (several distinct failures, or ``FlakyFailure``) is split, nested
  groups included: one verdict per failure;
- ``nan`` / ``mismatch``  an ``AssertionError`` whose message carries a property comparison,
  ``<kind>: err(target)=...`` (``tolerance.Comparison.describe``; model properties put several on one
  line, ``logits: ok: ...; loss: mismatch: ...``): any ``nan`` wins over ``mismatch``. Any other
  ``AssertionError`` (a check such as the window probe's "no change") is a ``mismatch``;
- ``crash:<Type>@<file>:<function>``  any other exception (``crash_signature``). The adapter's
  ``UnslothUnavailable`` thus reads ``crash:UnslothUnavailable@...``: the build does not import here.

Each failure also carries the first line of its exception (``Type: message``) and Hypothesis's
failing example, taken from the exception's notes (``Falsifying example: ...`` /
``Failing test case: ...`` and the ``Draw n (label): ...`` values of ``st.data()``): as one line, with
the draws in place of ``data=data(...)`` (``counterexample``), and as the block Hypothesis printed.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from types import FrameType

INTERESTING = ("unsloth", "transformers", "torch/_dynamo", "torch/_inductor")

_KIND = re.compile(r"\b(mismatch|nan): err\(target\)")
_EXAMPLE = re.compile(r"^(?:Falsifying example|Failing test case): ", re.M)
_DRAW = re.compile(r"^Draw \d+(?: \(([^)]*)\))?: ", re.M)
MESSAGE_CHARS = 300


def signature(exc_type: str, frames: list[tuple[str, str]]) -> str:
    """``crash:<exc_type>@<file>:<function>`` from ``(filename, function)`` frames, outermost first:
    the innermost frame inside Unsloth/transformers/dynamo, else the innermost frame at all."""
    pick = None
    for filename, func in frames:
        if any(part in filename.replace("\\", "/") for part in INTERESTING):
            pick = (filename, func)
    if pick is None and frames:
        pick = frames[-1]
    where = f"@{pick[0].rsplit('/', 1)[-1]}:{pick[1]}" if pick else ""
    return f"crash:{exc_type}{where}"


def _hidden(frame: FrameType) -> bool:
    """A frame that asks to be left out of tracebacks (``__tracebackhide__``, as pytest shows them):
    pytest's own ``fail``/``skip``, Hypothesis's engine."""
    for namespace in (frame.f_locals, frame.f_globals):
        if "__tracebackhide__" in namespace:
            hide = namespace["__tracebackhide__"]
            return bool(hide) and not callable(hide)
    return False


def _frames(exc: BaseException, seen: set[int]) -> list[tuple[str, str]]:
    """``(filename, function)`` of every frame Python prints for ``exc``, in print order: the exception
    it was raised from (or during) first, then its own, outermost first; hidden frames left out."""
    if id(exc) in seen:
        return []
    seen.add(id(exc))
    out: list[tuple[str, str]] = []
    if exc.__cause__ is not None:
        out += _frames(exc.__cause__, seen)
    elif exc.__context__ is not None and not exc.__suppress_context__:
        out += _frames(exc.__context__, seen)
    tb = exc.__traceback__
    while tb is not None:
        if not _hidden(tb.tb_frame):
            out.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    return out


def crash_signature(exc: BaseException) -> str:
    """``crash:TypeError@flex_attention.py:slow_attention_softcapping`` for an exception: its type's
    name and the innermost frame inside Unsloth, transformers or torch's compiler among the frames
    Python prints for it (those of the exceptions it was raised from included), else its innermost."""
    return signature(type(exc).__name__, _frames(exc, set()))


def _is_group(exc: BaseException) -> bool:
    # By name: Python 3.10 has no built-in BaseExceptionGroup (Hypothesis uses the backport there).
    return any(k.__name__ == "BaseExceptionGroup" for k in type(exc).__mro__)


def leaves(exc: BaseException) -> list[BaseException]:
    """The distinct failures in ``exc``: the parts of an exception group (nested groups flattened),
    else ``[exc]``."""
    if _is_group(exc):
        return [leaf for part in exc.exceptions for leaf in leaves(part)]  # type: ignore[attr-defined]
    return [exc]


def verdict_of(exc: BaseException) -> str:
    """The verdict of one (non-group) failure: ``nan`` / ``mismatch`` for an ``AssertionError``,
    else its crash signature (see the module docstring)."""
    if isinstance(exc, AssertionError):
        return "nan" if "nan" in _KIND.findall(str(exc)) else "mismatch"
    return crash_signature(exc)


def first_line(text: str) -> str:
    """The first line of ``text``, at most ``MESSAGE_CHARS`` characters."""
    return (text.splitlines() or [""])[0][:MESSAGE_CHARS]


def exception_line(exc: BaseException) -> str:
    """``Type: message`` as Python prints an exception's last line (the module named for types outside
    the builtins), its first line only, and for a property's failed comparison the line that measures
    it (``... | mismatch: err(target)=... ratio=...``); at most ``MESSAGE_CHARS`` characters."""
    line = first_line(traceback.format_exception_only(type(exc), exc)[0])
    if isinstance(exc, AssertionError):
        measured = next((ln.strip() for ln in str(exc).splitlines()[1:] if _KIND.search(ln)), None)
        if measured:
            line = f"{line} | {measured}"[:MESSAGE_CHARS]
    return line


def _balanced(lines: list[str]) -> str:
    """Join lines up to where the parentheses opened on the first line close, as one line."""
    out, depth = [], 0
    for line in lines:
        out.append(line.strip())
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            break
    return re.sub(r"\s+", " ", " ".join(out)).replace("( ", "(").replace(" )", ")")


def counterexample(text: str) -> str | None:
    """Hypothesis's failing example in ``text`` (the last ``Falsifying example:``/``Failing test case:``)
    as one line; values drawn with ``st.data()`` (``Draw 1 (case): Case(...)``, printed after the call)
    replace ``data=data(...)``. None when ``text`` has none."""
    matches = list(_EXAMPLE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    call = _balanced(rest.splitlines())
    draws = [
        f"{m.group(1) or 'draw'}={_balanced(rest[m.end() :].splitlines())}" for m in _DRAW.finditer(rest)
    ]
    if draws:
        call = call.replace("data=data(...)", ", ".join(draws))
    return call


def example_block(notes: list[str]) -> str | None:
    """The failing example as Hypothesis printed it in ``notes`` (an exception's ``__notes__``): the
    last ``Falsifying example:``/``Failing test case:`` note and the ``Draw n`` notes right after it.
    None when there is none."""
    starts = [i for i, note in enumerate(notes) if _EXAMPLE.match(note)]
    if not starts:
        return None
    block = [notes[starts[-1]]]
    for note in notes[starts[-1] + 1 :]:
        if not _DRAW.match(note):
            break
        block.append(note)
    return "\n".join(block)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One distinct failure of a test: its verdict, its exception's first line, the failing example
    (one line, and the block Hypothesis printed; None outside Hypothesis)."""

    verdict: str
    message: str
    example: str | None = None
    example_block: str | None = None


def failure_of(exc: BaseException, *, verdict: str | None = None) -> Failure:
    """``exc`` (not a group) as a Failure; ``verdict`` overrides the one ``verdict_of`` gives."""
    notes = [str(n) for n in getattr(exc, "__notes__", None) or ()]
    return Failure(
        verdict or verdict_of(exc),
        exception_line(exc),
        counterexample("\n".join(notes)),
        example_block(notes),
    )


def failures(exc: BaseException, *, crash_only: bool = False) -> list[Failure]:
    """Every distinct failure in a test's exception, in the order Hypothesis reports them.
    ``crash_only``: each is a crash, assertions included (an error in a fixture, not a property)."""
    return [failure_of(e, verdict=crash_signature(e) if crash_only else None) for e in leaves(exc)]


def matches(verdict: str, wanted: str) -> bool:
    """Does ``verdict`` match the user's ``wanted`` pattern? A prefix match: ``crash`` matches any
    crash, ``crash:TypeError`` any TypeError, ``mismatch`` only mismatches, ``bad`` anything not ok."""
    if wanted == "bad":
        return verdict != "ok"
    return verdict.startswith(wanted)
