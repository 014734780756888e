"""`evaluate` module: length-normalised answer probability (TOFU / open-unlearning ``probability``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "Length-normalised probability of the reference answer under teacher forcing: for each row, "
    "exp(mean token log-probability) = exp(-NLL / |answer|), the geometric mean of the answer's token "
    "probabilities; the result is the mean over rows. Range: [0, 1]. Direction: on the forget set lower is "
    "better (the model no longer finds the forgotten answers likely); on retain sets higher is better."
)

_CITATION = functional.TOFU_CITATION

_KWARGS_DESCRIPTION = """
Args:
    token_logprobs (`list` of `list` of `float`): per row, the log-probability of every answer token
        given the prompt and the previous answer tokens (e.g. from `lune_hf.evaluation.score_answers`).
Returns:
    probability (`float`): mean over rows of exp(mean token log-prob), in [0, 1].
    scores (`list` of `float`): the per-row values.
Examples:
    >>> metric = lune_hf.metrics.load("probability")
    >>> metric.compute(token_logprobs=[[0.0, 0.0], [-1.0, -3.0]])["scores"]  # [exp(0), exp(-2)]
    [1.0, 0.1353352832366127]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Probability(evaluate.Metric):
    """Mean over rows of exp(mean token log-probability of the answer)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"token_logprobs": datasets.Sequence(datasets.Value("float64"))}),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, token_logprobs):
        return functional.probability(token_logprobs)
