"""Planted bugs in the *installed* Unsloth, applied at run time, to prove the suite catches them.

A mutant is a named set of small textual edits to real Unsloth functions. Nothing is re-implemented
and no file is touched: :func:`apply` takes a function's source (``inspect.getsource``; for a
``torch.compile``'d function the source of ``_torchdynamo_orig_callable``), checks that each edit's
anchor text is present exactly once, compiles the edited source under the original file name,
rebuilds the function on the original module's live globals, re-applies the original decorators
(so a compiled kernel is re-wrapped by the same ``torch.compile(...)`` expression, options and all),
and installs it at its owner (module global or class attribute) *and* wherever else Unsloth or
transformers already holds a reference to the original (Unsloth's ``pre_patch`` assigns its
functions to transformers classes; star imports copy kernels into several modules).
:func:`unapply` puts every original back.

If a release lacks an anchor or a function, the mutant is *not applicable* to that release
(:class:`NotApplicable`): the kill matrix reports it as such instead of letting it pass.

As a pytest plugin (``pytest_plugins = ["gemma2_regress.mutants"]`` in conftest.py) it adds
``--mutant NAME`` (or env ``GEMMA2_REGRESS_MUTANT``), applied at ``pytest_configure`` in every
process that runs tests (each xdist worker; not the xdist controller).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import sys
import textwrap
import types
from typing import Any

ENV = "GEMMA2_REGRESS_MUTANT"
STATUS_ENV = "GEMMA2_REGRESS_MUTANT_STATUS"  # where the plugin writes {"mutant", "applied", "reason"}
TIERS = ("cpu", "gpu")
# Module handles of the adapter (gemma2_regress.unsloth_adapter.Unsloth) that a patch can name.
OWNERS = ("kernels", "llama", "gemma2")
# Modules whose globals and classes are searched for other references to a patched function.
REBIND_PREFIXES = (
    "unsloth",
    "unsloth_zoo",
    "transformers.models.gemma2",
    "transformers.models.llama",
    "peft",
)


class UnknownMutant(KeyError):
    """A mutant name that is not in the catalogue; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class NotApplicable(RuntimeError):
    """The installed release lacks the code a mutant edits (a moved function, a missing anchor)."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once in the function's source) by ``new``."""

    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Patch:
    """Edits to one function: ``owner`` is an adapter handle, ``path`` a global or ``Class.attr``.

    ``source_from`` names another ``path`` (same owner) whose source is edited, for a method the
    class inherits: the edited copy is then set on the class itself and deleted again on unapply.
    """

    owner: str
    path: str
    edits: tuple[Edit, ...]
    source_from: str | None = None

    @property
    def label(self) -> str:
        return f"{self.owner}:{self.path}"


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug.

    ``tiers``: the tiers whose tests can reach it. ``cpu_select``: the pytest ``-k`` expression of the
    fast CPU selection in tests/kernel (the cheapest tests that reach it); ``gpu_paths``/``gpu_select``:
    the same for the GPU tier. ``expect``: verdict prefixes a kill must match (e.g. the 2024 crash
    must surface as a crash of the slow path), empty for "any failure".
    """

    name: str
    summary: str
    patches: tuple[Patch, ...]
    tiers: tuple[str, ...] = TIERS
    cpu_select: str = ""
    gpu_paths: tuple[str, ...] = ("tests/kernel", "tests/model", "tests/trainer")
    gpu_select: str = ""
    expect: tuple[str, ...] = ()
    note: str = ""
    known_gap: str = ""  # non-empty: measured to survive; says why and which property would catch it


# --- the anchors: text in Unsloth 2026.10.9 (spacing is Unsloth's own `a = b` keyword style) ---------
K_TRAIN = "_compiled_slow_attention_softcapping"  # the torch.compile'd training/eval kernel body
K_INFER = "slow_inference_attention_softcapping"  # the eager kernel (generation)
CAP_TRAIN = "A = t * torch.tanh(A / t)"
CAP_INFER = "A /= t\n    torch_tanh(A, out = A)\n    A *= t"
SOFTMAX_TRAIN = "A = torch.nn.functional.softmax(A, dim = -1, dtype = torch.float32)"
SOFTMAX_INFER = "A = torch_nn_functional_softmax(A, dim = -1, dtype = torch.float32)"
SCALE = "s = self.config.query_pre_attn_scalar"
GQA_K = "K = K[:, :, None, :, :].expand(bsz, n_kv_heads, n_groups, kv_len, head_dim)"
GQA_V = "V = V[:, :, None, :, :].expand(bsz, n_kv_heads, n_groups, kv_len, head_dim)"
MASK_2D = "A += causal_mask[kv_len - actual_q_len : kv_len, :kv_len]"
MASK_4D = "A += causal_mask[..., :actual_q_len, :kv_len]"
SWA_BAND = "sliding_window = sliding_window - 1 if sliding_window is not None else None,"
FLASH_WINDOW = "(sliding_window - 1, 0)"
PAD_MERGE = "expanded_attn_mask.bool(), torch.finfo(dtype).min"
TO_4D_START = "input_shape = (attention_mask_2d.shape[0], query_length)"
SWA_CONVERTER = "Gemma2AttentionMaskConverter"


def _both_kernels(train: tuple[Edit, ...], infer: tuple[Edit, ...]) -> tuple[Patch, ...]:
    return (Patch("kernels", K_TRAIN, train), Patch("kernels", K_INFER, infer))


def _same(old: str, new: str) -> tuple[Patch, ...]:
    return _same_both(Edit(old, new))


def _same_both(*edits: Edit) -> tuple[Patch, ...]:
    """The same edits to both slow kernels (they carry identical copies of this code)."""
    return _both_kernels(edits, edits)


def _swa_band(new: str, flash: str) -> tuple[Patch, ...]:
    """The sliding-window converter's band (static and eval masks) and the flash-attn window."""
    return (
        Patch("llama", f"{SWA_CONVERTER}._make_causal_mask", (Edit(SWA_BAND, new),)),
        Patch("gemma2", "Gemma2Attention_fast_forward", (Edit(FLASH_WINDOW, flash),)),
    )


