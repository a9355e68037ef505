# The one-off test behind model-drift-profile.txt (docs/tolerance.md, MODEL_DRIFT). Copy it to
# tests/model/test_zz_diag.py and run: bash gpu/tier.sh 300 tests/model/test_zz_diag.py -s -p no:xdist
import pytest
import torch

from fixtures.model import bound_session
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase
from gemma2_regress.model.fast import gpu_targets

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]


@pytest.mark.parametrize("init,L", [("large", 16384), ("large", 8192), ("default", 16384)])
def test_diag(init, L, unsloth_ready):
    case = ModelCase(
        bsz=1,
        seq_len=L,
        with_mask=False,
        with_labels=True,
        mode="eval",
        dtype="float32",
        init=init,
        seed=1756,
    )
    t, g, b = gpu_targets(tiny.checkpoint(init=init), torch.float32, bound_session())
    ids, mask, labels = case.inputs(t.config)
    to = t.forward(ids, mask, labels, mode=case.mode).logits.double().cpu()
    with torch.no_grad():
        go = g.forward(ids, mask, labels, mode=case.mode).logits.double().cpu()
        bo = b.forward(ids, mask, labels, mode=case.mode).logits.double().cpu()
    et = (to - go).abs().amax(-1)[0]
    eb = (bo - go).abs().amax(-1)[0]
    mag = go.abs().amax(-1)[0]
    print(f"\nDIAG init={init} L={L} |logit| max {float(mag.max()):.3g}")
    for lo in range(0, L, 1024):
        s = slice(lo, lo + 1024)
        print(
            f"DIAG pos {lo:5d}-{lo + 1023:5d}: unsloth {float(et[s].max()):.3g} mean {float(et[s].mean()):.3g}"
            f"  eager32 {float(eb[s].max()):.3g}  |logit| {float(mag[s].max()):.3g}"
        )
