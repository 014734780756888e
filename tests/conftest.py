"""Shared fixtures: offline settings, a tiny memorised model built once per session."""

from __future__ import annotations

import os

# Two cores between the pytest-xdist workers (`-n 2`), or both for a single process.
_THREADS = max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from fixtures_hub import fake_hub, hub_no_retry_sleep  # noqa: E402, F401
from transformers import TrainerCallback  # noqa: E402

from lune_hf.demo import split_facts  # noqa: E402
from lune_hf.testing.synthetic import build_tiny_model, build_tokenizer, make_facts, memorised_model  # noqa: E402

torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def memorised():
    """A tiny Llama that has memorised 120 synthetic facts (built once, ~6 s)."""
    return memorised_model(120, seed=0, steps=350)


@pytest.fixture
def memorised_copy(memorised):
    """A fresh copy of the memorised model for a test that trains it."""
    return copy.deepcopy(memorised.model)


@pytest.fixture(scope="session")
def tiny():
    """An untrained tiny model and its tokenizer over 40 facts: enough for mechanics tests."""
    facts = make_facts(40, seed=1)
    tokenizer = build_tokenizer([f.prompt + f.completion for f in facts])
    return facts, tokenizer


@pytest.fixture
def tiny_model(tiny):
    _, tokenizer = tiny
    return build_tiny_model(len(tokenizer), hidden_size=32, layers=1, seed=0)


def rows(facts, replacement: bool = False) -> Dataset:
    data = [f.row() for f in facts]
    if replacement:
        for row in data:
            row["replacement"] = " I do not know"
    return Dataset.from_list(data)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`lune-hf demo` run once for the session (its tests share the xdist group "demo", so one worker runs it):
    its result and everything it printed. Its folder holds the base
    model (`base_model/`), the data (`data/forget.jsonl`, `data/retain.jsonl`) and the adapter with its report."""
    import contextlib
    import io

    from lune_hf.demo import run_demo

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_demo(tmp_path_factory.mktemp("demo") / "lune-demo")
    return result, printed.getvalue()


@pytest.fixture(scope="session")
def demo_files(memorised, tmp_path_factory):
    """The memorised base model and its forget / retain data as files, laid out like `lune-hf demo` does."""
    root = tmp_path_factory.mktemp("cli")
    memorised.model.save_pretrained(root / "base_model")
    memorised.tokenizer.save_pretrained(root / "base_model")
    forget, retain = split_facts(memorised.facts)
    (root / "data").mkdir()
    for name, facts in (("forget", forget), ("retain", retain)):
        with (root / "data" / f"{name}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(f.row()) + "\n" for f in facts)
    return root


class Poison(TrainerCallback):
    """Puts an infinity into the adapter after step `step` (every step when None), as a diverging run would."""

    def __init__(self, trainer, step: int | None = None):
        self.trainer, self.step = trainer, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None or state.global_step == self.step:
            with torch.no_grad():
                for name, p in self.trainer.model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("inf"))
