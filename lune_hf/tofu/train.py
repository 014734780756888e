"""TOFU training steps: fine-tune a base model on TOFU (the "finetuned" / "retain" models) and unlearn a forget split.

Used by ``recipes/tofu/*.py`` and ``benchmarks/tofu.py``. Fine-tuning is TOFU's full-parameter supervised
fine-tuning (answer tokens only in the loss) with a plain `transformers.Trainer`; unlearning is
:class:`lune_hf.LuneTrainer` (LoRA on every projection) with per-objective settings from
:data:`OBJECTIVE_SETTINGS`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..data import ensure_pad_token, pad, split_row, tokenize_example
from ..objectives import IGNORE_INDEX, OBJECTIVES

__all__ = [
    "OBJECTIVE_SETTINGS",
    "SftCollator",
    "finetune",
    "unlearn",
]

logger = logging.getLogger(__name__)

# Per-objective LuneConfig values of the TOFU recipes (each ObjectiveSpec.recommended; LoRA r=16 everywhere).
# Learning rates are LoRA-sized: open-unlearning's 1e-5 is for full-parameter training, and with LoRA 2e-5 moved
# nothing in 25 steps (gradient ascent on SmolLM2-135M, benchmarks/results/tofu_cpu6_legacy.md).
# `retain`: whether the retain set is passed (its NLL weighted by `retain_weight`), as open-unlearning does for
# GradDiff, NPO, SimNPO and IdkDPO (alpha = gamma = 1) and not for GradAscent. LUNE and IdK-NLL also get it here:
# it is what keeps model utility on a model that memorised its retain set.
OBJECTIVE_SETTINGS: dict[str, dict[str, Any]] = {name: dict(spec.recommended) for name, spec in OBJECTIVES.items()}


class SftCollator:
    """Pads tokenised rows (`input_ids`, `labels`) on the right and adds the attention mask."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        return {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(i) for i in ids], 0),
            "labels": pad([f["labels"] for f in features], IGNORE_INDEX),
        }


def _tokenize(rows: Dataset, tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    out = []
    for i, row in enumerate(rows):
        prompt, completion = split_row(row)
        out.append(tokenize_example(tokenizer, prompt, completion, max_length, f"row {i}"))
    return out


def finetune(
    model,
    tokenizer,
    rows: Dataset | Sequence[Mapping[str, list[int]]],
    output_dir: str | Path,
    *,
    epochs: float = 5.0,
    learning_rate: float = 1e-5,
    batch_size: int = 8,
    grad_accum: int = 4,
    max_length: int = 512,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.2,
    seed: int = 0,
    save: bool = True,
    checkpoint_steps: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **training_args: Any,
):
    """Full-parameter SFT on `rows`, loss on answer tokens only.

    `rows`: lune_hf rows (``prompt`` / ``completion``, tokenised here) or tokenised examples (``input_ids`` /
    ``labels``, e.g. :meth:`lune_hf.tofu.template.TofuTemplate.encode_rows`: open-unlearning's tokens).

    TOFU's recipe: 5 epochs, lr 1e-5, effective batch 32, weight decay 0.01, one epoch of warm-up (20% of 5).
    Saves the model and tokenizer to `output_dir` when `save`. Returns the trained model (in eval mode).

    `checkpoint_steps`: save a resumable checkpoint (weights, optimizer, scheduler, RNG states) under
    `output_dir/checkpoint-N` every that many optimizer steps, and resume from the last one found there: a fine-tuning
    stopped part-way (killed, out of time) goes on where it stopped and ends with the same weights. The checkpoints
    are deleted once the model is saved.
    """
    ensure_pad_token(tokenizer)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    examples = _tokenize(rows, tokenizer, max_length) if isinstance(rows, Dataset) else list(rows)
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=5,
        **_checkpointing(checkpoint_steps),
        report_to="none",
        seed=seed,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        **training_args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=SftCollator(tokenizer.pad_token_id), callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=_last_checkpoint(output_dir, checkpoint_steps))
    model = trainer.model
    model.eval()
    if save:
        model.save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
    _drop_checkpoints(output_dir, checkpoint_steps)
    return model


def unlearn(
    model,
    tokenizer,
    forget: Dataset,
    retain: Dataset | None,
    objective: str,
    output_dir: str | Path,
    *,
    refusals: Sequence[str] | None = None,
    epochs: float = 5.0,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_length: int = 512,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    checkpoint_steps: int | None = None,
):
    """Unlearn `forget` (lune_hf rows) with `objective` via :class:`lune_hf.LuneTrainer`; save the adapter.

    Settings come from :data:`OBJECTIVE_SETTINGS` (learning rate, beta, whether the retain set is used),
    updated with `overrides` (any `LuneConfig` field, plus ``retain``). `checkpoint_steps`: as in :func:`finetune`
    (resumable checkpoints, resumed from, deleted at the end). Returns the trained `PeftModel`.
    """
    from ..config import LuneConfig
    from ..trainer import LuneTrainer

    settings = {**OBJECTIVE_SETTINGS.get(objective, {}), **(overrides or {})}
    use_retain = bool(settings.pop("retain", True)) and retain is not None
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "objective": objective,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "max_length": max_length,
        "refusals": list(refusals) if refusals else None,
        "retain_loss": "nll" if use_retain else "none",
        "report_to": "none",
        "seed": seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "disable_tqdm": False,
        # A benchmark row is a fixed recipe (its epochs), comparable across objectives: no checks, so no stopping
        # on the outcome, no step floor and no restoring of an earlier adapter, unless the row asks for them
        # (`name[stop_when_forgotten=true,forget_eval_steps=...]`).
        "stop_when_forgotten": False,
        "forget_eval_steps": 0,
        **_checkpointing(checkpoint_steps),
    }
    config = LuneConfig(**(values | settings))  # the overrides win, e.g. num_train_epochs or retain_loss="kl"
    trainer = LuneTrainer(model, config, train_dataset=forget, retain_dataset=retain if use_retain else None,
                          processing_class=tokenizer, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=_last_checkpoint(output_dir, checkpoint_steps))
    trainer.save_model()
    _drop_checkpoints(output_dir, checkpoint_steps)
    trainer.model.eval()
    return trainer.model


def _checkpointing(checkpoint_steps: int | None) -> dict[str, Any]:
    """TrainingArguments of a run that keeps one resumable checkpoint every `checkpoint_steps` (None: none)."""
    if not checkpoint_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": checkpoint_steps, "save_total_limit": 1}


def _last_checkpoint(output_dir: str | Path, checkpoint_steps: int | None) -> str | None:
    """The checkpoint a checkpointed run resumes from: the last one in `output_dir`, if any."""
    last = get_last_checkpoint(str(output_dir)) if checkpoint_steps and Path(output_dir).is_dir() else None
    if last is not None:
        logger.info("resuming from %s", last)
    return last


def _drop_checkpoints(output_dir: str | Path, checkpoint_steps: int | None) -> None:
    """Delete a finished run's checkpoints (its final weights are saved beside them)."""
    if checkpoint_steps:
        for folder in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(folder)
