"""Unlearning evaluation metrics as pure functions of log-probabilities, token ids and strings.

These are the definitions behind the ``evaluate`` modules in this package (``lune_hf.metrics.load``);
they take plain Python lists (what :func:`lune_hf.evaluation.score_answers` returns, for instance) and
return plain floats. Where open-unlearning (the reference framework for TOFU / MUSE) defines a metric,
the formula follows its code; every deviation is stated in the function's docstring.

Direction, for unlearning: on the *forget* set, lower is better for memorisation metrics
(probability, ROUGE, exact match, extraction strength, exact memorisation); on *retain* sets higher
is better. Truth ratio, forget quality and the MIA AUC have their own target values, documented below.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

TOFU_CITATION = """\
@inproceedings{maini2024tofu,
  title={{TOFU}: A Task of Fictitious Unlearning for {LLMs}},
  author={Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, J. Zico},
  booktitle={First Conference on Language Modeling},
  year={2024}
}
"""

__all__ = [
    "TRUTH_RATIO_AGGREGATORS",
    "exact_match",
    "exact_memorization",
    "extraction_strength",
    "normalize_answer",
    "forget_quality",
    "privleak",
    "replacement_share",
    "strict_extraction_strength",
    "mia_min_k",
    "min_k_score",
    "model_utility",
    "probability",
    "roc_auc",
    "rouge_l",
    "truth_ratio",
]

TRUTH_RATIO_AGGREGATORS = ("closer_to_1_better", "true_better")
EPS = 1e-10  # open-unlearning's epsilon in the truth ratio, its aggregation and probability_w_options


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces (SQuAD-style)."""
    text = _PUNCT.sub(" ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _check_rows(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what}: no rows to evaluate")


def _paired(a: Sequence[Any], b: Sequence[Any], names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} rows but {names[1]} has {len(b)}")
    _check_rows(len(a), names[0])


def _mean_logprob(logprobs: Sequence[float], where: str) -> float:
    """Mean token log-probability of one answer (= minus its average NLL)."""
    if len(logprobs) == 0:
        raise ValueError(f"{where}: empty answer (no token log-probabilities)")
    return float(np.mean(np.asarray(logprobs, dtype=np.float64)))


# --------------------------------------------------------------------------------------------------
# Teacher-forced likelihood metrics
# --------------------------------------------------------------------------------------------------


