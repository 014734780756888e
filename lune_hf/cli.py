"""The `lune-hf` command: demo, train, eval, card, publish, pull, estimate-memory."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# Errors that mean "your input or setup is wrong" (with `lune_hf.hub.PublishError`): the command prints the message
# and exits 2 (set LUNE_HF_DEBUG=1 for the traceback). Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)


class CommandParser(argparse.ArgumentParser):
    """argparse that accepts both spellings of every long option, `--output-dir` and `--output_dir`, as
    `lune-hf train` (transformers' `HfArgumentParser`) does: one spelling to learn, whichever a user types."""

    def add_argument(self, *names, **kwargs):
        aliases = [f"--{n[2:].replace('-', '_')}" for n in names if n.startswith("--") and "-" in n[2:]]
        return super().add_argument(*names, *aliases, **kwargs)


@dataclass
class TrainScriptArguments:
    """What `lune-hf train` needs beside the `LuneConfig` fields."""

    model_name_or_path: str = field(metadata={"help": "Model to unlearn from: a Hub id or a local folder."})
    forget_data: str = field(
        metadata={"help": "Forget set: a JSON/JSONL/CSV/Parquet file, a folder, or a Hub dataset id."}
    )
    retain_data: str | None = field(default=None, metadata={"help": "Retain set, same formats (optional)."})
    forget_split: str = field(default="train", metadata={"help": "Split of a Hub forget set."})
    retain_split: str = field(default="train", metadata={"help": "Split of a Hub retain set."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt (e.g. `question`)."})
    completion_column: str = field(
        default="completion", metadata={"help": "Column holding the answer (e.g. `answer`)."}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})


def _rename_columns(rows, prompt_column: str, completion_column: str, source: str):
    mapping = {prompt_column: "prompt", completion_column: "completion"}
    for column in mapping:
        if column not in rows.column_names and not {"messages", "text", "input_ids"} & set(rows.column_names):
            raise ValueError(f"{source}: no column {column!r}; columns present: {rows.column_names}.")
    return rows.rename_columns({k: v for k, v in mapping.items() if k != v and k in rows.column_names})


def cmd_train(argv: Sequence[str]) -> int:
    from trl import TrlParser

    from .config import LuneConfig
    from .data import load_rows
    from .trainer import LuneTrainer

    parser = TrlParser((TrainScriptArguments, LuneConfig), prog="lune-hf train")
    script, config = parser.parse_args_and_config(args=list(argv))
    forget = _rename_columns(load_rows(script.forget_data, script.forget_split), script.prompt_column,
                             script.completion_column, script.forget_data)
    retain = None
    if script.retain_data:
        retain = _rename_columns(load_rows(script.retain_data, script.retain_split), script.prompt_column,
                                 script.completion_column, script.retain_data)
    tokenizer = None
    if script.tokenizer_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(script.tokenizer_name_or_path)
    trainer = LuneTrainer(
        script.model_name_or_path,
        config,
        train_dataset=forget,
        retain_dataset=retain,
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"Adapter and unlearning report saved to {config.output_dir}")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from .demo import run_demo

    parser = CommandParser(prog="lune-hf demo", description="Offline end-to-end unlearning demo.")
    parser.add_argument("--output-dir", default="lune-demo", help="Where the adapter and report go.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic facts and of training.")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, seed=args.seed)
    return 0


def _endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login).")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
    parser.add_argument("--revision", default=None, help="Branch or commit.")


def cmd_publish(argv: Sequence[str]) -> int:
    from .hub import publish

    parser = CommandParser(prog="lune-hf publish", description="Push an unlearning adapter and its "
                                     "model card to the Hub, in one commit.")
    parser.add_argument("output_dir", help="Folder written by LuneTrainer.save_model / lune-hf train / demo.")
    parser.add_argument("repo_id", help="Target repo, namespace/name.")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (default: what the run "
                        "recorded, if it is a Hub id).")
    parser.add_argument("--summary", default=None, help="One line saying what was unlearned (never the data).")
    parser.add_argument("--license", default=None, help="License of the adapter (e.g. apache-2.0).")
    parser.add_argument("--dataset", action="append", default=None, help="Public dataset id (repeatable).")
    parser.add_argument("--private", action="store_true", help="Create the repo private.")
    parser.add_argument("--create-pr", action="store_true", help="Open a pull request instead of pushing to main.")
    parser.add_argument("--commit-message", default=None, help="Commit title.")
    parser.add_argument("--include-tokenizer", action="store_true", help="Upload the tokenizer files too.")
    parser.add_argument("--forget-data", default=None, help="Forget set file: refuse to publish if any of its "
                        "prompts or answers appears in a file to upload.")
    parser.add_argument("--allow-unverified", action="store_true", help="Publish even though the run's checks do "
                        "not show the forget set forgotten (the card then says so first).")
    _endpoint_args(parser)
    args = parser.parse_args(argv)
    forget_texts = None
    if args.forget_data:
        from .data import load_rows

        forget_texts = [str(v) for row in load_rows(args.forget_data) for v in row.values() if v]
    commit = publish(args.output_dir, args.repo_id, base_model=args.base_model, token=args.token,
                     private=args.private, revision=args.revision, create_pr=args.create_pr,
                     commit_message=args.commit_message, endpoint=args.endpoint, summary=args.summary,
                     license=args.license, datasets=args.dataset, include_tokenizer=args.include_tokenizer,
                     forget_texts=forget_texts, allow_unverified=args.allow_unverified)
    print(f"Published: {commit.pr_url or commit.commit_url}")
    return 0