# Fast selections feed the compiled training/eval kernel (``slow_attention_softcapping``, the 2024 path)
# with the mask source that reaches the bug. A kernel mutant edits the eager generation copy too; that
# copy is reached by ``--full``. (The eager copy is not used for the fast CPU selections: on 2026.10.9 it
# returns NaN for a fully masked fp16 query row without any mutant, so its tests fail the baseline.)
KERNEL = "small_windows and slow_attention_softcapping"
CUDA_COMPILED = "small_windows and cuda-slow_attention_softcapping"
WINDOW_CPU = f"{KERNEL} and (unsloth-static or unsloth-eval)"
WINDOW_GPU = f"window_boundary or ({CUDA_COMPILED} and (unsloth-static or unsloth-eval))"
MATH_CPU = f"{KERNEL} and oracle-4d"
MATH_GPU = f"{CUDA_COMPILED} and oracle-4d"
KERNEL_ONLY = ("tests/kernel",)

CATALOGUE: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "crash2024",
            "the 2024 crash replayed: on the eval path, once the batch is longer than the window, the "
            "sliding-layer mask builder hands back the flash-attn sentinel `True` instead of a tensor",
            (
                Patch(
                    "llama",
                    f"{SWA_CONVERTER}.to_4d",
                    (
                        Edit(
                            TO_4D_START,
                            "if key_value_length is not None and self.sliding_window is not None "
                            "and key_value_length > self.sliding_window:\n"
                            "        return True  # mutant crash2024: the flash-attn sentinel\n"
                            "    " + TO_4D_START,
                        ),
                    ),
                    source_from="AttentionMaskConverter.to_4d",
                ),
            ),
            cpu_select=f"{KERNEL} and unsloth-eval",
            gpu_paths=("tests/trainer/test_evaluate.py",),
            gpu_select="evaluate_past_window and Trainer and not SFT and float32",
            expect=("crash:AttributeError", "crash:TypeError"),
            note="the kill must be a crash of the slow path on a non-tensor mask, as in unslothai/unsloth#853",
        ),
        Mutant(
            "window_off_by_one_wide",
            "sliding layers see W+1 keys (the legacy converter's i-W <= j): Unsloth's band correction dropped",
            _swa_band(
                "sliding_window = sliding_window if sliding_window is not None else None,",
                "(sliding_window, 0)",
            ),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "window_off_by_one_narrow",
            "sliding layers see W-1 keys: the band corrected twice",
            _swa_band(
                "sliding_window = sliding_window - 2 if sliding_window is not None else None,",
                "(sliding_window - 2, 0)",
            ),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "window_ignored",
            "sliding layers see every earlier key: the window is not applied at all",
            _swa_band("sliding_window = None,", "(-1, -1)"),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "softcap_dropped",
            "no logit softcapping: softmax(QK^T/sqrt(s) + mask) instead of softmax(t*tanh(./t) + mask)",
            _both_kernels((Edit(CAP_TRAIN, "pass"),), (Edit(CAP_INFER, "pass"),)),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
        ),
        Mutant(
            "softcap_after_mask",
            "softcap applied after the mask is added: masked logits become -t instead of -inf-like",
            _both_kernels(
                (Edit(CAP_TRAIN, "pass"), Edit(SOFTMAX_TRAIN, CAP_TRAIN + "\n    " + SOFTMAX_TRAIN)),
                (Edit(CAP_INFER, "pass"), Edit(SOFTMAX_INFER, CAP_INFER + "\n    " + SOFTMAX_INFER)),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
        ),
        Mutant(
            "scale_head_dim",
            "logits scaled by head_dim**-0.5 instead of query_pre_attn_scalar**-0.5 (Gemma-2 9B: 256 != 224)",
            _same(SCALE, "s = self.head_dim"),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
            note="visible only where query_pre_attn_scalar != head_dim (strategies draw both)",
        ),
        Mutant(
            "gqa_interleaved",
            "query head h reads kv head h % n_kv (interleaved) instead of h // n_groups (repeated)",
            _same_both(
                Edit(GQA_K, "K = K[:, None, :, :, :].expand(bsz, n_groups, n_kv_heads, kv_len, head_dim)"),
                Edit(GQA_V, "V = V[:, None, :, :, :].expand(bsz, n_groups, n_kv_heads, kv_len, head_dim)"),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=("tests/model/test_unsloth_forward.py",),
            gpu_select="test_logits_and_loss",
            note="visible only with n_kv_heads > 1 and n_groups > 1: CPU geometries 4/2 and 8/2; on the GPU "
            "the kernel tests use one MQA geometry (4/1), so the GPU tier reaches it through the tiny "
            "model (4 heads, 2 kv heads)",
        ),
        Mutant(
            "batch_rows_mixed",
            "a per-row 4-D mask is applied to the wrong batch rows (rows rolled by one)",
            _same(MASK_4D, "A += causal_mask.roll(1, 0)[..., :actual_q_len, :kv_len]"),
            cpu_select=f"{KERNEL} and (oracle-4d or unsloth-eval)",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"batch_row or ({CUDA_COMPILED} and (oracle-4d or unsloth-eval))",
            note="visible only with bsz > 1 and rows padded differently",
        ),
        Mutant(
            "eval_padding_dropped",
            "the per-call 4-D evaluation masks lose the padding (causal/window part only)",
            (
                Patch(
                    "llama",
                    "AttentionMaskConverter.to_4d",
                    (
                        Edit(
                            PAD_MERGE,
                            "torch.zeros_like(expanded_attn_mask, dtype = torch.bool), torch.finfo(dtype).min",
                        ),
                    ),
                ),
            ),
            cpu_select=f"{KERNEL} and unsloth-eval",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"padded_row or ({CUDA_COMPILED} and unsloth-eval)",
            note="visible only with padding whose keys a real query can see (left padding, or q_len < kv_len)",
        ),
        Mutant(
            "q_offset_wrong",
            "a 2-D static mask sliced from row 0 instead of row kv_len - q_len when q_len != kv_len",
            _same(MASK_2D, "A += causal_mask[:actual_q_len, :kv_len]"),
            cpu_select=f"{KERNEL} and unsloth-static",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"kv_cache_continuation or ({CUDA_COMPILED} and (oracle-2d or unsloth-static))",
            note="visible only with q_len < kv_len (a cached prefix)",
        ),
        Mutant(
            "softmax_input_dtype",
            "softmax taken in the input dtype (bf16/fp16) instead of float32",
            _both_kernels(
                (Edit(SOFTMAX_TRAIN, "A = torch.nn.functional.softmax(A, dim = -1)"),),
                (Edit(SOFTMAX_INFER, "A = torch_nn_functional_softmax(A, dim = -1)"),),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
            note="PyTorch's softmax accumulates in float32 for bf16/fp16 inputs; see docs/mutants.md",
            known_gap="equivalent on the compiled kernel: inductor computes the softmax reduction in float32 "
            "whatever its dtype argument and rounds once to the input dtype, so the output is unchanged "
            "(measured: survives the ci examples in fp32/bf16/fp16). No output-comparison property can "
            "catch it; only a white-box check that the kernel's softmax is taken with dtype=float32 could",
        ),
    )
}


def get(name: str) -> Mutant:
    """A mutant by name; an unknown name raises :class:`UnknownMutant` listing the known ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownMutant(f"unknown mutant {name!r}; known mutants: {', '.join(CATALOGUE)}") from None


# --- the mechanism ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Slot:
    """One place that held the original: ``container[key]`` (a module/class ``__dict__``)."""

    holder: Any  # a module or a class
    key: str
    old: Any  # the previous value, or _MISSING when the attribute did not exist there


_MISSING = object()


@dataclasses.dataclass
class Applied:
    """What :func:`apply` changed, for :func:`unapply`."""

    mutant: Mutant
    slots: list[_Slot]
    saved_state: list[tuple[dict, dict]]


_ACTIVE: list[Applied] = []


def _handles() -> dict[str, types.ModuleType]:
    from gemma2_regress import unsloth_adapter

    u = unsloth_adapter.load()
    return {"kernels": u.kernels_module, "llama": u.llama_module, "gemma2": u.gemma2_module}


def _resolve(patch: Patch, mods: dict[str, types.ModuleType]) -> tuple[Any, str, Any, Any]:
    """(holder, attribute name, raw current value or _MISSING, the raw value whose source is edited)."""
    if patch.owner not in mods:
        raise ValueError(f"patch owner {patch.owner!r} is not one of {OWNERS}")
    mod = mods[patch.owner]

    def lookup(path: str) -> tuple[Any, str, Any]:
        parts = path.split(".")
        holder: Any = mod
        for part in parts[:-1]:
            if not hasattr(holder, part):
                raise NotApplicable(f"{patch.owner} module {mod.__name__} has no {part!r} (for {path})")
            holder = getattr(holder, part)
        name = parts[-1]
        if isinstance(holder, type):
            for klass in holder.__mro__:
                if name in vars(klass):
                    return holder, name, vars(klass)[name] if klass is holder else _MISSING
            raise NotApplicable(f"{holder.__name__} has no attribute {name!r} in this release")
        if name not in vars(holder):
            raise NotApplicable(f"{mod.__name__} has no {name!r} in this release")
        return holder, name, vars(holder)[name]

    holder, name, raw = lookup(patch.path)
    if patch.source_from:
        src_holder, src_name, _ = lookup(patch.source_from)
        source_raw = inspect.getattr_static(src_holder, src_name)
    elif raw is _MISSING:
        source_raw = inspect.getattr_static(holder, name)
    else:
        source_raw = raw
    return holder, name, raw, source_raw


def _plain_function(raw: Any) -> tuple[types.FunctionType, str | None]:
    """The Python function behind ``raw`` and its wrapper kind (``staticmethod``/``classmethod``/None)."""
    kind = None
    if isinstance(raw, (staticmethod, classmethod)):
        kind = type(raw).__name__
        raw = raw.__func__
    raw = getattr(raw, "_torchdynamo_orig_callable", raw)
    if not isinstance(raw, types.FunctionType):
        raise NotApplicable(f"{raw!r} is not a Python function")
    return raw, kind


def mutated_function(patch: Patch, source_raw: Any, mutant: str) -> tuple[Any, str | None]:
    """Build the edited function (re-decorated like the original); returns (object, wrapper kind)."""
    func, kind = _plain_function(source_raw)
    if func.__code__.co_freevars:
        raise NotApplicable(f"{func.__qualname__} is a closure; it cannot be rebuilt from its source")
    lines, first = inspect.getsourcelines(func)
    src = textwrap.dedent("".join(lines))
    tree = ast.parse(src)
    fdef = tree.body[0]
    if not isinstance(fdef, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise NotApplicable(f"source of {func.__qualname__} does not start with a def")
    decorators = [ast.get_source_segment(src, d) or "" for d in fdef.decorator_list]
    body_lines = src.splitlines(keepends=True)[fdef.lineno - 1 :]
    text = "".join(body_lines)
    for edit in patch.edits:
        n = text.count(edit.old)
        if n != 1:
            raise NotApplicable(
                f"{patch.label}: anchor {edit.old.strip()[:60]!r} found {n} times (needs exactly 1) "
                f"in this release's {func.__qualname__}"
            )
        text = text.replace(edit.old, edit.new)
    # Line numbers as in the file (before the edit), and the file name kept, so that tracebacks and
    # verdicts.crash_signature name Unsloth's file and function as they would for a real bug.
    def_line = first + fdef.lineno - 1
    code = compile("\n" * (def_line - 1) + text, func.__code__.co_filename, "exec")
    scratch: dict[str, Any] = {"__name__": func.__module__}
    exec(code, scratch)  # defines only the function; its globals are rebound below
    built = scratch[func.__name__]
    new = types.FunctionType(built.__code__, func.__globals__, func.__name__, func.__defaults__, None)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__, new.__doc__, new.__module__ = func.__qualname__, func.__doc__, func.__module__
    new.__dict__.update({k: v for k, v in func.__dict__.items() if k != "_torchdynamo_orig_callable"})
    new._gemma2_mutant = mutant  # type: ignore[attr-defined]
    obj: Any = new
    compiled = hasattr(_unwrap_method(source_raw), "_torchdynamo_orig_callable")
    applied_compile = False
    for deco in reversed(decorators):
        if deco in ("staticmethod", "classmethod"):
            continue  # re-added at install time
        obj = eval(deco, func.__globals__)(obj)  # the original decorator, evaluated as the module does
        applied_compile |= "compile" in deco
    if compiled and not applied_compile:
        raise NotApplicable(f"{func.__qualname__} is compiled but not by a decorator this code can re-apply")
    return obj, kind


def _unwrap_method(raw: Any) -> Any:
    return raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw


def _wrap(obj: Any, kind: str | None) -> Any:
    return {"staticmethod": staticmethod, "classmethod": classmethod}.get(kind, lambda x: x)(obj)


def _rebind(original: Any, replacement: Any, slots: list[_Slot]) -> None:
    """Point every other module global / class attribute that holds ``original`` at ``replacement``."""
    for modname, mod in list(sys.modules.items()):
        if mod is None or not modname.startswith(REBIND_PREFIXES):
            continue
        for key, value in list(vars(mod).items()):
            if value is original:
                slots.append(_Slot(mod, key, value))
                setattr(mod, key, replacement)
            elif isinstance(value, type) and getattr(value, "__module__", "") == modname:
                for akey, avalue in list(vars(value).items()):
                    if avalue is original:
                        slots.append(_Slot(value, akey, avalue))
                        setattr(value, akey, replacement)


def _eager_fallback_flags(mods: dict[str, types.ModuleType]) -> list[dict]:
    """Unsloth's per-device "compiled kernel failed, run eagerly from now on" flags (state to restore)."""
    flags = getattr(mods["kernels"], "_SOFTCAP_EAGER", None)
    return [flags] if isinstance(flags, dict) else []


def check(name: str) -> list[tuple[Patch, Any, str | None]]:
    """Build every patch of mutant ``name`` without installing it (raises NotApplicable / UnknownMutant)."""
    mutant = get(name)
    mods = _handles()
    built = []
    for patch in mutant.patches:
        _, _, _, source_raw = _resolve(patch, mods)
        obj, kind = mutated_function(patch, source_raw, mutant.name)
        built.append((patch, obj, kind))
    return built


def apply(name: str) -> Applied:
    """Install mutant ``name`` into the imported Unsloth; all or nothing (NotApplicable leaves it intact)."""
    mutant = get(name)
    if _ACTIVE:
        raise RuntimeError(f"mutant {_ACTIVE[-1].mutant.name!r} is already applied; unapply() it first")
    mods = _handles()
    built = check(name)  # every anchor is checked before anything is installed
    state = [(d, dict(d)) for d in _eager_fallback_flags(mods)]
    slots: list[_Slot] = []
    for patch, obj, kind in built:
        holder, attr, raw, _ = _resolve(patch, mods)
        new = _wrap(obj, kind)
        slots.append(_Slot(holder, attr, raw))
        setattr(holder, attr, new)
        if raw is not _MISSING:
            _rebind(raw, new, slots)
            func = _unwrap_method(raw)
            if func is not raw:
                _rebind(func, obj, slots)
    applied = Applied(mutant, slots, state)
    _ACTIVE.append(applied)
    return applied


def unapply() -> None:
    """Restore every original the active mutant replaced (no-op when none is active)."""
    while _ACTIVE:
        applied = _ACTIVE.pop()
        for slot in reversed(applied.slots):
            if slot.old is _MISSING:
                delattr(slot.holder, slot.key)
            else:
                setattr(slot.holder, slot.key, slot.old)
        for live, saved in applied.saved_state:
            live.clear()
            live.update(saved)


def active() -> str | None:
    """The name of the applied mutant, if any."""
    return _ACTIVE[-1].mutant.name if _ACTIVE else None


# --- the pytest plugin ----------------------------------------------------------------------------
def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("gemma2-regress mutants")
    group.addoption(
        "--mutant",
        default=os.environ.get(ENV) or None,
        metavar="NAME",
        help=f"apply a planted bug to the installed Unsloth for this run (env {ENV}); see docs/mutants.md",
    )
    group.addoption(
        "--mutant-no-shrink",
        action="store_true",
        help="with --mutant: report the first failing example unshrunk (each shrink step may recompile)",
    )


def _no_shrink() -> None:
    """Keep the loaded Hypothesis profile but drop the shrink phase (``--mutant-no-shrink``)."""
    from hypothesis import Phase, settings

    current = settings.get_profile(settings._current_profile or "default")
    phases = tuple(p for p in current.phases if p is not Phase.shrink)
    settings.register_profile("gemma2-mutant-noshrink", parent=current, phases=phases)
    settings.load_profile("gemma2-mutant-noshrink")


def _runs_tests(config: Any) -> bool:
    """True in an xdist worker or a plain run; False in the xdist controller (it runs no tests)."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def _write_status(payload: dict) -> None:
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    from gemma2_regress.atomic import write_json_atomic

    write_json_atomic(path, payload)


def pytest_configure(config: Any) -> None:
    name = config.getoption("--mutant", default=None)
    if not name:
        return
    import pytest

    try:
        mutant = get(name)
    except UnknownMutant as exc:
        raise pytest.UsageError(str(exc)) from None
    if not _runs_tests(config):
        return
    if config.getoption("--mutant-no-shrink", default=False):
        _no_shrink()
    from gemma2_regress import unsloth_adapter

    try:
        apply(mutant.name)
    except NotApplicable as exc:
        version = unsloth_adapter.installed_version()
        _write_status({"mutant": name, "applied": False, "reason": str(exc), "unsloth": version})
        raise pytest.UsageError(f"mutant {name!r} is not applicable to unsloth {version}: {exc}") from None
    except unsloth_adapter.UnslothUnavailable as exc:
        _write_status({"mutant": name, "applied": False, "reason": str(exc), "unavailable": True})
        raise pytest.UsageError(f"mutant {name!r} needs Unsloth: {exc}") from None
    _write_status(
        {"mutant": name, "applied": True, "reason": "", "unsloth": unsloth_adapter.installed_version()}
    )


def pytest_unconfigure(config: Any) -> None:
    unapply()


def pytest_report_header(config: Any) -> list[str]:
    name = config.getoption("--mutant", default=None)
    return [f"gemma2-regress MUTANT ACTIVE: {name} (a planted bug; failures are expected)"] if name else []


def describe(name: str) -> dict:
    """A JSON-able description of one mutant (catalogue listing, matrix JSON)."""
    m = get(name)
    return {
        "name": m.name,
        "summary": m.summary,
        "tiers": list(m.tiers),
        "patches": [p.label for p in m.patches],
        "cpu_select": m.cpu_select,
        "gpu_paths": list(m.gpu_paths),
        "gpu_select": m.gpu_select,
        "expect": list(m.expect),
        "note": m.note,
        "known_gap": m.known_gap,
    }


if __name__ == "__main__":  # python -m gemma2_regress.mutants: the catalogue
    print(json.dumps([describe(n) for n in CATALOGUE], indent=2))
