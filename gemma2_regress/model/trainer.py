"""The path of the 2024 crash, end to end: ``Trainer.evaluate`` on an eval set longer than the window.

In 2024 (unslothai/unsloth#853) evaluation batches longer than 4096 tokens reached Unsloth's slow
attention path with an ``attention_mask`` and crashed there. This module builds what a user has:
an in-memory ``datasets.Dataset`` of token rows (longer than the window, of unequal lengths drawn per
row in dataset order, so batches are padded and a longer row may follow a shorter one, as a
sequential eval dataloader hands them), a collator that right-pads and masks, and a ``transformers.Trainer`` (or
TRL's ``SFTTrainer``) with ``report_to="none"`` and ``output_dir`` in a temporary directory; then
``evaluate()``. Its ``eval_loss`` is checked against the loss the eager reference gives on exactly
the batches the trainer's own eval dataloader yields, averaged as ``Trainer.evaluation_loop`` does
(each batch's mean token loss, weighted by the batch's row count).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from gemma2_regress.model import tiny
from gemma2_regress.model.cases import labels_for

# Every row crosses the window. Few distinct lengths, so few shapes to compile: at batch size 1 the
# rows run unpadded (all-ones masks past the window: the exact 2024 trigger), at 2 and 4 mixed rows
# are right-padded to the longest (Unsloth's per-call 4-D masks). 4200 is the length of the 2024 reports.
ROW_LENGTHS = (4097, 4200, 8192)
EVAL_ROWS = 8
EVAL_LENGTHS = (4097, 8192, 4097, 4097, 8192, 8192, 4097, 4200)  # a fixed eval set: eval_dataset's default


def eval_lengths(
    bsz: int, lengths: Sequence[int] = ROW_LENGTHS, rows: int = EVAL_ROWS
) -> st.SearchStrategy[tuple[int, ...]]:
    """The row lengths of an eval set in dataset order, each row's drawn on its own from ``lengths``.
    ``Trainer``'s eval dataloader does not shuffle: it batches consecutive rows, ``bsz`` at a time, so
    at ``bsz >= 2`` some batch must have its longest row after a shorter one (the row before it
    right-padded); at ``bsz == 1`` the rows must not all be one length. Shrinks toward ``lengths[0]``."""
    return (
        st.lists(st.sampled_from(list(lengths)), min_size=rows, max_size=rows)
        .map(tuple)
        .filter(lambda rows_: longer_after_shorter(rows_, bsz))
    )


def longer_after_shorter(lengths: Sequence[int], bsz: int) -> bool:
    """Whether some batch of ``bsz`` consecutive rows has a row longer than its first (at ``bsz == 1``:
    whether the rows differ in length at all)."""
    if bsz == 1:
        return len(set(lengths)) > 1
    batches = [lengths[i : i + bsz] for i in range(0, len(lengths), bsz)]
    return any(max(b) > b[0] for b in batches)


def eval_dataset(config: Any, lengths: Sequence[int] = EVAL_LENGTHS, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` with one ``input_ids`` row per length (no labels: the collator adds them)."""
    import datasets

    rows = [tiny.token_batch(config, 1, n, seed=seed + i)[0][0].tolist() for i, n in enumerate(lengths)]
    return datasets.Dataset.from_dict({"input_ids": rows})


class RightPadCollator:
    """Right-pads a list of ``{"input_ids": [...]}`` rows: ``input_ids``, ``attention_mask``, ``labels``
    (-100 at pads, see ``model_cases.labels_for``)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            row = torch.as_tensor(f["input_ids"], dtype=torch.long)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels_for(ids, mask)}


def make_trainer(
    kind: str,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    per_device_eval_batch_size: int,
    output_dir: str | os.PathLike[str],
) -> Any:
    """A ``transformers.Trainer`` (``kind="trainer"``) or ``trl.SFTTrainer`` (``kind="sft"``) set up for
    evaluation only: no downloads, no reporting, loss only, the given collator and batch size."""
    common = dict(
        output_dir=str(output_dir),
        per_device_eval_batch_size=per_device_eval_batch_size,
        report_to="none",
        remove_unused_columns=False,
        prediction_loss_only=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    collator = RightPadCollator(model.config.pad_token_id)
    if kind == "trainer":
        from transformers import Trainer, TrainingArguments

        return Trainer(
            model=model, args=TrainingArguments(**common), eval_dataset=dataset, data_collator=collator
        )
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=None, dataset_kwargs={"skip_prepare_dataset": True})
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
        )
    raise ValueError(f"trainer kind must be 'trainer' or 'sft', got {kind!r}")


@torch.no_grad()
def reference_eval_loss(trainer: Any, reference: Any) -> torch.Tensor:
    """``eval_loss`` as ``Trainer.evaluation_loop`` aggregates it, with ``reference`` computing each batch."""
    total, rows = None, 0
    for batch in trainer.get_eval_dataloader():
        out = reference.forward(batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = batch["input_ids"].shape[0]
        part = out.loss.detach().double().cpu() * n
        total = part if total is None else total + part
        rows += n
    if total is None:
        raise ValueError("the eval dataloader yielded no batch")
    return total / rows


def make_packing_trainer(
    model: Any, tokenizer: Any, dataset: Any, max_length: int, output_dir: str | os.PathLike[str]
) -> Any:
    """TRL's ``SFTTrainer`` with ``packing=True`` over a dataset of token rows (``input_ids``), as a user
    sets it up for padding-free training: TRL packs whole rows into sequences of up to ``max_length``
    tokens (best-fit decreasing), and Unsloth's trainer patch wraps the collator to pass each pack's
    ``packed_seq_lengths`` to the model. One row per batch; no downloads, no reporting."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        packing=True,
        max_length=max_length,
        report_to="none",
        prediction_loss_only=True,
        dataloader_num_workers=0,
        max_steps=1,
        learning_rate=0.0,
        use_cpu=not torch.cuda.is_available(),
    )
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
