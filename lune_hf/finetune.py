"""Plain supervised fine-tuning: AdamW on whatever requires a gradient, over (prompt, answer) rows.

Used to make the synthetic model memorise its facts (`lune_hf.testing.synthetic`) and by the relearning attack
of `lune-hf verify` (`lune_hf.probes.relearn_probe`). Not an unlearning method: `LuneTrainer` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .data import pad_examples, tokenize_example


def fine_tune(
    model,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[Any, Any]],
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    max_length: int = 128,
    warmup_share: float = 0.1,
) -> float:
    """`steps` AdamW steps of answer-only NLL on random batches of `rows` (one-cycle schedule); returns the last
    loss. The model is left in eval mode.

    Args:
        model: any causal LM; only its parameters with `requires_grad` change (a `PeftModel`: the adapter).
        tokenizer: its tokenizer (with a pad token).
        rows: (prompt, answer) pairs, standard or conversational.
        steps, lr, batch_size, seed: the schedule; batches are drawn with replacement from a seeded generator.
    """
    if not rows:
        raise ValueError("fine_tune needs at least one row.")
    examples = [tokenize_example(tokenizer, p, a, max_length, f"row {i}") for i, (p, a) in enumerate(rows)]
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup_share)
    device = next(model.parameters()).device
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(examples), (min(batch_size, len(examples)),), generator=gen).tolist()
        batch = {k: v.to(device) for k, v in pad_examples([examples[i] for i in idx], tokenizer.pad_token_id).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())
