"""The whole-model floor grows with the rotary position, index by index along the sequence
(``tolerance.model_floor`` through ``model.properties.model_compare``)."""

from __future__ import annotations

import torch

from gemma2_regress.model.properties import model_compare
from gemma2_regress.reference import tolerance


def test_floor_follows_the_position_of_each_logit() -> None:
    L, V, dt = 8192, 5, torch.float32
    golden = torch.zeros(2, L, V, dtype=torch.float64)
    late = tolerance.model_floor(dt, L - 1)
    assert late == tolerance.MODEL_FLOOR[dt] + tolerance.MODEL_DRIFT * (L - 1)
    at_end, at_start = golden.clone().float(), golden.clone().float()
    at_end[1, L - 1, 3] = 0.9 * late  # within the floor at its own position
    at_start[1, 0, 3] = 0.9 * late  # beyond the floor at position 0
    where = torch.arange(L)
    assert model_compare(at_end, golden, golden, dtype=dt, positions=where).ok
    bad = model_compare(at_start, golden, golden, dtype=dt, positions=where)
    assert not bad.ok and bad.where == (1, 0, 3)
    assert model_compare(at_start, golden, golden, dtype=dt, positions=L - 1).ok  # one int: the largest
