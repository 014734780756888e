"""Time the evaluation of 200 prompts on the demo model: one prompt at a time vs lune-hf's batched routines.

    python benchmarks/eval_speed.py [--model lune-demo/base_model] [--repeats 3] [--json PATH]

Without `--model` it builds the demo's memorised model first (nothing downloaded). Each configuration runs
`--repeats` times in this process, interleaved, and the medians are compared: `per_prompt` is the naive loop a
first version would write (one `generate` and one forward per prompt), `batched` is `ForgetRetainCallback.evaluate`
(left-padded batches of 32, one `generate` per batch, teacher-forced scoring in batches).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from datasets import Dataset


def per_prompt(model, tokenizer, rows: Dataset, max_new_tokens: int) -> None:
    from lune_hf.evaluation import generate_answers, score_answers

    for row in rows:
        generate_answers(model, tokenizer, [row["prompt"]], max_new_tokens=max_new_tokens, batch_size=1)
        score_answers(model, tokenizer, [row["prompt"]], [row["completion"]], batch_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A saved demo base model folder (default: build one).")
    parser.add_argument("--rows", type=int, default=200, help="Prompts to evaluate.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of each configuration.")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="Greedy answer length.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--json", default=None, help="Write the results here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.callbacks import ForgetRetainCallback
    from lune_hf.testing.synthetic import make_facts, memorised_model

    if args.model:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
        facts = make_facts(args.rows)
    else:
        built = memorised_model(args.rows)
        model, tokenizer, facts = built.model, built.tokenizer, built.facts
    model.eval()
    rows = Dataset.from_list([f.row() for f in facts[: args.rows]])
    callback = ForgetRetainCallback(rows, tokenizer=tokenizer, metrics=("exact_match", "rouge_l", "probability"),
                                    max_new_tokens=args.max_new_tokens, max_rows=None)
    runs = {
        "per_prompt": lambda: per_prompt(model, tokenizer, rows, args.max_new_tokens),
        "batched": lambda: callback.evaluate(model),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}: {name:<10} {times[name][-1]:7.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "rows": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "seconds": times,
        "median_s": medians,
        "batched_over_per_prompt": medians["batched"] / medians["per_prompt"],
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "metrics": callback.evaluate(model),
    }
    print(f"median: per_prompt {medians['per_prompt']:.2f} s, batched {medians['batched']:.2f} s "
          f"(ratio {result['batched_over_per_prompt']:.3f}) for {len(rows)} prompts")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
