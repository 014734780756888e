"""`lune-hf train`: a recipe (YAML and/or flags) through `LuneTrainer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .common import rename_columns


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


def cmd_train(argv: Sequence[str]) -> int:
    from trl import TrlParser

    from ..config import LuneConfig
    from ..data import load_rows
    from ..trainer import LuneTrainer

    parser = TrlParser((TrainScriptArguments, LuneConfig), prog="lune-hf train")
    script, config = parser.parse_args_and_config(args=list(argv))
    forget = rename_columns(load_rows(script.forget_data, script.forget_split), script.prompt_column,
                             script.completion_column, script.forget_data)
    retain = None
    if script.retain_data:
        retain = rename_columns(load_rows(script.retain_data, script.retain_split), script.prompt_column,
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
    # Under `accelerate launch`, tear the process group down before exit: a rank that exits with gloo's threads
    # still running can abort ("terminate called without an active exception") and fail a finished run.
    trainer.accelerator.end_training()
    return 0

