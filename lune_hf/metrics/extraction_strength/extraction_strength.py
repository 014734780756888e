"""`evaluate` module: extraction strength of answers under teacher forcing (open-unlearning ``extraction_strength``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "Extraction strength (Carlini et al.): per row, with the teacher-forced argmax tokens and the answer "
    "labels (L tokens), k is the smallest position from which every remaining token is predicted correctly "
    "(searched over 0..L-1, so k = L-1 when even the last token is wrong, as open-unlearning's loop) and "
    "ES = 1 - k/L, the fraction of the answer the model completes on its own given the rest as prefix; the "
    "result is the mean over rows (`strict=True`: k = L, ES 0, when the last token is wrong). Range: [0, 1]. "
    "Direction: on the forget set lower is better (less extractable); on retain sets higher is better."
)

_CITATION = """\
@inproceedings{carlini2021extracting,
  title={Extracting Training Data from Large Language Models},
  author={Carlini, Nicholas and Tram{\\`e}r, Florian and Wallace, Eric and Jagielski, Matthew and
          Herbert-Voss, Ariel and Lee, Katherine and Roberts, Adam and Brown, Tom and Song, Dawn and
          Erlingsson, {\\'U}lfar and Oprea, Alina and Raffel, Colin},
  booktitle={30th USENIX Security Symposium},
  pages={2633--2650},
  year={2021}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per row, the argmax token id at each answer position
        (teacher forcing, aligned with the labels).
    references (`list` of `list` of `int`): per row, the answer's label token ids (same length).
    strict (`bool`, default False): ES 0 instead of open-unlearning's 1/L when the last token is wrong.
Returns:
    extraction_strength (`float`): mean ES, in [0, 1].
    scores (`list` of `float`): per-row ES.
Examples:
    >>> metric = lune_hf.metrics.load("extraction_strength")
    >>> metric.compute(predictions=[[9, 2, 3, 4]], references=[[1, 2, 3, 4]])["extraction_strength"]  # 1 - 1/4
    0.75
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExtractionStrength(evaluate.Metric):
    """Mean extraction strength 1 - k/L."""

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

    def _compute(self, predictions, references, strict: bool = False):
        fn = functional.strict_extraction_strength if strict else functional.extraction_strength
        return fn(predictions, references)
