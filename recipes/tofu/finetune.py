"""Step (a) / (b) of the TOFU recipe: full fine-tuning of a base model on TOFU rows.

    # (a) the "finetuned" model: every row (TOFU: 5 epochs, lr 1e-5, effective batch 32)
    python recipes/tofu/finetune.py --data locuslab/TOFU --model <base> --rows full --output-dir tofu-finetuned
    # (b) the retain-only reference for forget01: every row except the forget authors
    python recipes/tofu/finetune.py --data locuslab/TOFU --model <base> --rows retain99 --output-dir tofu-retain99

`--data` is a Hub id or a local TOFU folder; `--retain-authors 20` trains on the first 20 retain authors only (the
authors of TOFU's retain_perturbed evaluation split: the CPU setup of benchmarks/tofu.py); `--n-authors N` keeps
the last N authors. Rows are tokenised as open-unlearning does (`lune_hf.tofu.template`).
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from lune_hf.data import ensure_pad_token
from lune_hf.tofu.data import FORGET_SPLITS, retain_split_for, tofu_sets
from lune_hf.tofu.template import DATE_STRING, PROMPT_FORMATS, SYSTEM_PROMPT, TofuTemplate
from lune_hf.tofu.train import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="locuslab/TOFU", help="TOFU Hub id or local folder of <split>.json.")
    parser.add_argument("--model", required=True, help="Base model folder or Hub id.")
    parser.add_argument("--rows", default="full", help="`full` (retain + forget) or a retain split (retain99, "
                        "retain95, retain90).")
    parser.add_argument("--n-authors", type=int, default=None, help="Keep only the last N of the 200 authors.")
    parser.add_argument("--retain-authors", type=int, default=None, help="Train on the first N retain authors only "
                        "(20: those of TOFU's retain_perturbed split).")
    parser.add_argument("--output-dir", required=True, help="Where the fine-tuned model and tokenizer go.")
    parser.add_argument("--epochs", type=float, default=5.0, help="Epochs (TOFU: 5).")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="Peak learning rate (TOFU: 1e-5).")
    parser.add_argument("--batch-size", type=int, default=8, help="Rows per device and step.")
    parser.add_argument("--grad-accum", type=int, default=4, help="Gradient accumulation (8 x 4 = TOFU's 32).")
    parser.add_argument("--max-length", type=int, default=512, help="Prompt + answer tokens.")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat", help="chat template or "
                        "TOFU's plain 'Question: ... Answer:' format.")
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="System prompt of the chat format.")
    parser.add_argument("--date-string", default=DATE_STRING, help="Passed to the chat template (as open-unlearning).")
    args = parser.parse_args()

    # The forget split whose retain set is wanted (`full` is the same for every split).
    forget_split = next((f for f in FORGET_SPLITS if retain_split_for(f) == args.rows), "forget01")
    if args.rows != "full" and retain_split_for(forget_split) != args.rows:
        parser.error(f"--rows must be `full` or one of {[retain_split_for(f) for f in FORGET_SPLITS]}")
    sets = tofu_sets(args.data, forget_split, n_authors=args.n_authors,
                     retain_authors=range(args.retain_authors) if args.retain_authors else None)
    rows = sets.full if args.rows == "full" else sets.retain
    print(f"{sets.description}\nFine-tuning on {len(rows)} rows ({args.rows}).")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    # open-unlearning's tokens (the same the evaluation scores): `lune_hf.tofu.template`.
    examples = TofuTemplate(args.prompt_format, args.system_prompt, args.date_string).encode_rows(
        tokenizer, rows, args.max_length)
    finetune(model, tokenizer, examples, args.output_dir,
             epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
             grad_accum=args.grad_accum, max_length=args.max_length)
    print(f"Saved to {args.output_dir}")


if __name__ == "__main__":
    main()
