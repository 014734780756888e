"""`evaluate` module: Min-K% Prob membership-inference AUC (open-unlearning ``mia_min_k``).

Design: members and non-members may be of different sizes, so rows are *long format*: each row is one
text's token log-probabilities plus ``is_member`` (True = forget row, False = held-out row), as in
``roc_auc_score(labels, scores)``. Rows can be streamed with ``add_batch`` in any order.
"""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "Min-K% Prob membership inference (Shi et al.): each row is scored by the mean of its lowest k fraction "
    "of token log-probabilities (default k = 0.4, at least one token), and the metric is the AUC of that "
    "score separating forget rows (members) from held-out rows (non-members), P(member score > non-member "
    "score) + 0.5 P(tie). Range: [0, 1]. Direction: after unlearning, closer to 0.5 is better "
    "(indistinguishable from never-seen data); 1.0 means the forget rows still look memorised, and well below "
    "0.5 means they are now suspiciously unlikely (over-unlearning)."
)

_CITATION = """\
@inproceedings{shi2024detecting,
  title={Detecting Pretraining Data from Large Language Models},
  author={Shi, Weijia and Ajith, Anirudh and Xia, Mengzhou and Huang, Yangsibo and Liu, Daogao and
          Blevins, Terra and Chen, Danqi and Zettlemoyer, Luke},
  booktitle={The Twelfth International Conference on Learning Representations},
  year={2024}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    token_logprobs (`list` of `list` of `float`): per row, the token log-probabilities of the text.
    is_member (`list` of `bool`): per row, True for a forget (member) row, False for a held-out row.
        Both groups must be non-empty; their sizes may differ.
    k (`float`, default 0.4): fraction of lowest-probability tokens averaged per row, in (0, 1].
Returns:
    mia_min_k (`float`): the AUC, in [0, 1].
    member_scores (`list` of `float`): Min-K% scores of the member rows, in input order.
    nonmember_scores (`list` of `float`): Min-K% scores of the non-member rows, in input order.
Examples:
    >>> metric = lune_hf.metrics.load("mia_min_k")
    >>> metric.compute(token_logprobs=[[-0.1, -0.2], [-3.0, -1.0]], is_member=[True, False])["mia_min_k"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MiaMinK(evaluate.Metric):
    """AUC of the Min-K% Prob score, forget rows versus held-out rows."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"token_logprobs": datasets.Sequence(datasets.Value("float64")), "is_member": datasets.Value("bool")}
            ),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, token_logprobs, is_member, k=0.4):
        members = [lp for lp, m in zip(token_logprobs, is_member, strict=True) if m]
        nonmembers = [lp for lp, m in zip(token_logprobs, is_member, strict=True) if not m]
        return functional.mia_min_k(members, nonmembers, k=k)
