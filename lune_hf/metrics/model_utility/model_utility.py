"""`evaluate` module: TOFU model utility, the harmonic mean of utility metrics (open-unlearning ``hm_aggregate``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "TOFU model utility: the harmonic mean (scipy.stats.hmean) of metric values measured on data the model "
    "should keep; TOFU uses 9 values, probability, ROUGE-L recall and truth ratio (true_better) on each of "
    "the retain set, real authors and world facts. Any zero value gives 0, so one collapsed ability sinks the "
    "score. Range: [0, 1] (for inputs in [0, 1]). Direction: higher is better."
)

_CITATION = functional.TOFU_CITATION

_KWARGS_DESCRIPTION = """
Args:
    values (`list` of `float`): the metric values to aggregate, each finite and >= 0
        (for a dict of named values pass `list(d.values())`).
Returns:
    model_utility (`float`): their harmonic mean (0 if any value is 0).
Examples:
    >>> metric = lune_hf.metrics.load("model_utility")
    >>> metric.compute(values=[0.5, 1.0])["model_utility"]  # 2 / (1/0.5 + 1/1) = 2/3
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ModelUtility(evaluate.Metric):
    """Harmonic mean of metric values."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"values": datasets.Value("float64")}),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, values):
        return functional.model_utility(values)
