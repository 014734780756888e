"""`evaluate` module: TOFU truth ratio (open-unlearning ``truth_ratio``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "TOFU truth ratio: per row, tr = exp(-wrong_loss) / (exp(-correct_loss) + 1e-10), where correct_loss is "
    "the per-token NLL of the paraphrased correct answer and wrong_loss the mean over the perturbed (wrong) "
    "answers of their per-token NLL, i.e. how likely wrong answers are relative to the right one. "
    "Aggregation, as in open-unlearning: aggregator='closer_to_1_better' (forget set) gives "
    "mean(min(tr, 1/(tr + 1e-10))), where 1 means the model no longer prefers the true answer; "
    "aggregator='true_better' (retain, real authors, world facts; a model-utility input) gives "
    "mean(max(0, 1 - tr)), where 1 means the true answer is far more likely. Range: [0, 1] for the aggregate "
    "(per-row ratios lie in [0, inf)). Direction: higher is better for both aggregators."
)

_CITATION = functional.TOFU_CITATION

_KWARGS_DESCRIPTION = """
Args:
    paraphrased_logprobs (`list` of `list` of `float`): per row, token log-probabilities of the paraphrased
        correct answer.
    perturbed_logprobs (`list` of `list` of `list` of `float`): per row, one token log-probability list per
        perturbed (wrong) answer.
    aggregator (`str`, required): "closer_to_1_better" (forget set) or "true_better" (retain-type sets).
Returns:
    truth_ratio (`float`): the aggregate, in [0, 1].
    scores (`list` of `float`): per-row truth ratios.
Examples:
    >>> metric = lune_hf.metrics.load("truth_ratio")
    >>> out = metric.compute(paraphrased_logprobs=[[-1.0]], perturbed_logprobs=[[[-2.0], [-2.0]]],
    ...                      aggregator="true_better")  # tr = exp(-2) / exp(-1) = exp(-1)
    >>> round(out["truth_ratio"], 4)  # 1 - exp(-1)
    0.6321
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TruthRatio(evaluate.Metric):
    """TOFU truth ratio with open-unlearning's aggregators."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "paraphrased_logprobs": datasets.Sequence(datasets.Value("float64")),
                    "perturbed_logprobs": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                }
            ),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, paraphrased_logprobs, perturbed_logprobs, aggregator=None):
        if aggregator is None:
            raise ValueError(f"truth_ratio needs aggregator=, one of {functional.TRUTH_RATIO_AGGREGATORS}")
        return functional.truth_ratio(paraphrased_logprobs, perturbed_logprobs, aggregator)
