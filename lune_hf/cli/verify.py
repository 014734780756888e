"""`lune-hf verify`: re-check an adapter's claims and attack it; `lune-hf reveal`: prove a row was in a forget set."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .common import CommandParser, endpoint_args, rename_columns


def _rows(source: str | None, args, name: str):
    if not source:
        return None
    from ..data import load_rows

    return rename_columns(load_rows(source), args.prompt_column, args.completion_column, f"--{name} {source}")


def cmd_verify(argv: Sequence[str]) -> int:
    from ..probes import PROBES
    from ..verify import DEFAULT_PROBES, Thresholds, verify

    parser = CommandParser(prog="lune-hf verify", description="Load an unlearning adapter as users do, recompute "
                           "the numbers its report claims on your data, and run attacks that try to bring the "
                           "forgotten knowledge back. Exits 1 when a claim or probe does not hold.")
    parser.add_argument("adapter", help="Adapter folder or Hub repo id.")
    parser.add_argument("--forget", default=None, help="Forget rows to check (file or Hub dataset id); a "
                        "`paraphrased_prompt` column adds a paraphrase variant.")
    parser.add_argument("--retain", default=None, help="Rows the model must still know.")
    parser.add_argument("--holdout", default=None, help="Rows the model never saw (for the mia probe).")
    parser.add_argument("--paraphrases", default=None, help="Your rephrasings of the forget prompts, same answers.")
    parser.add_argument("--base-model", default=None, help="Base model id or folder (default: the adapter's).")
    parser.add_argument("--probes", nargs="*", default=list(DEFAULT_PROBES), choices=list(PROBES),
                        help="Probes to run (none: only the claims).")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help=f"Change a limit; names: {', '.join(Thresholds.__dataclass_fields__)}.")
    parser.add_argument("--prove", default=None, metavar="PROOF.json",
                        help="Check a proof of forget-set membership (from `lune-hf reveal`) against the report.")
    parser.add_argument("--prompt-column", default="prompt", help="Column holding the prompt.")
    parser.add_argument("--completion-column", default="completion", help="Column holding the answer.")
    parser.add_argument("--max-rows", type=int, default=None, help="Run the probes on at most N forget rows.")
    parser.add_argument("--relearn-steps", type=int, default=50, help="Steps of the relearning attack.")
    parser.add_argument("--relearn-lr", type=float, default=1e-3, help="Learning rate of the relearning attack.")
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per forward pass.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the relearning attack.")
    parser.add_argument("--json", default="verification.json",
                        help="Where to write the results (a .md and a .png go beside it).")
    endpoint_args(parser)
    args = parser.parse_args(argv)
    thresholds = Thresholds.parse(args.threshold)
    proof = json.loads(Path(args.prove).read_text(encoding="utf-8")) if args.prove else None
    if args.forget is None:
        if proof is None:
            parser.error("give --forget (the rows to check) or --prove (a proof to check), or both.")
        return _check_proof_only(args, proof)
    result = verify(
        args.adapter, _rows(args.forget, args, "forget"), retain=_rows(args.retain, args, "retain"),
        holdout=_rows(args.holdout, args, "holdout"), paraphrases=_rows(args.paraphrases, args, "paraphrases"),
        base_model=args.base_model, probes=args.probes, thresholds=thresholds, proof=proof, max_rows=args.max_rows,
        batch_size=args.batch_size, seed=args.seed, relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr,
        token=args.token, endpoint=args.endpoint, revision=args.revision,
    )
    print(result.table())
    written = result.write(args.json)
    print("Written: " + ", ".join(str(p) for p in written))
    return 0 if result.passed else 1


def _check_proof_only(args, proof) -> int:
    from ..verify import check_membership

    ok, rows = check_membership(args.adapter, proof, token=args.token, endpoint=args.endpoint,
                                revision=args.revision)
    print(f"The row {'IS' if ok else 'is NOT'} in the forget set {args.adapter} committed to ({rows} rows).")
    return 0 if ok else 1


def cmd_reveal(argv: Sequence[str]) -> int:
    from ..commitment import load_key, reveal
    from ..data import load_rows

    parser = CommandParser(prog="lune-hf reveal", description="Write a proof that one row was in a run's forget "
                           "set (the row and its salt), for `lune-hf verify ADAPTER --prove PROOF.json`. Needs "
                           "the run's local output folder (its secret key never leaves it) and its forget data.")
    parser.add_argument("output_dir", help="The run's local output folder.")
    parser.add_argument("--forget", required=True, help="The forget data the run trained on.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="The row's position in the forget data.")
    which.add_argument("--row", help="A JSON file holding the row (compared by its content columns).")
    parser.add_argument("--prompt-column", default="prompt", help="Column holding the prompt.")
    parser.add_argument("--completion-column", default="completion", help="Column holding the answer.")
    parser.add_argument("--out", default="proof.json", help="Where to write the proof.")
    args = parser.parse_args(argv)
    rows = rename_columns(load_rows(args.forget), args.prompt_column, args.completion_column, args.forget)
    row = args.index if args.row is None else json.loads(Path(args.row).read_text(encoding="utf-8"))
    proof = reveal(rows, load_key(args.output_dir), row)
    Path(args.out).write_text(json.dumps(proof, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"Proof written to {args.out}: it reveals this row and its salt, nothing about the other rows.")
    return 0
