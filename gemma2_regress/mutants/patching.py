"""Planting a catalogued mutant into the *installed* Unsloth at run time, and taking it out again.

Nothing is re-implemented and no file is touched: :func:`apply` takes a function's source
(``inspect.getsource``; for a ``torch.compile``'d function the source of ``_torchdynamo_orig_callable``),
checks that each edit's anchor text is present exactly once, compiles the edited source under the
original file name, rebuilds the function on the original module's live globals, re-applies the
original decorators (so a compiled kernel is re-wrapped by the same ``torch.compile(...)`` expression,
options and all), and installs it at its owner (module global or class attribute) *and* wherever else
Unsloth or transformers already holds a reference to the original (Unsloth's ``pre_patch`` assigns its
functions to transformers classes; star imports copy kernels into several modules). It returns a
:class:`Planted` handle whose :meth:`Planted.undo` puts every original back; no module state is kept
here.

If a release lacks an anchor or a function, the mutant is *not applicable* to that release
(:class:`NotApplicable`): the kill matrix reports it as such instead of letting it pass.

Imports ``catalogue`` and, when planting, ``gemma2_regress.unsloth_adapter``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import types
from typing import Any

from gemma2_regress.mutants.catalogue import OWNERS, Mutant, Patch, get

# Modules whose globals and classes are searched for other references to a patched function.
REBIND_PREFIXES = (
    "unsloth",
    "unsloth_zoo",
    "transformers.models.gemma2",
    "transformers.models.llama",
    "peft",
)
TAG = "_gemma2_mutant"  # set on every planted function: the mutant's name


class NotApplicable(RuntimeError):
    """The installed release lacks the code a mutant edits (a moved function, a missing anchor)."""


@dataclasses.dataclass
class _Slot:
    """One place that held the original: ``container[key]`` (a module/class ``__dict__``)."""

    holder: Any  # a module or a class
    key: str
    old: Any  # the previous value, or _MISSING when the attribute did not exist there


_MISSING = object()


@dataclasses.dataclass
class Planted:
    """A mutant installed by :func:`apply`: every place it changed, and the state to restore.

    :meth:`undo` puts every original back; it is safe to call twice. Also a context manager.
    """

    mutant: Mutant
    slots: list[_Slot]
    saved_state: list[tuple[dict, dict]]

    def undo(self) -> None:
        """Restore every original this mutant replaced, in reverse order, and the saved state."""
        while self.slots:
            slot = self.slots.pop()
            if slot.old is _MISSING:
                delattr(slot.holder, slot.key)
            else:
                setattr(slot.holder, slot.key, slot.old)
        while self.saved_state:
            live, saved = self.saved_state.pop()
            live.clear()
            live.update(saved)

    def __enter__(self) -> Planted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


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
    setattr(new, TAG, mutant)
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


def _planted_name(raw: Any) -> str | None:
    """The mutant that planted ``raw`` (a raw attribute value), or None for an original."""
    func = getattr(_unwrap_method(raw), "_torchdynamo_orig_callable", _unwrap_method(raw))
    return getattr(func, TAG, None)


def apply(name: str) -> Planted:
    """Install mutant ``name`` into the imported Unsloth; all or nothing (NotApplicable leaves it intact).

    Refuses (``RuntimeError``) to plant over a function that a mutant already replaced.
    """
    mutant = get(name)
    mods = _handles()
    for patch in mutant.patches:
        raw = _resolve(patch, mods)[2]
        other = None if raw is _MISSING else _planted_name(raw)
        if other:
            raise RuntimeError(f"mutant {other!r} is already applied at {patch.label}; undo() it first")
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
    return Planted(mutant, slots, state)
