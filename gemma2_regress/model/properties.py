"""Model-level property functions, shared by the GPU tier (Unsloth) and their CPU validation (transformers).

Each function takes a ``target`` (a ``ModelTarget``: Unsloth's model on the GPU, or the eager twin
when the property itself is being validated on CPU), a ``golden`` (eager float64) and a ``baseline``
(eager, in the target's dtype), all three built with one ``ModelSession``; runs one example, judges
it with the one tolerance rule (``tolerance.compare``), records it (``report.record``: property,
target, verdict, worst ratio, case, peak GPU memory, compile vs run seconds), writes one line to the
session's writer, and asserts.

Metamorphic properties (KV cache, batch row, padded row) compare the target's *variant* (cached,
batched, padded) against the reference's *canonical* form (full forward, row alone, unpadded), so
one comparison says both "equals the canonical form" and "is as accurate as the dtype allows".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import torch

from gemma2_regress.model.cases import ModelCase, PackedBatch
from gemma2_regress.model.session import ModelSession, peak_gib, reset_peak, timed
from gemma2_regress.model.targets import ModelTarget
from gemma2_regress.plugins import report
from gemma2_regress.reference import masks, tolerance, verdicts
from gemma2_regress.versions import one_line

# Greedy generation: a differing token is a failure unless the reference's top-2 logits at that step
# are closer than this (a near tie that any rounding may flip): well above the logit error each
# dtype shows at model level (docs/gpu.md).
TIE_MARGIN = {torch.float32: 1e-4, torch.bfloat16: 0.25, torch.float16: 0.05}

UNJUDGED = "unjudged"  # an example's verdict until _judge (or an exception) sets it


def model_compare(
    target, golden, baseline, *, dtype, positions: int | torch.Tensor, valid=None, k: float = tolerance.K
) -> tolerance.Comparison:
    """``tolerance.compare`` with the whole-model floor (``tolerance.model_floor``) at ``positions``: the
    rotary position of each index along dim 1 (a 1-D tensor, an upper bound where padding shifts them),
    or one int for the whole output (a loss, one step's logits: its largest position)."""
    floor = tolerance.model_floor(dtype, positions)
    if isinstance(floor, torch.Tensor):
        floor = floor.reshape(1, -1, *[1] * (target.dim() - 2))
    return tolerance.compare(target, golden, baseline, dtype=dtype, valid=valid, k=k, floor=floor)


def shared_session(*targets: ModelTarget) -> ModelSession:
    """The one ``ModelSession`` that a target, its golden and its baseline were built with."""
    session = targets[0].session
    if any(t.session is not session for t in targets[1:]):
        names = [t.name for t in targets]
        raise ValueError(
            f"{names} were built with different ModelSessions; build target, golden and baseline "
            "with one session so that their times add up in one place"
        )
    return session


@contextlib.contextmanager
def example(prop: str, target: str, case: str, session: ModelSession) -> Iterator[dict[str, Any]]:
    """Bookkeeping around one example: peak memory, compile/run seconds (from ``session.timings``),
    record and one line to ``session.write``.

    The body stores ``verdict`` and ``ratio`` (and optionally ``detail``) in the yielded dict, through
    ``_judge``; an exception is recorded as a ``crash:`` verdict, an interrupt as ``interrupted``, a body
    that sets no verdict as a crash, and each is re-raised. Nothing is recorded ``ok`` unless judged so.
    """
    reset_peak()
    t = session.timings
    c0, r0, f0, w0 = t.compile_s, t.run_s, t.reference_s, time.perf_counter()
    box: dict[str, Any] = {"verdict": UNJUDGED, "ratio": float("nan"), "detail": ""}
    try:
        yield box
        if box["verdict"] == UNJUDGED:
            raise RuntimeError(f"{prop}: the example ended without a verdict (its body must call _judge)")
    except AssertionError:
        if box["verdict"] in ("ok", UNJUDGED):  # an assertion outside _judge (e.g. a reference sanity check)
            box["verdict"], box["ratio"] = "mismatch", float("inf")
        raise
    except Exception as exc:
        box["verdict"], box["ratio"], box["detail"] = (
            verdicts.crash_signature(exc),
            float("inf"),
            repr(exc)[:200],
        )
        raise
    except BaseException:  # Ctrl-C / a time limit's SIGINT: recorded as such, never as a pass
        box["verdict"] = "interrupted"
        raise
    finally:
        extra = dict(
            peak_gib=round(peak_gib(), 3),
            compile_s=round(t.compile_s - c0, 3),
            run_s=round(t.run_s - r0, 3),
            reference_s=round(t.reference_s - f0, 3),
            wall_s=round(time.perf_counter() - w0, 3),
        )
        report.record(prop, target, box["verdict"], box["ratio"], case, **extra)
        session.write(
            f"[{prop}] {target} | {case} | {box['verdict']} ratio={box['ratio']:.3g} | "
            f"target compile {extra['compile_s']:.1f}s run {extra['run_s']:.2f}s, reference "
            f"{extra['reference_s']:.2f}s, wall {extra['wall_s']:.1f}s "
            f"peak {extra['peak_gib']:.2f} GiB {box['detail']}"
        )


_SEVERITY = ("ok", "mismatch", "nan")  # tolerance.Comparison.kind, mildest first


def _judge(
    box: dict[str, Any], prop: str, target: str, case: str, parts: dict[str, tolerance.Comparison]
) -> None:
    """Fold named comparisons into the box and assert them all: the verdict is the worst of their
    kinds (nan over mismatch over ok), the ratio the largest."""
    worst = max(parts.values(), key=lambda c: c.ratio)
    bad = [k for k, c in parts.items() if not c.ok]
    box["ratio"] = worst.ratio
    box["verdict"] = max((c.kind for c in parts.values()), key=_SEVERITY.index)
    try:
        hypothesis.target(min(worst.ratio, 1e6), label=f"{prop}:{target}")
    except hypothesis.errors.InvalidArgument:
        pass  # outside @given
    detail = "; ".join(f"{k}: {c.describe()}" for k, c in parts.items())
    assert not bad, f"{prop} failed for {target}\n  case: {case}\n  {detail}\n  versions: {one_line()}"


# --- logits and loss -----------------------------------------------------------------------------------


def check_logits_and_loss(
    target: ModelTarget, golden: ModelTarget, baseline: ModelTarget, case: ModelCase
) -> None:
    """Logits at every real position and the loss equal the eager reference's (one tolerance rule)."""
    ids, mask, labels = case.inputs(target.config)
    valid = case.valid(target.config)
    with example(
        "model_logits_loss", target.name, case.short(), shared_session(target, golden, baseline)
    ) as box:
        t = target.forward(ids, mask, labels, mode=case.mode)
        with torch.no_grad():
            g = golden.forward(ids, mask, labels, mode=case.mode)
            b = baseline.forward(ids, mask, labels, mode=case.mode)
        dt = case.torch_dtype
        where = torch.arange(ids.shape[1])  # the position ids, or above them (left padding)
        parts = {
            "logits": model_compare(t.logits, g.logits, b.logits, dtype=dt, valid=valid, positions=where)
        }
        if labels is not None:
            parts["loss"] = model_compare(
                t.loss.reshape(()), g.loss, b.loss, dtype=dt, positions=ids.shape[1]
            )
        _judge(box, "model_logits_loss", target.name, case.short(), parts)


# --- a training step -----------------------------------------------------------------------------------


def check_attention_grads(
    target: ModelTarget, golden: ModelTarget, baseline: ModelTarget, case: ModelCase
) -> None:
    """loss.backward() gradients of every q/k/v/o projection weight equal the reference's, under
    ``tolerance.K_GRAD`` (a backward reduces over the sequence and batch, reordered more freely)."""
    ids, mask, labels = case.inputs(target.config)
    if labels is None:
        raise ValueError("a training step needs labels: draw the case with with_labels=True")
    with example(
        "model_attention_grads", target.name, case.short(), shared_session(target, golden, baseline)
    ) as box:
        lt, gt = target.attention_grads(ids, mask, labels)
        lg, gg = golden.attention_grads(ids, mask, labels)
        lb, gb = baseline.attention_grads(ids, mask, labels)
        if set(gt) != set(gg):
            raise RuntimeError(
                f"parameter names differ: target {sorted(gt)[:4]}..., reference {sorted(gg)[:4]}..."
            )
        dt = case.torch_dtype
        parts = {"loss": model_compare(lt.reshape(()), lg, lb, dtype=dt, positions=ids.shape[1])}
        for name in sorted(gg):
            short = name.replace("model.layers.", "L").replace(".self_attn.", ".").removesuffix(".weight")
            parts[short] = tolerance.compare(gt[name], gg[name], gb[name], dtype=dt, k=tolerance.K_GRAD)
        _judge(box, "model_attention_grads", target.name, case.short(), parts)


# --- a packed batch (padding-free / packing) -----------------------------------------------------------


def packed_reference(
    ref: ModelTarget, pack: PackedBatch, train: bool
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """What a correct model gives on ``pack``, from ``ref`` run on each sequence alone: (the pack's
    loss, the token-weighted mean of the sequences' losses; the sequences' logits side by side, or
    None with ``train``; with ``train`` the same weighted sum of each sequence's q/k/v/o gradients)."""
    counts = [n - 1 for n in pack.lengths]  # label tokens per sequence (its first has no predictor)
    loss, logits, grads = torch.zeros((), dtype=torch.float64), [], {}
    for row, c in zip(pack.rows, counts, strict=True):
        w = c / sum(counts)
        labels = row.clone()
        labels[0, 0] = -100
        if train:
            part, g = ref.attention_grads(row, None, labels)
            for name, v in g.items():
                grads[name] = grads.get(name, 0) + w * v.double()
        else:
            with torch.no_grad():
                f = ref.forward(row, None, labels)
            part = f.loss
            logits.append(f.logits)
        loss = loss + w * part.double().cpu()
    return loss, (torch.cat(logits, dim=1) if logits else None), grads


def check_packed(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    pack: PackedBatch,
    dtype: torch.dtype,
    *,
    train: bool,
) -> None:
    """Sequences packed into one row give each sequence's logits alone (no attention across the
    pack's boundaries, positions restarting per sequence) and the pack's loss is the token-weighted
    mean of the sequences' losses; with ``train`` also the q/k/v/o weight gradients of one training
    step, the reference's being the same weighted sum of each sequence's gradients."""
    case = f"{pack.short()} {'train' if train else 'eval'} {_dt(dtype)}"
    extra = pack.model_kwargs()
    positions = pack.position_ids[0]
    with example("model_packed", target.name, case, shared_session(target, golden, baseline)) as box:
        if train:
            lt, gt = target.attention_grads(pack.input_ids, None, pack.labels, extra)
        else:
            out = target.forward(pack.input_ids, None, pack.labels, extra=extra)
            lt = out.loss
        lg, g_logits, gg = packed_reference(golden, pack, train)
        lb, b_logits, gb = packed_reference(baseline, pack, train)
        top = int(positions.max())
        parts = {"loss": model_compare(lt.reshape(()).cpu(), lg, lb, dtype=dtype, positions=top)}
        if train:
            for name in sorted(gg):
                short = name.replace("model.layers.", "L").replace(".self_attn.", ".").removesuffix(".weight")
                parts[short] = tolerance.compare(
                    gt[name], gg[name], gb[name], dtype=dtype, k=tolerance.K_GRAD
                )
        else:
            parts["logits"] = model_compare(out.logits, g_logits, b_logits, dtype=dtype, positions=positions)
        box["detail"] = f"{len(pack.lengths)} sequences, {sum(pack.lengths)} tokens"
        _judge(box, "model_packed", target.name, case, parts)


# --- consistency ---------------------------------------------------------------------------------------


def check_kv_cache(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    split: int,
    dtype: torch.dtype,
    explicit_positions: bool = False,
) -> None:
    """Prefill ``:split`` into a KV cache, then run ``split:``: equals the full forward at ``split:``.
    ``explicit_positions`` hands the second call its ``position_ids``; else the model infers them."""
    pos = " positions" if explicit_positions else ""
    case = f"b{ids.shape[0]} L{ids.shape[1]} prefix{split}+{ids.shape[1] - split}{pos} {_mask_text(mask)} {_dt(dtype)}"
    with example("model_kv_cache", target.name, case, shared_session(target, golden, baseline)) as box:
        t = target.forward_cached(ids, mask, split, explicit_positions)
        with torch.no_grad():
            g = golden.forward(ids, mask).logits[:, split:]
            b = baseline.forward(ids, mask).logits[:, split:]
        valid = None if mask is None else mask[:, split:].bool()
        where = torch.arange(split, ids.shape[1])
        parts = {"suffix_logits": model_compare(t, g, b, dtype=dtype, valid=valid, positions=where)}
        _judge(box, "model_kv_cache", target.name, case, parts)


def check_row_alone(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    row: int,
    dtype: torch.dtype,
) -> None:
    """Row ``row`` of a batch gives the logits that row gives alone."""
    case = f"b{ids.shape[0]} L{ids.shape[1]} row{row} {_mask_text(mask)} {_dt(dtype)}"
    alone_mask = None if mask is None else mask[row : row + 1]
    with example("model_batch_row", target.name, case, shared_session(target, golden, baseline)) as box:
        t = target.forward(ids, mask).logits[row : row + 1]
        with torch.no_grad():
            g = golden.forward(ids[row : row + 1], alone_mask).logits
            b = baseline.forward(ids[row : row + 1], alone_mask).logits
        valid = None if alone_mask is None else alone_mask.bool()
        _judge(
            box,
            "model_batch_row",
            target.name,
            case,
            {
                "row_logits": model_compare(
                    t, g, b, dtype=dtype, valid=valid, positions=torch.arange(ids.shape[1])
                )
            },
        )


def check_padded_row(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    ids: torch.Tensor,
    pad: int,
    side: str,
    dtype: torch.dtype,
    companion: torch.Tensor | None = None,
) -> None:
    """A row padded by ``pad`` tokens on ``side`` (with its attention_mask) gives, at its real
    positions, the logits of the same row unpadded. ``companion`` (an unpadded row of length
    ``n + pad``) rides along in the batch so that the padded row is not alone."""
    n = ids.shape[1]
    pad_id = target.config.pad_token_id
    row = torch.full((1, n + pad), pad_id, dtype=ids.dtype)
    sl = slice(pad, n + pad) if side == "left" else slice(0, n)
    row[:, sl] = ids
    am = masks.padding_from_lengths(1, n + pad, [pad], side)
    batch, bmask = row, am
    if companion is not None:
        batch = torch.cat([row, companion], 0)
        bmask = torch.cat([am, torch.ones_like(companion)], 0)
    case = f"L{n} pad={side}{pad} batch{batch.shape[0]} {_dt(dtype)}"
    with example("model_padded_row", target.name, case, shared_session(target, golden, baseline)) as box:
        t = target.forward(batch, bmask).logits[:1, sl]
        with torch.no_grad():
            g = golden.forward(ids, None).logits
            b = baseline.forward(ids, None).logits
        _judge(
            box,
            "model_padded_row",
            target.name,
            case,
            {"real_positions": model_compare(t, g, b, dtype=dtype, positions=torch.arange(n) + pad)},
        )


def check_generation(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    max_new_tokens: int,
    dtype: torch.dtype,
) -> None:
    """Greedy generation gives the reference's tokens (up to a near tie, see ``TIE_MARGIN``); the
    logits of the first step follow the tolerance rule."""
    case = f"b{ids.shape[0]} prompt{ids.shape[1]} new{max_new_tokens} {_mask_text(mask)} {_dt(dtype)}"
    with example("model_generate", target.name, case, shared_session(target, golden, baseline)) as box:
        tok_t, sc_t = target.generate(ids, mask, max_new_tokens)
        tok_g, sc_g = golden.generate(ids, mask, max_new_tokens)
        _, sc_b = baseline.generate(ids, mask, max_new_tokens)
        first = model_compare(sc_t[:, 0], sc_g[:, 0], sc_b[:, 0], dtype=dtype, positions=ids.shape[1])
        parts = {"first_step_logits": first}
        chosen_from = sc_g.detach().double().cpu()
        eos = golden.config.eos_token_id
        if eos is not None:  # min_new_tokens holds EOS off: it was never a candidate
            chosen_from[..., eos if isinstance(eos, list) else [eos]] = float("-inf")
        problems = token_disagreements(tok_t.cpu(), tok_g.cpu(), chosen_from, TIE_MARGIN[dtype])
        box["detail"] = f"tokens {tok_t.cpu().tolist()} vs reference {tok_g.cpu().tolist()}"
        if problems:
            box["verdict"], box["ratio"] = "mismatch", float("inf")
            raise AssertionError(
                f"model_generate failed for {target.name}\n  case: {case}\n  "
                + "; ".join(problems)
                + f"\n  versions: {one_line()}"
            )
        _judge(box, "model_generate", target.name, case, parts)


def token_disagreements(
    tokens: torch.Tensor, ref_tokens: torch.Tensor, ref_scores: torch.Tensor, margin: float
) -> list[str]:
    """Per row, the first step where ``tokens`` leave ``ref_tokens`` while the reference's choice was
    clear (top-1 minus top-2 logit >= ``margin``). After a near tie the rows may rightly diverge, so
    comparison of that row stops there."""
    problems = []
    for r in range(ref_tokens.shape[0]):
        for s in range(ref_tokens.shape[1]):
            if tokens[r, s] == ref_tokens[r, s]:
                continue
            top2 = ref_scores[r, s].double().topk(2).values
            gap = float(top2[0] - top2[1])
            if gap >= margin:
                problems.append(
                    f"row {r} step {s}: token {int(tokens[r, s])} != {int(ref_tokens[r, s])} (reference margin {gap:.3g})"
                )
            break
    return problems


# --- the window boundary -------------------------------------------------------------------------------


def check_window_boundary(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    window: int,
    dtype: torch.dtype,
) -> None:
    """On a one-sliding-layer probe model, changing the token ``window - 1`` positions before the
    last query changes the last logits, and ``window`` or ``window + 1`` before does not.

    Judged as differences: for each offset, (logits after the change - logits before) at the last
    position from the target vs the reference. The reference must show a difference at W-1 large
    enough for the comparison to notice a dropped key, else the probe is not sensitive and the test
    fails as unable to test (a fixture problem, not a pass)."""
    q = ids.shape[1] - 1
    case = f"b{ids.shape[0]} L{ids.shape[1]} W={window} {_mask_text(mask)} {_dt(dtype)}"
    with example("model_window_boundary", target.name, case, shared_session(target, golden, baseline)) as box:
        base = [m.forward(ids, mask).logits[:, q] for m in (target, golden, baseline)]
        parts, golden_delta = {}, {}
        for d in (window - 1, window, window + 1):
            changed = ids.clone()
            changed[:, q - d] = _other_token(ids[:, q - d], target.config)
            outs = [m.forward(changed, mask).logits[:, q] for m in (target, golden, baseline)]
            deltas = [(o.double() - b0.double()) for o, b0 in zip(outs, base, strict=True)]
            parts[f"change_{d}_back"] = tolerance.compare(deltas[0], deltas[1], deltas[2], dtype=dtype)
            golden_delta[d] = float(deltas[1].abs().max())
        box["detail"] = "reference |delta| " + " ".join(f"{d}:{v:.3g}" for d, v in golden_delta.items())
        seen = golden_delta[window - 1]
        if golden_delta[window] != 0.0 or golden_delta[window + 1] != 0.0:
            raise AssertionError(
                f"the reference itself sees past its window ({box['detail']}): check transformers' convention"
            )
        if not seen > 2 * parts[f"change_{window - 1}_back"].bound:
            raise AssertionError(
                f"probe not sensitive: the reference moves by {seen:.3g} when the key W-1 back changes, "
                f"not above twice the tolerance {parts[f'change_{window - 1}_back'].bound:.3g}; fix tiny's probe init"
            )
        _judge(box, "model_window_boundary", target.name, case, parts)


def _other_token(col: torch.Tensor, config: Any) -> torch.Tensor:
    """A different plain token id for each entry of ``col``."""
    from gemma2_regress.model.tiny import FIRST_PLAIN_ID

    span = int(config.vocab_size) - FIRST_PLAIN_ID
    return FIRST_PLAIN_ID + (col - FIRST_PLAIN_ID + span // 2) % span


def _mask_text(mask: torch.Tensor | None) -> str:
    if mask is None:
        return "nomask"
    return "mask" if bool(mask.all()) else f"mask(pads={[int(x) for x in (mask == 0).sum(1)]})"


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- Trainer.evaluate, the path of the 2024 crash ------------------------------------------------------


def check_evaluate(
    kind: str,
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    dataset: Any,
    per_device_eval_batch_size: int,
    dtype: torch.dtype,
    output_dir: str,
) -> None:
    """``evaluate()`` runs (no crash) and its eval_loss equals the reference's on the same batches."""
    from gemma2_regress.model.trainer import make_trainer

    trainer = make_trainer(
        kind, target.model, target.tokenizer, dataset, per_device_eval_batch_size, output_dir
    )
    lengths = [len(r) for r in dataset["input_ids"]]
    check_trainer_evaluate(
        target, golden, baseline, trainer, dtype, f"{kind} rows={lengths} bsz{per_device_eval_batch_size}"
    )


def check_trainer_evaluate(
    target: ModelTarget,
    golden: ModelTarget,
    baseline: ModelTarget,
    trainer: Any,
    dtype: torch.dtype,
    case: str,
) -> None:
    """``trainer.evaluate()`` runs (no crash) and its eval_loss equals the reference's on the batches the
    trainer's own eval dataloader yields, averaged as ``Trainer.evaluation_loop`` does (each batch's loss
    weighted by its row count): for a packed batch (``packed_seq_lengths``) the pack's reference loss
    (``packed_reference``, each sequence alone), else the reference's loss on the batch as it is."""
    from gemma2_regress.model.trainer import reference_eval_loss

    case = f"{case} {_dt(dtype)}"
    with example("trainer_evaluate", target.name, case, shared_session(target, golden, baseline)) as box:
        info: dict[str, Any] = {}
        with timed(info, target.session.timings):
            metrics = trainer.evaluate()
        got = torch.tensor(float(metrics["eval_loss"]), dtype=torch.float64)
        batches = list(trainer.get_eval_dataloader())
        if any("packed_seq_lengths" in b for b in batches):
            packs = [PackedBatch.from_batch(b) for b in batches]
            g = sum(packed_reference(golden, p, False)[0] for p in packs) / len(packs)
            b = sum(packed_reference(baseline, p, False)[0] for p in packs) / len(packs)
            top = max(max(p.lengths) for p in packs) - 1
        else:
            g, b = reference_eval_loss(trainer, golden), reference_eval_loss(trainer, baseline)
            top = max(int(x["input_ids"].shape[1]) for x in batches) - 1
        box["detail"] = f"eval_loss {float(got):.6g} reference {float(g):.6g}"
        _judge(
            box,
            "trainer_evaluate",
            target.name,
            case,
            {"eval_loss": model_compare(got, g, b, dtype=dtype, positions=top)},
        )
