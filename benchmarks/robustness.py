"""Does the forgetting survive attacks? `lune_hf.verify` on adapters of several objectives.

    python benchmarks/robustness.py demo                       # the demo's tiny model, ~5 min on 2 CPU cores
    python benchmarks/robustness.py tofu --data ../shared/data/tofu   # SmolLM2 TOFU forget01 (cpu setup), ~1 h

`demo`: a tiny Llama memorises 120 synthetic facts (its tokenizer also knows 40 more it never trains on: the
holdout rows of the membership attack); every objective unlearns the demo's forget tenth with `LuneConfig`
defaults (stopping when forgotten), then `verify` re-checks the claims and runs paraphrase, relearn, quantize and
mia. `tofu`: SmolLM2-135M-Instruct fine-tuned on the last 6 TOFU authors (`benchmarks/tofu.py --setup cpu`, run it
first: this reuses its cached model), the recipe's settings per objective (`name[key=value]` variants as in
`benchmarks/tofu.py`) with one check before and one after, holdout rows from TOFU's `holdout01`.

Writes `benchmarks/results/robustness_<setup>.json` (one row per objective, with the whole verification) and a
Markdown table beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tofu import SETUPS, parse_objective  # noqa: E402  (benchmarks/tofu.py: "lune[k=v]" -> ("lune", {k: v}))


def _row(name: str, result, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    probes = {p.name: p for p in result.probes}

    def detail(probe: str, *keys: str):
        value = probes[probe].details if probe in probes else None
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return {
        "objective": name, **extra, "passed": result.passed,
        "claims_hold": all(c.passed for c in result.claims) if result.claims else None,
        "forget_recall": next((c.measured for c in result.claims if c.metric == "forget/recalled"), None),
        "retain_recall": next((c.measured for c in result.claims if c.metric == "retain/recalled"), None),
        "paraphrase_worst": probes["paraphrase"].value, "paraphrase_variant": detail("paraphrase", "worst_variant"),
        "relearn_recovery": probes["relearn"].value,
        "relearn_recall_after": detail("relearn", "recall_after_attack"),
        "relearn_base_after": detail("relearn", "base_recall_after_attack"),
        "recall_8bit": detail("quantize", "8bit", "recall"), "recall_4bit": detail("quantize", "4bit", "recall"),
        "base_recall_4bit": detail("quantize", "4bit", "base_recall"),
        "mia_auc": probes["mia"].value, "mia_base_auc": detail("mia", "base_auc"),
        "verify_s": round(seconds, 1), "verification": result.as_dict(),
    }


def run_demo(objectives: list[str], work: Path, keep) -> None:
    from datasets import Dataset

    from lune_hf import LuneConfig, LuneTrainer
    from lune_hf.demo import split_facts
    from lune_hf.testing.synthetic import build_tiny_model, build_tokenizer, make_facts, memorise
    from lune_hf.verify import verify

    facts = make_facts(160, seed=0)
    known, unseen = facts[:120], facts[120:]
    tokenizer = build_tokenizer([f.prompt + f.completion for f in facts])
    model = build_tiny_model(len(tokenizer), seed=0)
    memorise(model, tokenizer, [f.row() for f in known], steps=350, seed=0)
    base_dir = work / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    forget, retain = split_facts(known)
    sets = {name: Dataset.from_list([f.row() for f in group])
            for name, group in (("forget", forget), ("retain", retain), ("holdout", unseen))}
    for spec in objectives:
        name, overrides = parse_objective(spec)
        folder = work / spec.replace("[", "_").replace("]", "").replace(",", "_")
        start = time.perf_counter()
        trainer = LuneTrainer(copy.deepcopy(model), LuneConfig(output_dir=str(folder), objective=name,
                                                               overwrite_output_dir=True, report_to="none",
                                                               disable_tqdm=True, **overrides),
                              train_dataset=sets["forget"], retain_dataset=sets["retain"],
                              processing_class=tokenizer)
        trainer.train()
        trainer.save_model()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        result = verify(folder, sets["forget"], retain=sets["retain"], holdout=sets["holdout"],
                        base_model=str(base_dir), progress=False)
        print(result.table(), flush=True)
        keep(_row(spec, result, time.perf_counter() - start, {
            "verdict": trainer.outcome.verdict.value if trainer.outcome else None,
            "steps": trainer.state.global_step, "kept_steps": trainer.outcome.steps if trainer.outcome else None,
            "train_s": round(train_s, 1)}))


def run_tofu(objectives: list[str], work: Path, data: str, cache: Path, keep) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.data import ensure_pad_token
    from lune_hf.evaluator import spread_rows
    from lune_hf.tofu.data import load_tofu, to_rows, tofu_sets
    from lune_hf.tofu.train import unlearn
    from lune_hf.verify import verify

    stage = cache / "tofu" / "cpu"  # benchmarks/tofu.py --setup cpu: its finetuned model
    sets = tofu_sets(data, "forget01", retain_authors=SETUPS["cpu"].retain_authors)
    forget, retain = to_rows(sets.forget, "chat"), to_rows(sets.retain, "chat")
    holdout = to_rows(load_tofu("holdout01", data), "chat")
    for spec in objectives:
        name, overrides = parse_objective(spec)
        folder = work / spec.replace("[", "_").replace("]", "").replace(",", "_")
        tokenizer = AutoTokenizer.from_pretrained(stage / "finetuned_forget01")
        ensure_pad_token(tokenizer)
        start = time.perf_counter()
        if not (folder / "unlearning_report.json").is_file():
            unlearn(AutoModelForCausalLM.from_pretrained(stage / "finetuned_forget01"), tokenizer, forget, retain, name,
                    folder, max_length=256, overrides={"forget_eval_steps": 10_000, **overrides})
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        result = verify(folder, forget, retain=spread_rows(retain, 80), holdout=holdout,
                        base_model=str(stage / "finetuned_forget01"),
                        progress=True)
        print(result.table(), flush=True)
        report = json.loads((folder / "unlearning_report.json").read_text())
        keep(_row(spec, result, time.perf_counter() - start, {
            "verdict": (report.get("outcome") or {}).get("verdict"), "steps": report.get("global_step"),
            "kept_steps": (report.get("outcome") or {}).get("steps"),
            "train_s": round(train_s, 1)}))


def write_markdown(rows: list[dict[str, Any]], path: Path, setup: str, command: str) -> None:
    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    def kept(row: dict[str, Any]) -> str:  # an earlier adapter put back at the end (retain fell below its floor)
        return f" (kept step {row['kept_steps']})" if row.get("kept_steps") not in (None, row["steps"]) else ""

    lines = [
        f"# Robustness of the forgetting ({setup})", "",
        f"Each row: `python benchmarks/robustness.py {setup} --objectives \"<objective>\"` (rows are merged by "
        f"objective; the last run was `{command}`). Each adapter is checked by `lune_hf.verify` (the same as "
        "`lune-hf verify`): forget / retain recall recomputed on every row, then the probes; base = the model "
        "without the adapter. Recall: share "
        "of greedy answers with ROUGE-L recall >= 0.5 against the true answer. Relearn: LoRA r=8, 50 steps at lr "
        "1e-3 on the even forget rows, recall on the odd ones; recovery = share of the forgotten knowledge that came "
        "back. MIA: Min-K% (k=0.4) AUC of forget rows against holdout rows (0.5 = indistinguishable).", "",
        "| objective | verdict | steps | forget recall | retain recall | paraphrase worst (variant) | relearn "
        "recovery (recall after; base after) | 8-bit recall | 4-bit recall (base) | MIA AUC (base) | passed |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['objective']}` | {r['verdict']} | {r['steps']}{kept(r)} | {f(r['forget_recall'])} "
            f"| {f(r['retain_recall'])} "
            f"| {f(r['paraphrase_worst'])} ({r['paraphrase_variant']}) | {f(r['relearn_recovery'])} "
            f"({f(r['relearn_recall_after'])}; {f(r['relearn_base_after'])}) | {f(r['recall_8bit'])} "
            f"| {f(r['recall_4bit'])} ({f(r['base_recall_4bit'])}) | {f(r['mia_auc'])} ({f(r['mia_base_auc'])}) "
            f"| {'yes' if r['passed'] else 'no'} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("setup", choices=("demo", "tofu"))
    parser.add_argument("--objectives", nargs="+", default=None)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lune_hf")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fresh", action="store_true", help="Start the results file over (default: add rows).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = args.cache / "robustness" / args.setup
    work.mkdir(parents=True, exist_ok=True)
    out = args.json or RESULTS / f"robustness_{args.setup}.json"
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    rows = json.loads(out.read_text()) if out.is_file() and not args.fresh else []

    def keep(row: dict[str, Any]) -> None:
        """Write the results after every objective (a later run of the same objective replaces its row)."""
        rows[:] = [r for r in rows if r["objective"] != row["objective"]] + [row]
        out.write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
        write_markdown(rows, out.with_suffix(".md"), args.setup, command)
        print(f"Written {out} and {out.with_suffix('.md')}", flush=True)

    if args.setup == "demo":
        run_demo(args.objectives or ["lune", "lune[negative_weight=1]", "npo", "graddiff", "ga"], work, keep)
    else:
        run_tofu(args.objectives or ["lune", "lune[negative_weight=1]", "npo[learning_rate=1e-3,num_train_epochs=10]"],
                 work, args.data, args.cache, keep)

if __name__ == "__main__":
    main()