def probability(token_logprobs: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Length-normalised answer probability ``p_i = exp(mean_t log p(y_t|x, y_<t)) = exp(-NLL_i / |y_i|)``.

    Returns ``{"probability": mean_i p_i, "scores": [p_i]}``; range [0, 1]. As open-unlearning's
    ``probability`` (``evaluate_probability``: ``exp(-avg_loss)``), averaged over rows.
    """
    _check_rows(len(token_logprobs), "token_logprobs")
    scores = [math.exp(_mean_logprob(row, f"token_logprobs row {i}")) for i, row in enumerate(token_logprobs)]
    return {"probability": float(np.mean(scores)), "scores": scores}


def truth_ratio(
    paraphrased_logprobs: Sequence[Sequence[float]],
    perturbed_logprobs: Sequence[Sequence[Sequence[float]]],
    aggregator: str,
) -> dict[str, Any]:
    """TOFU truth ratio, exactly as open-unlearning's ``truth_ratio`` metric computes it.

    Per row ``i``: ``correct_loss = -mean(paraphrased_logprobs[i])`` and
    ``wrong_loss = mean_j(-mean(perturbed_logprobs[i][j]))`` (average over the perturbed answers of their
    per-token NLL), then ``tr_i = exp(-wrong_loss) / (exp(-correct_loss) + 1e-10)``, i.e. the geometric
    mean of the perturbed answers' normalised probabilities over the paraphrased answer's.

    Aggregation (``aggregator``):

    - ``"closer_to_1_better"`` (forget set): ``mean_i min(tr_i, 1 / (tr_i + 1e-10))``; range [0, 1],
      higher is better (1 = the model no longer prefers the true answer over wrong ones).
    - ``"true_better"`` (retain / real authors / world facts, a model-utility input):
      ``mean_i max(0, 1 - tr_i)``; range [0, 1], higher is better.

    Because of the epsilons, equal probabilities give ``tr_i = p / (p + 1e-10)``, one part in ~1e10
    below 1. Returns ``{"truth_ratio": aggregate, "scores": [tr_i]}``.
    """
    if aggregator not in TRUTH_RATIO_AGGREGATORS:
        raise ValueError(f"Invalid truth ratio aggregator {aggregator!r}; use one of {TRUTH_RATIO_AGGREGATORS}")
    _paired(paraphrased_logprobs, perturbed_logprobs, ("paraphrased_logprobs", "perturbed_logprobs"))
    scores = []
    for i, (para, perturbed) in enumerate(zip(paraphrased_logprobs, perturbed_logprobs, strict=True)):
        if len(perturbed) == 0:
            raise ValueError(f"perturbed_logprobs row {i}: no perturbed answers")
        correct_loss = -_mean_logprob(para, f"paraphrased_logprobs row {i}")
        wrong_loss = float(
            np.mean([-_mean_logprob(ans, f"perturbed_logprobs row {i}, answer {j}") for j, ans in enumerate(perturbed)])
        )
        scores.append(math.exp(-wrong_loss) / (math.exp(-correct_loss) + EPS))
    tr = np.asarray(scores)
    if aggregator == "closer_to_1_better":
        value = np.mean(np.minimum(tr, 1.0 / (tr + EPS)))
    else:
        value = np.mean(np.maximum(0.0, 1.0 - tr))
    return {"truth_ratio": float(value), "scores": scores}


def forget_quality(
    unlearned_truth_ratios: Sequence[float], reference_truth_ratios: Sequence[float]
) -> dict[str, float]:
    """TOFU forget quality: p-value of the two-sample Kolmogorov-Smirnov test between per-row truth ratios.

    ``unlearned_truth_ratios``: the unlearned model's truth ratios on the forget set;
    ``reference_truth_ratios``: those of the retain-only (never saw the forget set) model on the same set.
    ``scipy.stats.ks_2samp(unlearned, reference)`` (two-sided, ``method="auto"``), as open-unlearning's
    ``ks_test``. Returns ``{"forget_quality": pvalue, "ks_statistic": D}``; range [0, 1], higher is better.
    """
    _check_rows(len(unlearned_truth_ratios), "unlearned_truth_ratios")
    _check_rows(len(reference_truth_ratios), "reference_truth_ratios")
    res = stats.ks_2samp(np.asarray(unlearned_truth_ratios, float), np.asarray(reference_truth_ratios, float))
    return {"forget_quality": float(res.pvalue), "ks_statistic": float(res.statistic)}


def model_utility(values: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """Harmonic mean of metric values (``scipy.stats.hmean``), as open-unlearning's ``hm_aggregate``.

    TOFU's model utility aggregates 9 values: probability, ROUGE-L recall and truth ratio
    (``true_better``) on each of retain, real authors and world facts. Any zero gives 0 (explicitly,
    without scipy's divide-by-zero warning). Values must be finite and non-negative. Returns
    ``{"model_utility": value}``; range [0, 1] for inputs in [0, 1], higher is better.
    """
    items = list(values.items()) if isinstance(values, Mapping) else [(f"value {i}", v) for i, v in enumerate(values)]
    _check_rows(len(items), "model_utility values")
    for name, v in items:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"model_utility: {name} = {v!r}; values must be finite and >= 0")
    arr = np.asarray([v for _, v in items], dtype=np.float64)
    value = 0.0 if np.any(arr == 0) else float(stats.hmean(arr))
    return {"model_utility": value}


# --------------------------------------------------------------------------------------------------
# Generation metrics
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


RECALLED_THRESHOLD = 0.5


def rouge_l(
    predictions: Sequence[str],
    references: Sequence[str],
    use_stemmer: bool = True,
    recalled_threshold: float = RECALLED_THRESHOLD,
) -> dict[str, Any]:
    """ROUGE-L recall ``LCS(pred, ref) / |ref|`` (in tokens) of each prediction against its reference.

    ``RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction).recall``, as open-unlearning's
    ``rougeL_recall``. An empty (or whitespace-only) prediction scores 0. Returns
    ``{"rouge_l": mean, "recalled": share of rows scoring >= recalled_threshold, "scores": [...]}``; range [0, 1].

    ``recalled`` counts the answers the model still gives: with the default 0.5, at least half of the reference's
    words come back in order (for a one-word answer: the word appears).
    """
    _paired(predictions, references, ("predictions", "references"))
    scorer = _rouge_scorer(use_stemmer)
    scores = [
        scorer.score(ref, pred)["rougeL"].recall if pred.strip() else 0.0
        for pred, ref in zip(predictions, references, strict=True)
    ]
    return {
        "rouge_l": float(np.mean(scores)),
        "recalled": float(np.mean([s >= recalled_threshold for s in scores])),
        "scores": [float(s) for s in scores],
    }


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Normalised exact match and contains-match (SQuAD normalisation: lower-case, no punctuation or articles).

    Per row: ``exact = norm(pred) == norm(ref)``; ``contains = norm(ref) in norm(pred)`` (as a substring).
    A reference that is empty after normalisation raises ``ValueError`` (it would trivially be contained).
    Returns ``{"exact_match": mean exact, "contains": mean contains, "scores": [exact per row]}``; range [0, 1].
    """
    _paired(predictions, references, ("predictions", "references"))
    exact, contains = [], []
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        norm_ref = normalize_answer(ref)
        if not norm_ref:
            raise ValueError(f"references row {i}: empty reference {ref!r} (after normalisation)")
        norm_pred = normalize_answer(pred)
        exact.append(float(norm_pred == norm_ref))
        contains.append(float(norm_ref in norm_pred))
    return {"exact_match": float(np.mean(exact)), "contains": float(np.mean(contains)), "scores": exact}


# --------------------------------------------------------------------------------------------------
# Token-level memorisation (teacher-forced argmax vs. labels)
# --------------------------------------------------------------------------------------------------


def _token_rows(predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]]):
    _paired(predictions, references, ("predictions", "references"))
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(f"row {i}: {len(pred)} predicted tokens but {len(ref)} labels")
        if len(ref) == 0:
            raise ValueError(f"row {i}: empty answer (no label tokens)")
        yield np.asarray(pred) == np.asarray(ref)


