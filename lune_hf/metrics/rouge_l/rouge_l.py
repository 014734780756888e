"""`evaluate` module: ROUGE-L recall of generated answers (TOFU / open-unlearning ``rougeL_recall``)."""

import datasets
import evaluate

from lune_hf.metrics import functional

_DESCRIPTION = (
    "ROUGE-L recall of each generated answer against its reference: the length of the longest common "
    "subsequence of (Porter-stemmed) tokens divided by the number of reference tokens, computed with "
    "rouge_score's RougeScorer(['rougeL'], use_stemmer=True); an empty generation scores 0; the result is "
    "the mean over rows. `recalled` is the share of rows scoring at least `recalled_threshold` (0.5): answers "
    "the model still gives. Range: [0, 1]. Direction: on the forget set lower is better (the model no longer "
    "reproduces the forgotten answers); on retain sets higher is better."
)

_CITATION = """\
@inproceedings{lin2004rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  pages={74--81},
  year={2004}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): reference answers, one per prediction.
    use_stemmer (`bool`, default True): Porter-stem tokens before matching.
    recalled_threshold (`float`, default 0.5): per-row score from which an answer counts as recalled.
Returns:
    rouge_l (`float`): mean ROUGE-L recall, in [0, 1].
    recalled (`float`): share of rows scoring at least `recalled_threshold`, in [0, 1].
    scores (`list` of `float`): per-row recall.
Examples:
    >>> metric = lune_hf.metrics.load("rouge_l")
    >>> metric.compute(predictions=["the cat"], references=["the cat sat down"])["rouge_l"]  # LCS 2 / 4 tokens
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """Mean ROUGE-L recall of predictions against references."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, use_stemmer=True, recalled_threshold=functional.RECALLED_THRESHOLD):
        return functional.rouge_l(predictions, references, use_stemmer=use_stemmer,
                                  recalled_threshold=recalled_threshold)
