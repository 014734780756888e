"""What counts as forgotten, which adapter is the best so far, and the verdict of a run: pure functions.

`LuneTrainer` measures the forget set (and the retain set) before the first step, every so often and at the
end; these functions turn those measurements into decisions (stop? keep this adapter?) and into the verdict the
log, the report and the model card show.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

FORGET_METRICS = ("recalled", "exact_match", "contains", "rouge_l", "probability")
_TARGET = re.compile(r"^\s*(?:(?P<metric>[a-z_]+)\s*<=\s*)?(?P<value>[0-9.eE+-]+)\s*$")


class Verdict(str, Enum):
    """How a run ended, judged on the forget set."""

    FORGOTTEN = "forgotten"
    PARTLY_FORGOTTEN = "partly_forgotten"
    NOT_FORGOTTEN = "not_forgotten"

    @property
    def text(self) -> str:
        """`partly forgotten` rather than `partly_forgotten`."""
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class ForgetTarget:
    """`<metric> <= <threshold>` on the forget set: the point from which the forget set counts as forgotten.

    Example:
        >>> ForgetTarget.parse("recalled<=0.1")
        ForgetTarget(metric='recalled', threshold=0.1)
        >>> ForgetTarget.parse("0.2")  # the default metric
        ForgetTarget(metric='recalled', threshold=0.2)
    """

    metric: str = "recalled"
    threshold: float = 0.1

    @classmethod
    def parse(cls, text: str | float | ForgetTarget) -> ForgetTarget:
        if isinstance(text, ForgetTarget):
            return text
        if isinstance(text, (int, float)):
            target = cls(threshold=float(text))
        else:
            match = _TARGET.match(str(text))
            if match is None:
                raise ValueError(
                    f"forget_target {text!r} is not of the form '<metric><=<value>' (e.g. 'recalled<=0.1')."
                )
            try:
                value = float(match["value"])
            except ValueError:
                raise ValueError(f"forget_target {text!r}: {match['value']!r} is not a number.") from None
            target = cls(match["metric"] or cls.metric, value)
        if target.metric not in FORGET_METRICS:
            raise ValueError(f"forget_target metric {target.metric!r} is not one of {', '.join(FORGET_METRICS)}.")
        if not (math.isfinite(target.threshold) and 0.0 <= target.threshold <= 1.0):
            raise ValueError(f"forget_target threshold must lie in [0, 1], got {target.threshold}.")
        return target

    @property
    def key(self) -> str:
        """The evaluation key it watches, e.g. `forget/recalled`."""
        return f"forget/{self.metric}"

    def met(self, value: float | None) -> bool:
        return value is not None and value <= self.threshold + 1e-9

    def __str__(self) -> str:
        return f"{self.metric}<={self.threshold:g}"


def retain_floor_value(initial: float | None, fraction: float | None) -> float | None:
    """The absolute retain floor: `fraction` of the value measured before training (None: no floor)."""
    if initial is None or fraction is None:
        return None
    return fraction * initial


def above_floor(value: float | None, floor: float | None) -> bool:
    """True when there is no floor to hold or `value` holds it."""
    return floor is None or value is None or value >= floor - 1e-9


def is_better(candidate: tuple[float, int], best: tuple[float, int] | None) -> bool:
    """Compare checks as `(forget value, step)`: lower forget wins; on a tie the later (more trained) check."""
    if best is None:
        return True
    return candidate[0] < best[0] - 1e-9 or (abs(candidate[0] - best[0]) <= 1e-9 and candidate[1] >= best[1])


def judge(target: ForgetTarget, before: float | None, after: float | None) -> Verdict:
    """`forgotten` if the target is met; `partly forgotten` if at least half of the way to it was covered."""
    if target.met(after):
        return Verdict.FORGOTTEN
    if before is not None and after is not None and before > target.threshold:
        if before - after >= 0.5 * (before - target.threshold) - 1e-9:
            return Verdict.PARTLY_FORGOTTEN
    return Verdict.NOT_FORGOTTEN


FINE_TUNING_RATE = 1e-4


def advice(
    verdict: Verdict,
    *,
    learning_rate: float,
    stop_reason: str | None,
    budget_used: bool,
    has_retain: bool,
    retain_fell: bool = False,
) -> str | None:
    """The likely fix for a run that did not forget, in one sentence (None when it forgot).

    `retain_fell`: the last check found retain below its floor, so an earlier adapter was put back.
    """
    if verdict is Verdict.FORGOTTEN:
        return None
    if learning_rate < FINE_TUNING_RATE:
        return (f"learning_rate {learning_rate:g} is a fine-tuning rate; unlearning with LoRA usually needs 1e-4 "
                "to 1e-3 (the default is 1e-3).")
    if retain_fell and not (stop_reason and "floor" in stop_reason):
        return ("the last check found retain below its floor, so an earlier adapter was kept: lower the learning "
                "rate, give more retain rows or raise retain_weight, or check more often (forget_eval_steps) so "
                "an adapter that forgot before retain fell is caught.")
    if stop_reason and "floor" in stop_reason:
        fix = "give more retain rows, " if has_retain else ""
        return (f"retain quality fell below its floor before the forget set was forgotten: {fix}give `replacement` "
                "answers instead of refusals, or lower the learning rate.")
    if budget_used:
        return ("the training budget ran out before the forget set was forgotten: raise max_steps (or "
                "num_train_epochs / min_budget_steps) or the learning rate.")
    return "train longer or with a higher learning rate, or pick another objective (e.g. 'npo')."


@dataclass
class Outcome:
    """The evidence of one run: forget / retain before and after, the steps used, why it stopped, the verdict.

    `steps` counts the optimizer steps behind the adapter kept (the best check's); `trained_steps` those run.
    """

    verdict: Verdict
    target: ForgetTarget
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    stop_reason: str
    retain_floor: float | None = None
    retain_ok: bool = True
    restored_step: int | None = None
    hint: str | None = None
    trained_steps: int | None = None
    rows: dict[str, int] | None = None

    def forget_value(self, which: str) -> float | None:
        return getattr(self, which).get(self.target.key)

    def table(self) -> str:
        """A short plain-text table for the log."""
        keys = [k for k in self.before if k.startswith("forget/")] + [k for k in self.before if k.startswith("retain/")]
        lines = [f"{'metric':<24}{'before':>9}{'after':>9}"]
        for key in keys:
            after = self.after.get(key)
            lines.append(f"{key:<24}{self.before[key]:>9.3f}{after if after is None else format(after, '9.3f'):>9}")
        trained = f" (trained {self.trained_steps})" if self.trained_steps not in (None, self.steps) else ""
        lines.append(f"steps of the kept adapter: {self.steps}{trained}; stopped: {self.stop_reason}")
        if self.restored_step is not None:
            lines.append(f"adapter kept: the one of step {self.restored_step} (best forget with retain above floor)")
        lines.append(f"verdict: {self.verdict.text.upper()} (target {self.target.key} <= {self.target.threshold:g})")
        if not self.retain_ok:
            lines.append(f"retain fell below its floor ({self.retain_floor:.3f})")
        if self.hint:
            lines.append(f"likely fix: {self.hint}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """What the unlearning report stores."""
        return {
            "verdict": self.verdict.value,
            "target": str(self.target),
            "before": self.before,
            "after": self.after,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "retain_floor": self.retain_floor,
            "retain_ok": self.retain_ok,
            "restored_step": self.restored_step,
            "hint": self.hint,
            "trained_steps": self.trained_steps,
            "rows": self.rows,
        }

    def train_metrics(self) -> dict[str, Any]:
        """Flat numbers for `TrainOutput.metrics`: `forget_recalled_before`, ..., `verdict`."""
        out: dict[str, Any] = {"verdict": self.verdict.value, "unlearning_steps": self.steps}
        for when in ("before", "after"):
            for key, value in getattr(self, when).items():
                out[f"{key.replace('/', '_')}_{when}"] = value
        return out
