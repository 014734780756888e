"""Step (c) of the TOFU recipe: unlearn a forget split from the fine-tuned model with LuneTrainer.

    python recipes/tofu/unlearn.py --data locuslab/TOFU --model tofu-finetuned --forget-split forget01 \
        --objective lune --output-dir tofu-forget01-lune

Every objective of `LuneConfig` works (lune, ga, graddiff, npo, simnpo, idk_nll, idk_dpo, ihl); its learning rate,
beta and use of the retain set default to `lune_hf.tofu.train.OBJECTIVE_SETTINGS`. LUNE's negative targets are
TOFU's refusal sentences (idontknow.jsonl when the data folder has it), or with `--replacement perturbed` TOFU's
perturbed (wrong) answers. `--negative-weight` adds a term on the original answer (`--negative-loss npo`, `dpo`,
or `distill` toward `--teacher-model`, e.g. the base model before its TOFU fine-tune):

    python recipes/tofu/unlearn.py --model tofu-finetuned --forget-split forget05 --objective lune \
        --negative-weight 3 --negative-loss distill --teacher-model HuggingFaceTB/SmolLM2-135M-Instruct \
        --learning-rate 1e-3 --epochs 4 --retain-weight 7 --output-dir tofu-forget05-lune-distill
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from lune_hf.objectives import NEGATIVE_LOSSES, OBJECTIVES
from lune_hf.tofu.data import FORGET_SPLITS, PROMPT_FORMATS, SYSTEM_PROMPT, to_rows, tofu_sets
from lune_hf.tofu.train import unlearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="locuslab/TOFU", help="TOFU Hub id or local folder of <split>.json.")
    parser.add_argument("--model", required=True, help="The fine-tuned model (step a).")
    parser.add_argument("--forget-split", choices=FORGET_SPLITS, default="forget01", help="What to forget.")
    parser.add_argument("--n-authors", type=int, default=None, help="Keep only the last N of the 200 authors.")
    parser.add_argument("--retain-authors", type=int, default=None, help="Only the first N retain authors (20: "
                        "those of TOFU's retain_perturbed split), as in fine-tuning.")
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="lune", help="Unlearning objective.")
    parser.add_argument("--output-dir", required=True, help="Where the adapter and its report go.")
    parser.add_argument("--epochs", type=float, default=5.0, help="Passes over the forget set.")
    parser.add_argument("--learning-rate", type=float, default=None, help="Default: the objective's setting.")
    parser.add_argument("--batch-size", type=int, default=8, help="Forget rows per device and step.")
    parser.add_argument("--grad-accum", type=int, default=1, help="Gradient accumulation.")
    parser.add_argument("--retain-weight", type=float, default=None, help="Weight of the retain NLL.")
    parser.add_argument("--no-retain", action="store_true", help="Do not use the retain set.")
    parser.add_argument("--forget-weight", type=float, default=None, help="Weight of the forget term.")
    parser.add_argument("--negative-weight", type=float, default=None, help="lune: weight of the term on the "
                        "original answer (0: the paper's Eq. 4); see LuneConfig.negative_weight.")
    parser.add_argument("--negative-loss", choices=NEGATIVE_LOSSES, default=None, help="lune: that term, npo "
                        "(default), dpo, or distill (toward --teacher-model).")
    parser.add_argument("--teacher-model", default=None, help="--negative-loss distill: a model with the same "
                        "tokenizer that never saw TOFU, e.g. the base model of step (a).")
    parser.add_argument("--replacement", choices=("refusal", "perturbed"), default="refusal",
                        help="LUNE targets: refusals or TOFU's perturbed answers.")
    parser.add_argument("--max-length", type=int, default=512, help="Prompt + answer tokens.")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat", help="As in fine-tuning.")
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="As in fine-tuning.")
    args = parser.parse_args()

    sets = tofu_sets(args.data, args.forget_split, n_authors=args.n_authors,
                     retain_authors=range(args.retain_authors) if args.retain_authors else None)
    print(sets.description)
    forget = to_rows(sets.forget, args.prompt_format, args.system_prompt)
    if args.replacement == "perturbed":
        forget = forget.add_column("replacement", [p[i % len(p)].strip()
                                                   for i, p in enumerate(sets.forget["perturbed_answer"])])
    overrides = {"retain": not args.no_retain}
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    for name in ("retain_weight", "forget_weight", "negative_weight", "negative_loss", "teacher_model"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    unlearn(model, tokenizer, forget, to_rows(sets.retain, args.prompt_format, args.system_prompt), args.objective,
            args.output_dir, refusals=sets.refusals, epochs=args.epochs, batch_size=args.batch_size,
            grad_accum=args.grad_accum, max_length=args.max_length, overrides=overrides)
    print(f"Adapter saved to {args.output_dir}")


if __name__ == "__main__":
    main()
