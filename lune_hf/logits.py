"""Causal-LM logits at the positions that predict answer tokens.

Prompt positions never enter an answer's loss or score, so the lm_head (a ``hidden x vocabulary`` matmul,
forward and backward) need not run there. Used by the trainer's losses and by teacher-forced scoring.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel

from .objectives import IGNORE_INDEX


def answer_window(labels: torch.Tensor) -> int:
    """How many trailing positions hold every logit that predicts an answer token of the batch.

    The logit at position ``t`` predicts the label at ``t + 1``, so the window starts one position before the
    earliest answer token of any row (prompt tokens carry the ignore index).
    """
    answer = labels != IGNORE_INDEX
    rows = answer.any(-1)
    if not bool(rows.any()):
        return 1
    first = int(answer[rows].int().argmax(-1).min())
    return min(labels.shape[1] - first + 1, labels.shape[1])


@functools.cache
def _forward_accepts_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _inner_model(model) -> torch.nn.Module:
    """The transformers model under DDP / FSDP / DeepSpeed / torch.compile wrappers and a peft adapter."""
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    return model.get_base_model() if isinstance(model, PeftModel) else model


def answer_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM logits at the positions that predict answer tokens, with the labels cut to match.

    The lm_head runs only over the last :func:`answer_window` positions, through transformers'
    ``logits_to_keep``. Every loss or score computed from the result equals the one from full logits; models
    whose ``forward`` has no ``logits_to_keep`` get full logits.
    """
    kwargs: dict[str, Any] = {}
    if _forward_accepts_logits_to_keep(type(_inner_model(model))):
        keep = answer_window(labels)
        kwargs["logits_to_keep"] = keep
        labels = labels[:, -keep:]
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.logits, labels
