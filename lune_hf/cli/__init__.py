"""The `lune-hf` command: demo, train, eval, card, publish, pull, verify, reveal, estimate-memory.

Each subcommand lives in its own module and is imported only when run, so `lune-hf --help` stays fast and no
module here imports both the trainer and the Hub code.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# Errors that mean "your input or setup is wrong" (with `lune_hf.hub.PublishError`): the command prints the message
# and exits 2 (set LUNE_HF_DEBUG=1 for the traceback). Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)

# name -> (module in lune_hf.cli, function, help)
COMMANDS = {
    "demo": ("demo", "cmd_demo", "unlearn synthetic facts from a tiny model, offline (a minute on 2 CPU cores)"),
    "train": ("train", "cmd_train",
              "unlearn with a recipe: lune-hf train --config recipes/<name>.yaml [--field value ...]"),
    "eval": ("evaluate", "cmd_eval", "forget / retain metrics of a model and optional adapters"),
    "card": ("hub", "cmd_card", "render the model card of an output folder without publishing"),
    "publish": ("hub", "cmd_publish", "push an adapter, its report and a model card to the Hub"),
    "pull": ("hub", "cmd_pull", "download and apply unlearning adapters (stacked or merged) and save the model"),
    "verify": ("verify", "cmd_verify",
               "re-check an adapter's claims on your data and attack it (paraphrase, relearn, quantize, mia)"),
    "reveal": ("verify", "cmd_reveal", "prove that a row was in a run's forget set, revealing nothing else"),
    "estimate-memory": ("memory", "cmd_estimate_memory",
                        "will a training step fit my GPU? peak memory from the config alone"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: lune-hf <command> [options]\n\ncommands:")
        for name, (_, _, help_text) in COMMANDS.items():
            print(f"  {name:<16} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module, function, _ = COMMANDS[argv[0]]
    command = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    try:
        return command(argv[1:])
    except Exception as err:
        from ..hub import PublishError  # imported here: `lune-hf --help` stays fast

        if not isinstance(err, (*EXPECTED_ERRORS, PublishError)) or os.environ.get("LUNE_HF_DEBUG"):
            raise
        print(f"lune-hf {argv[0]}: error: {err}", file=sys.stderr)
        return 2

