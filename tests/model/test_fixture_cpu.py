"""The tiny Gemma-2 fixture, and the oracle layer by layer inside transformers' eager Gemma-2, on CPU.

transformers only (no Unsloth; where an xdist worker imported Unsloth for other tests, the model runs
inside ``pristine_transformers``, so its masks are still transformers' own): this validates the two
things the model-level GPU tests stand on.
(1) ``gemma2_regress.model.tiny`` builds a loadable, cached, deterministic checkpoint offline.
(2) At lengths that cross Gemma-2's real 4096 window (4095, 4097, 4200 with left padding), every
attention layer of transformers' eager Gemma-2 equals the oracle run on the post-RoPE q/k/v it
captured, with the oracle's own window for that layer (sliding at even layers, global at odd) and
its own padding mask built from the 2-D attention_mask, at the query rows where windows matter
(the first 128, 128 either side of W, the last 128): the fixture, the oracle's window rule and
Unsloth's ``idx % 2 == 0`` layout are thereby tied to transformers'. (3) The window boundary at
model level, with the "probe" init: the token W-1 back changes the last logits, W and W+1 back do not.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading

import pytest
import torch

from gemma2_regress.model import tiny
from gemma2_regress.model.eager import pristine_transformers
from gemma2_regress.reference import masks, oracle, tolerance

# --- the fixture itself --------------------------------------------------------------------------


def test_tiny_config_layout_and_defaults() -> None:
    cfg = tiny.tiny_config()
    assert (
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    ) == (
        512,
        64,
        4,
        2,
        16,
    )
    assert (cfg.sliding_window, cfg.query_pre_attn_scalar, cfg.attn_logit_softcapping) == (4096, 16, 50.0)
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    assert tiny.tiny_config(num_hidden_layers=3).layer_types == tiny.expected_layer_types(3)
    assert cfg._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layer_types": ["full_attention", "sliding_attention"]}, "idx % 2 == 0"),
        ({"num_hidden_layer": 3}, "unknown Gemma2Config field"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be"),
    ],
)
def test_tiny_config_refuses_bad_overrides(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.tiny_config(**overrides)


def test_checkpoint_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        tiny.checkpoint(init="huge")
    with pytest.raises(ValueError, match="side must be"):
        tiny.token_batch(tiny.tiny_config(), 1, 8, pads=(2,), side="middle")


def test_checkpoint_loads_and_is_keyed_by_config() -> None:
    cfg = tiny.tiny_config()
    path = tiny.checkpoint(cfg)
    assert tiny.checkpoint(tiny.tiny_config()) == path  # same config, same directory (cached)
    assert tiny.checkpoint(cfg, seed=1) != path and tiny.checkpoint(cfg, init="large") != path
    assert tiny.checkpoint(tiny.tiny_config(sliding_window=16)) != path
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "Gemma2ForCausalLM" and model.config.layer_types == cfg.layer_types
    a = tiny.load_transformers(path).state_dict()
    b = tiny.load_transformers(path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    q = a["model.layers.0.self_attn.q_proj.weight"]
    assert abs(float(q.std()) - 0.02) < 0.002, float(q.std())
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == cfg.vocab_size
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    ids = tok("Gemma-2 wörks offline").input_ids
    assert ids[0] == 2 and max(ids) < cfg.vocab_size
    assert tok.decode(ids, skip_special_tokens=True) == "Gemma-2 wörks offline"


def test_probe_checkpoint_is_what_it_says() -> None:
    cfg = tiny.tiny_config(num_hidden_layers=1, sliding_window=16)
    model = tiny.load_transformers(tiny.checkpoint(cfg, init="probe"))
    attn = model.model.layers[0].self_attn
    assert model.config.final_logit_softcapping is None
    assert float(attn.q_proj.weight.detach().abs().max()) == 0.0
    assert float(attn.v_proj.weight.detach().std()) > 10 * float(attn.k_proj.weight.detach().std())


def test_token_batch_is_deterministic_and_padded() -> None:
    cfg = tiny.tiny_config()
    ids, mask = tiny.token_batch(cfg, 2, 12, pads=(3, 0), side="left", seed=5)
    ids2, mask2 = tiny.token_batch(cfg, 2, 12, pads=(3, 0), side="left", seed=5)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert mask[0, :3].sum() == 0 and mask[0, 3:].all() and mask[1].all()
    assert (ids[0, :3] == cfg.pad_token_id).all() and (ids[mask.bool()] >= tiny.FIRST_PLAIN_ID).all()


def test_concurrent_builders_do_not_corrupt(tmp_path: pathlib.Path) -> None:
    """Three builders of the same checkpoint at once: one directory, complete, no temp dirs left.

    Threads, not processes (a process start costs an import of torch and transformers): each builds
    in its own temp dir and races to rename it into place; the losers must discard theirs.
    """
    cfg = tiny.tiny_config(num_hidden_layers=1)
    start = threading.Barrier(3)
    results: list[object] = []

    def build() -> None:
        start.wait()
        try:
            results.append(tiny.checkpoint(cfg, seed=3, cache_dir=tmp_path))
        except Exception as exc:  # reported below with the others
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1 and len(results) == 3, results
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # type: ignore[union-attr]
    model = tiny.load_transformers(results[0])  # type: ignore[arg-type]
    assert model.config.num_hidden_layers == 1


# --- the oracle, layer by layer, inside transformers' eager Gemma-2 ------------------------------


@contextlib.contextmanager
def captured_attention(monkeypatch: pytest.MonkeyPatch):
    """Record each eager attention call's layer, post-RoPE q/k/v, kwargs and output."""
    from transformers.models.gemma2 import modeling_gemma2 as g2

    records: list[dict] = []
    original = g2.eager_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        out, _weights = original(module, query, key, value, attention_mask, **kwargs)
        records.append(dict(layer=module.layer_idx, q=query, k=key, v=value, out=out, kwargs=kwargs))
        return out, None  # the weights are not kept: at 4200 tokens they are 0.5 GB a layer

    monkeypatch.setattr(g2, "eager_attention_forward", spy)
    yield records