def _suffix_start(match: np.ndarray) -> int:
    """The smallest ``k`` with every token from ``k`` on predicted (``len(match)`` when the last one is wrong)."""
    wrong = np.flatnonzero(~match)
    return int(wrong[-1]) + 1 if wrong.size else 0


def extraction_strength(predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Extraction strength (Carlini et al. 2021), exactly as open-unlearning's ``extraction_strength``.

    Per row with teacher-forced argmax tokens ``preds`` and answer labels ``labels`` (length ``L``): ``k`` = the
    smallest index with ``preds[k:] == labels[k:]``, searched over ``0 .. L-1``; when no suffix matches (the last
    token is wrong) the search ends at ``k = L - 1``. ``ES = 1 - k / L``: 1 when every token is predicted, ``1/L``
    when only the last one is, or none (open-unlearning's loop; :func:`strict_extraction_strength` gives 0 then).
    Returns ``{"extraction_strength": mean, "scores": [...]}``; range [0, 1].
    """
    scores = []
    for match in _token_rows(predictions, references):
        k = min(_suffix_start(match), match.size - 1)
        scores.append(1.0 - k / match.size)
    return {"extraction_strength": float(np.mean(scores)), "scores": scores}


def strict_extraction_strength(
    predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """:func:`extraction_strength` without open-unlearning's floor: ``k = L`` (ES 0) when even the last answer token
    is mispredicted, so a model that extracts nothing scores 0, not ``1/L``.
    Returns ``{"extraction_strength": mean, "scores": [...]}``; range [0, 1].
    """
    scores = [1.0 - _suffix_start(match) / match.size for match in _token_rows(predictions, references)]
    return {"extraction_strength": float(np.mean(scores)), "scores": scores}


def exact_memorization(predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Exact memorisation (Tirumala et al. 2022; open-unlearning ``exact_memorization``).

    Per row: the fraction of answer positions where the teacher-forced argmax equals the label,
    ``mean_t [preds_t == labels_t]``. Returns ``{"exact_memorization": mean, "scores": [...]}``; range [0, 1].
    """
    scores = [float(match.mean()) for match in _token_rows(predictions, references)]
    return {"exact_memorization": float(np.mean(scores)), "scores": scores}


# --------------------------------------------------------------------------------------------------
# Membership inference
# --------------------------------------------------------------------------------------------------


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% Prob score: mean of the lowest ``max(1, floor(k * n))`` of ``n`` token log-probabilities."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if lp.size == 0:
        raise ValueError("empty row (no token log-probabilities)")
    return float(lp[: max(1, int(lp.size * k))].mean())


def roc_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC = P(member score > non-member score) + 0.5 P(tie), from average ranks (Mann-Whitney U)."""
    n1, n0 = len(member_scores), len(nonmember_scores)
    _check_rows(n1, "member scores")
    _check_rows(n0, "non-member scores")
    ranks = stats.rankdata(np.concatenate([np.asarray(member_scores, float), np.asarray(nonmember_scores, float)]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def mia_min_k(
    member_logprobs: Sequence[Sequence[float]], nonmember_logprobs: Sequence[Sequence[float]], k: float = 0.4
) -> dict[str, Any]:
    """Min-K% Prob membership inference AUC (Shi et al. 2023; open-unlearning ``mia_min_k``).

    Each row's score is :func:`min_k_score` of its token log-probabilities; the AUC separates
    ``member_logprobs`` (forget rows, label 1) from ``nonmember_logprobs`` (held-out rows, label 0),
    see :func:`roc_auc`. open-unlearning negates the score and labels the held-out rows 1, which gives
    the same AUC. Returns ``{"mia_min_k": auc, "member_scores": [...], "nonmember_scores": [...]}``;
    range [0, 1], 0.5 (indistinguishable) is the unlearning target, 1.0 = forget rows still look memorised.
    """
    members = [_min_k_row(row, k, f"member_logprobs row {i}") for i, row in enumerate(member_logprobs)]
    nonmembers = [_min_k_row(row, k, f"nonmember_logprobs row {i}") for i, row in enumerate(nonmember_logprobs)]
    return {"mia_min_k": roc_auc(members, nonmembers), "member_scores": members, "nonmember_scores": nonmembers}


def privleak(auc: float, reference_auc: float | None = None) -> float:
    """Privacy leakage (MUSE; open-unlearning ``privleak``) of a membership-inference AUC, in percent.

    ``(reference_auc - auc) / (1 - reference_auc + 1e-10) * 100`` with ``auc`` the model's :func:`mia_min_k` AUC
    (forget rows against holdout rows) and ``reference_auc`` the retain model's on the same rows (open-unlearning:
    0.5 when no retain model is given). 0 = as private as the retain model; negative = the forget rows still look
    like members (about -100 for a model that memorised them); positive = unlearned past the retain model.

    >>> privleak(0.5, 0.5)
    0.0
    >>> round(privleak(1.0, 0.5), 6)
    -100.0
    """
    ref = 0.5 if reference_auc is None else reference_auc
    return ((1 - auc) - (1 - ref)) / ((1 - ref) + EPS) * 100


def replacement_share(
    predictions: Sequence[str], candidates: Sequence[str] | Sequence[Sequence[str]], threshold: float = 0.5
) -> dict[str, Any]:
    """Share of answers that are one of the intended replacements (a refusal sentence or the row's own target).

    Per row: the best ROUGE-L F1 (stemmed, as :func:`rouge_l`) between the answer and any candidate;
    the row counts when it reaches ``threshold``. ``candidates``: one list shared by every row (refusal
    sentences) or a list per row. Returns ``{"replacement_share": mean, "scores": [best F1 per row]}``.
    """
    _check_rows(len(predictions), "predictions")
    per_row = isinstance(candidates[0], (list, tuple)) if candidates else False
    if per_row:
        _paired(predictions, candidates, ("predictions", "candidates"))
    scorer = _rouge_scorer(True)
    scores = []
    for i, pred in enumerate(predictions):
        options = candidates[i] if per_row else candidates
        best = max((scorer.score(c, pred)["rougeL"].fmeasure for c in options), default=0.0) if pred.strip() else 0.0
        scores.append(float(best))
    return {"replacement_share": float(np.mean([s >= threshold for s in scores])), "scores": scores}


def _min_k_row(row: Sequence[float], k: float, where: str) -> float:
    try:
        return min_k_score(row, k)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
