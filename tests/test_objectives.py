"""Every objective against a hand computation on fixed logits."""

import math

import pytest
import torch

from lune_hf import objectives as obj

LN = math.log

# One sequence, vocabulary of 3, prompt = token 0 (masked), answer = tokens 1, 2.
# Position 0 predicts label 1 from logits [0, ln 2, 0]  -> softmax [1/4, 1/2, 1/4], p(1) = 1/2
# Position 1 predicts label 2 from logits [ln 3, 0, 0]  -> softmax [3/5, 1/5, 1/5], p(2) = 1/5
LOGITS = torch.tensor([[[0.0, LN(2), 0.0], [LN(3), 0.0, 0.0], [0.0, 0.0, 0.0]]])
LABELS = torch.tensor([[-100, 1, 2]])
NLL_SUM = LN(2) + LN(5)  # = ln 10


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sequence_nll_by_hand():
    nll_sum, n = obj.sequence_nll(LOGITS, LABELS)
    assert nll_sum.item() == pytest.approx(LN(10), abs=1e-6)
    assert n.tolist() == [2]


def test_weighted_sequence_nll_by_hand():
    # Token 1 (NLL ln 2) weighted 0.5, token 2 (NLL ln 5) weighted 1; token 0 is the masked prompt.
    weights = torch.tensor([7.0, 0.5, 1.0])
    nll_sum, n = obj.sequence_nll(LOGITS, LABELS, weights)
    assert nll_sum.item() == pytest.approx(0.5 * LN(2) + LN(5), abs=1e-6)
    assert n.tolist() == [2]  # the token count is unweighted
    assert obj.sequence_nll(LOGITS, LABELS, torch.ones(3))[0].item() == pytest.approx(LN(10), abs=1e-6)


def test_specific_token_weights_by_hand():
    # forget answer tokens 1, 2, 2, 3: shares 1/4, 1/2, 1/4; retain 1, 1, 2, 4: shares 1/2, 1/4, 0, 1/4.
    weights = obj.specific_token_weights([[1, 2], [2, 3]], [[1, 1, 2, 4]], vocab_size=6)
    # w = max(0, 1 - p_retain / p_forget): 1 -> max(0, 1 - 2) = 0, 2 -> 1 - 1/2, 3 -> 1 (forget only),
    # 4 and the unused ids 0, 5 -> 0 (absent from the forget answers).
    assert weights.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="answer tokens in the retain set"):
        obj.specific_token_weights([[1]], [[]], vocab_size=3)


def test_token_logprobs_mask_prompt():
    logps, mask = obj.token_logprobs(LOGITS, LABELS)
    assert mask.tolist() == [[True, True]]
    assert logps[0].tolist() == pytest.approx([-LN(2), -LN(5)], abs=1e-6)


def test_greedy_matches_by_hand():
    # position 0: argmax is token 1 = the label (hit); position 1: argmax is token 0, the label is 2 (miss)
    hits, mask = obj.greedy_matches(LOGITS, LABELS)
    assert hits.tolist() == [[True, False]] and mask.tolist() == [[True, True]]
    # label 1 masked: position 0 (argmax 1) is not scored; position 1 predicts label 0, its argmax (hit)
    masked, mask = obj.greedy_matches(LOGITS, torch.tensor([[-100, -100, 0]]))
    assert masked.tolist() == [[False, True]] and mask.tolist() == [[False, True]]


def test_nll_and_gradient_ascent_are_per_sequence_means():
    nll_sum = torch.tensor([LN(10), 3.0])
    n = torch.tensor([2, 3])
    # (ln10 / 2 + 3 / 3) / 2
    expected = (LN(10) / 2 + 1.0) / 2
    assert obj.nll(nll_sum, n).item() == pytest.approx(expected)
    assert obj.gradient_ascent(nll_sum, n).item() == pytest.approx(-expected)


def test_npo_by_hand():
    beta = 0.1
    nll_sum, ref = torch.tensor([2.0, 5.0]), torch.tensor([3.0, 1.0])
    # -(2/beta) * mean(logsig(beta*(2-3)), logsig(beta*(5-1)))
    expected = -(2 / beta) * (logsig(-0.1) + logsig(0.4)) / 2
    assert obj.npo(nll_sum, ref, beta).item() == pytest.approx(expected, rel=1e-6)
    # At the reference (l_theta = l_ref) NPO equals (2/beta) ln 2.
    assert obj.npo(ref, ref, beta).item() == pytest.approx(2 / beta * LN(2), rel=1e-6)


