"""`lune-hf eval`: forget / retain metrics of a model, with or without adapters."""

from __future__ import annotations

from collections.abc import Sequence

from .common import CommandParser, endpoint_args, rename_columns


def cmd_eval(argv: Sequence[str]) -> int:
    import json
    from pathlib import Path

    from ..data import load_rows
    from ..evaluator import DEFAULT_METRICS, METRICS, Evaluator

    parser = CommandParser(prog="lune-hf eval", description="Forget / retain metrics of a model, "
                                     "with or without unlearning adapters.")
    parser.add_argument("--model", required=True, help="Base model id or folder.")
    parser.add_argument("--adapter", action="append", default=None, help="Adapter id or folder (repeatable).")
    parser.add_argument("--forget", required=True, help="Forget set (file or Hub dataset id).")
    parser.add_argument("--retain", default=None, help="Retain set.")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        choices=list(METRICS), help="Metrics to compute.")
    parser.add_argument("--prompt-column", default="prompt", help="Column holding the prompt.")
    parser.add_argument("--completion-column", default="completion", help="Column holding the answer.")
    parser.add_argument("--max-rows", type=int, default=None, help="Evaluate at most N rows of each set.")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Greedy answer length (default: the "
                        "longest gold answer + 4 tokens, at most 64).")
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per forward pass.")
    parser.add_argument("--json", default="eval_results.json", help="Where to write the results.")
    endpoint_args(parser)
    args = parser.parse_args(argv)

    # the data first: a bad file is reported before any model loads
    sets = {name: rename_columns(load_rows(src), args.prompt_column, args.completion_column, src)
            for name, src in (("forget", args.forget), ("retain", args.retain)) if src}
    if args.adapter:
        from ..hub import load_unlearned

        model, tokenizer = load_unlearned(args.adapter, args.model, token=args.token, endpoint=args.endpoint,
                                          revision=args.revision)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    from ..data import ensure_pad_token

    ensure_pad_token(tokenizer)
    evaluator = Evaluator(sets, tokenizer, metrics=args.metrics, max_rows=args.max_rows,
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)
    results = evaluator.evaluate(model)
    print(f"{'metric':<28}{'value':>10}")
    for key, value in results.items():
        print(f"{key:<28}{value:>10.4f}")
    payload = {"model": args.model, "adapters": args.adapter or [], "rows": {k: len(v) for k, v in sets.items()},
               "results": results}
    Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"Results written to {args.json}")
    return 0