def cmd_card(argv: Sequence[str]) -> int:
    from .card import render_card
    from .hub import check_output_dir, resolve_base_model
    from .report import PLOT_FILE

    parser = CommandParser(prog="lune-hf card", description="Render the model card publish would "
                                     "upload, to read it first.")
    parser.add_argument("output_dir", help="Folder of a finished run.")
    parser.add_argument("repo_id", help="The repo it would be published to.")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model.")
    parser.add_argument("--summary", default=None, help="One line saying what was unlearned.")
    parser.add_argument("--license", default=None, help="License.")
    parser.add_argument("--output", default=None, help="Write the card here instead of printing it.")
    args = parser.parse_args(argv)
    from pathlib import Path

    folder = Path(args.output_dir)
    report = check_output_dir(folder)
    base = resolve_base_model(folder, report, args.base_model)
    card = render_card({**report, "base_model": base}, repo_id=args.repo_id, base_model=base,
                       summary=args.summary, license=args.license, has_plot=(folder / PLOT_FILE).is_file())
    if args.output:
        card.save(args.output)
    else:
        print(str(card))
    return 0


def cmd_pull(argv: Sequence[str]) -> int:
    from .hub import load_unlearned

    parser = CommandParser(prog="lune-hf pull", description="Download a base model and unlearning "
                                     "adapters, apply them and save the result.")
    parser.add_argument("adapters", nargs="+", help="Adapter repo ids or folders (several are stacked).")
    parser.add_argument("--base-model", default=None, help="Base model (default: the adapters' recorded base).")
    parser.add_argument("--output-dir", required=True, help="Where to save the model and tokenizer.")
    parser.add_argument("--merge", action="store_true", help="Merge the adapters into the weights.")
    _endpoint_args(parser)
    args = parser.parse_args(argv)
    model, tokenizer = load_unlearned(args.adapters, args.base_model, merge=args.merge, token=args.token,
                                      revision=args.revision, endpoint=args.endpoint)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved {'merged model' if args.merge else 'base model + adapter'} to {args.output_dir}")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    import json
    from pathlib import Path

    from .data import load_rows
    from .evaluator import DEFAULT_METRICS, METRICS, Evaluator

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
    _endpoint_args(parser)
    args = parser.parse_args(argv)

    # the data first: a bad file is reported before any model loads
    sets = {name: _rename_columns(load_rows(src), args.prompt_column, args.completion_column, src)
            for name, src in (("forget", args.forget), ("retain", args.retain)) if src}
    if args.adapter:
        from .hub import load_unlearned

        model, tokenizer = load_unlearned(args.adapter, args.model, token=args.token, endpoint=args.endpoint,
                                          revision=args.revision)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    from .data import ensure_pad_token

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


