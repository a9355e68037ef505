"""The on-disk store of the kernel tests' reference (``reference.store``): a stored entry is the value a fresh
computation gives, and anything it is computed from changes its key."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from gemma2_regress.kernel import properties
from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.reference import oracle, store, tolerance

CASE = Case(bsz=2, q_len=40, kv_len=40, window=16, pad_side="left", pads=(3, 0), dtype="bfloat16")
CODE = (properties.reference, oracle.attention, tolerance.attention_floor)


@pytest.fixture(autouse=True)
def _store_on(monkeypatch) -> None:
    """Each test starts with the store on, whatever the run that holds it set."""
    monkeypatch.delenv(store.OFF_ENV, raising=False)


def _key(case: Case = CASE, inputs=None, code=CODE) -> str:
    x = inputs or make_inputs(case, "cpu")
    return store.key((x.q, x.k, x.v, x.key_valid), (case.scalar, case.softcap, case.window, case.dtype), code)


def _counted(case: Case = CASE):
    calls = []

    def compute():
        calls.append(1)
        return properties.reference(case, make_inputs(case, "cpu"))

    return compute, calls


def _same(a, b) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True)
    )


def test_a_stored_reference_is_the_computed_one_and_is_not_computed_again(tmp_path) -> None:
    compute, calls = _counted()
    first = store.fetch(tmp_path, _key(), compute)
    second = store.fetch(tmp_path, _key(), compute)
    assert calls == [1], "the second fetch computed again"
    fresh = properties.reference(CASE, make_inputs(CASE, "cpu"))
    assert _same(first, fresh) and _same(second, fresh)
    assert second[0].dtype == torch.float64 and second[1].dtype == torch.bfloat16


def test_the_key_changes_with_what_the_reference_is_computed_from(monkeypatch) -> None:
    base = _key()
    assert _key() == base, "the same inputs, code and stack must give the same key"
    x = make_inputs(CASE, "cpu")
    x.q[0, 0, 0, 0] += 1  # bfloat16: a change it can hold
    assert _key(inputs=x) != base, "inputs"
    assert _key(case=dataclasses.replace(CASE, dtype="float16")) != base, "dtype"
    assert _key(case=dataclasses.replace(CASE, scalar=256.0)) != base, "scalar"
    assert _key(code=(properties.reference, lambda *a, **k: None, tolerance.attention_floor)) != base, "code"
    current = os.environ.get("ATEN_CPU_CAPABILITY")  # a portability run sets one: change it to another
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2" if current == "default" else "default")
    assert _key() != base, "ATen's CPU capability"
    monkeypatch.undo()
    assert _key() == base, "the setting put back"
    for name in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "") + "x")
        assert _key() != base, name
        monkeypatch.undo()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert _key() != base, "torch's thread count"
    finally:
        torch.set_num_threads(threads)


def test_a_broken_file_is_computed_anew_and_replaced(tmp_path) -> None:
    compute, calls = _counted()
    digest = _key()
    file = tmp_path / store.KIND / f"{digest}.pt"
    file.parent.mkdir()
    file.write_bytes(b"cut short")
    got = store.fetch(tmp_path, digest, compute)
    assert calls == [1] and _same(got, properties.reference(CASE, make_inputs(CASE, "cpu")))
    store.fetch(tmp_path, digest, compute)
    assert calls == [1], "the replaced file did not load"


def test_the_folder_keeps_under_its_bound_by_dropping_the_least_recently_used(tmp_path) -> None:
    folder = tmp_path / store.KIND
    folder.mkdir()
    for i, name in enumerate("abc"):
        f = folder / f"{name}.pt"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    store._trim(folder, max_bytes=200)
    assert sorted(p.name for p in folder.iterdir()) == ["b.pt", "c.pt"]


def test_only_long_cpu_cases_are_stored_and_the_variable_turns_it_off(monkeypatch) -> None:
    assert store.enabled("cpu", store.MIN_LOGITS)
    assert not store.enabled("cpu", store.MIN_LOGITS - 1)
    assert not store.enabled("cuda", store.MIN_LOGITS)
    monkeypatch.setenv(store.OFF_ENV, "0")
    assert not store.enabled("cpu", store.MIN_LOGITS)


def test_prepared_finds_the_stored_reference_in_the_compile_cache_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(properties.records, "cache_folder", lambda: tmp_path)
    monkeypatch.setattr(store, "MIN_LOGITS", 1)
    properties.prepared.cache_clear()
    try:
        _, *first = properties.prepared(CASE, "cpu")
        assert len(list((tmp_path / store.KIND).glob("*.pt"))) == 1
        properties.prepared.cache_clear()
        # found on disk: nothing computed, so nothing written
        monkeypatch.setattr(store, "write_bytes_atomic", lambda *a: pytest.fail("computed again"))
        _, *again = properties.prepared(CASE, "cpu")
    finally:
        properties.prepared.cache_clear()
    assert _same(first, again)
