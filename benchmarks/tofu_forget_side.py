"""Forget-side TOFU numbers of a saved adapter of `benchmarks/tofu.py --setup cpu` (or one of its training
checkpoints), in minutes instead of the ~40 of a full row: forget quality, forget ROUGE-L, refusal/replacement share,
privleak, truth ratio, probability and extraction strength on every forget and holdout row of the split, against the
cached retain row; with `--spill-rows N` (default 20) also the refusal spill (share of refusal answers) on the first
N rows of retain_perturbed, real authors and world facts. No model utility.

    python benchmarks/tofu_forget_side.py --data ../shared/data/tofu [--split forget05] \\
        --adapter ~/.cache/lune_hf/tofu/cpu/forget01/<objective folder>[/checkpoint-N] --json out.json
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel
from tofu import SETUPS, model_names, row_path  # benchmarks/tofu.py: the stage cache's layout
from transformers import AutoModelForCausalLM, AutoTokenizer

from lune_hf.data import ensure_pad_token
from lune_hf.tofu.data import FORGET_SPLITS, tofu_sets
from lune_hf.tofu.evaluate import evaluate_tofu

KEYS = ["forget_quality", "forget_rouge", "replacement_share", "privleak", "mia_min_k", "forget_truth_ratio",
        "forget_probability", "extraction_strength", "refusal_spill", "retain_refusal_share",
        "real_authors_refusal_share", "world_facts_refusal_share", "eval_rows", "forget_samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="TOFU folder or Hub id.")
    parser.add_argument("--split", choices=FORGET_SPLITS, default="forget01", help="TOFU forget split whose "
                        "finetuned model, forget and holdout rows and retain row to use.")
    parser.add_argument("--adapter", type=Path, default=None, help="LoRA adapter folder (default: none, the "
                        "finetuned model itself).")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/lune_hf/tofu/cpu",
                        help="benchmarks/tofu.py's cache of the cpu setup.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--spill-rows", type=int, default=20, help="Rows of each set to keep (retain_perturbed, "
                        "real authors, world facts) on which to count refusals; 0: none.")
    parser.add_argument("--json", type=Path, required=True, help="Where the numbers go.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = tofu_sets(args.data, args.split, retain_authors=range(20))
    n = args.spill_rows
    sets = replace(sets, **{name: getattr(sets, name).select(range(min(n, len(getattr(sets, name))))) if n else None
                            for name in ("retain_eval", "real_authors", "world_facts")})
    retain_row = row_path(args.cache_dir, args.split, "retain")
    finetuned = args.cache_dir / model_names(SETUPS["cpu"], args.split)[0]
    for needed in (retain_row, finetuned):
        if not needed.exists():
            parser.error(f"{needed} is missing: run `python benchmarks/tofu.py --setup cpu --data {args.data} "
                         f"--splits {args.split}` first (its finetuned model and retain row come before any "
                         "unlearning row).")
    retain = json.loads(retain_row.read_text())
    tokenizer = AutoTokenizer.from_pretrained(finetuned)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(finetuned)
    if args.adapter is not None:
        model = PeftModel.from_pretrained(model, str(args.adapter)).merge_and_unload()
    result = evaluate_tofu(model, tokenizer, sets, reference=retain, max_new_tokens=200, batch_size=32,
                           max_length=256)
    out = {"split": args.split, "adapter": str(args.adapter) if args.adapter else None,
           **{k: result.get(k) for k in KEYS}}
    args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k != "forget_samples"}, indent=1))


if __name__ == "__main__":
    main()
