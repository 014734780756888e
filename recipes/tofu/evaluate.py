"""Step (d) of the TOFU recipe: TOFU's metrics of a model (optionally with unlearning adapters).

    # the retain model first: its forget truth ratios and MIA AUC are the reference of forget quality and privleak
    python recipes/tofu/evaluate.py --model tofu-retain99 --forget-split forget01 --json retain99.json
    python recipes/tofu/evaluate.py --model tofu-finetuned --adapter tofu-forget01-lune --forget-split forget01 \
        --reference retain99.json --json forget01-lune.json

Prints forget quality, model utility and the forget / retain / real-author / world-fact scores
(`lune_hf.tofu.evaluate.evaluate_tofu`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from lune_hf.data import ensure_pad_token
from lune_hf.tofu.data import FORGET_SPLITS, tofu_sets
from lune_hf.tofu.evaluate import evaluate_tofu
from lune_hf.tofu.template import DATE_STRING, PROMPT_FORMATS, SYSTEM_PROMPT, TofuTemplate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="locuslab/TOFU", help="TOFU Hub id or local folder of <split>.json.")
    parser.add_argument("--model", required=True, help="Model folder or Hub id.")
    parser.add_argument("--adapter", action="append", default=None, help="LoRA adapter folder (repeatable).")
    parser.add_argument("--forget-split", choices=FORGET_SPLITS, default="forget01", help="The forget split.")
    parser.add_argument("--n-authors", type=int, default=None, help="Keep only the last N of the 200 authors.")
    parser.add_argument("--retain-authors", type=int, default=None, help="Only the first N retain authors (20: "
                        "those of TOFU's retain_perturbed split), as in fine-tuning.")
    parser.add_argument("--reference", type=Path, default=None, help="JSON written by this script for the retain "
                        "model: forget quality and privleak are computed against its forget truth ratios and "
                        "MIA AUC.")
    parser.add_argument("--max-eval-rows", type=int, default=None, help="QUICK MODE: cap on retain / real-author / "
                        "world-fact / holdout rows (default: every row, as TOFU).")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="Greedy answer length (TOFU: 200).")
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per forward pass.")
    parser.add_argument("--max-length", type=int, default=512, help="Prompt + answer tokens.")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat", help="As in fine-tuning.")
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="As in fine-tuning.")
    parser.add_argument("--date-string", default=DATE_STRING, help="Passed to the chat template (Llama-3 prints "
                        "it; open-unlearning fixes it to this value).")
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    args = parser.parse_args()

    sets = tofu_sets(args.data, args.forget_split, n_authors=args.n_authors, max_eval_rows=args.max_eval_rows,
                     retain_authors=range(args.retain_authors) if args.retain_authors else None)
    print(sets.description)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.adapter:
        from peft import PeftModel

        for adapter in args.adapter:  # successive requests: each merged before the next is applied
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    reference = json.loads(args.reference.read_text()) if args.reference else None
    template = TofuTemplate(args.prompt_format, args.system_prompt, args.date_string)
    result = evaluate_tofu(model, tokenizer, sets, reference=reference, template=template,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_length=args.max_length)
    for key, value in result.items():
        if isinstance(value, float) or value is None:
            print(f"{key:<28}{'-' if value is None else f'{value:.4f}':>10}")
    args.json.write_text(json.dumps({"model": args.model, "adapters": args.adapter or [], **result}, indent=2) + "\n",
                         encoding="utf-8")
    print(f"Results written to {args.json}")


if __name__ == "__main__":
    main()
