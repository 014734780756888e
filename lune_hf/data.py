"""Forget and retain data: validation, tokenisation with prompt masking, pairing and collation.

Rows follow TRL's conventions:

* standard: ``{"prompt": str, "completion": str}`` (forget rows may add ``"replacement": str``);
* conversational: ``{"prompt": [messages], "completion": [messages]}`` or ``{"messages": [messages]}`` (the
  last assistant message is the completion), rendered with the tokenizer's chat template;
* already tokenised: ``{"input_ids": [...], "labels": [...]}`` with the prompt labelled -100, as an ordinary
  `Trainer` script prepares them (the prompt is the part before the first label); without ``labels`` every non-pad
  token is an answer token, as `DataCollatorForLanguageModeling` would label them;
* raw text: ``{"text": str}`` (a passage or document). Tokenised rows without a prompt part (run_clm style:
  ``labels == input_ids``) are raw text too. To forget one, its first tokens become the prompt and the rest the
  continuation to forget (MUSE's verbatim setup, `split_text`); objectives that need only the original text train
  on all of it, and a retain text is trained on whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
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

logger = logging.getLogger(__name__)

FORGET_PREFIX = "forget"
REPLACEMENT_PREFIX = "replacement"
RETAIN_PREFIX = "retain"
RETAIN_REFUSAL_PREFIX = "retain_refusal"  # a retain prompt with a refusal answer (answer preservation)
GROUPS = (FORGET_PREFIX, REPLACEMENT_PREFIX, RETAIN_PREFIX, RETAIN_REFUSAL_PREFIX)
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
        check_data_file(path)
        return load_dataset(kind, data_files=str(path), split="train")
    if path.suffix.lower() in _DATA_EXTENSIONS:
        raise FileNotFoundError(f"{path}: no such file (a data file, or a Hub dataset id without an extension).")
    return load_dataset(str(source), split=split)


def check_data_file(path: Path) -> None:
    """Read a JSON / JSONL / CSV file the way `datasets` will, and name the file and line of the first problem
    (empty file, bad UTF-8, a line that is not JSON, a CSV line with the wrong number of fields)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
                         "re-save the file as UTF-8.") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: the file is empty (no rows).")
    if suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith(("[", "{\"data"))):
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not a JSON object ({err.msg}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object with columns.")
    elif suffix == ".csv":
        import csv

        rows = list(csv.reader(lines))
        width = len(rows[0])
        for number, row in enumerate(rows[1:], 2):
            if row and len(row) != width:
                raise ValueError(f"{path}, line {number}: {len(row)} fields where the header has {width} "
                                 f"({', '.join(rows[0])}); quote fields that contain commas.")


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the rows (canonical JSON): identifies a data set without revealing its text."""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()


def is_conversational(row: dict[str, Any]) -> bool:
    return "messages" in row or isinstance(row.get("prompt"), list)


ROW_FORMATS = ("`prompt` + `completion`, conversational `messages`, raw `text`, or tokenised `input_ids` "
               "(with or without `labels`)")
DEFAULT_TEXT_PREFIX_TOKENS = 32
# Raw-text rows are evaluated on at most this many tokens of their continuation (what one greedy answer covers).
TEXT_EVAL_TOKENS = 64


def row_format(columns) -> str | None:
    """The format of rows with these columns: `prompt`, `messages`, `tokenised`, `text`, or None."""
    columns = set(columns)
    if "prompt" in columns or "completion" in columns:
        return "prompt"
    if "messages" in columns:
        return "messages"
    if "input_ids" in columns:
        return "tokenised"
    if "text" in columns:
        return "text"
    return None


def validate_columns(dataset: Dataset, name: str) -> None:
    """Fail early, naming the missing column and the ones present."""
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"The {name} set is empty: give at least one row ({ROW_FORMATS}).")
    columns = set(dataset.column_names)
    kind = row_format(columns)
    if kind is None:
        raise ValueError(f"The {name} set has none of the columns lune-hf reads; columns present: {sorted(columns)}. "
                         f"Rows need {ROW_FORMATS}.")
    missing = [c for c in ("prompt", "completion") if kind == "prompt" and c not in columns]
    if missing:
        raise ValueError(
            f"The {name} set has no column {', '.join(repr(m) for m in missing)}; columns present: "
            f"{sorted(columns)}. Rows need {ROW_FORMATS}."
        )
    for column in {"prompt": ("prompt", "completion"), "text": ("text",)}.get(kind, ()):
        for i, value in enumerate(dataset[column]):
            if not isinstance(value, (str, list)) or (kind == "text" and not str(value).strip()):
                raise ValueError(f"{name} row {i}: `{column}` is {type(value).__name__} {value!r}; it must be "
                                 f"{'non-empty text' if kind == 'text' else 'text (or a list of chat messages)'}.")


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
    """(prompt ids, answer ids) of a tokenised row: the prompt is everything before the first label, the answer runs
    to the last label (trailing padding dropped). Without `labels`, every token the attention mask keeps is answer."""
    ids = list(row["input_ids"])
    mask = row.get("attention_mask")
    labels = row.get("labels")
    if labels is None:
        return [], [t for t, m in zip(ids, mask or [1] * len(ids), strict=False) if m]
    labels = list(labels)
    if len(ids) != len(labels):
        raise ValueError(f"{where}: input_ids has {len(ids)} tokens but labels {len(labels)}.")
    kept = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not kept:
        raise ValueError(f"{where}: every label is -100, so the row has no answer to train on.")
    return ids[: kept[0]], ids[kept[0]: kept[-1] + 1]


def split_text(ids: list[int], prefix_tokens: int, where: str) -> tuple[list[int], list[int]]:
    """A raw text's prompt (its first `prefix_tokens` tokens, at most half of it) and its continuation."""
    if len(ids) < 2:
        raise ValueError(f"{where}: the text has {len(ids)} token(s); it needs at least 2 (a prompt and a "
                         "continuation).")
    cut = max(1, min(prefix_tokens, len(ids) // 2))
    return ids[:cut], ids[cut:]


@dataclass
class RowParts:
    """One row as token ids: `prompt` (text or messages; "" for tokenised and raw-text rows), `head` (prompt ids),
    `tail` (answer ids) and `text` (True for raw text: `head` is then its first tokens, `tail` the continuation)."""

    prompt: Any
    head: list[int]
    tail: list[int]
    text: bool = False

    @property
    def full(self) -> list[int]:
        return self.head + self.tail


def row_parts(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, where: str,
              prefix_tokens: int = DEFAULT_TEXT_PREFIX_TOKENS) -> RowParts:
    """Token ids of a row in any supported format (the one place that reads the formats)."""
    kind = row_format(row)
    if kind in ("prompt", "messages"):
        prompt, completion = split_row(row)
        for column, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, (str, list)):
                raise ValueError(f"{where}: `{column}` is {type(value).__name__} {value!r}; it must be text (or a "
                                 "list of chat messages).")
        return RowParts(prompt, prompt_ids(tokenizer, prompt), completion_ids(tokenizer, prompt, completion))
    if kind == "tokenised":
        head, tail = split_tokenized(row, where)
        if head:
            return RowParts("", head, tail)
        ids = tail
    else:
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{where}: `text` is {row.get('text')!r}; it must be non-empty text.")
        ids = list(tokenizer(row["text"])["input_ids"])
    return RowParts("", *split_text(ids, prefix_tokens, where), text=True)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any, max_length: int, where: str,
    answer_tokens: int | None = None,
) -> dict[str, list[int]]:
    """`input_ids` and `labels` (prompt masked with -100) of one prompt/answer pair, cut to `max_length` (and the
    answer to its first `answer_tokens` tokens when given)."""
    tail = completion_ids(tokenizer, prompt, completion)
    return pack_example(prompt_ids(tokenizer, prompt), tail[:answer_tokens] if answer_tokens else tail, max_length,
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


def _warn_cut(examples: list[dict[str, list[int]]], name: str, max_length: int) -> None:
    """One warning naming how many rows of a set had their answer cut by `max_length`."""
    cut = sum(1 for e in examples for k, v in e.items() if k.endswith("_input_ids") and len(v) >= max_length)
    if cut:
        logger.warning("%d answer(s) of the %s set were cut to fit max_length=%d tokens; raise max_length to train "
                       "on the whole answers.", cut, name, max_length)


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


def _tokenize_rows(rows: Dataset, name: str, convert, max_length: int) -> list[dict[str, list[int]]]:
    rows_iter = tqdm(rows, desc=f"tokenising {name} set", disable=len(rows) < 1000)
    examples = [convert(i, row) for i, row in enumerate(rows_iter)]
    _warn_cut(examples, name, max_length)
    return examples


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
    text_prefix_tokens: int = DEFAULT_TEXT_PREFIX_TOKENS,
    forget_name: str = "forget",
    retain_refusals: Sequence[str] | None = None,
) -> UnlearningDataset:
    """Tokenise the forget set (true answer and/or replacement) and the retain set, prompt tokens masked.

    Raw-text forget rows train on their continuation after the first `text_prefix_tokens` tokens when a replacement
    is trained on, on their whole text otherwise; raw-text retain rows on their whole text. With `retain_refusals`,
    each retain row also gets a refusal answer to its prompt (`retain_refusal_*`, for answer preservation)."""
    validate_columns(forget, forget_name)
    if retain is not None:
        validate_columns(retain, "retain")
    use_column = replacement_column is not None and replacement_column in forget.column_names

    def forget_example(i: int, row: dict[str, Any]) -> dict[str, list[int]]:
        where = f"{forget_name} row {i}"
        parts = row_parts(row, tokenizer, where, text_prefix_tokens)
        out: dict[str, list[int]] = {}
        if uses_answer:
            head, tail = (parts.full[:1], parts.full[1:]) if parts.text and not uses_replacement else (parts.head,
                                                                                                       parts.tail)
            out |= _prefixed(FORGET_PREFIX, pack_example(head, tail, max_length, where))
        if uses_replacement:
            replacement = (row.get(replacement_column) if use_column else None) or pick_refusal(refusals, i)
            out |= _prefixed(REPLACEMENT_PREFIX, pack_example(
                parts.head, completion_ids(tokenizer, parts.prompt, replacement), max_length,
                f"{where} (replacement)"))
        return out

    return UnlearningDataset(
        _tokenize_rows(forget, forget_name, forget_example, max_length),
        tokenize_retain(retain, tokenizer, max_length, refusals=retain_refusals) if retain is not None else None,
        seed,
    )


def tokenize_retain(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                    name: str = "retain", refusals: Sequence[str] | None = None) -> list[dict[str, list[int]]]:
    """`retain_input_ids` / `retain_labels` of each row (raw text: the whole text is the answer), and with
    `refusals` also `retain_refusal_input_ids` / `retain_refusal_labels`: the row's prompt answered with a refusal."""
    validate_columns(rows, name)

    def example(i: int, row: dict[str, Any]) -> dict[str, list[int]]:
        where = f"{name} row {i}"
        parts = row_parts(row, tokenizer, where)
        head, tail = (parts.full[:1], parts.full[1:]) if parts.text else (parts.head, parts.tail)
        out = _prefixed(RETAIN_PREFIX, pack_example(head, tail, max_length, where))
        if refusals:
            if parts.text or not parts.head:
                raise ValueError(f"{where}: answer preservation (preserve_weight > 0) answers each retain prompt "
                                 "with a refusal, but this row has no prompt (raw text or token ids without a "
                                 "prompt). Give the retain set prompt/completion (or messages) rows, or set "
                                 "preserve_weight=0.")
            refusal = completion_ids(tokenizer, parts.prompt, pick_refusal(refusals, i))
            out |= _prefixed(RETAIN_REFUSAL_PREFIX, pack_example(parts.head, refusal, max_length,
                                                                 f"{where} (refusal)"))
        return out

    return _tokenize_rows(rows, name, example, max_length)


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


def pad_examples(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and `labels` of tokenised examples, right-padded to one length.

    >>> batch = pad_examples([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], 0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [5, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[-100, 6, 7], [5, -100, -100]])
    """
    return {
        "input_ids": pad([e["input_ids"] for e in examples], pad_token_id),
        "attention_mask": pad([[1] * len(e["input_ids"]) for e in examples], 0),
        "labels": pad([e["labels"] for e in examples], IGNORE_INDEX),
    }


@dataclass
class UnlearningCollator:
    """Pads each group (forget answer, replacement, retain) on its own: `<group>_input_ids/attention_mask/labels`."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for prefix in GROUPS:
            key = f"{prefix}_input_ids"
            if key not in features[0]:
                continue
            ids = [f[key] for f in features]
            batch[key] = pad(ids, self.pad_token_id)
            batch[f"{prefix}_attention_mask"] = pad([[1] * len(s) for s in ids], 0)
            batch[f"{prefix}_labels"] = pad([f[f"{prefix}_labels"] for f in features], IGNORE_INDEX)
        return batch
