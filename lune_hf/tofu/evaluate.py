"""TOFU evaluation: forget quality, model utility and the forget / retain scores, as open-unlearning computes them.

Built on :func:`lune_hf.evaluation.score_answers` (per-token log-probabilities, teacher forcing), on
:class:`lune_hf.evaluator.Evaluator` (greedy answers and ROUGE-L, as in training checks and ``lune-hf eval``)
and on the pure metrics of :mod:`lune_hf.metrics.functional`. Definitions (open-unlearning's
``configs/eval/tofu_metrics``):

* ``probability``: length-normalised probability of the gold answer, ``exp(-NLL / |y|)``, averaged over rows
  (``forget_Q_A_Prob``, ``retain_Q_A_Prob``).
* real authors / world facts probability (``ra_Q_A_Prob_normalised``, ``wf_Q_A_Prob_normalised``,
  open-unlearning's ``probability_w_options``): per row ``p(answer) / (p(answer) + sum_j p(perturbed_j) + 1e-10)``
  with the same length-normalised probabilities, averaged over rows.
* ``rouge``: ROUGE-L recall of the greedy answer against the gold answer (``*_Q_A_ROUGE``).
* ``truth_ratio``: geometric mean of the perturbed answers' normalised probabilities over that of the
  paraphrased answer (forget, retain) or of the gold answer (real authors, world facts, which have no
  paraphrase); aggregated ``closer_to_1_better`` on the forget set, ``true_better`` elsewhere.
* ``forget_quality``: KS-test p-value between the per-row forget truth ratios of the model and those of the
  retain-only reference model (open-unlearning's ``ks_test`` with ``retain_model_logs``).
* ``model_utility``: harmonic mean of the 9 values probability / ROUGE / truth ratio on retain, real authors
  and world facts (8 when the source has no perturbed retain rows; ``model_utility_inputs`` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation import score_answers
from ..evaluator import Evaluator
from ..metrics import functional as F
from .data import SYSTEM_PROMPT, TofuSets, _head, make_prompt, to_rows

__all__ = ["UTILITY_SETS", "evaluate_tofu", "normalised_probability", "score_pairs"]

UTILITY_SETS = ("retain", "real_authors", "world_facts")


def score_pairs(
    model,
    tokenizer,
    pairs: Sequence[tuple[Any, str]],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> list[list[float]]:
    """Per-token log-probabilities of many (prompt, answer) pairs, scored in length order (less padding)."""
    order = sorted(range(len(pairs)), key=lambda i: len(str(pairs[i][0])) + len(pairs[i][1]))
    scored = score_answers(model, tokenizer, [pairs[i][0] for i in order], [pairs[i][1] for i in order],
                           batch_size=batch_size, max_length=max_length, progress=progress)
    out: list[list[float]] = [[] for _ in pairs]
    for position, i in enumerate(order):
        out[i] = scored[position]
    return out


def normalised_probability(
    correct_logprobs: Sequence[Sequence[float]], wrong_logprobs: Sequence[Sequence[Sequence[float]]]
) -> dict[str, Any]:
    """open-unlearning's ``probability_w_options``: ``p_c / (p_c + sum_j p_w_j + 1e-10)`` per row, then the mean.

    Each ``p`` is a length-normalised answer probability ``exp(mean token log-prob)``.
    """
    scores = []
    for correct, wrong in zip(correct_logprobs, wrong_logprobs, strict=True):
        p_c = float(np.exp(np.mean(correct)))
        p_w = float(sum(np.exp(np.mean(w)) for w in wrong))
        scores.append(p_c / (p_c + p_w + F.EPS))
    return {"probability": float(np.mean(scores)), "scores": scores}


def _answer(text: str, prompt_format: str) -> str:
    return " " + text.strip() if prompt_format == "plain" else text


def evaluate_tofu(
    model,
    tokenizer,
    sets: TofuSets,
    *,
    reference_truth_ratios: Sequence[float] | None = None,
    prompt_format: str = "chat",
    system_prompt: str | None = SYSTEM_PROMPT,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    max_length: int = 512,
    samples: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """TOFU metrics of one model (see the module docstring for the definitions).

    Args:
        model, tokenizer: any causal LM (a `PeftModel` included) and its tokenizer (with a pad token).
        sets: the experiment's sets (:func:`lune_hf.tofu.tofu_sets`).
        reference_truth_ratios: the retain-only model's per-row forget truth ratios (``forget_truth_ratios`` of
            its own result); without them ``forget_quality`` is None.
        prompt_format, system_prompt: as in training (:func:`lune_hf.tofu.to_rows`).
        max_new_tokens: greedy answer length for ROUGE (open-unlearning: 200).
        samples: how many forget answers to keep in the result, to show what the model now says.

    Returns a flat dict: ``<set>_probability``, ``<set>_rouge``, ``<set>_truth_ratio`` for ``forget``, ``retain``,
    ``real_authors``, ``world_facts``; ``forget_truth_ratios`` (per row), ``forget_quality``,
    ``forget_ks_statistic``, ``model_utility``, ``model_utility_inputs``, ``forget_samples``.
    """
    fmt = prompt_format

    def prompts_of(rows) -> list[Any]:
        return [make_prompt(q, fmt, system_prompt) for q in rows["question"]]

    eval_sets = {
        "forget": sets.forget,
        "retain": sets.retain_eval if sets.retain_eval is not None else _head(sets.retain, 400),
        "real_authors": sets.real_authors,
        "world_facts": sets.world_facts,
    }
    has_perturbed = {name: rows is not None and "perturbed_answer" in rows.column_names
                     for name, rows in eval_sets.items()}
    by_set = _score_every_answer(model, tokenizer, eval_sets, has_perturbed, prompts_of, fmt, batch_size, max_length,
                                 progress)
    result = _probabilities_and_truth_ratios(by_set, has_perturbed)
    # Greedy answers and ROUGE-L through the same Evaluator as training checks and `lune-hf eval`.
    evaluator = Evaluator({name: to_rows(rows, fmt, system_prompt) for name, rows in eval_sets.items()}, tokenizer,
                          metrics=("rouge_l",), max_new_tokens=max_new_tokens, batch_size=batch_size,
                          progress=progress)
    scores = evaluator.evaluate(model)
    for name in eval_sets:
        result[f"{name}_rouge"] = scores[f"{name}/rouge_l"]
    forget = eval_sets["forget"]
    predictions = [r["prediction"] for r in evaluator.last_rows["forget"]]
    result["forget_samples"] = [
        {"question": q, "answer": a, "generated": p}
        for q, a, p in list(zip(forget["question"], forget["answer"], predictions, strict=True))[:samples]
    ]
    return _aggregates(result, reference_truth_ratios)


def _score_every_answer(model, tokenizer, eval_sets, has_perturbed, prompts_of, fmt, batch_size, max_length,
                        progress) -> dict[str, list[dict[str, Any]]]:
    """One teacher-forced scoring pass over every answer of every set (true, paraphrased, perturbed): per set and
    row, ``{"answer": logprobs, "paraphrased": logprobs, "perturbed": [logprobs, ...]}``."""
    jobs: list[tuple[str, int, str]] = []  # (set, row, kind)
    pairs: list[tuple[Any, str]] = []
    for name, rows in eval_sets.items():
        prompts = prompts_of(rows)
        for i, row in enumerate(rows):
            answers = [("answer", row["answer"])]
            if has_perturbed[name]:
                if name in ("forget", "retain") and row.get("paraphrased_answer"):
                    answers.append(("paraphrased", row["paraphrased_answer"]))
                answers += [("perturbed", a) for a in row["perturbed_answer"]]
            for kind, text in answers:
                jobs.append((name, i, kind))
                pairs.append((prompts[i], _answer(text, fmt)))
    logprobs = score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, progress=progress)
    by_set: dict[str, list[dict[str, Any]]] = {n: [{"perturbed": []} for _ in rows] for n, rows in eval_sets.items()}
    for (name, i, kind), lp in zip(jobs, logprobs, strict=True):
        if kind == "perturbed":
            by_set[name][i]["perturbed"].append(lp)
        else:
            by_set[name][i][kind] = lp
    return by_set


def _probabilities_and_truth_ratios(by_set, has_perturbed) -> dict[str, Any]:
    """``<set>_probability`` and ``<set>_truth_ratio`` (and the per-row forget truth ratios) from the scores."""
    result: dict[str, Any] = {}
    for name, rows in by_set.items():
        answer_lp = [r["answer"] for r in rows]
        if name in ("real_authors", "world_facts"):
            result[f"{name}_probability"] = normalised_probability(answer_lp, [r["perturbed"] for r in rows])[
                "probability"]
        else:
            result[f"{name}_probability"] = F.probability(answer_lp)["probability"]
        if has_perturbed[name]:
            correct = [r.get("paraphrased", r["answer"]) for r in rows]
            aggregator = "closer_to_1_better" if name == "forget" else "true_better"
            tr = F.truth_ratio(correct, [r["perturbed"] for r in rows], aggregator)
            result[f"{name}_truth_ratio"] = tr["truth_ratio"]
            if name == "forget":
                result["forget_truth_ratios"] = tr["scores"]
        else:
            result[f"{name}_truth_ratio"] = None
    return result


def _aggregates(result: dict[str, Any], reference_truth_ratios: Sequence[float] | None) -> dict[str, Any]:
    """Forget quality (KS test against the retain model's truth ratios) and model utility (harmonic mean)."""
    if reference_truth_ratios is not None:
        fq = F.forget_quality(result["forget_truth_ratios"], reference_truth_ratios)
        result["forget_quality"], result["forget_ks_statistic"] = fq["forget_quality"], fq["ks_statistic"]
    else:
        result["forget_quality"], result["forget_ks_statistic"] = None, None
    inputs = {f"{s}_{m}": result[f"{s}_{m}"] for s in UTILITY_SETS for m in ("probability", "rouge", "truth_ratio")
              if result[f"{s}_{m}"] is not None}
    result["model_utility"] = F.model_utility(inputs)["model_utility"]
    result["model_utility_inputs"] = list(inputs)
    return result
