"""`ForgetRetainCallback`: forget and retain quality measured while training runs, with the stop rules.

It works with any `transformers.Trainer`; `LuneTrainer` adds one by default (its "checks"). Before the first
step, every so often and at the end it evaluates the forget and retain sets with the [`Evaluator`], logs
`<set>/<metric>` (for example `forget/recalled`, `retain/rouge_l`) through the Trainer, so every `report_to`
tracker gets them, and applies the stop rules:

* stop as soon as the forget target is met (`forget/recalled <= 0.1` by default in `LuneTrainer`);
* stop when retain falls below its floor (a fraction of its value before training);
* keep the best adapter seen so far (lowest forget value among the checks that held retain above the floor)
  and put it back at the end, so what gets saved is never worse than what was measured.

At the end it turns the measurements into an [`Outcome`]: before / after numbers and a verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from transformers import TrainerCallback

from .data import DEFAULT_TEXT_PREFIX_TOKENS
from .evaluator import DEFAULT_METRICS, GENERATION_METRICS, SCORING_METRICS, Evaluator
from .outcome import ForgetTarget, Outcome, above_floor, advice, is_better, judge, retain_floor_value
from .snapshot import load_trainable_state, trainable_state

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_METRICS", "GENERATION_METRICS", "SCORING_METRICS", "ForgetRetainCallback"]

RECOVERED = 0.95  # retain at this share of its start counts as recovered after the forget target is met
QUICK_DROP = 0.5  # a quick check asks for a full one when the greedy prefix fell to this share of the last full's
QUICK_MIN_DROP = 0.05  # ... and by at least this much


class ForgetRetainCallback(TrainerCallback):
    """Evaluate forget / retain sets during training; stop once forgotten or when retain collapses.

    Args:
        forget_dataset: rows whose answers must disappear (`prompt` / `completion`, `messages`, raw `text` or
            tokenised; a raw text is measured on how much of its continuation the model still reproduces).
        retain_dataset: rows whose answers must survive.
        extra_sets: further named sets, e.g. `{"paraphrased_forget": ..., "neighbour": ...}`.
        tokenizer: the model's tokenizer (taken from the Trainer when bound).
        eval_steps: evaluate every N optimizer steps (and always at the start and the end); `None` spaces the
            checks automatically so that they take at most `max_overhead` of the training time.
        metrics: any of `recalled`, `exact_match`, `contains`, `rouge_l`, `probability`.
        stop_metric: the metric the stop rules watch on both sets (overridden by a metric in `forget_target`).
        forget_target: when the forget set counts as forgotten: a threshold on `forget/<stop_metric>` or a
            string such as `"recalled<=0.1"`. Needed for a verdict.
        stop_when_forgotten: stop as soon as the target is met (else train the whole budget and only judge).
        retain_floor: the lowest `retain/<stop_metric>` allowed, as a fraction of its value at the start: checks
            below it never count as the best, and `retain_patience` of them in a row stop training.
        retain_patience: consecutive checks below the retain floor after which training stops (retain often
            recovers within a check or two, pulled back by the retain term).
        consolidation_checks: when the forget target is met while retain is below 95% of its start, train on for
            up to this many more checks to let retain recover (0: stop at once).
        restore_best: at the end, put back the adapter of the best check (lowest forget value among those that
            held retain above the floor) if the final one is not it.
        max_rows: evaluate at most this many rows of each set (evenly spaced).
        max_new_tokens: greedy answer length; `None` = longest gold answer + 4 tokens, at most 64.
        max_overhead: with `eval_steps=None`, the largest share of training time the checks may take.
        quick_checks: with `eval_steps=None` and a generation metric in the target, run a quick check between
            the full ones (one teacher-forced pass over the forget rows, no generation, at most `quick_overhead`
            of the training time): the share of each answer's start a greedy answer would still reproduce. When
            it has halved since the last full check, a full check runs at once, so the run stops soon after the
            answers go instead of at the next scheduled check (on a 135M model a full check costs ~15 steps).
            While retain is below 95% of its start (the refusal often spreads to it for a while), the quick
            check also watches the retain answers and asks for a full check once they are back.
        quick_overhead: the largest share of training time the quick checks may take.
        boost_stalled_lr: multiply the learning rate by `lr_boost_factor` (up to `max_lr_scale` times the
            configured one) when a check finds the forget set stalled: the watched metric still at its initial
            value and the forget answers' probability lower, but not halved, since the previous check.
        lr_boost_factor: see `boost_stalled_lr`.
        max_lr_scale: the cap of `boost_stalled_lr`.
        text_prefix_tokens: raw-text rows: tokens of the text given as the prompt.
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
        eval_steps: int | None = 50,
        metrics: Sequence[str] = DEFAULT_METRICS,
        stop_metric: str = "recalled",
        forget_target: float | str | ForgetTarget | None = None,
        stop_when_forgotten: bool = True,
        retain_floor: float | None = None,
        retain_patience: int = 3,
        consolidation_checks: int = 2,
        restore_best: bool = True,
        max_rows: int | None = 200,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        max_overhead: float = 0.10,
        quick_checks: bool = True,
        quick_overhead: float = 0.05,
        boost_stalled_lr: bool = False,
        lr_boost_factor: float = 4.0,
        max_lr_scale: float = 16.0,
        progress: bool = False,
        text_prefix_tokens: int = DEFAULT_TEXT_PREFIX_TOKENS,
        trainer=None,
    ) -> None:
        target = _checked_settings(forget_target, stop_metric, metrics, retain_floor, retain_dataset is not None,
                                   eval_steps, boost_stalled_lr)
        stop_metric = target.metric if target is not None else stop_metric
        sets = {"forget": forget_dataset, **({"retain": retain_dataset} if retain_dataset is not None else {})}
        self.evaluator = Evaluator({**sets, **(extra_sets or {})}, tokenizer, metrics=metrics, max_rows=max_rows,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                   text_prefix_tokens=text_prefix_tokens)
        self.eval_steps = eval_steps
        self.stop_metric = stop_metric
        self.target = target
        self.stop_when_forgotten = stop_when_forgotten
        self.retain_floor = retain_floor
        self.retain_patience = retain_patience
        self.consolidation_checks = consolidation_checks
        self._consolidation_checks = 0
        self._checks_below_floor = 0
        self.restore_best = restore_best
        self.max_overhead = max_overhead
        self.quick_checks = quick_checks and eval_steps is None and target is not None and stop_when_forgotten \
            and target.metric in GENERATION_METRICS
        self.quick_overhead = quick_overhead
        self.quick_history: list[tuple[int, float]] = []  # (step, greedy prefix) of every quick check
        self._quick_reference: float | None = None
        self._retain_quick_start: float | None = None  # the retain answers' greedy prefix before training
        self._retain_quick_level: float | None = None  # set while waiting for retain: the level that means "back"
        self._last_quick_end = 0.0
        self._last_quick_seconds = 0.0
        self.boost_stalled_lr = boost_stalled_lr
        self.max_lr_scale = max_lr_scale
        self.lr_boost_factor = lr_boost_factor
        self.lr_scale = 1.0
        self.trainer = trainer
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self.outcome: Outcome | None = None
        self.check_seconds = 0.0
        self._last_evaluated_step = -1
        self._initial: dict[str, float] | None = None
        self._floor: float | None = None
        self._best: tuple[float, int] | None = None
        self._best_results: dict[str, float] | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._last_check_end = 0.0
        self._target_met_at: int | None = None
        self._last_check_seconds = 0.0

    @property
    def sets(self) -> dict[str, Dataset]:
        return self.evaluator.sets

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.evaluator.metrics

    def bind(self, trainer) -> None:
        """Log through this Trainer (its `log` reaches every `report_to` integration)."""
        self.trainer = trainer
        self.evaluator.bind_tokenizer(trainer.processing_class)

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self, model) -> dict[str, float]:
        """Metrics of every set, `<set>/<metric>`; identical on every process."""
        return self.evaluator.evaluate(model)

    def _run(self, state, control, model, stop_rules: bool = True, lr_scheduler=None, scheduled: bool = True) -> None:
        if state.global_step == self._last_evaluated_step:
            return
        self._last_evaluated_step = state.global_step
        start = time.perf_counter()
        previous = self.history[-1] if self.history else None
        results = self.evaluate(model)
        if self.boost_stalled_lr and previous is not None and lr_scheduler is not None and stop_rules:
            self._boost_if_stalled(previous, results, lr_scheduler, state.global_step)
        self.history.append({"step": state.global_step, **results})
        if self.trainer is not None:
            self.trainer.log(dict(results))
        else:
            state.log_history.append({**results, "step": state.global_step})
            logger.info("step %d: %s", state.global_step, results)
        self._track(state, model, results)
        if self.quick_checks and stop_rules:  # the final measurement asks for no further check
            self._set_quick_levels(model, results)
        if stop_rules:
            self._apply_stop_rules(state, control, model, results, scheduled=scheduled)
        self._last_check_end = time.perf_counter()
        self._last_check_seconds = self._last_check_end - start
        self.check_seconds += self._last_check_seconds

    def _boost_if_stalled(self, previous: dict[str, float], results: dict[str, float], lr_scheduler,
                          step: int) -> None:
        """Raise the learning rate while the watched forget metric has not moved from its initial value and the
        forget answers' probability, since the previous check, neither halved nor rose (by more than 1%)."""
        before, now = previous.get("forget/probability"), results.get("forget/probability")
        factor = min(self.lr_boost_factor, self.max_lr_scale / self.lr_scale)
        # moving fast (halved) or swinging back up (the rate is already high enough to overshoot): no boost
        if before is None or now is None or now < 0.5 * before or now > 1.01 * before or factor <= 1.0:
            return
        key = f"forget/{self.stop_metric}"
        if key in results and results[key] < self._initial.get(key, 0.0) - 1e-9:  # it has moved: the rate works
            return
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
        if not hasattr(scheduler, "base_lrs"):
            return
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        self.lr_scale *= factor
        logger.warning("forget/probability moved from %.3f to %.3f since the last check: learning rate x%g from "
                       "step %d.", before, now, self.lr_scale, step)

    def _retain_value(self, results: dict[str, float]) -> float | None:
        return results.get(f"retain/{self.stop_metric}")

    def _track(self, state, model, results: dict[str, float]) -> None:
        """Remember the initial values and the best adapter so far."""
        if self._initial is None:
            self._initial = dict(results)
            self._floor = retain_floor_value(self._retain_value(results), self.retain_floor)
        forget = results.get(f"forget/{self.stop_metric}")
        if forget is None or not above_floor(self._retain_value(results), self._floor):
            return
        if is_better((forget, state.global_step), self._best):
            self._best = (forget, state.global_step)
            self._best_results = dict(results)
            if self.restore_best:
                self._best_weights = trainable_state(model)

    def _apply_stop_rules(self, state, control, model, results: dict[str, float], scheduled: bool = True) -> None:
        retain = self._retain_value(results)
        if not above_floor(retain, self._floor):
            # an extra look asked for by a quick check does not shorten the patience
            self._checks_below_floor += int(scheduled)
            logger.warning("retain/%s is %.3f, below the floor %.3f at step %d (%d/%d checks before stopping).",
                           self.stop_metric, retain, self._floor, state.global_step, self._checks_below_floor,
                           self.retain_patience)
            if self._checks_below_floor >= self.retain_patience:
                self.stop_reason = (
                    f"retain/{self.stop_metric} stayed below the floor {self._floor:.3f} ({self.retain_floor:.0%} of "
                    f"its initial {self._retain_value(self._initial):.3f}) for {self._checks_below_floor} checks, "
                    f"{retain:.3f} at step {state.global_step}"
                )
                control.should_training_stop = True
                logger.warning("Early stop: %s.", self.stop_reason)
            return
        self._checks_below_floor = 0
        if self.target is not None and self.stop_when_forgotten and self.target.met(results[self.target.key]):
            initial = self._retain_value(self._initial)
            if (retain is not None and initial and retain < RECOVERED * initial
                    and self._consolidation_checks < self.consolidation_checks):
                # Forgotten mid-transition: retain usually comes back within a check or two (the retain term pulls
                # it up) while the forget answers stay gone; the best check is kept either way.
                self._consolidation_checks += int(scheduled)  # extra looks do not use up the wait
                logger.info("forget target met at step %d with retain at %.0f%% of its start: training on (%d/%d).",
                            state.global_step, 100 * retain / initial, self._consolidation_checks,
                            self.consolidation_checks)
                return
            self.stop_reason = (
                f"{self.target.key} reached {results[self.target.key]:.3f} (target {self.target.threshold:g}) "
                f"at step {state.global_step}"
            )
            control.should_training_stop = True
            self._target_met_at = state.global_step
            logger.info("Early stop: %s.", self.stop_reason)

    def _due(self, state) -> bool:
        """Whether a check is due after this step; the same answer on every process."""
        if self.eval_steps is not None:
            return state.global_step % self.eval_steps == 0
        trained = time.perf_counter() - self._last_check_end
        return _agreed(trained * self.max_overhead >= self._last_check_seconds)

    def _quick_due(self) -> bool:
        if not self.quick_checks:
            return False
        trained = time.perf_counter() - max(self._last_check_end, self._last_quick_end)
        return _agreed(trained * self.quick_overhead >= self._last_quick_seconds)

    def _greedy_prefix(self, model, name: str) -> float:
        """A set's greedy prefix: from the full check that just ran, else one quick pass."""
        value = self.evaluator.last_greedy_prefix(name)
        return value if value is not None else self.evaluator.greedy_prefix(model, name)

    def _set_quick_levels(self, model, results: dict[str, float]) -> None:
        """After a full check: the levels at which a quick check asks for the next one (forget: none once the
        target is met; retain: only while it is below 95% of its start)."""
        met = self.target.met(results[self.target.key])  # quick checks run only with a target
        self._quick_reference = None if met else self._greedy_prefix(model, "forget")
        retain, initial = self._retain_value(results), self._retain_value(self._initial)
        if retain is None:
            return
        waiting = bool(initial) and retain < RECOVERED * initial
        self._retain_quick_level = None
        if waiting or self._retain_quick_start is None:
            now = self._greedy_prefix(model, "retain")
            if self._retain_quick_start is None:  # the check before the first step
                self._retain_quick_start = now
            if waiting:
                self._retain_quick_level = max(RECOVERED * self._retain_quick_start, now + QUICK_MIN_DROP)

    def _quick_check(self, state, model) -> bool:
        """Run a quick check; True when it asks for a full check now: the forget answers' greedy prefix halved
        since the last full check, or (while retain is down) the retain answers' came back."""
        start = time.perf_counter()
        value = self.evaluator.greedy_prefix(model, "forget")
        logs = {"quick/forget_greedy_prefix": value}
        reference = self._quick_reference
        due = reference is not None and value <= QUICK_DROP * reference and reference - value >= QUICK_MIN_DROP
        if self._retain_quick_level is not None:
            logs["quick/retain_greedy_prefix"] = retain = self.evaluator.greedy_prefix(model, "retain")
            due = due or retain >= self._retain_quick_level
        self._last_quick_end = time.perf_counter()
        self._last_quick_seconds = self._last_quick_end - start
        self.check_seconds += self._last_quick_seconds
        self.quick_history.append((state.global_step, value))
        # not through Trainer.log: on a small model a quick check runs every few steps and would flood the console
        logger.debug("step %d: %s%s", state.global_step, logs, " -> full check" if due else "")
        return due

    # ---- Trainer events ---------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.evaluator.bind_tokenizer(kwargs.get("processing_class"))
        if self.evaluator.tokenizer is None:
            raise ValueError("ForgetRetainCallback needs a tokenizer: pass `tokenizer=` or bind a Trainer.")
        self.evaluator.prepare()  # one-off work, kept out of the timing that spaces the checks
        self._run(state, control, model)

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if self._due(state):
            self._run(state, control, model, lr_scheduler=lr_scheduler)
        elif self._quick_due() and self._quick_check(state, model):
            self._run(state, control, model, lr_scheduler=lr_scheduler, scheduled=False)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # A stop decided at a check takes effect after the next step (the Trainer looks at the flag after a step):
        # that check's adapter is the one kept, so the extra step needs no measuring.
        if self._target_met_at is None or self._target_met_at == state.global_step:
            self._run(state, control, model, stop_rules=False)
        final = self.history[-1] if self.history else {}
        restored = None
        if (self.restore_best and self._best is not None and self._best_weights is not None
                and self._best[1] != state.global_step):
            load_trainable_state(model, self._best_weights)
            restored = self._best[1]
            final = {"step": restored, **self._best_results}
            logger.warning("Kept the adapter of step %d (the best forget value with retain above the floor).",
                           restored)
        self.outcome = self._judge(args, state, final, restored)

    def _judge(self, args, state, final: dict[str, Any], restored: int | None) -> Outcome | None:
        if self.target is None or self._initial is None:
            return None
        before = {k: v for k, v in self._initial.items() if k.startswith(("forget/", "retain/"))}
        after = {k: final[k] for k in before if k in final}
        verdict = judge(self.target, before.get(self.target.key), after.get(self.target.key))
        budget_used = state.max_steps > 0 and state.global_step >= state.max_steps
        reason = self.stop_reason or ("the training budget ran out" if budget_used else "training ended")
        return Outcome(
            verdict=verdict,
            target=self.target,
            before=before,
            after=after,
            steps=restored if restored is not None else state.global_step,
            trained_steps=state.global_step,
            rows={name: len(rows) for name, rows in self.sets.items()},
            stop_reason=reason,
            retain_floor=self._floor,
            retain_ok=above_floor(self._retain_value(after), self._floor),
            restored_step=restored,
            hint=advice(verdict, learning_rate=args.learning_rate, stop_reason=self.stop_reason,
                        budget_used=budget_used, has_retain="retain" in self.sets,
                        retain_fell=restored is not None and self.history != []
                        and not above_floor(self._retain_value(self.history[-1]), self._floor)),
        )


