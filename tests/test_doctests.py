"""The examples in the docstrings run and give what they show."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["lune_hf.data", "lune_hf.evaluation", "lune_hf.evaluator",
                                    "lune_hf.metrics.functional", "lune_hf.tofu.data"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