def query_bands(seq_len: int, window: int, width: int = 128) -> list[tuple[int, int]]:
    """Query rows compared against the oracle: the start, both sides of the window, the end."""
    bands = [(0, width), (window - width, window + width), (seq_len - width, seq_len)]
    rows = sorted({r for s, e in bands for r in range(max(0, s), min(seq_len, e))})
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out


def oracle_rows(q, k, v, bands, *, key_valid, window, scalar, softcap, dtype, fn=None) -> torch.Tensor:
    """The oracle (or ``fn``, e.g. ``tolerance.attention_floor``) at the query rows in ``bands``, each
    band run as the last rows of its key prefix."""
    parts = [
        (fn or oracle.attention)(
            q[:, :, s:e],
            k[:, :, :e],
            v[:, :, :e],
            scalar=scalar,
            softcap=softcap,
            window=window,
            key_valid=None if key_valid is None else key_valid[:, :e],
            dtype=dtype,
        )
        for s, e in bands
    ]
    return torch.cat(parts, dim=1)


def full_floor(seq_len: int):
    """``tolerance.attention_floor`` for a band whose target summed over all ``seq_len`` keys."""

    def floor(q, k, v, **kw):
        return tolerance.attention_floor(q, k, v, extra_keys=seq_len - k.shape[2], **kw)

    return floor


def raw_logit_std(q: torch.Tensor, k: torch.Tensor, scaling: float, rows: int = 256) -> float:
    """Std of the raw (pre-cap) logits q.k * scaling, over the last ``rows`` queries and every key."""
    groups = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(groups, dim=1).double()
    return float((q[:, :, -rows:].double() @ kk.transpose(-1, -2) * scaling).std())


LAYER_CASES = [
    pytest.param("default", 1, 4095, (), "none", id="default-b1-4095"),
    pytest.param("default", 2, 4097, (), "none", id="default-b2-4097"),
    pytest.param("default", 2, 4200, (7, 0), "left", id="default-b2-4200-leftpad7"),
    pytest.param("large", 1, 4097, (), "none", id="large-b1-4097"),
]


