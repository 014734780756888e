"""`evaluate` module: exact memorisation, teacher-forced token accuracy (open-unlearning ``exact_memorization``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "Exact memorisation (Tirumala et al.): per row, the fraction of answer positions where the teacher-forced "
    "argmax token equals the label token; the result is the mean over rows. Range: [0, 1]. Direction: on the "
    "forget set lower is better (fewer answer tokens reproduced); on retain sets higher is better."
)

_CITATION = """\
@inproceedings{tirumala2022memorization,
  title={Memorization Without Overfitting: Analyzing the Training Dynamics of Large Language Models},
  author={Tirumala, Kushal and Markosyan, Aram H. and Zettlemoyer, Luke and Aghajanyan, Armen},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per row, the argmax token id at each answer position
        (teacher forcing, aligned with the labels).
    references (`list` of `list` of `int`): per row, the answer's label token ids (same length).
Returns:
    exact_memorization (`float`): mean per-row token accuracy, in [0, 1].
    scores (`list` of `float`): per-row token accuracy.
Examples:
    >>> metric = lune_hf.metrics.load("exact_memorization")
    >>> metric.compute(predictions=[[9, 2, 3, 4]], references=[[1, 2, 3, 4]])["exact_memorization"]  # 3/4
    0.75
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMemorization(evaluate.Metric):
    """Mean teacher-forced token accuracy on the answer."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, predictions, references):
        return functional.exact_memorization(predictions, references)
