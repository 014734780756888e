"""Batched evaluation routines: teacher-forced answer scoring and greedy generation.

Both work on any causal LM (a `PeftModel` included) and any tokenizer; prompts may be strings or
chat message lists. Generation pads on the left and runs `model.generate` once per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .data import pad, pad_examples, prompt_ids, tokenize_example
from .logits import answer_logits
from .objectives import greedy_matches, token_logprobs


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@contextlib.contextmanager
def eval_mode(model):
    """Put the model in eval mode for the duration, then restore its training flag."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


GREEDY_PREFIX_TOKENS = 16


def greedy_prefix_share(matches: Sequence[bool], max_tokens: int = GREEDY_PREFIX_TOKENS) -> float:
    """Share of an answer's first `max_tokens` tokens that greedy decoding reproduces from its start.

    `matches`: per answer token, whether it is the model's most likely next token under teacher forcing. The
    leading run of matches is exactly what a greedy answer would copy; the first miss ends it.

    >>> greedy_prefix_share([True, True, False, True])
    0.5
    >>> greedy_prefix_share([True] * 40, max_tokens=16)
    1.0
    >>> greedy_prefix_share([])
    0.0
    """
    window = list(matches)[:max_tokens]
    if not window:
        return 0.0
    leading = next((i for i, hit in enumerate(window) if not hit), len(window))
    return leading / len(window)


@torch.no_grad()
def score_examples(
    model, examples: Sequence[dict[str, list[int]]], pad_token_id: int, *, batch_size: int = 32, progress: bool = False
) -> list[tuple[list[float], list[bool]]]:
    """Per tokenised example (`input_ids`, `labels` with -100 outside the answer), from one teacher-forced pass: the
    answer tokens' log-probabilities and, per token, whether it is the model's greedy choice."""
    device = _device(model)
    out: list[tuple[list[float], list[bool]]] = []
    with eval_mode(model):
        for sl in tqdm(list(_batches(len(examples), batch_size)), desc="scoring", disable=not progress):
            batch = {k: v.to(device) for k, v in pad_examples(examples[sl], pad_token_id).items()}
            logits, labels = answer_logits(model, **batch)
            logps, answer_mask = token_logprobs(logits, labels)
            greedy, _ = greedy_matches(logits, labels)
            for row, hits, row_mask in zip(logps.cpu(), greedy.cpu(), answer_mask.cpu(), strict=True):
                out.append((row[row_mask].tolist(), hits[row_mask].tolist()))
    return out


def score_and_match(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    answers: Sequence[Any],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    progress: bool = False,
    answer_tokens: int | None = None,
) -> list[tuple[list[float], list[bool]]]:
    """Per row, from one teacher-forced pass: the answer tokens' log-probabilities and, per token, whether it is
    the model's greedy choice (see :func:`greedy_prefix_share`). `answer_tokens`: score only the first N answer
    tokens (a shorter, cheaper pass)."""
    examples = [
        tokenize_example(tokenizer, p, a, max_length, f"row {i}", answer_tokens)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
    ]
    return score_examples(model, examples, tokenizer.pad_token_id, batch_size=batch_size, progress=progress)


def score_answers(model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Any], answers: Sequence[Any], *,
                  batch_size: int = 32, max_length: int = 512, progress: bool = False) -> list[list[float]]:
    """Per-token log-probabilities of each answer given its prompt (teacher forcing)."""
    scored = score_and_match(model, tokenizer, prompts, answers, batch_size=batch_size, max_length=max_length,
                             progress=progress)
    return [logps for logps, _ in scored]


def generate_answers(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to each prompt, decoded without special tokens."""
    return generate_from_ids(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts],
                             max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)


@torch.no_grad()
def generate_from_ids(
    model,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[list[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: bool = False,
    clean_up_tokenization_spaces: bool | None = None,
) -> list[str]:
    """Greedy answers to tokenised prompts (left-padded batches, stopping at EOS), decoded without special tokens
    and stripped. `clean_up_tokenization_spaces`: passed to the decoder (None: the tokenizer's setting)."""
    device = _device(model)
    answers: list[str] = []
    eos = tokenizer.eos_token_id
    decode_args = {} if clean_up_tokenization_spaces is None else {
        "clean_up_tokenization_spaces": clean_up_tokenization_spaces}
    with eval_mode(model):
        for sl in tqdm(list(_batches(len(encoded), batch_size)), desc="generating", disable=not progress):
            chunk = encoded[sl]
            ids = pad(chunk, tokenizer.pad_token_id, side="left").to(device)
            mask = pad([[1] * len(c) for c in chunk], 0, side="left").to(device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
            new_tokens = generated[:, ids.shape[1]:]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True,
                                                                     **decode_args))
    return answers
