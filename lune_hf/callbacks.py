"""`ForgetRetainCallback`: forget and retain quality measured while training runs, with early stopping.

It works with any `transformers.Trainer`. At the start, every `eval_steps` steps and at the end it
generates greedy answers and scores the gold answers on each evaluation set, computes metrics with
the `evaluate` modules of `lune_hf.metrics`, and logs them as `<set>/<metric>` (for example
`forget/rouge_l`, `retain/exact_match`) through the Trainer, so every `report_to` tracker gets them.

Under multi-process training each rank evaluates a shard of the rows; the per-row results are gathered
in order and every rank computes the same metrics, so the numbers equal a single-process run and all
ranks take the same early-stop decision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback

from . import metrics as lune_metrics
from .data import split_row, validate_columns
from .evaluation import generate_answers, score_answers
from .snapshot import load_trainable_state, trainable_state

logger = logging.getLogger(__name__)

GENERATION_METRICS = ("exact_match", "contains", "rouge_l")
SCORING_METRICS = ("probability",)
DEFAULT_METRICS = ("exact_match", "rouge_l", "probability")


def _answer_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: the assistant message(s)
        return " ".join(m["content"] for m in completion)
    return str(completion)


class ForgetRetainCallback(TrainerCallback):
    """Evaluate forget / retain sets during training; optionally stop early.

    Args:
        forget_dataset: rows whose answers must disappear (`prompt` / `completion` or `messages`).
        retain_dataset: rows whose answers must survive.
        extra_sets: further named sets, e.g. `{"paraphrased_forget": ..., "neighbour": ...}`.
        eval_steps: evaluate every N optimizer steps (and always at the start and the end).
        metrics: any of `exact_match`, `contains`, `rouge_l`, `probability`.
        stop_metric: the metric the early-stop rules watch.
        forget_target: stop as soon as `forget/<stop_metric>` is at or below this value.
        retain_floor: stop when `retain/<stop_metric>` falls below this fraction of its value at the start.
        restore_on_floor: when the retain floor is crossed, put back the adapter weights of the last
            evaluation that was above the floor (the model you save is the last good one).
        max_rows: evaluate at most this many rows of each set (the first ones).
        trainer: the Trainer to log through (`LuneTrainer` binds itself; for a plain `Trainer` pass it or
            call `callback.bind(trainer)`).
    """

    def __init__(
        self,
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        *,
        extra_sets: Mapping[str, Dataset] | None = None,
        tokenizer=None,
        eval_steps: int = 50,
        metrics: Sequence[str] = DEFAULT_METRICS,
        stop_metric: str = "rouge_l",
        forget_target: float | None = None,
        retain_floor: float | None = None,
        restore_on_floor: bool = True,
        max_rows: int | None = 200,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        progress: bool = False,
        trainer=None,
    ) -> None:
        unknown = [m for m in metrics if m not in GENERATION_METRICS + SCORING_METRICS]
        if unknown:
            raise ValueError(f"Unknown metrics {unknown}; choose from {GENERATION_METRICS + SCORING_METRICS}.")
        if stop_metric not in metrics and (forget_target is not None or retain_floor is not None):
            raise ValueError(f"stop_metric {stop_metric!r} must be one of the metrics {list(metrics)}.")
        if retain_floor is not None and retain_dataset is None:
            raise ValueError("retain_floor needs a retain_dataset to watch.")
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be at least 1, got {eval_steps}.")
        self.sets: dict[str, Dataset] = {"forget": forget_dataset}
        if retain_dataset is not None:
            self.sets["retain"] = retain_dataset
        self.sets.update(extra_sets or {})
        for name, rows in self.sets.items():
            validate_columns(rows, name, tokenized_ok=False)
            if max_rows is not None and len(rows) > max_rows:
                self.sets[name] = rows.select(range(max_rows))
        self.tokenizer = tokenizer
        self.eval_steps = eval_steps
        self.metrics = tuple(metrics)
        self.stop_metric = stop_metric
        self.forget_target = forget_target
        self.retain_floor = retain_floor
        self.restore_on_floor = restore_on_floor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.trainer = trainer
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        modules = {"exact_match" if m == "contains" else m for m in self.metrics}  # one module gives both
        self._modules = {m: lune_metrics.load(m, keep_in_memory=True) for m in modules}
        self._last_evaluated_step = -1
        self._initial_retain: float | None = None
        self._good_weights: dict[str, torch.Tensor] | None = None
        self._good_step: int | None = None

    def bind(self, trainer) -> None:
        """Log through this Trainer (its `log` reaches every `report_to` integration)."""
        self.trainer = trainer
        if self.tokenizer is None:
            self.tokenizer = trainer.processing_class

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self, model) -> dict[str, float]:
        """Metrics of every set, `<set>/<metric>`; identical on every process."""
        state = PartialState()
        results: dict[str, float] = {}
        for name, rows in self.sets.items():
            prompts, answers = zip(*(split_row(row) for row in rows), strict=True)
            indices = list(range(len(rows)))
            with state.split_between_processes(indices) as shard:
                local = self._evaluate_rows(model, [prompts[i] for i in shard], [answers[i] for i in shard])
            gathered = gather_object(local) if state.num_processes > 1 else local
            results |= {f"{name}/{k}": v for k, v in self._compute(gathered, answers).items()}
        return results

    def _evaluate_rows(self, model, prompts: list[Any], answers: list[Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{} for _ in prompts]
        if not prompts:
            return rows
        if any(m in GENERATION_METRICS for m in self.metrics):
            generated = generate_answers(
                model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                progress=self.progress,
            )
            for row, text in zip(rows, generated, strict=True):
                row["prediction"] = text
        if "probability" in self.metrics:
            logprobs = score_answers(model, self.tokenizer, prompts, answers, batch_size=self.batch_size,
                                     progress=self.progress)
            for row, lp in zip(rows, logprobs, strict=True):
                row["token_logprobs"] = lp
        return rows

    def _compute(self, rows: list[dict[str, Any]], answers: Sequence[Any]) -> dict[str, float]:
        references = [_answer_text(a).strip() for a in answers]
        predictions = [r.get("prediction", "") for r in rows]
        out: dict[str, float] = {}
        if "exact_match" in self._modules:
            scores = self._modules["exact_match"].compute(predictions=predictions, references=references)
            out |= {k: float(scores[k]) for k in ("exact_match", "contains") if k in self.metrics}
        if "rouge_l" in self._modules:
            scores = self._modules["rouge_l"].compute(predictions=predictions, references=references)
            out["rouge_l"] = float(scores["rouge_l"])
        if "probability" in self._modules:
            scores = self._modules["probability"].compute(token_logprobs=[r["token_logprobs"] for r in rows])
            out["probability"] = float(scores["probability"])
        return out

    # ---- Trainer events ---------------------------------------------------------------------------

    def _run(self, state, control, model, stop_rules: bool = True) -> None:
        if state.global_step == self._last_evaluated_step:
            return
        self._last_evaluated_step = state.global_step
        results = self.evaluate(model)
        self.history.append({"step": state.global_step, **results})
        if self.trainer is not None:
            self.trainer.log(dict(results))
        else:
            state.log_history.append({**results, "step": state.global_step})
            logger.info("step %d: %s", state.global_step, results)
        if stop_rules:
            self._apply_stop_rules(state, control, model, results)

    def _apply_stop_rules(self, state, control, model, results: dict[str, float]) -> None:
        retain_key = f"retain/{self.stop_metric}"
        if self.retain_floor is not None and retain_key in results:
            if self._initial_retain is None:
                self._initial_retain = results[retain_key]
            floor = self.retain_floor * self._initial_retain
            if results[retain_key] < floor:
                self.stop_reason = (
                    f"{retain_key} fell to {results[retain_key]:.3f}, below the floor {floor:.3f} "
                    f"({self.retain_floor:.0%} of its initial {self._initial_retain:.3f}) at step {state.global_step}"
                )
                if self.restore_on_floor and self._good_weights is not None:
                    load_trainable_state(model, self._good_weights)
                    self.stop_reason += f"; adapter weights of step {self._good_step} restored"
                control.should_training_stop = True
                logger.warning("Early stop: %s.", self.stop_reason)
                return
            if self.restore_on_floor:
                self._good_weights = trainable_state(model)
                self._good_step = state.global_step
        forget_key = f"forget/{self.stop_metric}"
        if self.forget_target is not None and state.global_step > 0 and results[forget_key] <= self.forget_target:
            self.stop_reason = (
                f"{forget_key} reached {results[forget_key]:.3f} (target {self.forget_target}) "
                f"at step {state.global_step}"
            )
            control.should_training_stop = True
            logger.info("Early stop: %s.", self.stop_reason)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.tokenizer is None:
            self.tokenizer = kwargs.get("processing_class")
        if self.tokenizer is None:
            raise ValueError("ForgetRetainCallback needs a tokenizer: pass `tokenizer=` or bind a Trainer.")
        self._run(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._run(state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._good_step is not None and self.stop_reason and "restored" in self.stop_reason:
            # The restored weights are what gets saved: measure them as the final numbers.
            self._last_evaluated_step = -1
        self._run(state, control, model, stop_rules=False)
