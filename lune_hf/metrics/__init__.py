"""Unlearning metrics: pure functions (:mod:`lune_hf.metrics.functional`) and offline ``evaluate`` modules.

``load(name)`` returns an ``evaluate.EvaluationModule`` built from the script shipped in this package
(``lune_hf/metrics/<name>/<name>.py``); nothing is fetched from the Hugging Face Hub::

    from lune_hf import metrics

    rouge = metrics.load("rouge_l")
    rouge.compute(predictions=["the cat sat"], references=["the cat sat on the mat"])
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import functional

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRICS", "describe", "functional", "load", "script_path"]

METRICS: tuple[str, ...] = (
    "probability",
    "rouge_l",
    "exact_match",
    "truth_ratio",
    "forget_quality",
    "model_utility",
    "extraction_strength",
    "exact_memorization",
    "mia_min_k",
)


def script_path(name: str) -> Path:
    """Path of the ``evaluate`` script of metric ``name``; ``ValueError`` for an unknown name."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; valid names: {', '.join(METRICS)}")
    return Path(__file__).resolve().parent / name / f"{name}.py"


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load metric ``name`` as an ``evaluate`` module from this package, offline.

    ``kwargs`` go to ``evaluate.load`` (``cache_dir``, ``keep_in_memory``, ``experiment_id``, ...).
    A path to an existing ``.py`` file makes ``evaluate`` use its local-script loader, which copies the
    script into the modules cache and never contacts the Hub, with or without ``HF_HUB_OFFLINE``.
    """
    path = script_path(name)
    import evaluate  # deferred: importing evaluate is slow and the pure functions do not need it

    return evaluate.load(str(path), **kwargs)


@functools.cache
def describe(name: str) -> str:
    """One-paragraph description of metric ``name``: what it measures, its range, which direction is better.

    Read from the script's ``_DESCRIPTION`` literal (the ``description`` of the loaded module) without
    importing ``evaluate``.
    """
    tree = ast.parse(script_path(name).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "_DESCRIPTION" for t in targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"metric script {script_path(name)} defines no _DESCRIPTION")
