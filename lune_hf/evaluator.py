"""`Evaluator`: forget / retain quality of a model, the one code path behind every number lune-hf reports.

`LuneTrainer`'s own checks, `ForgetRetainCallback` and `lune-hf eval` all call it, so a number means the same
everywhere. For each named set it generates greedy answers and scores the gold answers (teacher forcing),
then computes the metrics with the `evaluate` modules of `lune_hf.metrics`; results are keyed `<set>/<metric>`
(`forget/recalled`, `retain/rouge_l`, ...).

Under several processes each rank evaluates a shard of the rows; the per-row results are gathered in order and
every rank computes the same metrics, so the numbers equal a single-process run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset

from . import metrics as lune_metrics
from .data import (
    DEFAULT_TEXT_PREFIX_TOKENS,
    TEXT_EVAL_TOKENS,
    completion_ids,
    row_format,
    row_parts,
    split_row,
    validate_columns,
)
from .evaluation import GREEDY_PREFIX_TOKENS, generate_answers, greedy_prefix_share, score_and_match

GENERATION_METRICS = ("recalled", "exact_match", "contains", "rouge_l")
SCORING_METRICS = ("probability",)
METRICS = GENERATION_METRICS + SCORING_METRICS
DEFAULT_METRICS = ("recalled", "exact_match", "rouge_l", "probability")
# The `evaluate` module that computes each metric.
_MODULE_OF = {"recalled": "rouge_l", "rouge_l": "rouge_l", "exact_match": "exact_match",
              "contains": "exact_match", "probability": "probability"}
MAX_AUTO_NEW_TOKENS = 64
QUICK_ROWS = 16  # rows of a quick check (`Evaluator.greedy_prefix`)


def answer_text(completion: Any) -> str:
    """The gold answer of a row as plain text (conversational completions: the assistant message(s))."""
    if isinstance(completion, list):
        return " ".join(m["content"] for m in completion)
    return str(completion)


def spread_indices(n: int, max_rows: int | None) -> list[int]:
    """At most `max_rows` of the indices `0..n-1`, evenly spaced.

    >>> spread_indices(10, 4)
    [0, 3, 6, 9]
    >>> spread_indices(3, None)
    [0, 1, 2]
    """
    if max_rows is None or n <= max_rows:
        return list(range(n))
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}.")
    return sorted({round(i * (n - 1) / max(max_rows - 1, 1)) for i in range(max_rows)})


def spread_rows(rows: Dataset, max_rows: int | None) -> Dataset:
    """At most `max_rows` rows, evenly spaced over the set (so every part of a sorted set is represented)."""
    return rows if max_rows is None or len(rows) <= max_rows else rows.select(spread_indices(len(rows), max_rows))


def prompt_and_answer(row: dict[str, Any], tokenizer, where: str = "row",
                      prefix_tokens: int = DEFAULT_TEXT_PREFIX_TOKENS) -> tuple[Any, Any]:
    """(prompt, answer) of a row in any format. Tokenised rows are decoded back to text; a raw text is its first
    `prefix_tokens` tokens and the next `TEXT_EVAL_TOKENS` of its continuation, so ROUGE-L of the greedy answer
    measures verbatim continuation (MUSE's verbatim metric)."""
    if row_format(row) in ("prompt", "messages"):
        return split_row(row)
    parts = row_parts(row, tokenizer, where, prefix_tokens)
    tail = parts.tail[:TEXT_EVAL_TOKENS] if parts.text else parts.tail
    return tokenizer.decode(parts.head, skip_special_tokens=True), tokenizer.decode(tail, skip_special_tokens=True)


class Evaluator:
    """Forget / retain metrics of a model on named sets of rows.

    Args:
        sets: named sets, e.g. `{"forget": ..., "retain": ...}`; rows in any format `LuneTrainer` takes.
        tokenizer: the model's tokenizer (may be given later with `bind_tokenizer`).
        metrics: any of `recalled` (share of answers the model still gives: ROUGE-L recall >= 0.5),
            `exact_match`, `contains`, `rouge_l`, `probability`.
        max_rows: evaluate at most this many rows of each set, evenly spaced over it.
        max_new_tokens: length of the greedy answers; `None` = the longest gold answer of the set plus 4
            tokens, at most 64 (enough for `recalled`, cheap during training).
        batch_size: rows per forward pass.
        progress: show progress bars.
        text_prefix_tokens: raw-text rows: tokens of the text given as the prompt; the answer is what follows.

    Example:
        >>> evaluator = Evaluator({"forget": forget_rows, "retain": retain_rows}, tokenizer)  # doctest: +SKIP
        >>> evaluator.evaluate(model)  # doctest: +SKIP
        {'forget/recalled': 0.05, 'forget/exact_match': 0.0, ..., 'retain/probability': 0.93}
    """

    def __init__(
        self,
        sets: Mapping[str, Dataset],
        tokenizer=None,
        *,
        metrics: Sequence[str] = DEFAULT_METRICS,
        max_rows: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        progress: bool = False,
        text_prefix_tokens: int = DEFAULT_TEXT_PREFIX_TOKENS,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"Unknown metrics {unknown}; choose from {list(METRICS)}.")
        if not sets:
            raise ValueError("Give at least one set to evaluate.")
        self.sets = {}
        for name, rows in sets.items():
            validate_columns(rows, name)
            self.sets[name] = spread_rows(rows, max_rows)
        self.metrics = tuple(metrics)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.text_prefix_tokens = text_prefix_tokens
        self.tokenizer = tokenizer
        self._modules = {m: lune_metrics.load(m, keep_in_memory=True) for m in {_MODULE_OF[m] for m in self.metrics}}
        self._pairs: dict[str, tuple[list[Any], list[Any], int]] = {}
        # Per set, per row: what the last `evaluate` produced (`prediction`, `token_logprobs`).
        self.last_rows: dict[str, list[dict[str, Any]]] = {}

    def bind_tokenizer(self, tokenizer) -> None:
        if self.tokenizer is None:
            self.tokenizer = tokenizer

    def _rows_of(self, name: str) -> tuple[list[Any], list[Any], int]:
        """Prompts, answers and the greedy answer length of a set (computed once)."""
        if name not in self._pairs:
            pairs = [prompt_and_answer(row, self.tokenizer, f"{name} row {i}", self.text_prefix_tokens)
                     for i, row in enumerate(self.sets[name])]
            prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
            new_tokens = self.max_new_tokens
            if new_tokens is None:
                longest = max(len(completion_ids(self.tokenizer, p, a)) for p, a in pairs)
                new_tokens = min(longest + 4, MAX_AUTO_NEW_TOKENS)
            self._pairs[name] = (prompts, answers, new_tokens)
        return self._pairs[name]

    def prepare(self) -> None:
        """Tokenise the prompts and fix the answer lengths now (done once; `evaluate` calls it too)."""
        if self.tokenizer is None:
            raise ValueError("The Evaluator needs the model's tokenizer: pass `tokenizer=`.")
        for name in self.sets:
            self._rows_of(name)

    def evaluate(self, model) -> dict[str, float]:
        """`<set>/<metric>` for every set and metric; identical on every process. The per-row answers and
        log-probabilities stay in `last_rows` until the next call."""
        self.prepare()
        state = PartialState()
        results: dict[str, float] = {}
        for name in self.sets:
            prompts, answers, new_tokens = self._rows_of(name)
            with state.split_between_processes(list(range(len(prompts)))) as shard:
                local = self._evaluate_rows(model, [prompts[i] for i in shard], [answers[i] for i in shard],
                                            new_tokens)
            gathered = gather_object(local) if state.num_processes > 1 else local
            self.last_rows[name] = gathered
            results |= {f"{name}/{k}": v for k, v in self.compute(gathered, answers).items()}
        return results

    def _evaluate_rows(self, model, prompts: list[Any], answers: list[Any], new_tokens: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{} for _ in prompts]
        if not prompts:
            return rows
        if any(m in GENERATION_METRICS for m in self.metrics):
            generated = generate_answers(model, self.tokenizer, prompts, max_new_tokens=new_tokens,
                                         batch_size=self.batch_size, progress=self.progress)
            for row, text in zip(rows, generated, strict=True):
                row["prediction"] = text
        if "probability" in self.metrics:
            scored = score_and_match(model, self.tokenizer, prompts, answers, batch_size=self.batch_size,
                                     progress=self.progress)
            for row, (lp, hits) in zip(rows, scored, strict=True):
                row["token_logprobs"] = lp
                row["greedy_prefix"] = greedy_prefix_share(hits)
        return rows

    def greedy_prefix(self, model, name: str = "forget", max_rows: int | None = QUICK_ROWS) -> float:
        """Quick check (one teacher-forced pass over the first 16 answer tokens of at most `max_rows` evenly
        spaced rows, no generation): the mean share of each answer's first 16 tokens that a greedy answer would
        reproduce. 0 when every greedy answer starts differently (a refusal, say); it bounds `recalled` loosely
        from below (an answer can be reworded), so a drop says a full check may now find the set forgotten.
        Identical on every process."""
        self.prepare()
        prompts, answers, _ = self._rows_of(name)
        picked = spread_indices(len(prompts), max_rows)
        state = PartialState()
        with state.split_between_processes(picked) as shard:
            scored = score_and_match(model, self.tokenizer, [prompts[i] for i in shard], [answers[i] for i in shard],
                                     batch_size=self.batch_size, answer_tokens=GREEDY_PREFIX_TOKENS)
            local = [greedy_prefix_share(hits) for _, hits in scored]
        shares = gather_object(local) if state.num_processes > 1 else local
        return sum(shares) / len(shares) if shares else 0.0

    def last_greedy_prefix(self, name: str = "forget", max_rows: int | None = QUICK_ROWS) -> float | None:
        """`greedy_prefix` on the same rows, from the last `evaluate` (None when it did not score the answers)."""
        rows = self.last_rows.get(name, [])
        shares = [rows[i]["greedy_prefix"] for i in spread_indices(len(rows), max_rows) if "greedy_prefix" in rows[i]]
        return sum(shares) / len(shares) if shares else None

    def compute(self, rows: list[dict[str, Any]], answers: Sequence[Any]) -> dict[str, float]:
        """Metrics from per-row predictions / log-probabilities (pure: no model involved)."""
        references = [answer_text(a).strip() for a in answers]
        predictions = [r.get("prediction", "") for r in rows]
        out: dict[str, float] = {}
        if "exact_match" in self._modules:
            scores = self._modules["exact_match"].compute(predictions=predictions, references=references)
            out |= {k: float(scores[k]) for k in ("exact_match", "contains") if k in self.metrics}
        if "rouge_l" in self._modules:
            scores = self._modules["rouge_l"].compute(predictions=predictions, references=references)
            out |= {k: float(scores[k]) for k in ("recalled", "rouge_l") if k in self.metrics}
        if "probability" in self._modules:
            scores = self._modules["probability"].compute(token_logprobs=[r["token_logprobs"] for r in rows])
            out["probability"] = float(scores["probability"])
        return {m: out[m] for m in self.metrics}
