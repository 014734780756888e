"""Unlearning metrics: pure functions against hand-computed values, and the offline `evaluate` modules."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest

from lune_hf import metrics
from lune_hf.metrics import functional as F

pytestmark = pytest.mark.xdist_group("metrics")  # its module fixtures run once, on one worker

E = math.e


# --------------------------------------------------------------------------------------------------
# probability
# --------------------------------------------------------------------------------------------------


def test_probability_hand_computed():
    # row 0: mean(0, 0) = 0 -> exp(0) = 1; row 1: mean(-1, -3) = -2 -> exp(-2) = 0.135335...
    out = F.probability([[0.0, 0.0], [-1.0, -3.0]])
    assert out["scores"] == pytest.approx([1.0, math.exp(-2)])
    assert out["probability"] == pytest.approx((1.0 + math.exp(-2)) / 2)  # 0.567667...


def test_probability_single_row_and_empty():
    # one token with p = 0.5 -> exp(log 0.5) = 0.5
    assert F.probability([[math.log(0.5)]])["probability"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="row 1"):
        F.probability([[-1.0], []])
    with pytest.raises(ValueError, match="no rows"):
        F.probability([])


# --------------------------------------------------------------------------------------------------
# rouge_l
# --------------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed():
    # reference: the cat sat on the mat (6 tokens); prediction: the cat on a mat
    # LCS = the, cat, on, mat = 4 tokens -> recall 4/6. Identical -> 1. Empty -> 0.
    out = F.rouge_l(
        ["the cat on a mat", "the cat sat on the mat", "", "   "],
        ["the cat sat on the mat"] * 4,
    )
    assert out["scores"] == pytest.approx([4 / 6, 1.0, 0.0, 0.0])
    assert out["rouge_l"] == pytest.approx((4 / 6 + 1.0) / 4)


def test_rouge_l_stemming_and_single_row():
    # "cats running" vs "cat runs": Porter stems cat/run on both sides -> LCS 2/2 = 1; without stemming 0/2.
    assert F.rouge_l(["cats running"], ["cat runs"])["rouge_l"] == 1.0
    assert F.rouge_l(["cats running"], ["cat runs"], use_stemmer=False)["rouge_l"] == 0.0
    with pytest.raises(ValueError, match="1 rows but references has 2"):
        F.rouge_l(["a"], ["a", "b"])


# --------------------------------------------------------------------------------------------------
# exact_match
# --------------------------------------------------------------------------------------------------


def test_exact_match_hand_computed():
    # norm: "paris" == "paris" (exact 1, contains 1); "it is paris" != "paris" (exact 0, contains 1);
    # "" vs "rome" (exact 0, contains 0) -> exact 1/3, contains 2/3.
    out = F.exact_match(["The Paris.", "It is Paris", ""], ["paris", "Paris", "Rome"])
    assert out["scores"] == [1.0, 0.0, 0.0]
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["contains"] == pytest.approx(2 / 3)


def test_exact_match_identical_empty_and_bad_reference():
    assert F.exact_match(["Jane Austen"], ["Jane Austen"]) == {"exact_match": 1.0, "contains": 1.0, "scores": [1.0]}
    assert F.exact_match([""], ["Jane Austen"]) == {"exact_match": 0.0, "contains": 0.0, "scores": [0.0]}
    with pytest.raises(ValueError, match="row 1"):
        F.exact_match(["a", "b"], ["x", ""])
    with pytest.raises(ValueError, match="row 0"):  # "The." normalises to ""
        F.exact_match(["b"], ["The."])


# --------------------------------------------------------------------------------------------------
# truth_ratio
# --------------------------------------------------------------------------------------------------

# row 0: correct loss = -mean(-1, -1) = 1; wrong losses: -mean(-3) = 3 and -mean(-1, -1, -1) = 1 -> mean 2
#        (pooling the 4 tokens would give 1.5) -> tr0 = exp(-2) / exp(-1) = e^-1
# row 1: correct loss 2; wrong losses 1, 1 -> mean 1 -> tr1 = exp(-1) / exp(-2) = e
PARA = [[-1.0, -1.0], [-2.0]]
PERT = [[[-3.0], [-1.0, -1.0, -1.0]], [[-1.0], [-1.0]]]


def test_truth_ratio_hand_computed():
    forget = F.truth_ratio(PARA, PERT, "closer_to_1_better")
    assert forget["scores"] == pytest.approx([1 / E, E], rel=1e-9)
    # closer_to_1_better: mean(min(e^-1, e), min(e, e^-1)) = e^-1
    assert forget["truth_ratio"] == pytest.approx(1 / E, rel=1e-9)
    # true_better: mean(max(0, 1 - e^-1), max(0, 1 - e)) = (0.632121 + 0) / 2
    retain = F.truth_ratio(PARA, PERT, "true_better")
    assert retain["truth_ratio"] == pytest.approx((1 - 1 / E) / 2, rel=1e-9)


def test_truth_ratio_of_one_and_errors():
    # equal likelihoods: tr = p / (p + 1e-10) with p = e^-0.5, i.e. 1 - 1.6e-10
    one = F.truth_ratio([[-0.5]], [[[-0.5], [-0.5, -0.5]]], "closer_to_1_better")
    assert one["scores"][0] == pytest.approx(1.0, abs=1e-9)
    assert one["truth_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert F.truth_ratio([[-0.5]], [[[-0.5]]], "true_better")["truth_ratio"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="aggregator"):
        F.truth_ratio(PARA, PERT, "mean")
    with pytest.raises(ValueError, match="row 1: no perturbed"):
        F.truth_ratio(PARA, [PERT[0], []], "true_better")


# --------------------------------------------------------------------------------------------------
# forget_quality
# --------------------------------------------------------------------------------------------------


def test_forget_quality_hand_computed():
    # fully separated samples of 3 and 3: D = 1; exact two-sided p = 2 / C(6, 3) = 2 / 20 = 0.1
    out = F.forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert out == pytest.approx({"forget_quality": 0.1, "ks_statistic": 1.0})
    # different sizes 3 and 4: p = 2 / C(7, 3) = 2 / 35
    assert F.forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7])["forget_quality"] == pytest.approx(2 / 35)
    # identical samples: D = 0, p = 1 (the best possible)
    assert F.forget_quality([0.5, 0.5], [0.5, 0.5]) == {"forget_quality": 1.0, "ks_statistic": 0.0}
    with pytest.raises(ValueError, match="reference_truth_ratios"):
        F.forget_quality([0.5], [])


# --------------------------------------------------------------------------------------------------
# model_utility
# --------------------------------------------------------------------------------------------------


def test_model_utility_hand_computed():
    # hmean(0.5, 1) = 2 / (2 + 1) = 2/3; hmean(0.5, 0.25, 1) = 3 / (2 + 4 + 1) = 3/7
    assert F.model_utility([0.5, 1.0])["model_utility"] == pytest.approx(2 / 3)
    assert F.model_utility({"a": 0.5, "b": 0.25, "c": 1.0})["model_utility"] == pytest.approx(3 / 7)
    assert F.model_utility([0.3])["model_utility"] == pytest.approx(0.3)


def test_model_utility_zero_and_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning from scipy
        assert F.model_utility([0.9, 0.0, 0.8]) == {"model_utility": 0.0}
    with pytest.raises(ValueError, match="retain_rouge"):
        F.model_utility({"retain_rouge": -0.1})
    with pytest.raises(ValueError, match="no rows"):
        F.model_utility([])


# --------------------------------------------------------------------------------------------------
# extraction_strength / exact_memorization
# --------------------------------------------------------------------------------------------------

LABELS = [[1, 2, 3, 4]] * 4
PREDS = [
    [1, 2, 3, 4],  # all correct: k = 0 -> ES 1; EM 4/4
    [9, 2, 3, 4],  # suffix from 1 correct: k = 1 -> ES 3/4; EM 3/4
    [1, 2, 9, 4],  # last mismatch at 2: k = 3 -> ES 1/4 (the correct prefix does not count); EM 3/4
    [1, 2, 3, 9],  # last token wrong: open-unlearning's loop stops at k = L - 1 = 3 -> ES 1/4; strict: 0; EM 3/4
]


def test_extraction_strength_hand_computed():
    out = F.extraction_strength(PREDS, LABELS)
    assert out["scores"] == [1.0, 0.75, 0.25, 0.25]
    assert out["extraction_strength"] == pytest.approx(0.5625)  # (1 + 0.75 + 0.25 + 0.25) / 4
    strict = F.strict_extraction_strength(PREDS, LABELS)
    assert strict["scores"] == [1.0, 0.75, 0.25, 0.0]
    assert strict["extraction_strength"] == pytest.approx(0.5)  # (1 + 0.75 + 0.25 + 0) / 4
    assert F.extraction_strength([[7]], [[5]])["scores"] == [1.0]  # one token: open-unlearning's k = 0 -> 1


def test_privleak_hand_computed():
    assert F.privleak(0.8, 0.6) == pytest.approx((0.4 - 0.2) / 0.4 * 100 * -1)  # (0.2 - 0.4) / 0.4 * 100 = -50
    assert F.privleak(0.3) == pytest.approx((0.7 - 0.5) / 0.5 * 100)  # no reference: 0.5 -> 40
    assert F.privleak(0.6, 0.6) == pytest.approx(0.0)


def test_replacement_share_hand_computed():
    refusals = ["I don't know.", "That is not something I can answer."]
    out = F.replacement_share(["I do not know.", "I don't know.", "The author is Jane Doe.", ""], refusals)
    # "i do not know" vs "i don t know" (rouge splits at the apostrophe): LCS "i know" = 2 of 4 tokens each side
    # -> F1 0.5, which reaches the threshold; exact -> 1; unrelated -> low; empty -> 0
    assert out["scores"][:2] == [pytest.approx(0.5), pytest.approx(1.0)]
    assert out["scores"][2] < 0.5 and out["scores"][3] == 0.0
    assert out["replacement_share"] == 0.5
    assert F.replacement_share(["I do not know."], refusals, threshold=0.6)["replacement_share"] == 0.0
    per_row = F.replacement_share(["Paris", "Rome"], [["Paris"], ["Berlin"]])
    assert per_row["replacement_share"] == 0.5


def test_exact_memorization_hand_computed():
    out = F.exact_memorization(PREDS, LABELS)
    assert out["scores"] == [1.0, 0.75, 0.75, 0.75]
    assert out["exact_memorization"] == pytest.approx(0.8125)  # 3.25 / 4
    assert F.exact_memorization([[5]], [[5]])["exact_memorization"] == 1.0  # single row, single token


@pytest.mark.parametrize("fn", [F.extraction_strength, F.exact_memorization])
def test_token_metrics_errors(fn):
    with pytest.raises(ValueError, match="row 1: 2 predicted tokens but 3 labels"):
        fn([[1], [1, 2]], [[1], [1, 2, 3]])
    with pytest.raises(ValueError, match="row 0: empty answer"):
        fn([[]], [[]])


# --------------------------------------------------------------------------------------------------
# mia_min_k
# --------------------------------------------------------------------------------------------------


def test_min_k_score():
    # 5 tokens, k = 0.4 -> floor(2.0) = 2 lowest: (-5 + -4) / 2 = -4.5
    assert F.min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0], 0.4) == -4.5
    # 2 tokens, k = 0.1 -> floor(0.2) = 0 -> at least 1: -2
    assert F.min_k_score([-1.0, -2.0], 0.1) == -2.0
    assert F.min_k_score([-1.0, -2.0], 1.0) == -1.5
    with pytest.raises(ValueError, match="k must be"):
        F.min_k_score([-1.0], 0.0)


def test_roc_auc_ties():
    # pairs (member, non-member): (3,1) 1, (3,2) 1, (2,1) 1, (2,2) tie 0.5 -> 3.5 / 4
    assert F.roc_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert F.roc_auc([1.0, 1.0], [1.0]) == 0.5  # all ties
    assert F.roc_auc([2.0], [1.0]) == 1.0
    assert F.roc_auc([1.0], [2.0]) == 0.0


def test_mia_min_k_hand_computed():
    # member: 5 tokens, 2 lowest (-0.5, -0.4) -> -0.45
    # non-members: [-1.0, -0.1] -> floor(0.8) = 0 -> 1 token: -1.0; [-0.45] -> -0.45
    # AUC: (-0.45 > -1.0) 1 + (-0.45 == -0.45) 0.5 -> 1.5 / 2 = 0.75
    out = F.mia_min_k([[-0.1, -0.2, -0.3, -0.4, -0.5]], [[-1.0, -0.1], [-0.45]])
    assert out["member_scores"] == pytest.approx([-0.45])
    assert out["nonmember_scores"] == pytest.approx([-1.0, -0.45])
    assert out["mia_min_k"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="nonmember_logprobs row 0: empty row"):
        F.mia_min_k([[-1.0]], [[]])


# --------------------------------------------------------------------------------------------------
# evaluate modules
# --------------------------------------------------------------------------------------------------

# name -> (compute kwargs for the module, the same data through the pure function)
CASES = {
    "probability": (
        {"token_logprobs": [[0.0, 0.0], [-1.0, -3.0]]},
        lambda: F.probability([[0.0, 0.0], [-1.0, -3.0]]),
    ),
    "rouge_l": (
        {"predictions": ["the cat on a mat", ""], "references": ["the cat sat on the mat", "x"]},
        lambda: F.rouge_l(["the cat on a mat", ""], ["the cat sat on the mat", "x"]),
    ),
    "exact_match": (
        {"predictions": ["The Paris.", "It is Paris", ""], "references": ["paris", "Paris", "Rome"]},
        lambda: F.exact_match(["The Paris.", "It is Paris", ""], ["paris", "Paris", "Rome"]),
    ),
    "truth_ratio": (
        {"paraphrased_logprobs": PARA, "perturbed_logprobs": PERT, "aggregator": "true_better"},
        lambda: F.truth_ratio(PARA, PERT, "true_better"),
    ),
    "forget_quality": (
        {"truth_ratios": [0.1, 0.4, 0.2, 0.5, 0.3, 0.6, 0.7], "is_reference": [0, 1, 0, 1, 0, 1, 1]},
        lambda: F.forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]),
    ),
    "model_utility": (
        {"values": [0.5, 0.25, 1.0]},
        lambda: F.model_utility([0.5, 0.25, 1.0]),
    ),
    "extraction_strength": (
        {"predictions": PREDS, "references": LABELS},
        lambda: F.extraction_strength(PREDS, LABELS),
    ),
    "exact_memorization": (
        {"predictions": PREDS, "references": LABELS},
        lambda: F.exact_memorization(PREDS, LABELS),
    ),
    "mia_min_k": (
        {
            "token_logprobs": [[-1.0, -0.1], [-0.1, -0.2, -0.3, -0.4, -0.5], [-0.45]],
            "is_member": [False, True, False],
            "k": 0.4,
        },
        lambda: F.mia_min_k([[-0.1, -0.2, -0.3, -0.4, -0.5]], [[-1.0, -0.1], [-0.45]], k=0.4),
    ),
}


@pytest.fixture(scope="module")
def modules():
    """Every metric loaded once (loading copies the script into evaluate's module cache)."""
    return {name: metrics.load(name, keep_in_memory=True) for name in metrics.METRICS}


def test_cases_cover_every_metric():
    assert set(CASES) == set(metrics.METRICS)


@pytest.mark.parametrize("name", metrics.METRICS)
def test_module_matches_pure_function(modules, name):
    import evaluate

    module = modules[name]
    assert isinstance(module, evaluate.EvaluationModule)
    kwargs, expected = CASES[name]
    assert module.compute(**kwargs) == expected()


@pytest.mark.parametrize("name", metrics.METRICS)
def test_module_computes_through_functional(modules, name, monkeypatch):
    monkeypatch.setattr(F, name, lambda *args, **kwargs: {"from_functional": name})
    kwargs, _ = CASES[name]
    assert modules[name].compute(**kwargs) == {"from_functional": name}


@pytest.mark.parametrize("name", metrics.METRICS)
def test_descriptions(modules, name):
    info = modules[name]
    description = metrics.describe(name)
    assert description and description == info.description
    assert "Range: [0, 1]" in description and "Direction:" in description and "better" in description
    assert info.citation.strip() and info.inputs_description.strip()


def test_truth_ratio_module_needs_aggregator(modules):
    with pytest.raises(ValueError, match="aggregator"):
        modules["truth_ratio"].compute(paraphrased_logprobs=PARA, perturbed_logprobs=PERT)


def test_unknown_name():
    with pytest.raises(ValueError, match="rouge.*valid names: probability, rouge_l, exact_match"):
        metrics.load("rouge")
    with pytest.raises(ValueError, match="valid names"):
        metrics.describe("accuracy")


def test_load_never_touches_the_network_without_hf_hub_offline(tmp_path):
    """In a fresh interpreter without HF_HUB_OFFLINE, with sockets and DNS blocked, loading still works."""
    script = """
import socket
attempts = []
def blocked(*args, **kwargs):
    attempts.append(args[1:2] or args[:1])
    raise OSError("network blocked by the test")
socket.socket.connect = blocked
socket.getaddrinfo = blocked
from lune_hf import metrics
value = metrics.load("model_utility").compute(values=[0.5, 1.0])["model_utility"]
print(attempts)
print(value)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # a cold module cache: the script is copied afresh
    env["HF_METRICS_CACHE"] = str(tmp_path / "metrics")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    attempts, value = proc.stdout.strip().splitlines()[-2:]
    assert attempts == "[]"
    assert float(value) == pytest.approx(2 / 3)
