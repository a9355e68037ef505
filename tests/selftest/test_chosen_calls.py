"""``plugins.chosen_calls``: what ``--profile-calls`` and ``--cache-keys`` share (their runs: their own tests)."""

from __future__ import annotations

from gemma2_regress.plugins.chosen_calls import file_stem


def test_file_stem_keeps_the_node_id_readable():
    stem = file_stem("tests/a.py::test_x[b1-L4096/left]")
    assert (
        stem.startswith("tests_a.py__test_x_b1-L4096_left_-")
        and len(stem) == len("tests_a.py__test_x_b1-L4096_left_-") + 8
    )
    assert file_stem("t.py::x[a/b]") != file_stem("t.py::x[a_b]")
