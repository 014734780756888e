"""`lune-hf publish`, `card` and `pull`: the Hub side (never the trainer)."""

from __future__ import annotations

from collections.abc import Sequence

from .common import CommandParser, endpoint_args


def cmd_publish(argv: Sequence[str]) -> int:
    from ..hub import publish

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
    endpoint_args(parser)
    args = parser.parse_args(argv)
    forget_texts = None
    if args.forget_data:
        from ..data import load_rows

        forget_texts = [str(v) for row in load_rows(args.forget_data) for v in row.values() if v]
    commit = publish(args.output_dir, args.repo_id, base_model=args.base_model, token=args.token,
                     private=args.private, revision=args.revision, create_pr=args.create_pr,
                     commit_message=args.commit_message, endpoint=args.endpoint, summary=args.summary,
                     license=args.license, datasets=args.dataset, include_tokenizer=args.include_tokenizer,
                     forget_texts=forget_texts, allow_unverified=args.allow_unverified)
    print(f"Published: {commit.pr_url or commit.commit_url}")
    return 0


def cmd_card(argv: Sequence[str]) -> int:
    from ..card import render_card
    from ..hub import check_output_dir, resolve_base_model
    from ..report import PLOT_FILE, write_text_atomic

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
        write_text_atomic(Path(args.output), str(card))
    else:
        print(str(card))
    return 0


def cmd_pull(argv: Sequence[str]) -> int:
    from ..hub import load_unlearned

    parser = CommandParser(prog="lune-hf pull", description="Download a base model and unlearning "
                                     "adapters, apply them and save the result.")
    parser.add_argument("adapters", nargs="+", help="Adapter repo ids or folders (several are stacked).")
    parser.add_argument("--base-model", default=None, help="Base model (default: the adapters' recorded base).")
    parser.add_argument("--output-dir", required=True, help="Where to save the model and tokenizer.")
    parser.add_argument("--merge", action="store_true", help="Merge the adapters into the weights.")
    endpoint_args(parser)
    args = parser.parse_args(argv)
    model, tokenizer = load_unlearned(args.adapters, args.base_model, merge=args.merge, token=args.token,
                                      revision=args.revision, endpoint=args.endpoint)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved {'merged model' if args.merge else 'base model + adapter'} to {args.output_dir}")
    return 0

