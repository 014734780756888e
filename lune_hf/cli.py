"""The `lune-hf` command: demo, train, eval, publish, pull."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
    forget_eval_steps: int = field(
        default=0, metadata={"help": "Evaluate forget/retain every N steps with ForgetRetainCallback (0: off)."}
    )
    forget_target: float | None = field(
        default=None, metadata={"help": "Stop once forget ROUGE-L is at or below this value."}
    )
    retain_floor: float | None = field(
        default=None, metadata={"help": "Stop (and restore the last good adapter) when retain ROUGE-L falls "
                                "below this fraction of its start value."}
    )


def _rename_columns(rows, prompt_column: str, completion_column: str, source: str):
    mapping = {prompt_column: "prompt", completion_column: "completion"}
    for column in mapping:
        if column not in rows.column_names and "messages" not in rows.column_names:
            raise ValueError(f"{source}: no column {column!r}; columns present: {rows.column_names}.")
    return rows.rename_columns({k: v for k, v in mapping.items() if k != v and k in rows.column_names})


def cmd_train(argv: Sequence[str]) -> int:
    from trl import TrlParser

    from .callbacks import ForgetRetainCallback
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
    callbacks = []
    if script.forget_eval_steps:
        callbacks.append(
            ForgetRetainCallback(
                forget,
                retain,
                eval_steps=script.forget_eval_steps,
                forget_target=script.forget_target,
                retain_floor=script.retain_floor if retain is not None else None,
            )
        )
    trainer = LuneTrainer(
        script.model_name_or_path,
        config,
        train_dataset=forget,
        retain_dataset=retain,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"Adapter and unlearning report saved to {config.output_dir}")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from .demo import run_demo

    parser = argparse.ArgumentParser(prog="lune-hf demo", description="Offline end-to-end unlearning demo.")
    parser.add_argument("--output-dir", default="lune-demo", help="Where the adapter and report go.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic facts and of training.")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, seed=args.seed)
    return 0


COMMANDS = {
    "demo": (cmd_demo, "unlearn synthetic facts from a tiny model, offline (a minute on 2 CPU cores)"),
    "train": (cmd_train, "unlearn with a recipe: lune-hf train --config recipes/<name>.yaml [--field value ...]"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: lune-hf <command> [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<9} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
