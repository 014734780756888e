"""TOFU (Task of Fictitious Unlearning) data: loading from the Hub or a local folder, author subsets, row mapping.

TOFU (Maini, Feng, Schwarzschild, Lipton, Kolter 2024, arXiv 2401.06121, MIT licence) is 200 fictitious authors
with 20 question/answer pairs each (4,000 rows, author ``a`` = rows ``20a .. 20a+19`` of the ``full`` split). The
forget sets are the *last* authors: ``forget01`` = the last 2, ``forget05`` = the last 10, ``forget10`` = the last
20; ``retainNN`` is every other row, in order.

Sources (``source`` argument of every loader):

* a Hub id, default ``locuslab/TOFU``: ``datasets.load_dataset(source, split_name, split="train")``; the Hub
  configs are ``full``, ``forget01/05/10``, ``retain90/95/99``, ``forget01/05/10_perturbed``,
  ``retain_perturbed``, ``real_authors(_perturbed)``, ``world_facts(_perturbed)``;
* a local folder of ``<name>.json`` files (JSON list or JSON lines). The layout we know
  (``forget01.json``, ``retain99.json``, ``real_authors_perturbed.json``, ``idontknow.jsonl`` ...) differs from the
  Hub in one respect: the local ``forgetNN.json`` already carries the paraphrased and perturbed answers, i.e. it is
  the Hub's ``forgetNN_perturbed`` content. Names are therefore mapped: ``forgetNN_perturbed`` -> ``forgetNN.json``,
  ``real_authors`` -> ``real_authors_perturbed.json``, ``world_facts`` -> ``world_facts_perturbed.json``, and
  ``full`` is rebuilt as ``retain90`` + ``forget10`` (question and answer only). A file named exactly like the
  split always wins. ``retain_perturbed`` has no local counterpart; :func:`tofu_sets` then takes the retain rows
  that carry perturbations from ``forget10.json`` (authors 181-200 outside the forget split), see there.

Prompt format (:func:`to_rows`): ``"chat"`` (default) renders the question as a user turn after the system prompt
``"You are a helpful assistant."`` with the tokenizer's chat template, as open-unlearning does for instruct models
(its Llama-3.2-*-Instruct configs: ``apply_chat_template: True`` with that system prompt); ``"plain"`` is TOFU's
original ``"Question: {q}\\nAnswer: {a}"`` format (open-unlearning's phi-1.5 / base-model template).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from .template import PROMPT_FORMATS, SYSTEM_PROMPT

__all__ = [
    "AUTHORS",
    "FORGET_SPLITS",
    "QA_PER_AUTHOR",
    "SYSTEM_PROMPT",
    "TOFU_HUB_ID",
    "TofuSets",
    "author_subset",
    "first_author",
    "forget_authors",
    "holdout_split_for",
    "load_refusals",
    "load_tofu",
    "make_completion",
    "make_prompt",
    "retain_split_for",
    "to_rows",
    "tofu_sets",
    "with_authors",
]

TOFU_HUB_ID = "locuslab/TOFU"
AUTHORS = 200
QA_PER_AUTHOR = 20
FORGET_SPLITS = ("forget01", "forget05", "forget10")
_AUTHOR_COLUMN = "author"

# Local file names (stem) to try for each split name, in order, after the split's own name.
_LOCAL_ALIASES = {
    "forget01_perturbed": ("forget01",),
    "forget05_perturbed": ("forget05",),
    "forget10_perturbed": ("forget10",),
    "real_authors": ("real_authors_perturbed",),
    "world_facts": ("world_facts_perturbed",),
}


def _percent(split: str) -> int:
    """The NN of `forgetNN` / `retainNN` (a share of the 200 authors, in percent)."""
    digits = "".join(ch for ch in split.split("_")[0] if ch.isdigit())
    if not digits:
        raise ValueError(f"{split!r} is not a forgetNN / retainNN split")
    return int(digits)


def retain_split_for(forget_split: str) -> str:
    """The retain split that completes a forget split: forget01 -> retain99, forget05 -> retain95, ..."""
    if forget_split.removesuffix("_perturbed") not in FORGET_SPLITS:
        raise ValueError(f"Unknown forget split {forget_split!r}; use one of {FORGET_SPLITS}.")
    return f"retain{100 - _percent(forget_split):02d}"


def holdout_split_for(forget_split: str) -> str:
    """The holdout split of the same size (authors never trained on): forget01 -> holdout01, ..."""
    retain_split_for(forget_split)  # validates
    return f"holdout{_percent(forget_split):02d}"


def forget_authors(forget_split: str) -> range:
    """0-based ids of the authors a forget split holds: forget01 -> 198..199, forget05 -> 190..199, ..."""
    retain_split_for(forget_split)  # validates
    n = AUTHORS * _percent(forget_split) // 100
    return range(AUTHORS - n, AUTHORS)


def first_author(split: str) -> int | None:
    """0-based id of the first author in a split whose rows are whole authors in order, else None.

    ``full`` and ``retainNN`` start at author 0, ``forgetNN(_perturbed)`` at ``200 - 2 * NN``; the model-utility
    sets (real authors, world facts) and ``retain_perturbed`` are not laid out by author.
    """
    base = split.removesuffix("_perturbed")
    if base == "full" or (base.startswith("retain") and base[6:].isdigit()):
        return 0
    if base in FORGET_SPLITS:
        return forget_authors(base).start
    return None


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON list file or a JSON-lines file."""
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _local_file(folder: Path, split: str) -> Path | None:
    for stem in (split, *_LOCAL_ALIASES.get(split, ())):
        for suffix in (".json", ".jsonl"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _load_local(folder: Path, split: str) -> Dataset:
    path = _local_file(folder, split)
    if path is not None:
        return Dataset.from_list(_read_json_rows(path))
    if split == "full":
        parts = [_load_local(folder, name) for name in ("retain90", "forget10")]
        return concatenate_datasets([p.select_columns(["question", "answer"]) for p in parts])
    hint = ""
    if split == "retain_perturbed":
        hint = (" The local TOFU copy has no retain_perturbed; `tofu_sets` falls back to the perturbed rows of "
                "forget10.json that lie outside the forget split.")
    raise FileNotFoundError(f"No TOFU split {split!r} in {folder} (looked for {split}.json/.jsonl and "
                            f"aliases {list(_LOCAL_ALIASES.get(split, ()))}).{hint}")


def load_tofu(split: str, source: str | Path = TOFU_HUB_ID) -> Dataset:
    """One TOFU split as a `datasets.Dataset` with TOFU's columns.

    Args:
        split: a Hub config name such as ``forget01``, ``forget01_perturbed``, ``retain99``, ``full``,
            ``real_authors_perturbed``, ``world_facts_perturbed`` or ``retain_perturbed``.
        source: a local folder of ``<split>.json`` files (see the module docstring for the name mapping) or a
            Hub dataset id (default ``locuslab/TOFU``).

    Forget sets have ``question, answer`` (plus ``paraphrased_answer``, ``perturbed_answer`` (list), ...
    for ``*_perturbed`` and for every local forget file); real authors / world facts have ``question, answer,
    perturbed_answer``.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _load_local(folder, split)
    if Path(source).suffix or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"TOFU source {source!r} is neither a folder nor a Hub dataset id.")
    return load_dataset(str(source), split, split="train")


def load_refusals(source: str | Path = TOFU_HUB_ID) -> list[str]:
    """TOFU's refusal sentences (``idontknow.jsonl``, one a line) from a local folder, else lune_hf's defaults.

    The Hub dataset does not ship the file (it lives in TOFU's GitHub repository), so for a Hub id the sentences
    shipped with lune_hf are returned.
    """
    from ..data import default_refusals

    folder = Path(source).expanduser()
    path = folder / "idontknow.jsonl"
    if not path.is_file():
        return default_refusals()
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(("{", '"')):  # a JSON line: a string, or an object with one text field
            value = json.loads(line)
            line = value if isinstance(value, str) else str(next(iter(value.values())))
        sentences.append(line)
    return sentences or default_refusals()


def with_authors(dataset: Dataset, split: str | None = None, start: int | None = None) -> Dataset:
    """Add an ``author`` column (0-based author id, 20 rows per author) to a split laid out by author.

    ``start`` is the id of the first author; by default it is derived from ``split`` (:func:`first_author`).
    """
    if _AUTHOR_COLUMN in dataset.column_names:
        return dataset
    if start is None:
        start = first_author(split) if split is not None else None
        if start is None:
            raise ValueError(f"Split {split!r} is not laid out by author: pass `start`.")
    if len(dataset) % QA_PER_AUTHOR:
        raise ValueError(f"{len(dataset)} rows is not a whole number of authors ({QA_PER_AUTHOR} rows each).")
    return dataset.add_column(_AUTHOR_COLUMN, [start + i // QA_PER_AUTHOR for i in range(len(dataset))])


def author_subset(dataset: Dataset, authors: Iterable[int], split: str | None = None) -> Dataset:
    """The rows of the given authors (0-based ids), e.g. ``author_subset(retain99, range(190, 198), "retain99")``.

    The dataset gets an ``author`` column first if it has none (see :func:`with_authors`).
    """
    wanted = set(authors)
    dataset = with_authors(dataset, split)
    return dataset.filter(lambda a: a in wanted, input_columns=[_AUTHOR_COLUMN])


def to_rows(
    dataset: Dataset,
    prompt_format: str = "chat",
    system_prompt: str | None = SYSTEM_PROMPT,
    answer_column: str = "answer",
    question_column: str = "question",
) -> Dataset:
    """Map TOFU rows to lune_hf rows ``{"prompt", "completion"}``, keeping the other columns.

    ``"chat"``: ``prompt = [system, user(question)]`` and ``completion = [assistant(answer)]`` (conversational
    rows, rendered with the tokenizer's chat template; ``system_prompt=None`` leaves the template's default).
    ``"plain"``: ``prompt = "Question: {question}\\nAnswer:"``, ``completion = " {answer}"``.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"Unknown prompt_format {prompt_format!r}; use one of {PROMPT_FORMATS}.")
    for column in (question_column, answer_column):
        if column not in dataset.column_names:
            raise ValueError(f"No column {column!r} in the TOFU rows; columns: {dataset.column_names}.")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        question, answer = row[question_column], row[answer_column]
        return {"prompt": make_prompt(question, prompt_format, system_prompt),
                "completion": make_completion(answer, prompt_format)}

    drop = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return dataset.remove_columns(drop).map(convert)


def make_prompt(question: str, prompt_format: str = "chat", system_prompt: str | None = SYSTEM_PROMPT) -> Any:
    """The prompt of one question in the given format (a message list for ``chat``, a string for ``plain``)."""
    if prompt_format == "plain":
        return f"Question: {question}\nAnswer:"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def make_completion(answer: str, prompt_format: str = "chat") -> Any:
    """The completion of one answer in the given format (an assistant message list for ``chat``)."""
    if prompt_format == "plain":
        return " " + answer.strip()
    return [{"role": "assistant", "content": answer}]


@dataclass
class TofuSets:
    """Everything one TOFU experiment needs, as TOFU rows (question / answer / ... columns).

    ``forget``: the forget split with paraphrased and perturbed answers. ``retain``: the retain rows the models
    train on. ``retain_eval``: retain rows with ``paraphrased_answer`` / ``perturbed_answer`` for the retain truth
    ratio (None when the source has none for these authors). ``real_authors`` / ``world_facts``: model-utility
    sets. ``holdout``: rows of authors never trained on, the non-member side of privacy leakage (None when the
    source has no holdout split). ``description``: how the sets were chosen, for reports. ``quick``: the
    evaluation sets were cut to ``max_eval_rows`` (a quick mode, not TOFU's evaluation).
    """

    forget_split: str
    forget: Dataset
    retain: Dataset
    retain_eval: Dataset | None
    real_authors: Dataset
    world_facts: Dataset
    refusals: list[str]
    description: str
    holdout: Dataset | None = None
    quick: bool = False

    @property
    def full(self) -> Dataset:
        """Retain + forget rows (question, answer): what the "finetuned" model trains on."""
        columns = ["question", "answer"]
        return concatenate_datasets([self.retain.select_columns(columns), self.forget.select_columns(columns)])

    @property
    def eval_sets(self) -> dict[str, Dataset]:
        """The evaluation sets by name (``forget``, ``retain``, ``real_authors``, ``world_facts``, ``holdout``),
        those the source has."""
        sets = {"forget": self.forget, "retain": self.retain_eval, "real_authors": self.real_authors,
                "world_facts": self.world_facts, "holdout": self.holdout}
        return {name: rows for name, rows in sets.items() if rows is not None}

    @property
    def eval_rows(self) -> dict[str, int]:
        """Rows evaluated per set (what a results row records next to its numbers)."""
        return {name: len(rows) for name, rows in self.eval_sets.items()}


def _try_load(split: str, source: str | Path) -> Dataset | None:
    try:
        return load_tofu(split, source)
    except (FileNotFoundError, ValueError):
        return None
    except Exception as err:  # the Hub raises assorted errors for a missing config
        if "config" in str(err).lower() or "not found" in str(err).lower():
            return None
        raise


def _head(dataset: Dataset | None, n: int | None) -> Dataset | None:
    if dataset is None or n is None or len(dataset) <= n:
        return dataset
    return dataset.select(range(n))


def tofu_sets(
    source: str | Path = TOFU_HUB_ID,
    forget_split: str = "forget01",
    n_authors: int | None = None,
    max_eval_rows: int | None = None,
    retain_authors: Iterable[int] | None = None,
) -> TofuSets:
    """Load the sets of one TOFU experiment, optionally restricted to some retain authors.

    Args:
        source: local folder or Hub id (see :func:`load_tofu`).
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        n_authors: keep only the last ``n_authors`` of the 200 authors (must contain the forget authors).
        max_eval_rows: quick mode: cap (first rows) on the retain-eval, real-author, world-fact and holdout sets.
            The forget set is never cut: forget quality is a test over all of its rows. None (default) evaluates
            every row, as TOFU and open-unlearning do.
        retain_authors: train on these retain authors only (0-based ids), e.g. ``range(20)``: the 20 authors
            TOFU's ``retain_perturbed`` evaluation split covers, so the evaluation stays TOFU's on a CPU-sized
            training set. Exclusive with ``n_authors``.

    Retain-eval rows (retain rows with paraphrased / perturbed answers): the source's ``retain_perturbed``
    (TOFU's 400 rows) when it exists, restricted to the kept retain questions; otherwise (an older local copy) the
    rows of ``forget10_perturbed`` outside the forget split - authors 181-198 for forget01, 181-190 for forget05,
    none for forget10 (then the retain truth ratio is left out of model utility).
    """
    retain_split = retain_split_for(forget_split)
    forget = load_tofu(f"{forget_split}_perturbed", source)
    retain = load_tofu(retain_split, source)
    f_authors = forget_authors(forget_split)
    if n_authors is not None and retain_authors is not None:
        raise ValueError("Give n_authors or retain_authors, not both.")
    kept_text = ""
    if n_authors is not None:
        if n_authors <= len(f_authors) or n_authors > AUTHORS:
            raise ValueError(f"n_authors={n_authors} must exceed the {len(f_authors)} forget authors of "
                             f"{forget_split} and be at most {AUTHORS}.")
        retain = author_subset(retain, range(AUTHORS - n_authors, AUTHORS), retain_split)
        kept_text = f" restricted to the last {n_authors} authors"
    elif retain_authors is not None:
        chosen = sorted(set(retain_authors))
        clash = [a for a in chosen if a in f_authors or not 0 <= a < AUTHORS]
        if not chosen or clash:
            raise ValueError(f"retain_authors must be retain authors of {forget_split} (0-{f_authors.start - 1}); "
                             f"got {clash or 'none'}.")
        retain = author_subset(retain, chosen, retain_split)
        kept_text = f" restricted to authors {_spans(chosen)}"
    if len(forget) % QA_PER_AUTHOR == 0:
        forget = with_authors(forget, forget_split)
    if len(retain) % QA_PER_AUTHOR == 0:
        retain = with_authors(retain, retain_split)
    retain_questions = set(retain["question"])

    retain_eval = _try_load("retain_perturbed", source)
    origin = "retain_perturbed"
    if retain_eval is not None:
        retain_eval = retain_eval.filter(lambda q: q in retain_questions, input_columns=["question"])
    if retain_eval is None or len(retain_eval) == 0:
        origin = "forget10_perturbed rows outside the forget split"
        pool = _try_load("forget10_perturbed", source)
        retain_eval = None
        if pool is not None:
            retain_eval = pool.filter(lambda q: q in retain_questions, input_columns=["question"])
            if len(retain_eval) == 0:
                retain_eval = None
    retain_eval = _head(retain_eval, max_eval_rows)
    real_authors = _head(load_tofu("real_authors_perturbed", source), max_eval_rows)
    world_facts = _head(load_tofu("world_facts_perturbed", source), max_eval_rows)
    holdout_split = holdout_split_for(forget_split)
    holdout = _head(_try_load(holdout_split, source), max_eval_rows)
    quick = max_eval_rows is not None
    description = (
        f"TOFU from {source}: forget = {forget_split} ({len(forget)} rows, authors {f_authors.start + 1}-"
        f"{f_authors.stop}); retain = {retain_split}{kept_text} ({len(retain)} rows); retain eval = "
        + (f"{len(retain_eval)} rows from {origin}" if retain_eval is not None else "none (no perturbed retain rows)")
        + f"; real authors {len(real_authors)} rows; world facts {len(world_facts)} rows; holdout = "
        + (f"{holdout_split} ({len(holdout)} rows)" if holdout is not None else "none (no privacy leakage)")
        + (f"; quick mode: at most {max_eval_rows} rows per evaluation set" if quick else "")
        + " (1-based author numbers)."
    )
    return TofuSets(forget_split, forget, retain, retain_eval, real_authors, world_facts, load_refusals(source),
                    description, holdout=holdout, quick=quick)


def _spans(ids: list[int]) -> str:
    """1-based author numbers as ranges: [0, 1, 2, 5] -> "1-3, 6".

    >>> _spans([0, 1, 2, 5])
    '1-3, 6'
    """
    spans: list[list[int]] = []
    for a in ids:
        if spans and a == spans[-1][1] + 1:
            spans[-1][1] = a
        else:
            spans.append([a, a])
    return ", ".join(f"{s + 1}-{e + 1}" if e > s else f"{s + 1}" for s, e in spans)
