"""What every `lune-hf` subcommand shares: the parser family, column mapping, Hub connection flags."""

from __future__ import annotations

import argparse


class CommandParser(argparse.ArgumentParser):
    """argparse that accepts both spellings of every long option, `--output-dir` and `--output_dir`, as
    `lune-hf train` (transformers' `HfArgumentParser`) does: one spelling to learn, whichever a user types."""

    def add_argument(self, *names, **kwargs):
        aliases = [f"--{n[2:].replace('-', '_')}" for n in names if n.startswith("--") and "-" in n[2:]]
        return super().add_argument(*names, *aliases, **kwargs)


def rename_columns(rows, prompt_column: str, completion_column: str, source: str):
    mapping = {prompt_column: "prompt", completion_column: "completion"}
    for column in mapping:
        if column not in rows.column_names and not {"messages", "text", "input_ids"} & set(rows.column_names):
            raise ValueError(f"{source}: no column {column!r}; columns present: {rows.column_names}.")
    return rows.rename_columns({k: v for k, v in mapping.items() if k != v and k in rows.column_names})


def endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login).")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
    parser.add_argument("--revision", default=None, help="Branch or commit.")

