"""Profile one LuneTrainer training step and one evaluation pass (greedy generation) on SmolLM2-135M.

Where does the time go (phases of the step; operators grouped into vocabulary / projections / attention /
LoRA dropout / optimizer) and where does the memory go (tensors saved for backward, by module; the logits)?

    python benchmarks/profile_step.py --json benchmarks/results/profile.json
    python benchmarks/profile_step.py --quick      # tiny synthetic model, checks that the script runs

Same data and shapes as benchmarks/efficiency.py (batch 4 x 72 tokens, LUNE replacement + retain groups).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import efficiency  # noqa: E402  (same data and model preparation as the efficiency benchmark)

CATEGORY_ORDER = ["vocabulary (lm_head, log-softmax, loss)", "projections (matmuls)", "attention (sdpa)",
                  "LoRA dropout", "optimizer", "norms / activations / elementwise",
                  "Python and framework (outside operators)", "other"]


def op_category(name: str, shapes: list, vocab: int) -> str:
    """Coarse category of a profiler operator from its name and input shapes."""
    flat = [d for s in shapes if isinstance(s, list) for d in s]
    if name.startswith("ProfilerStep"):
        return CATEGORY_ORDER[6]
    if vocab in flat:
        return CATEGORY_ORDER[0]
    lowered = name.lower()
    if "adam" in lowered or "_foreach" in lowered or "optimizer" in lowered:
        return CATEGORY_ORDER[4]
    if "dropout" in lowered or "bernoulli" in lowered:
        return CATEGORY_ORDER[3]
    if "attention" in lowered or "sdpa" in lowered or "flash" in lowered:
        return CATEGORY_ORDER[2]
    if any(k in lowered for k in ("::mm", "addmm", "::bmm", "::matmul", "::linear")):
        return CATEGORY_ORDER[1]
    if any(k in lowered for k in ("mul", "add", "silu", "rsqrt", "pow", "mean", "neg", "cat", "div", "copy", "sub")):
        return CATEGORY_ORDER[5]
    return CATEGORY_ORDER[7]


def summarize_profile(prof, vocab: int, top: int = 15) -> dict[str, Any]:
    """Self CPU time by category and the top operators (shapes kept, so the vocabulary matmul stands out)."""
    by_cat: dict[str, float] = defaultdict(float)
    rows = []
    for evt in prof.key_averages(group_by_input_shape=True):
        if evt.self_cpu_time_total <= 0:
            continue
        shapes = evt.input_shapes or []
        by_cat[op_category(evt.key, shapes, vocab)] += evt.self_cpu_time_total / 1e3
        rows.append((evt.self_cpu_time_total / 1e3, evt.key, str(shapes)[:90], evt.count))
    rows.sort(reverse=True)
    total = sum(by_cat.values())
    return {
        "self_cpu_ms_total": total,
        "by_category_ms": {k: by_cat.get(k, 0.0) for k in CATEGORY_ORDER},
        "by_category_share": {k: by_cat.get(k, 0.0) / total for k in CATEGORY_ORDER},
        "top_ops": [{"self_ms": ms, "op": op, "shapes": sh, "calls": n} for ms, op, sh, n in rows[:top]],
    }


class SavedTensorLedger:
    """Bytes of the tensors autograd saves for backward, by the module that saved them (parameters excluded)."""

    def __init__(self, model) -> None:
        import torch

        self.torch = torch
        self.stack: list[str] = []
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self.stack.append(n)))
            self.handles.append(module.register_forward_hook(lambda m, a, o: self._pop()))

    def _pop(self) -> None:  # a forward hook that returns a value would replace the module's output
        self.stack.pop()

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen and tensor.device.type != "meta":
            self.seen.add(ptr)
            self.bytes[self.category(self.stack[-1] if self.stack else "")] += storage.nbytes()
        return tensor

    @staticmethod
    def category(name: str) -> str:
        if "lora_dropout" in name:
            return "LoRA dropout (dropped-out input copies + masks)"
        if "lora_A" in name or "lora_B" in name:
            return "LoRA A/B"
        if "lm_head" in name:
            return "lm_head input"
        if "self_attn" in name:
            return "attention (projections, rotary, sdpa)"
        if "mlp" in name:
            return "MLP (gate/up/down, SiLU)"
        if "norm" in name:
            return "RMSNorm"
        if "embed" in name:
            return "embedding"
        if not name:
            return "loss over the vocabulary (outside the model)"
        return "other"

    def context(self):
        return self.torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _trainer(model_dir: str, *, lora_dropout: float, steps: int, callbacks: list, seq_len: int, batch_size: int,
             answer_only_logits: bool = True):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf import LuneConfig, LuneTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    forget, retain = efficiency.benchmark_rows()
    args = LuneConfig(output_dir=tempfile.mkdtemp(prefix="lune-profile-"), max_steps=steps, max_length=seq_len,
                      per_device_train_batch_size=batch_size, lora_dropout=lora_dropout, use_cpu=True,
                      report_to="none", disable_tqdm=True, logging_steps=1000)
    # LuneTrainer runs the lm_head only where answers are predicted; the other trainer is LuneTrainer before that.
    cls = LuneTrainer if answer_only_logits else efficiency.full_logits_trainer()
    return cls(model, args, train_dataset=Dataset.from_list(forget), retain_dataset=Dataset.from_list(retain),
               processing_class=tokenizer, callbacks=callbacks)


def profile_training(model_dir: str, seq_len: int, batch_size: int) -> dict[str, Any]:
    """Phases of 6 real LuneTrainer steps (medians of the last 4) and an operator profile of step 4."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    phases: dict[str, list[float]] = defaultdict(list)
    marks: dict[str, float] = {}
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True,
                   schedule=schedule(wait=2, warmup=1, active=1, repeat=1))

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if "end" in marks:
                phases["fetch + collate batch"].append(now - marks["end"])
            marks["begin"] = now

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            marks["pre_opt"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            now = time.perf_counter()
            phases["optimizer step (AdamW)"].append(now - marks["pre_opt"])
            marks["opt"] = now

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            phases["scheduler, zero_grad"].append(now - marks["opt"])
            phases["whole step"].append(now - marks["begin"])
            marks["end"] = now
            prof.step()

    trainer = _trainer(model_dir, lora_dropout=0.05, steps=6, callbacks=[Phases()], seq_len=seq_len,
                       batch_size=batch_size)
    original_compute_loss, original_training_step = trainer.compute_loss, trainer.training_step

    def timed_compute_loss(*args, **kwargs):
        start = time.perf_counter()
        out = original_compute_loss(*args, **kwargs)
        phases["forward + loss (compute_loss)"].append(time.perf_counter() - start)
        return out

    def timed_training_step(*args, **kwargs):
        start = time.perf_counter()
        out = original_training_step(*args, **kwargs)
        phases["training_step (forward + backward)"].append(time.perf_counter() - start)
        return out

    trainer.compute_loss, trainer.training_step = timed_compute_loss, timed_training_step
    with prof:
        trainer.train()
    vocab = trainer.model.config.vocab_size
    med = {k: statistics.median(v[-4:]) for k, v in phases.items()}
    med["backward"] = med["training_step (forward + backward)"] - med["forward + loss (compute_loss)"]
    step = med["whole step"]
    med["clip grad norm, guard, logging (rest)"] = step - sum(
        med[k] for k in ("training_step (forward + backward)", "optimizer step (AdamW)", "scheduler, zero_grad"))
    return {"phases_s": med, "phase_share": {k: v / step for k, v in med.items()},
            "ops": summarize_profile(prof, vocab), "threads": torch.get_num_threads()}


def saved_tensors(model_dir: str, seq_len: int, batch_size: int, lora_dropout: float) -> dict[str, Any]:
    """Bytes saved for backward in one LUNE training step (replacement + retain groups), by module."""
    trainer = _trainer(model_dir, lora_dropout=lora_dropout, steps=1, callbacks=[], seq_len=seq_len,
                       batch_size=batch_size)
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ledger = SavedTensorLedger(model)
    with ledger.context():
        loss = trainer.compute_loss(model, batch)
    ledger.close()
    loss.backward()
    groups = [k.removesuffix("_input_ids") for k in batch if k.endswith("_input_ids")]
    vocab = model.config.vocab_size
    tokens = sum(batch[f"{g}_input_ids"].numel() for g in groups)
    answer = sum(int((batch[f"{g}_labels"][:, 1:] != -100).sum()) for g in groups)
    mb = {k: v / 2**20 for k, v in sorted(ledger.bytes.items(), key=lambda kv: -kv[1])}
    return {
        "lora_dropout": lora_dropout,
        "saved_mb": mb,
        "saved_total_mb": sum(mb.values()),
        "groups": groups,
        "tokens": tokens,
        "answer_tokens": answer,
        "full_logits_mb_per_step": tokens * vocab * 4 / 2**20,
        "answer_logits_mb_per_step": answer * vocab * 4 / 2**20,
    }


TIMELINE_CATEGORIES = ["parameter", "optimizer state", "input", "temporary", "activation", "gradient",
                       "autograd detail", "unknown"]


def timeline_peak(prof) -> dict[str, Any]:
    """The highest point of a profiler's CPU memory timeline: total MB and MB by category there."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    totals = [sum(row) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    return {"peak_mb": totals[peak] / 2**20,
            "at_peak_mb": {c: v / 2**20 for c, v in zip(TIMELINE_CATEGORIES, sizes[peak][1:], strict=True)}}


def tensor_memory_peak(model_dir: str, seq_len: int, batch_size: int, lora_dropout: float,
                       answer_only_logits: bool) -> dict[str, Any]:
    """Peak of live tensor memory during one forward + backward (torch.profiler memory timeline), by category.

    Deterministic, unlike the process RSS: it counts tensors only, not the allocator's cached or fragmented pages.
    """
    from torch.profiler import ProfilerActivity, profile

    trainer = _trainer(model_dir, lora_dropout=lora_dropout, steps=1, callbacks=[], seq_len=seq_len,
                       batch_size=batch_size, answer_only_logits=answer_only_logits)
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        trainer.compute_loss(model, batch).backward()
    return {"lora_dropout": lora_dropout, "answer_only_logits": answer_only_logits, **timeline_peak(prof)}


def profile_generation(model_dir: str, n_prompts: int, max_new_tokens: int, rounds: int = 3) -> dict[str, Any]:
    """`generate_answers` on `n_prompts` prompts: adapter disabled, LoRA adapter unmerged (as during training), merged.

    Medians of `rounds` interleaved timings, and an operator profile of the first two modes.
    """
    import torch
    from peft import get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf import LuneConfig, default_lora_config
    from lune_hf.data import ensure_pad_token
    from lune_hf.evaluation import generate_answers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    forget, _ = efficiency.benchmark_rows()
    prompts = [r["prompt"] for r in forget[:n_prompts]]
    out: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens}

    peft_model = get_peft_model(base, default_lora_config(LuneConfig(output_dir=tempfile.mkdtemp())))
    with torch.no_grad():  # a trained-looking adapter: lora_B is zero at initialisation
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)

    def generate(mode: str) -> float:
        start = time.perf_counter()
        if mode == "base model (adapter disabled)":
            with peft_model.disable_adapter():
                generate_answers(peft_model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=32)
        elif mode == "LoRA adapter, merged":
            peft_model.merge_adapter()
            generate_answers(peft_model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=32)
            peft_model.unmerge_adapter()
        else:
            generate_answers(peft_model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=32)
        return time.perf_counter() - start

    modes = ["base model (adapter disabled)", "LoRA adapter, unmerged (as during training)", "LoRA adapter, merged"]
    generate_answers(peft_model, tokenizer, prompts[:2], max_new_tokens=4)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):  # interleaved, so that load from other processes hits every mode alike
        for mode in modes:
            times[mode].append(generate(mode))
    for mode in modes:
        med = statistics.median(times[mode])
        out[mode] = {"seconds": med, "all_seconds": times[mode],
                     "new_tokens_per_s": len(prompts) * max_new_tokens / med}
    for mode in modes[:2]:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            generate(mode)
        out[mode]["ops"] = summarize_profile(prof, base.config.vocab_size)
    return out


def tensor_memory_step(model_dir: str, seq_len: int, batch_size: int, setup: efficiency.Setup) -> dict[str, Any]:
    """Peak of live tensor memory over one whole optimizer step (optimizer state included) of an efficiency setup.

    Runs `efficiency.run_raw_loop` (the same math as `LuneTrainer`) for one step under the profiler's memory
    timeline: what `torch.cuda.max_memory_allocated` measures on a GPU, without the process runtime and the
    allocator's cached pages that the RSS counts.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.data import UnlearningCollator, ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    args, _, _, dataset = efficiency.benchmark_inputs(setup, tokenizer, max_steps=1, batch_size=batch_size,
                                                      seq_len=seq_len, device="cpu", seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Loaded before profiling: the timeline still counts the parameters (by module), not the loading buffers.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        efficiency.run_raw_loop(setup, model, args, dataset, UnlearningCollator(tokenizer.pad_token_id), [], [],
                                "cpu")
    return {"setup": setup.name, "description": setup.description, **timeline_peak(prof)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny synthetic model (checks the script, seconds).")
    parser.add_argument("--model-dir", help="Model folder (default: SmolLM2-135M via prepare_smollm2).")
    parser.add_argument("--cache-dir", help="Cache root for prepare_smollm2.")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--seq-len", type=int, default=72, help="Tokens per sequence.")
    parser.add_argument("--batch-size", type=int, default=4, help="Rows per group and step.")
    parser.add_argument("--prompts", type=int, default=20, help="Prompts for the generation profile.")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="Greedy tokens per prompt.")
    parser.add_argument("--json", type=Path, help="Write the measurements here.")
    parser.add_argument("--tensor-peaks", action="store_true", help="Only the tensor-memory peaks of one whole "
                        "optimizer step: full-parameter against LoRA (what CUDA max_memory_allocated measures).")
    opts = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory(prefix="lune-profile-model-") as tmp:
        if opts.model_dir:
            model_dir = opts.model_dir
        elif opts.quick:
            efficiency.build_quick_model(Path(tmp))
            model_dir = tmp
        else:
            from lune_hf.testing.smollm2 import prepare_smollm2

            model_dir = str(prepare_smollm2(opts.cache_dir))
        report: dict[str, Any] = {"model_dir": model_dir, "machine": efficiency.machine_description("cpu"),
                                  "threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}
        if opts.tensor_peaks:
            report["step_tensor_peaks"] = step_tensor_peaks(model_dir, opts.seq_len, opts.batch_size)
            return _write(report, opts.json)
        print("profiling a training step ...", flush=True)
        report["training"] = profile_training(model_dir, opts.seq_len, opts.batch_size)
        print(json.dumps(report["training"]["phases_s"], indent=1), flush=True)
        print("counting tensors saved for backward ...", flush=True)
        report["saved_tensors"] = [saved_tensors(model_dir, opts.seq_len, opts.batch_size, d) for d in (0.05, 0.0)]
        for entry in report["saved_tensors"]:
            print(f"dropout {entry['lora_dropout']}: {entry['saved_total_mb']:.0f} MB saved", flush=True)
        print("tensor memory timelines ...", flush=True)
        report["tensor_peaks"] = [tensor_memory_peak(model_dir, opts.seq_len, opts.batch_size, d, a)
                                  for d, a in ((0.05, False), (0.05, True), (0.0, False), (0.0, True))]
        for entry in report["tensor_peaks"]:
            print(f"dropout {entry['lora_dropout']}, answer-only logits {entry['answer_only_logits']}: "
                  f"{entry['peak_mb']:.0f} MB", flush=True)
        print("profiling generation ...", flush=True)
        report["generation"] = profile_generation(model_dir, opts.prompts, opts.max_new_tokens)
        report["load_average_after"] = os.getloadavg()
    return _write(report, opts.json)


def step_tensor_peaks(model_dir: str, seq_len: int, batch_size: int) -> dict[str, Any]:
    """Full-parameter AdamW against LoRA (defaults, and without dropout + checkpointing): peaks and ratios."""
    import dataclasses

    lora = efficiency.SETUPS["lora_raw"]
    full = efficiency.SETUPS["full_raw"]
    setups = [full, dataclasses.replace(full, name="full_raw_gc", gradient_checkpointing=True), lora,
              dataclasses.replace(lora, name="lora_raw_nodrop_gc", lora_dropout=0.0, gradient_checkpointing=True)]
    peaks = {}
    for setup in setups:
        peaks[setup.name] = tensor_memory_step(model_dir, seq_len, batch_size, setup)
        print(f"{setup.name}: {peaks[setup.name]['peak_mb']:.0f} MB of tensors at the peak", flush=True)
    mb = {name: entry["peak_mb"] for name, entry in peaks.items()}
    return {"peaks": peaks, "ratios": {
        "lora_over_full": mb["lora_raw"] / mb["full_raw"],
        "lora_nodrop_gc_over_full": mb["lora_raw_nodrop_gc"] / mb["full_raw"],
        "lora_nodrop_gc_over_full_gc": mb["lora_raw_nodrop_gc"] / mb["full_raw_gc"],
    }}


def _write(report: dict[str, Any], path: Path | None) -> int:
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
