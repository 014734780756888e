"""`lune-hf demo`: the offline end-to-end demo."""

from __future__ import annotations

from collections.abc import Sequence

from .common import CommandParser


def cmd_demo(argv: Sequence[str]) -> int:
    from ..demo import run_demo

    parser = CommandParser(prog="lune-hf demo", description="Offline end-to-end unlearning demo.")
    parser.add_argument("--output-dir", default="lune-demo", help="Where the adapter and report go.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic facts and of training.")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, seed=args.seed)
    return 0