@pytest.mark.parametrize(("init", "bsz", "seq_len", "pads", "side"), LAYER_CASES)
def test_each_layer_matches_oracle(init, bsz, seq_len, pads, side, monkeypatch, capsys) -> None:
    cfg = tiny.tiny_config()
    model = tiny.load_transformers(tiny.checkpoint(cfg, init=init))
    ids, mask = tiny.token_batch(cfg, bsz, seq_len, pads=pads, side=side)
    with captured_attention(monkeypatch) as records, pristine_transformers(), torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask if side != "none" else None).logits
    assert bool(torch.isfinite(logits).all()) and float(logits.abs().max()) <= cfg.final_logit_softcapping
    assert [r["layer"] for r in records] == list(range(cfg.num_hidden_layers))
    key_valid = mask if side != "none" else None
    bands = query_bands(seq_len, cfg.sliding_window)
    rows = torch.cat([torch.arange(s, e) for s, e in bands])
    valid = None if key_valid is None else masks.valid_queries(key_valid, seq_len)[:, rows]
    for r in records:
        window = tiny.layer_window(cfg, r["layer"])
        kw = r["kwargs"]
        assert kw["sliding_window"] == window, (
            f"layer {r['layer']}: transformers window {kw['sliding_window']}"
        )
        assert (
            kw["scaling"] == cfg.query_pre_attn_scalar**-0.5 and kw["softcap"] == cfg.attn_logit_softcapping
        )
        ref = dict(
            key_valid=key_valid, window=window, scalar=cfg.query_pre_attn_scalar, softcap=kw["softcap"]
        )
        golden = oracle_rows(r["q"], r["k"], r["v"], bands, dtype=torch.float64, **ref)
        baseline = oracle_rows(r["q"], r["k"], r["v"], bands, dtype=torch.float32, **ref)
        floor = oracle_rows(r["q"], r["k"], r["v"], bands, dtype=torch.float32, fn=full_floor(seq_len), **ref)
        target = r["out"].reshape(bsz, seq_len, -1)[:, rows]
        cmp = tolerance.compare(target, golden, baseline, dtype=torch.float32, valid=valid, floor=floor)
        std = raw_logit_std(r["q"], r["k"], kw["scaling"])
        with capsys.disabled():
            print(
                f"\n  [{init} b{bsz} L{seq_len} {side}{list(pads)}] layer {r['layer']} W={window}: "
                f"raw logit std {std:.3g}; {cmp.describe()}"
            )
        assert cmp.ok, (
            f"layer {r['layer']} (W={window}) vs oracle, {init} b{bsz} L{seq_len}: {cmp.describe()}"
        )
        if init == "large":
            assert 10.0 <= std <= 200.0, f"large init should put raw logits near the cap (50), std {std:.3g}"
        else:
            assert std < 1.0, f"default init should give small raw logits, std {std:.3g}"


# --- the window boundary at model level ----------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 3], ids=["no-mask", "left-pad-mask"])
@pytest.mark.parametrize("window", [16, 4096])
def test_window_boundary_at_model_level(window: int, pad: int, capsys) -> None:
    """One sliding layer, probe init: the token W-1 back from the last changes its logits, W and W+1 back do not."""
    cfg = tiny.tiny_config(num_hidden_layers=1, sliding_window=window)
    model = tiny.load_transformers(tiny.checkpoint(cfg, init="probe"))
    n = window + 2 + pad
    ids, mask = tiny.token_batch(cfg, 1, n, pads=(pad,), side="left" if pad else "none", seed=11)
    kwargs = {"attention_mask": mask} if pad else {}

    def last_logits(x: torch.Tensor) -> torch.Tensor:
        with pristine_transformers(), torch.no_grad():
            return model(input_ids=x, **kwargs).logits[0, -1].double()

    base = last_logits(ids)
    moved = {}
    for back in (window - 1, window, window + 1):
        changed = ids.clone()
        pos = n - 1 - back
        changed[0, pos] = tiny.FIRST_PLAIN_ID + (int(ids[0, pos]) - tiny.FIRST_PLAIN_ID + 1) % (
            cfg.vocab_size - tiny.FIRST_PLAIN_ID
        )
        moved[back] = float((last_logits(changed) - base).abs().max())
    with capsys.disabled():
        print(f"\n  [probe W={window} pad={pad}] max |change of last logits| by token k back: {moved}")
    assert moved[window - 1] > 1e-3, f"token W-1 back not seen: {moved}"
    assert moved[window] == 0.0 and moved[window + 1] == 0.0, f"token W or W+1 back seen: {moved}"