def test_lune_is_the_replacement_nll_by_hand():
    nll_r, n_r = torch.tensor([LN(10), 3.0]), torch.tensor([2, 3])
    # the paper's Eq. 4: mean over rows of the per-token NLL of the replacement answer
    assert obj.lune(nll_r, n_r).item() == pytest.approx((LN(10) / 2 + 1.0) / 2)


def test_answer_preservation_by_hand():
    beta = 0.1
    answer, refusal = torch.tensor([10.0, 4.0]), torch.tensor([30.0, 5.0])
    # -(1/0.1) * mean(logsig(0.1 * (30 - 10)), logsig(0.1 * (5 - 4)))
    want = -(1 / beta) * (logsig(2.0) + logsig(0.1)) / 2
    assert obj.answer_preservation(answer, refusal, beta).item() == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(3.8566, abs=1e-4)
    # A refusal as likely as the answer: (1/beta) ln 2; a refusal far less likely: close to 0.
    assert obj.answer_preservation(answer, answer, beta).item() == pytest.approx(LN(2) / beta, rel=1e-6)
    assert obj.answer_preservation(answer, answer + 200, beta).item() < 1e-6


def test_simnpo_by_hand():
    beta, delta = 2.0, 0.5
    nll_sum, n = torch.tensor([4.0]), torch.tensor([2])
    # -(2/2) * logsig(2 * (4/2 - 0.5)) = -logsig(3)
    assert obj.simnpo(nll_sum, n, beta, delta).item() == pytest.approx(-logsig(3.0), rel=1e-6)


def test_dpo_by_hand():
    beta = 0.5
    # chosen log-ratio = ref_c - c = 4 - 1 = 3 ; rejected log-ratio = ref_r - r = 2 - 6 = -4
    loss = obj.dpo(torch.tensor([1.0]), torch.tensor([6.0]), torch.tensor([4.0]), torch.tensor([2.0]), beta)
    assert loss.item() == pytest.approx(-(2 / beta) * logsig(0.5 * 7), rel=1e-6)


def test_inverted_hinge_by_hand():
    # position 0: 1 + 1/2 - 1/4 = 1.25 ; position 1: 1 + 1/5 - 3/5 = 0.6 ; mean 0.925
    assert obj.inverted_hinge(LOGITS, LABELS).item() == pytest.approx(0.925, abs=1e-6)


def test_kl_divergence_by_hand():
    ref = torch.zeros_like(LOGITS)  # uniform q = 1/3
    pos0 = (LN((1 / 3) / (1 / 4)) + LN((1 / 3) / (1 / 2)) + LN((1 / 3) / (1 / 4))) / 3
    pos1 = (LN((1 / 3) / (3 / 5)) + 2 * LN((1 / 3) / (1 / 5))) / 3
    assert obj.kl_divergence(LOGITS, ref, LABELS).item() == pytest.approx((pos0 + pos1) / 2, abs=1e-6)
    assert obj.kl_divergence(LOGITS, LOGITS, LABELS).item() == pytest.approx(0.0, abs=1e-6)


def test_fully_masked_sequence_contributes_zero_tokens():
    labels = torch.full((1, 3), -100)
    nll_sum, n = obj.sequence_nll(LOGITS, labels)
    assert n.item() == 0 and nll_sum.item() == 0
    assert obj.nll(nll_sum, n).item() == 0


@pytest.mark.parametrize("name", list(obj.OBJECTIVES))
def test_each_registry_entry_is_complete(name):
    spec = obj.OBJECTIVES[name]
    assert spec.name == name and spec.formula.startswith("L =") and spec.summary
    assert callable(spec.loss) and (spec.uses_answer or spec.uses_replacement)
    assert spec.recommended["learning_rate"] > 0 and isinstance(spec.recommended["retain"], bool)


@pytest.mark.parametrize("name", list(obj.OBJECTIVES))
def test_each_loss_reads_only_what_its_spec_declares(name):
    """The spec's `uses_*` / `needs_reference` flags are what the trainer tokenises and computes: a loss that
    read anything else would fail on real batches."""
    spec = obj.OBJECTIVES[name]
    asked: set[str] = set()

    def stats(prefix):
        asked.add(prefix)
        return LOGITS, LABELS, torch.tensor([LN(10)]), torch.tensor([2])

    def reference(prefix):
        asked.add(f"reference_{prefix}")
        return torch.tensor([3.0])

    class Args:
        beta, delta, negative_weight = 0.1, 0.0, 0.0

    loss = spec.loss(obj.ForgetBatch(stats, reference), Args())
    assert torch.isfinite(loss)
    assert ("forget" in asked) == spec.uses_answer and ("replacement" in asked) == spec.uses_replacement
    assert any(a.startswith("reference_") for a in asked) == spec.needs_reference