def _agreed(flag: bool) -> bool:
    """`flag` as process 0 sees it, on every process (timing-based decisions must not split the ranks)."""
    value = [flag]
    if PartialState().num_processes > 1:
        broadcast_object_list(value, from_process=0)
    return bool(value[0])


def _checked_settings(forget_target, stop_metric: str, metrics: Sequence[str], retain_floor: float | None,
                      has_retain: bool, eval_steps: int | None, boost_stalled_lr: bool) -> ForgetTarget | None:
    """The callback's settings checked together; returns the parsed forget target (None: no target)."""
    target = None
    if forget_target is not None:
        target = (ForgetTarget.parse(forget_target) if not isinstance(forget_target, (int, float))
                  else ForgetTarget(stop_metric, float(forget_target)))
        stop_metric = target.metric
    if stop_metric not in metrics and (target is not None or retain_floor is not None):
        raise ValueError(f"stop_metric {stop_metric!r} must be one of the metrics {list(metrics)}.")
    if retain_floor is not None and not has_retain:
        raise ValueError("retain_floor needs a retain_dataset to watch.")
    if retain_floor is not None and not 0.0 <= retain_floor <= 1.0:
        raise ValueError(f"retain_floor is a fraction of the initial retain value in [0, 1], got {retain_floor}.")
    if eval_steps is not None and eval_steps < 1:
        raise ValueError(f"eval_steps must be at least 1 (or None for automatic), got {eval_steps}.")
    if boost_stalled_lr and "probability" not in metrics:
        raise ValueError("boost_stalled_lr watches forget/probability: add 'probability' to the metrics.")
    return target
