"""`evaluate` module: normalised exact match and contains-match of generated answers."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "Normalised exact match of each generated answer with its reference (both lower-cased, with punctuation "
    "and the articles a/an/the removed and spaces squeezed, as in SQuAD), and contains-match (the normalised "
    "reference occurs as a substring of the normalised prediction); both are means over rows of 0/1 values. "
    "An empty reference is an error. Range: [0, 1]. Direction: on the forget set lower is better (the model "
    "no longer states the forgotten answers); on retain sets higher is better."
)

_CITATION = """\
@inproceedings{rajpurkar2016squad,
  title={{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={Proceedings of EMNLP},
  pages={2383--2392},
  year={2016}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): reference answers, one per prediction (non-empty after normalisation).
Returns:
    exact_match (`float`): fraction of rows whose normalised prediction equals the normalised reference.
    contains (`float`): fraction of rows whose normalised prediction contains the normalised reference.
    scores (`list` of `float`): per-row exact match (0.0 or 1.0).
Examples:
    >>> metric = lune_hf.metrics.load("exact_match")
    >>> metric.compute(predictions=["The Paris.", "It is Paris"], references=["paris", "Paris"])
    {'exact_match': 0.5, 'contains': 1.0, 'scores': [1.0, 0.0]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Normalised exact match and contains-match."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return functional.exact_match(predictions, references)
