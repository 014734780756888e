"""`lune-hf estimate-memory`: will a training step fit a GPU, from the config alone."""

from __future__ import annotations

from collections.abc import Sequence

from .common import CommandParser


def cmd_estimate_memory(argv: Sequence[str]) -> int:
    import json
    from pathlib import Path

    from ..memory import METHODS, StepShape, estimate_step_memory
    from ..objectives import OBJECTIVES

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
    parser.add_argument("--teacher", action="store_true",
                        help="lune with negative_loss='distill': also hold the frozen teacher (a copy of the model).")
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
                      lora_r=args.lora_r, dtype=args.dtype, teacher=args.teacher)
    print(f"Estimating one {shape.method} step of {args.model} ({shape.objective}"
          f"{' + retain' if shape.retain else ''}{' + teacher' if shape.teacher else ''}, "
          f"batch {shape.batch_size} x {shape.max_length}) ...", flush=True)
    estimate = estimate_step_memory(config, shape)
    baseline = None if args.no_baseline or shape.method != "lora" else estimate_step_memory(
        config, StepShape(method="full", batch_size=shape.batch_size, max_length=shape.max_length,
                          answer_tokens=shape.answer_tokens, activation_checkpointing=False, dtype=shape.dtype))
    fits = _print_estimate(estimate, baseline, args.gpu or [16.0, 24.0, 40.0, 80.0])
    if args.json:
        payload = {"model": args.model, **estimate.as_dict(), "fits_gib": fits,
                   "full_finetuning_peak_bytes": baseline.peak_bytes if baseline is not None else None}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {args.json}")
    return 0


def _print_estimate(estimate, baseline, gpus: list[float]) -> dict[str, bool]:
    """The breakdown at the peak, the full fine-tuning comparison and which GPU sizes it fits."""
    from ..memory import format_bytes

    parts = estimate.breakdown
    rows = [("weights (parameters)", parts.get("Parameter", 0) + parts.get("Buffer", 0)),
            ("gradients", parts.get("Gradient", 0)), ("optimizer states", parts.get("Optstate", 0)),
            ("activations", parts.get("Activation", 0) + parts.get("Temp", 0)), ("other", parts.get("Other", 0))]
    teacher = estimate.parameters.get("teacher")
    print(f"\nparameters: {estimate.parameters['total']:,} ({estimate.parameters['trainable']:,} trained)"
          + (f", teacher {teacher:,} (frozen)" if teacher else ""))
    print("at the peak of the step:")
    for name, value in rows:
        print(f"  {name:<22}{format_bytes(value):>12}")
    print(f"  {'peak':<22}{format_bytes(estimate.peak_bytes):>12}")
    if baseline is not None:
        print(f"full fine-tuning, same batch: {format_bytes(baseline.peak_bytes)} (this step: "
              f"{estimate.peak_bytes / baseline.peak_bytes:.2f} of it)")
    fits = {f"{g:g}": estimate.fits(g) for g in gpus}
    print("fits (1 GiB kept for the CUDA context): " + ", ".join(
        f"{g} GiB {'yes' if ok else 'no'}" for g, ok in fits.items()))
    if not fits[f"{max(gpus):g}"] and estimate.shape.method == "lora":
        print("to fit: lower --batch-size or --max-length, keep activation checkpointing on, or shard the "
              "backbone over GPUs (recipes/accelerate/fsdp2_lora.yaml)")
    return fits
