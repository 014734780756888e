"""`evaluate` module: TOFU forget quality, a KS test on truth ratios (open-unlearning ``ks_test``).

Design: the two samples may have different sizes, so rows are *long format*: each row is one truth ratio
plus a flag saying which model it comes from (``is_reference``: False = the unlearned model, True = the
retain-only reference model). Rows can be streamed with ``add_batch`` in any order.
"""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "TOFU forget quality: the p-value of a two-sided two-sample Kolmogorov-Smirnov test "
    "(scipy.stats.ks_2samp) between the per-row truth ratios of the unlearned model on the forget set and "
    "those of a reference model trained on the retain set only (it never saw the forget set). A high p-value "
    "means the two distributions are indistinguishable, i.e. the unlearned model behaves as if it had never "
    "seen the data. Range: [0, 1]. Direction: higher is better. The KS statistic D is also returned."
)

_CITATION = functional.TOFU_CITATION

_KWARGS_DESCRIPTION = """
Args:
    truth_ratios (`list` of `float`): per-row truth ratios (the `scores` of the `truth_ratio` metric) of
        both models, concatenated in any order.
    is_reference (`list` of `bool`): per row, False for the unlearned model, True for the retain-only
        reference model. Both groups must be non-empty; their sizes may differ.
Returns:
    forget_quality (`float`): KS-test p-value, in [0, 1].
    ks_statistic (`float`): KS statistic D, in [0, 1].
Examples:
    >>> metric = lune_hf.metrics.load("forget_quality")
    >>> unlearned, reference = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]
    >>> metric.compute(truth_ratios=unlearned + reference,
    ...                is_reference=[False] * len(unlearned) + [True] * len(reference))["ks_statistic"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForgetQuality(evaluate.Metric):
    """KS-test p-value between unlearned-model and reference-model truth ratios."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"truth_ratios": datasets.Value("float64"), "is_reference": datasets.Value("bool")}
            ),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, truth_ratios, is_reference):
        unlearned = [tr for tr, ref in zip(truth_ratios, is_reference, strict=True) if not ref]
        reference = [tr for tr, ref in zip(truth_ratios, is_reference, strict=True) if ref]
        return functional.forget_quality(unlearned, reference)
