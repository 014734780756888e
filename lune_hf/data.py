"""Forget and retain data: validation, tokenisation with prompt masking, pairing and collation.

Rows follow TRL's conventions:

* standard: ``{"prompt": str, "completion": str}`` (forget rows may add ``"replacement": str``);
* conversational: ``{"prompt": [messages], "completion": [messages]}`` or ``{"messages": [messages]}`` (the
  last assistant message is the completion), rendered with the tokenizer's chat template;
* already tokenised: ``{"input_ids": [...], "labels": [...]}`` with the prompt labelled -100, as an ordinary
  `Trainer` script prepares them (the prompt is the part before the first label).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .objectives import IGNORE_INDEX

FORGET_PREFIX = "forget"
REPLACEMENT_PREFIX = "replacement"
RETAIN_PREFIX = "retain"
_DATA_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def default_refusals() -> list[str]:
    """Refusal sentences shipped with the package (one per line)."""
    text = resources.files("lune_hf").joinpath("resources/refusals.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_rows(source: str | Path, split: str = "train") -> Dataset:
    """Load a JSON / JSONL / CSV / Parquet file, a folder of them, or a Hub dataset id with `datasets`."""
    path = Path(source)
    if path.is_file():
        kind = _DATA_EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_DATA_EXTENSIONS)}.")
        return load_dataset(kind, data_files=str(path), split="train")
    return load_dataset(str(source), split=split)


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the rows (canonical JSON): identifies a data set without revealing its text."""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()


def is_conversational(row: dict[str, Any]) -> bool:
    return "messages" in row or isinstance(row.get("prompt"), list)


def is_tokenized(columns) -> bool:
    return "input_ids" in columns and "labels" in columns and "prompt" not in columns


def validate_columns(dataset: Dataset, name: str, tokenized_ok: bool = True) -> None:
    """Fail early, naming the missing column and the ones present."""
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"The {name} set is empty: give at least one row with `prompt` and `completion`.")
    columns = set(dataset.column_names)
    if "messages" in columns or (tokenized_ok and is_tokenized(columns)):
        return
    missing = [c for c in ("prompt", "completion") if c not in columns]
    if missing:
        raise ValueError(
            f"The {name} set has no column {', '.join(repr(m) for m in missing)}; columns present: "
            f"{sorted(columns)}. Rows need `prompt` and `completion` (or conversational `messages`)."
        )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a pad token one (its EOS, else UNK), as is usual for causal LMs."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ValueError("The tokenizer has no pad, EOS or UNK token; set `tokenizer.pad_token` first.")


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def split_row(row: dict[str, Any]) -> tuple[Any, Any]:
    """(prompt, completion) of a row in any supported format."""
    if "messages" in row:
        messages = row["messages"]
        return messages[:-1], messages[-1:]
    return row["prompt"], row["completion"]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> list[int]:
    """Token ids of a prompt, standard or conversational (with the generation prompt)."""
    if isinstance(prompt, list):
        return _chat_ids(tokenizer, prompt, generation_prompt=True)
    return list(tokenizer(prompt)["input_ids"])


def completion_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any) -> list[int]:
    """Token ids of the answer alone, ending with EOS for standard rows."""
    if isinstance(prompt, list):
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        head = _chat_ids(tokenizer, prompt, generation_prompt=True)
        full = _chat_ids(tokenizer, prompt + completion, generation_prompt=False)
        if full[: len(head)] != head:
            raise ValueError("The chat template renders the prompt differently once the answer follows it.")
        return full[len(head):]
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def split_tokenized(row: dict[str, Any], where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a tokenised row: the prompt is everything before the first label."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    if len(ids) != len(labels):
        raise ValueError(f"{where}: input_ids has {len(ids)} tokens but labels {len(labels)}.")
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if start is None:
        raise ValueError(f"{where}: every label is -100, so the row has no answer to train on.")
    return ids[:start], ids[start:]


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any, max_length: int, where: str
) -> dict[str, list[int]]:
    """`input_ids` and `labels` (prompt masked with -100) of one prompt/answer pair, cut to `max_length`."""
    return pack_example(prompt_ids(tokenizer, prompt), completion_ids(tokenizer, prompt, completion), max_length,
                        where)


def pack_example(head: list[int], tail: list[int], max_length: int, where: str) -> dict[str, list[int]]:
    """Prompt ids + answer ids into `input_ids` / `labels`, the answer cut so the whole fits `max_length`."""
    if not tail:
        raise ValueError(f"{where}: the answer is empty.")
    if len(head) >= max_length:
        raise ValueError(
            f"{where}: the prompt has {len(head)} tokens, so with max_length={max_length} nothing of its answer "
            "would be trained on. Shorten the prompt or raise max_length."
        )
    tail = tail[: max_length - len(head)]
    return {"input_ids": head + tail, "labels": [IGNORE_INDEX] * len(head) + tail}


