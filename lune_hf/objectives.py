"""Unlearning objectives as pure functions of logits, labels and per-sequence log-likelihoods.

Every loss here is a *per-example mean*: each sequence's contribution is computed on its own and
the batch is averaged. Results therefore do not depend on how examples are split into micro-batches,
gradient-accumulation steps or processes (the Trainer divides by the accumulation steps).

Notation: ``l(y|x)`` is the summed negative log-likelihood of the answer tokens (prompt tokens carry
the label ``-100`` and are ignored), ``|y|`` the number of answer tokens, ``ref`` the model before
unlearning (with LoRA: the same weights with the adapter disabled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token logits with labels; return (logits [N, V] at answer positions, targets [N], mask [B, T-1])."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    # Only answer positions go through log-softmax: the vocabulary-sized tensor is never built for prompts.
    return logits[mask].float(), labels[mask], mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every label token, shape [B, T-1] (0 where masked), and the boolean answer mask."""
    sel_logits, targets, mask = _shift(logits, labels)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    if targets.numel():
        out[mask] = sel_logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return out, mask


def greedy_matches(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each label token is the model's most likely next token, shape [B, T-1] (False where masked), and
    the answer mask. Under teacher forcing: while every earlier answer token matched, greedy decoding would have
    produced exactly these tokens."""
    sel_logits, targets, mask = _shift(logits, labels)
    out = torch.zeros(mask.shape, dtype=torch.bool, device=logits.device)
    if targets.numel():
        out[mask] = sel_logits.argmax(-1) == targets
    return out, mask


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor,
                 token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer NLL ``l(y|x)`` per sequence [B] and the number of answer tokens ``|y|`` per sequence [B].

    With `token_weights` (one weight per vocabulary id, [V]) each token's NLL is multiplied by its id's weight:
    ``l_w(y|x) = sum_t w(y_t) * -log p(y_t | x, y_<t)``."""
    logps, mask = token_logprobs(logits, labels)
    if token_weights is not None:
        logps = logps * token_weights.to(logps.device)[labels[:, 1:].clamp(min=0)]
    return -logps.sum(-1), mask.sum(-1)


def specific_token_weights(forget_tokens: Sequence[Sequence[int]], retain_tokens: Sequence[Sequence[int]],
                           vocab_size: int) -> torch.Tensor:
    """How specific each vocabulary id is to the forget answers, [V] in [0, 1]:
    ``w(t) = max(0, 1 - p_retain(t) / p_forget(t))`` with ``p`` the id's share of the answer tokens of each set
    (0 for ids absent from the forget answers).

    Ids the retain answers use as often as the forget answers (function words, the wording both sets share) get 0;
    ids that occur only in the forget answers (the names, places and titles that carry the facts) get 1."""
    def shares(sequences: Sequence[Sequence[int]], name: str) -> torch.Tensor:
        ids = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
        if not ids.numel():
            raise ValueError(f"Specific token weights need answer tokens in the {name} set; it has none.")
        counts = torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
        return counts / counts.sum()

    p_forget, p_retain = shares(forget_tokens, "forget"), shares(retain_tokens, "retain")
    weights = (1.0 - p_retain / p_forget.clamp(min=torch.finfo(torch.float64).tiny)).clamp(min=0.0)
    return torch.where(p_forget > 0, weights, torch.zeros_like(weights)).float()


def _per_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token values within each sequence, then across sequences."""
    counts = mask.sum(-1).clamp(min=1)
    return ((values * mask).sum(-1) / counts).mean()


# --------------------------------------------------------------------------------------------------
# Forget terms
# --------------------------------------------------------------------------------------------------


def nll(nll_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the per-token NLL ``l(y|x) / |y|``: the LUNE / IdK loss on replacement targets."""
    return (nll_sum / n_tokens.clamp(min=1)).mean()


def lune(nll_r_sum: torch.Tensor, n_r: torch.Tensor) -> torch.Tensor:
    """LUNE's forget term (paper Eq. 4): the replacement answer's per-token NLL, prompt masked.

    With `negative_weight` w > 0 the registry's lune loss adds w times a term on the original answer (NPO, DPO or
    distillation, `negative_loss`); w = 0 is this alone."""
    return nll(nll_r_sum, n_r)


def gradient_ascent(nll_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Negated NLL of the forget answers: pushes their likelihood down without bound."""
    return -nll(nll_sum, n_tokens)


def npo(nll_sum: torch.Tensor, ref_nll_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization: ``-(2/beta) mean log sigmoid(beta * (l_theta - l_ref))``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_sum - ref_nll_sum)).mean()


def simnpo(nll_sum: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (reference-free): ``-(2/beta) mean log sigmoid(beta * (l_theta / |y| - delta))``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_sum / n_tokens.clamp(min=1) - delta)).mean()


def dpo(
    chosen_nll: torch.Tensor,
    rejected_nll: torch.Tensor,
    ref_chosen_nll: torch.Tensor,
    ref_rejected_nll: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO with NLLs: ``-(2/beta) mean log sigmoid(beta * ((l_ref(c) - l(c)) - (l_ref(r) - l(r))))``.

    IdK-DPO uses the replacement answer as *chosen* and the true answer as *rejected*.
    The ``2/beta`` scale follows open-unlearning so that numbers are comparable.
    """
    chosen_logratio = ref_chosen_nll - chosen_nll
    rejected_logratio = ref_rejected_nll - rejected_nll
    return -(2.0 / beta) * F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()


def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inverted hinge loss (LoKU): per answer token ``1 + p(y_t) - max_{v != y_t} p(v)``, averaged per sequence."""
    sel_logits, targets, mask = _shift(logits, labels)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    if targets.numel():
        probs = sel_logits.softmax(-1)
        p_true = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        p_other = probs.scatter(-1, targets.unsqueeze(-1), float("-inf")).max(-1).values
        out[mask] = 1.0 + p_true - p_other
    return _per_sequence_mean(out, mask)


# --------------------------------------------------------------------------------------------------
# Retain terms
# --------------------------------------------------------------------------------------------------


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``KL(ref || theta)`` over the vocabulary, one value per row of [N, V] logits."""
    logp = logits.log_softmax(-1)
    logq = ref_logits.log_softmax(-1)
    return (logq.exp() * (logq - logp)).sum(-1)


def kl_divergence(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(ref || theta)`` over the vocabulary at each answer position, averaged per sequence then over the batch."""
    sel_logits, _, mask = _shift(logits, labels)
    sel_ref, _, _ = _shift(ref_logits, labels)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    if sel_logits.numel():
        out[mask] = token_kl(sel_logits, sel_ref)
    return _per_sequence_mean(out, mask)


def answer_preservation(nll_sum: torch.Tensor, refusal_nll_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """Answer preservation on retain prompts (the AP term of Yuan et al., "A Closer Look at Machine Unlearning for
    Large Language Models"): the true answer preferred to a refusal, reference-free,
    ``-(1/beta) mean log sigmoid(beta * (l(refusal | x) - l(y | x)))``. Small while the refusal is far less likely
    than the answer; it grows, and pushes back, once a refusal learnt on the forget set spreads to these prompts."""
    return -(1.0 / beta) * F.logsigmoid(beta * (refusal_nll_sum - nll_sum)).mean()


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


class ForgetBatch:
    """What a forget loss may read from one batch, each computed on first use (a loss that never asks for the
    reference never pays its forward pass).

    `answer()` / `replacement()`: (logits, labels, summed NLL [B], answer tokens [B]) of the original and the
    replacement answers under the trained model; `reference_answer()` / `reference_replacement()`: the summed NLL
    [B] under the reference (the adapter switched off, or `ref_model`). `pushed_answer()` /
    `reference_pushed_answer()`: the original answer's summed NLL as a push on it sees it, each token weighted by
    `token_weights` when given (see [`specific_token_weights`]), unweighted otherwise. `teacher_answer()`: the
    original answer's logits under the teacher (a model that never learnt the forget set), when one is given.
    """

    def __init__(self, stats: Callable[[str], tuple], reference_nll: Callable[..., torch.Tensor],
                 answer_prefix: str = "forget", replacement_prefix: str = "replacement",
                 token_weights: torch.Tensor | None = None,
                 teacher_logits: Callable[[str], torch.Tensor] | None = None) -> None:
        self._stats, self._reference, self._cache = stats, reference_nll, {}
        self._answer, self._replacement = answer_prefix, replacement_prefix
        self._weights, self._teacher = token_weights, teacher_logits
        self.terms: dict[str, torch.Tensor] = {}  # a loss's own terms, logged by the trainer

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def answer(self) -> tuple:
        return self._get("answer", lambda: self._stats(self._answer))

    def replacement(self) -> tuple:
        return self._get("replacement", lambda: self._stats(self._replacement))

    def reference_answer(self) -> torch.Tensor:
        return self._get("reference_answer", lambda: self._reference(self._answer))

    def reference_replacement(self) -> torch.Tensor:
        return self._get("reference_replacement", lambda: self._reference(self._replacement))

    def pushed_answer(self) -> torch.Tensor:
        if self._weights is None:
            return self.answer()[2]
        return self._get("pushed_answer", lambda: sequence_nll(*self.answer()[:2], self._weights)[0])

    def reference_pushed_answer(self) -> torch.Tensor:
        if self._weights is None:
            return self.reference_answer()
        return self._get("reference_pushed_answer", lambda: self._reference(self._answer, self._weights))

    def teacher_answer(self) -> torch.Tensor:
        if self._teacher is None:
            raise ValueError("negative_loss='distill' needs a teacher model (`teacher_model`).")
        return self._get("teacher_answer", lambda: self._teacher(self._answer))


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective: its loss on a [`ForgetBatch`], what it needs from the data and the model, and the settings the
    TOFU recipes use for it. Adding an objective = one entry here (and its hand-computed test)."""

    name: str
    formula: str
    summary: str
    uses_answer: bool  # the true forget answer (the knowledge to remove)
    uses_replacement: bool  # the negative / replacement answer
    needs_reference: bool  # log-probs of the model before unlearning
    needs_retain: bool  # refuses to run without retain data
    loss: Callable[[ForgetBatch, Any], torch.Tensor]  # (batch, LuneConfig) -> the forget term
    refusal_only: bool = False  # ignores the user's replacement column, always answers with a refusal
    recommended: Mapping[str, Any] = field(default_factory=dict)  # TOFU recipe settings; its beta is also the default


def _lune_loss(b: ForgetBatch, args) -> torch.Tensor:
    _, _, nll_r, n_r = b.replacement()
    if args.negative_weight == 0:
        return lune(nll_r, n_r)
    if args.negative_loss == "dpo":
        term = dpo(nll_r, b.answer()[2], b.reference_replacement(), b.reference_answer(), args.beta)
    elif args.negative_loss == "distill":
        logits, labels = b.answer()[:2]
        term = kl_divergence(logits, b.teacher_answer(), labels)
    else:
        term = npo(b.pushed_answer(), b.reference_pushed_answer(), args.beta)
    b.terms["loss/negative"] = term.detach()  # logged beside loss/forget, unweighted
    return lune(nll_r, n_r) + args.negative_weight * term


NEGATIVE_LOSSES = ("npo", "dpo", "distill")  # lune's term on the original answer (`negative_loss`)
NEGATIVE_TOKENS = ("all", "specific")  # which of the original answer's tokens lune's NPO term pushes down


DEFAULT_BETA = 0.1  # inverse temperature of the reference-based terms (NPO, DPO, preservation) unless set


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in [
        ObjectiveSpec(
            "lune",
            "L = E[ -log p(y- | x) / |y-| ]",
            "LUNE (paper Eq. 4): NLL on negative / replacement answers, prompt masked.",
            uses_answer=False,
            uses_replacement=True,
            needs_reference=False,
            loss=_lune_loss,
            recommended={"learning_rate": 2e-4, "retain": True},
            needs_retain=False,
        ),
        ObjectiveSpec(
            "ga",
            "L = -E[ -log p(y | x) / |y| ]",
            "Gradient ascent on the forget answers. Diverges: needs an early stop.",
            uses_answer=True,
            uses_replacement=False,
            needs_reference=False,
            loss=lambda b, args: gradient_ascent(*b.answer()[2:]),
            recommended={"learning_rate": 1e-4, "retain": False},
            needs_retain=False,
        ),
        ObjectiveSpec(
            "graddiff",
            "L = -NLL(forget) + retain_weight * retain term",
            "Gradient difference: ascent on forget, descent (NLL) or KL on retain.",
            uses_answer=True,
            uses_replacement=False,
            needs_reference=False,
            loss=lambda b, args: gradient_ascent(*b.answer()[2:]),
            recommended={"learning_rate": 1e-4, "retain": True},
            needs_retain=True,
        ),
        ObjectiveSpec(
            "npo",
            "L = -(2/beta) E[ log sigmoid(beta * (l_theta(y|x) - l_ref(y|x))) ]",
            "Negative Preference Optimization: a bounded gradient ascent against the frozen reference.",
            uses_answer=True,
            uses_replacement=False,
            needs_reference=True,
            loss=lambda b, args: npo(b.answer()[2], b.reference_answer(), args.beta),
            recommended={"learning_rate": 2e-4, "retain": True, "beta": DEFAULT_BETA},
            needs_retain=False,
        ),
        ObjectiveSpec(
            "simnpo",
            "L = -(2/beta) E[ log sigmoid(beta * (l_theta(y|x) / |y| - delta)) ]",
            "SimNPO: length-normalised NPO without a reference model.",
            uses_answer=True,
            uses_replacement=False,
            needs_reference=False,
            loss=lambda b, args: simnpo(*b.answer()[2:], args.beta, args.delta),
            recommended={"learning_rate": 2e-4, "retain": True, "beta": 2.5, "delta": 0.0},
            needs_retain=False,
        ),
        ObjectiveSpec(
            "idk_nll",
            "L = E[ -log p(y_idk | x) / |y_idk| ]",
            "IdK fine-tuning: NLL on refusal answers (the LUNE loss with refusal targets only).",
            uses_answer=False,
            uses_replacement=True,
            needs_reference=False,
            loss=lambda b, args: nll(*b.replacement()[2:]),
            recommended={"learning_rate": 2e-4, "retain": True},
            needs_retain=False,
            refusal_only=True,
        ),
        ObjectiveSpec(
            "idk_dpo",
            "L = -(2/beta) E[ log sigmoid(beta * (log-ratio(y_idk) - log-ratio(y))) ]",
            "DPO with the refusal as chosen and the true answer as rejected, reference = adapter off.",
            uses_answer=True,
            uses_replacement=True,
            needs_reference=True,
            loss=lambda b, args: dpo(b.replacement()[2], b.answer()[2], b.reference_replacement(),
                                      b.reference_answer(), args.beta),
            recommended={"learning_rate": 2e-4, "retain": True, "beta": DEFAULT_BETA},
            needs_retain=False,
        ),
        ObjectiveSpec(
            "ihl",
            "L = E_t[ 1 + p(y_t) - max_{v != y_t} p(v) ]",
            "Inverted hinge loss (LoKU): lowers the true token only until another token wins.",
            uses_answer=True,
            uses_replacement=False,
            needs_reference=False,
            loss=lambda b, args: inverted_hinge(*b.answer()[:2]),
            recommended={"learning_rate": 2e-4, "retain": True},
            needs_retain=False,
        ),
    ]
}

RETAIN_LOSSES = ("nll", "kl", "none")