def cmd_estimate_memory(argv: Sequence[str]) -> int:
    import json
    from pathlib import Path

    from .memory import METHODS, StepShape, estimate_step_memory, format_bytes
    from .objectives import OBJECTIVES

    parser = CommandParser(
        prog="lune-hf estimate-memory",
        description="GPU memory of one LuneTrainer training step, from the model's config alone (fake tensors: "
                    "nothing is downloaded but config.json, nothing is allocated), beside full fine-tuning.")
    parser.add_argument("model", help="Hub id, local model folder, or a config.json file.")
    parser.add_argument("--batch-size", type=int, default=8, help="Forget rows per device and step (default 8).")
    parser.add_argument("--max-length", type=int, default=512, help="Tokens per row (default 512).")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="Answer tokens per row, the rest is prompt (default: half of --max-length).")
    parser.add_argument("--objective", default="lune", choices=list(OBJECTIVES), help="Unlearning objective.")
    parser.add_argument("--no-retain", action="store_true", help="No retain rows in the step.")
    parser.add_argument("--method", default="lora", choices=list(METHODS),
                        help="lora (LuneTrainer), full (full fine-tuning), full_reference (full NPO with a second "
                             "model).")
    parser.add_argument("--no-checkpointing", action="store_true", help="Activation checkpointing off.")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05).")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16).")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="Dtype of the base weights (default bfloat16).")
    parser.add_argument("--gpu", type=float, action="append", default=None,
                        help="GPU size in GiB to check (repeatable; default 16, 24, 40, 80).")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the full fine-tuning comparison.")
    parser.add_argument("--json", default=None, help="Also write the estimate to this JSON file.")
    parser.add_argument("--token", default=None, help="Hub token, for a gated model's config.")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    source = Path(args.model)
    config = (AutoConfig.for_model(**json.loads(source.read_text(encoding="utf-8")))
              if source.is_file() else AutoConfig.from_pretrained(args.model, token=args.token))
    shape = StepShape(method=args.method, objective=args.objective, retain=not args.no_retain,
                      batch_size=args.batch_size, max_length=args.max_length,
                      answer_tokens=args.answer_tokens,
                      activation_checkpointing=not args.no_checkpointing, lora_dropout=args.lora_dropout,
                      lora_r=args.lora_r, dtype=args.dtype)
    print(f"Estimating one {shape.method} step of {args.model} ({shape.objective}"
          f"{' + retain' if shape.retain else ''}, batch {shape.batch_size} x {shape.max_length}) ...", flush=True)
    estimate = estimate_step_memory(config, shape)
    baseline = None if args.no_baseline or shape.method != "lora" else estimate_step_memory(
        config, StepShape(method="full", batch_size=shape.batch_size, max_length=shape.max_length,
                          answer_tokens=shape.answer_tokens, activation_checkpointing=False, dtype=shape.dtype))
    parts = estimate.breakdown
    rows = [("weights (parameters)", parts.get("Parameter", 0) + parts.get("Buffer", 0)),
            ("gradients", parts.get("Gradient", 0)), ("optimizer states", parts.get("Optstate", 0)),
            ("activations", parts.get("Activation", 0) + parts.get("Temp", 0)), ("other", parts.get("Other", 0))]
    print(f"\nparameters: {estimate.parameters['total']:,} ({estimate.parameters['trainable']:,} trained)")
    print("at the peak of the step:")
    for name, value in rows:
        print(f"  {name:<22}{format_bytes(value):>12}")
    print(f"  {'peak':<22}{format_bytes(estimate.peak_bytes):>12}")
    if baseline is not None:
        print(f"full fine-tuning, same batch: {format_bytes(baseline.peak_bytes)} (this step: "
              f"{estimate.peak_bytes / baseline.peak_bytes:.2f} of it)")
    gpus = args.gpu or [16.0, 24.0, 40.0, 80.0]
    fits = {f"{g:g}": estimate.fits(g) for g in gpus}
    print("fits (1 GiB kept for the CUDA context): " + ", ".join(
        f"{g} GiB {'yes' if ok else 'no'}" for g, ok in fits.items()))
    if not fits[f"{max(gpus):g}"] and shape.method == "lora":
        print("to fit: lower --batch-size or --max-length, keep activation checkpointing on, or shard the "
              "backbone over GPUs (recipes/accelerate/fsdp2_lora.yaml)")
    if args.json:
        payload = {"model": args.model, **estimate.as_dict(), "fits_gib": fits,
                   "full_finetuning_peak_bytes": baseline.peak_bytes if baseline is not None else None}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {args.json}")
    return 0


COMMANDS = {
    "demo": (cmd_demo, "unlearn synthetic facts from a tiny model, offline (a minute on 2 CPU cores)"),
    "train": (cmd_train, "unlearn with a recipe: lune-hf train --config recipes/<name>.yaml [--field value ...]"),
    "eval": (cmd_eval, "forget / retain metrics of a model and optional adapters"),
    "card": (cmd_card, "render the model card of an output folder without publishing"),
    "publish": (cmd_publish, "push an adapter, its report and a model card to the Hub"),
    "pull": (cmd_pull, "download and apply unlearning adapters (stacked or merged) and save the model"),
    "estimate-memory": (cmd_estimate_memory, "will a training step fit my GPU? peak memory from the config alone"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: lune-hf <command> [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<16} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except Exception as err:
        from .hub import PublishError  # imported here: `lune-hf --help` stays fast

        if not isinstance(err, (*EXPECTED_ERRORS, PublishError)) or os.environ.get("LUNE_HF_DEBUG"):
            raise
        print(f"lune-hf {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
