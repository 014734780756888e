"""`lune-hf demo`: unlearn synthetic facts from a tiny model, offline, on 2 CPU cores.

1. build a 2-layer Llama and a word-level tokenizer from a config and memorise 200 invented facts;
2. forget every tenth fact with `LuneTrainer` at its defaults (LUNE objective, refusal targets, retain NLL term,
   learning rate 1e-3, checks that stop once the forget answers are gone, a budget of at least 1000 steps);
3. print the verdict, a before/after table and sample answers; save adapter, report and plot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from .config import LuneConfig
from .evaluation import generate_answers
from .report import MARKDOWN_FILE, read_report
from .testing.synthetic import Fact, memorised_model
from .trainer import LuneTrainer

BASE_MODEL_DIR = "base_model"
DATA_DIR = "data"


@dataclass
class DemoResult:
    output_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    seconds: float


def split_facts(facts: list[Fact], every: int = 10) -> tuple[list[Fact], list[Fact]]:
    """Every `every`-th fact is to be forgotten; the rest must be retained."""
    forget = [f for i, f in enumerate(facts) if i % every == 0]
    retain = [f for i, f in enumerate(facts) if i % every != 0]
    return forget, retain


def demo_config(output_dir: str | Path, seed: int = 0, **overrides) -> LuneConfig:
    """The demo's settings: the `LuneConfig` defaults; only logging, seed and device are set."""
    settings = dict(
        output_dir=str(output_dir),
        overwrite_output_dir=True,  # running the demo again replaces its own results
        logging_steps=25,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
    )
    settings.update(overrides)
    return LuneConfig(**settings)


def _write_jsonl(path: Path, facts: list[Fact]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for fact in facts:
            handle.write(json.dumps(fact.row()) + "\n")


def run_demo(
    output_dir: str | Path = "lune-demo", *, n_facts: int = 200, seed: int = 0, quiet: bool = False
) -> DemoResult:
    """Run the whole demo and return the before/after metrics."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    say = (lambda *a: None) if quiet else print
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    say(f"[1/3] Memorising {n_facts} synthetic facts in a tiny Llama (built from a config, nothing downloaded)...")
    memorised = memorised_model(n_facts, seed=seed)
    forget, retain = split_facts(memorised.facts)
    say(f"      done in {memorised.seconds:.1f}s; {len(forget)} facts to forget, {len(retain)} to keep.")
    base_dir = output_dir / BASE_MODEL_DIR
    memorised.model.save_pretrained(base_dir)
    memorised.tokenizer.save_pretrained(base_dir)
    _write_jsonl(output_dir / DATA_DIR / "forget.jsonl", forget)
    _write_jsonl(output_dir / DATA_DIR / "retain.jsonl", retain)

    forget_rows = Dataset.from_list([f.row() for f in forget])
    retain_rows = Dataset.from_list([f.row() for f in retain])
    samples = forget[:3] + retain[:2]
    answers_before = generate_answers(memorised.model, memorised.tokenizer, [f.prompt for f in samples],
                                      max_new_tokens=8)

    say("[2/3] Unlearning with LuneTrainer (objective 'lune': refusal targets + retain NLL, LoRA r=16)...")
    # The backbone as saved in base_dir: the adapter then records that folder as its base (and loads onto it).
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = LuneTrainer(
        base,
        demo_config(output_dir, seed=seed),
        train_dataset=forget_rows,
        retain_dataset=retain_rows,
        processing_class=memorised.tokenizer,
    )
    trainer.train()
    trainer.save_model()
    report = read_report(output_dir)
    before, after = report["evaluation"]["before"], report["evaluation"]["after"]
    answers_after = generate_answers(trainer.model, memorised.tokenizer, [f.prompt for f in samples],
                                     max_new_tokens=8)

    say("[3/3] Results")
    say(f"      verdict: {report['status'].replace('_', ' ')} after {report['global_step']} steps "
        f"({report['stop_reason']})")
    say(f"      {'metric':<28}{'before':>10}{'after':>10}")
    for key in sorted(before):
        say(f"      {key:<28}{before[key]:>10.3f}{after.get(key, float('nan')):>10.3f}")
    say("\n      sample answers (F = to forget, R = to retain)")
    for fact, old, new in zip(samples, answers_before, answers_after, strict=True):
        tag = "F" if fact in forget else "R"
        say(f"      [{tag}] {fact.prompt}\n          before: {old!r}\n          after:  {new!r}")
    seconds = time.perf_counter() - start
    say(f"\nSaved adapter, tokenizer and unlearning_report.json to {output_dir}/ ({seconds:.0f}s in all).")
    say(f"Report: {output_dir / MARKDOWN_FILE}")
    return DemoResult(output_dir, before, after, seconds)