def _prefixed(prefix: str, example: dict[str, list[int]]) -> dict[str, list[int]]:
    return {f"{prefix}_{key}": value for key, value in example.items()}


def pick_refusal(refusals: Sequence[str], index: int) -> str:
    """Deterministic refusal for a row: the same row always gets the same sentence."""
    return refusals[index % len(refusals)]


class UnlearningDataset(torch.utils.data.Dataset):
    """Tokenised forget rows, each paired with a retain row that changes from epoch to epoch.

    Forget row ``i`` in epoch ``e`` is paired with retain row ``order[(i + e * n_forget) % n_retain]`` where
    ``order`` is a permutation fixed by the seed: every retain row is used in turn, and the batches depend
    only on the seed and the epoch, not on batch size, accumulation steps or number of processes.
    """

    def __init__(self, forget: list[dict[str, list[int]]], retain: list[dict[str, list[int]]] | None, seed: int = 0):
        self.forget = forget
        self.retain = retain
        self.epoch = 0
        self._order = (
            torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed)).tolist() if retain else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = dict(self.forget[i])
        if self.retain:
            item |= self.retain[self._order[(i + self.epoch * len(self.forget)) % len(self.retain)]]
        return item


def _tokenize_rows(rows: Dataset, name: str, convert) -> list[dict[str, list[int]]]:
    rows_iter = tqdm(rows, desc=f"tokenising {name} set", disable=len(rows) < 1000)
    return [convert(i, row) for i, row in enumerate(rows_iter)]


def build_unlearning_dataset(
    forget: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    uses_answer: bool,
    uses_replacement: bool,
    refusals: Sequence[str],
    replacement_column: str | None = "replacement",
    retain: Dataset | None = None,
    seed: int = 0,
) -> UnlearningDataset:
    """Tokenise the forget set (true answer and/or replacement) and the retain set, prompt tokens masked."""
    validate_columns(forget, "forget")
    if retain is not None:
        validate_columns(retain, "retain")
    use_column = replacement_column is not None and replacement_column in forget.column_names

    def pair(row: dict[str, Any], where: str) -> tuple[Any, list[int], list[int]]:
        """(prompt, prompt ids, answer ids) of a row in any supported format."""
        if is_tokenized(row):
            head, tail = split_tokenized(row, where)
            return "", head, tail
        prompt, completion = split_row(row)
        return prompt, prompt_ids(tokenizer, prompt), completion_ids(tokenizer, prompt, completion)

    def forget_example(i: int, row: dict[str, Any]) -> dict[str, list[int]]:
        where = f"forget row {i}"
        prompt, head, tail = pair(row, where)
        out: dict[str, list[int]] = {}
        if uses_answer:
            out |= _prefixed(FORGET_PREFIX, pack_example(head, tail, max_length, where))
        if uses_replacement:
            replacement = (row.get(replacement_column) if use_column else None) or pick_refusal(refusals, i)
            out |= _prefixed(REPLACEMENT_PREFIX, pack_example(head, completion_ids(tokenizer, prompt, replacement),
                                                              max_length, f"{where} (replacement)"))
        return out

    def retain_example(i: int, row: dict[str, Any]) -> dict[str, list[int]]:
        _, head, tail = pair(row, f"retain row {i}")
        return _prefixed(RETAIN_PREFIX, pack_example(head, tail, max_length, f"retain row {i}"))

    return UnlearningDataset(
        _tokenize_rows(forget, "forget", forget_example),
        _tokenize_rows(retain, "retain", retain_example) if retain is not None else None,
        seed,
    )


def pad(sequences: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to one length on the given side."""
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if side == "right":
            out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        else:
            out[i, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
    return out


@dataclass
class UnlearningCollator:
    """Pads each group (forget answer, replacement, retain) on its own: `<group>_input_ids/attention_mask/labels`."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for prefix in (FORGET_PREFIX, REPLACEMENT_PREFIX, RETAIN_PREFIX):
            key = f"{prefix}_input_ids"
            if key not in features[0]:
                continue
            ids = [f[key] for f in features]
            batch[key] = pad(ids, self.pad_token_id)
            batch[f"{prefix}_attention_mask"] = pad([[1] * len(s) for s in ids], 0)
            batch[f"{prefix}_labels"] = pad([f[f"{prefix}_labels"] for f in features], IGNORE_INDEX)
        return batch
