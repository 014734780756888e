"""GPU memory of one `LuneTrainer` step at 1B-8B, estimated on CPU with fake tensors (`lune_hf.memory`).

    python benchmarks/memory_at_scale.py                 # all shapes and settings, then the 135M validation
    python benchmarks/memory_at_scale.py --skip-validation
    python benchmarks/memory_at_scale.py --validate-only cuda   # on a GPU: Llama-3.2-1B shape, random weights

Shapes are the published configs of Llama-3.2-1B, Llama-2-7B and Llama-3.1-8B (sizes only, no weights) and
SmolLM2-135M. One step at batch 8 x 512 tokens (answers: the last 256 tokens of each row), bf16 base weights:

* `lora_*`: `LuneTrainer`'s own step (collator, `compute_loss`, answer-only logits, adapter-off reference where
  the objective needs one, AdamW on fp32 adapters), with and without retain rows, at the defaults (activation
  checkpointing on, LoRA dropout 0.05) and with each memory default turned off;
* `full`: full fine-tuning, bf16 weights and gradients + fp32 master weights + AdamW states (16 bytes a parameter);
* `full_npo_second_model`: the same with NPO and a second frozen bf16 model as the reference.

Validation: the same code on real CPU tensors at the SmolLM2-135M shape (batch 2 x 128), the peak read from the CPU
allocator's own events, against the fake estimate (batch 2 x 128: the profiled bf16 step on CPU is slow).
Writes `benchmarks/results/memory_at_scale.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from lune_hf.memory import GIB, StepShape, estimate_step_memory

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {  # published shapes (config.json of each model); no weights are read
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=64),
    "llama-2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
}
DEFAULT = dict(lora_dropout=0.05, activation_checkpointing=True)  # LuneConfig's defaults
SETTINGS = {
    "lora_lune": dict(method="lora", objective="lune", retain=False, **DEFAULT),
    "lora_lune_retain": dict(method="lora", objective="lune", retain=True, **DEFAULT),
    "lora_npo_retain": dict(method="lora", objective="npo", retain=True, **DEFAULT),
    "lora_lune_retain_no_checkpointing": dict(method="lora", objective="lune", retain=True, lora_dropout=0.05,
                                              activation_checkpointing=False),
    "lora_lune_retain_no_checkpointing_dropout0": dict(method="lora", objective="lune", retain=True,
                                                       lora_dropout=0.0, activation_checkpointing=False),
    "full": dict(method="full", activation_checkpointing=False),
    "full_npo_second_model": dict(method="full_reference", activation_checkpointing=False),
}


def config(name: str) -> LlamaConfig:
    return LlamaConfig(**SHAPES[name], max_position_embeddings=4096, use_cache=False)


def validate(model: str = "smollm2-135m", device: str = "cpu", batch_size: int = 2, max_length: int = 128) -> dict:
    """Fake estimate vs the allocator's peak on real tensors (CPU profiler events or CUDA's max allocated)."""
    rows = []
    for name in ("lora_lune_retain", "lora_npo_retain", "lora_lune_retain_no_checkpointing"):
        shape = StepShape(**SETTINGS[name], batch_size=batch_size, max_length=max_length)
        fake = estimate_step_memory(config(model), shape)
        start = time.time()
        real = estimate_step_memory(config(model), shape, real=True, device=device)
        error = fake.peak_bytes / real.peak_bytes - 1
        rows.append({"setting": name, "fake_bytes": fake.peak_bytes, "real_allocator_bytes": real.peak_bytes,
                     "relative_error": round(error, 4), "real_seconds": round(time.time() - start, 1)})
        print(f"validation {model} on {device} {name}: fake {fake.peak_bytes / 2**20:.1f} MiB, "
              f"real {real.peak_bytes / 2**20:.1f} MiB, error {error:+.2%}", flush=True)
    return {"shape": model, "device": device, "batch_size": batch_size, "max_length": max_length, "rows": rows,
            "max_abs_relative_error": max(abs(r["relative_error"]) for r in rows)}


def plot(estimates: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in SHAPES if m != "smollm2-135m"]
    settings = list(SETTINGS)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        values = [estimates[m][setting]["peak_gib"] for m in models]
        ax.bar([x + i * width for x in range(len(models))], values, width, label=setting)
    ax.axhline(24, color="black", linestyle="--", linewidth=1)
    ax.text(len(models) - 0.2, 25, "24 GiB", ha="right")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(models))], models)
    ax.set_yscale("log")
    ax.set_ylabel("peak GiB, one step, batch 8 x 512")
    ax.set_title("LuneTrainer step vs full fine-tuning (fake-tensor estimate)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    est = result["estimates"]
    models = list(est)
    lines = ["# Memory at scale: one LuneTrainer step (GiB)", "",
             f"`python benchmarks/memory_at_scale.py` ({result['date']}, torch {result['torch']}). Batch 8 x 512, "
             "answers = last 256 tokens, bf16 base, fp32 LoRA r=16 on every projection, AdamW. Defaults: "
             "activation checkpointing on, LoRA dropout 0.05. Fake tensors, CUDA 512-byte blocks; not counted: "
             "CUDA context, fragmentation, kernel workspaces.", "",
             "| setting | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
    for setting in SETTINGS:
        lines.append(f"| `{setting}` | " + " | ".join(f"{est[m][setting]['peak_gib']:.2f}" for m in models) + " |")
    s = result["summary"]
    lines += ["", f"- LoRA (defaults, lune + retain) / full fine-tuning at 7B: **{s['lora_over_full_7b']:.3f}**",
              f"- LoRA NPO with the adapter-off reference / full NPO with a second model at 7B: "
              f"**{s['adapter_ref_over_second_model_7b']:.3f}**",
              f"- 8B LoRA unlearning run (lune + retain, defaults) fits a 24 GiB GPU with 1 GiB headroom: "
              f"**{s['fits_24gb_8b']}** ({s['lora_8b_gib']:.2f} GiB)"]
    if "validation" in result:
        v = result["validation"]
        lines += ["", f"Validation at the SmolLM2-135M shape (batch {v['batch_size']} x {v['max_length']}, real CPU "
                  f"tensors, CPU allocator peak): max |error| {v['max_abs_relative_error']:.2%}", "",
                  "| setting | fake MiB | real MiB | error |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| `{r['setting']}` | {r['fake_bytes'] / 2**20:.1f} | {r['real_allocator_bytes'] / 2**20:.1f} | "
                  f"{r['relative_error']:+.2%} |" for r in v["rows"]]
    lines += ["", "![memory](memory_at_scale.png)", ""]
    return "\n".join(lines)


def write(result: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory_at_scale.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result["estimates"], folder / "memory_at_scale.png")
    (folder / "memory_at_scale.md").write_text(markdown(result), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--validate-only", choices=["cpu", "cuda"], default=None,
                        help="Only the validation: cpu = SmolLM2-135M shape on CPU (batch 2 x 128), added to "
                             "memory_at_scale.json; cuda = "
                             "Llama-3.2-1B shape with random weights on the GPU (batch 8 x 512), written to "
                             "memory_at_scale_cuda.json.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.validate_only == "cuda":
        result = validate("llama-3.2-1b", "cuda", 8, 512)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "memory_at_scale_cuda.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return
    if args.validate_only == "cpu":  # add the validation to the results of an earlier run
        result = json.loads((args.results / "memory_at_scale.json").read_text(encoding="utf-8"))
        result["validation"] = validate()
        result["validation_error_135m"] = result["validation"]["max_abs_relative_error"]
        write(result, args.results)
        return
    estimates: dict[str, dict] = {}
    for model in SHAPES:
        estimates[model] = {}
        for setting, values in SETTINGS.items():
            start = time.time()
            est = estimate_step_memory(config(model), StepShape(**values))
            estimates[model][setting] = {**est.as_dict(), "seconds": round(time.time() - start, 1)}
            print(f"{model:14s} {setting:45s} {est.peak_gib:8.2f} GiB ({time.time() - start:.0f} s)", flush=True)
    lora7, full7 = (estimates["llama-2-7b"][k]["peak_bytes"] for k in ("lora_lune_retain", "full"))
    npo7, second7 = (estimates["llama-2-7b"][k]["peak_bytes"] for k in ("lora_npo_retain", "full_npo_second_model"))
    lora8 = estimates["llama-3.1-8b"]["lora_lune_retain"]["peak_bytes"]
    summary = {
        "lora_over_full_7b": round(lora7 / full7, 4),
        "adapter_ref_over_second_model_7b": round(npo7 / second7, 4),
        "lora_8b_gib": round(lora8 / GIB, 3),
        "fits_24gb_8b": lora8 + GIB <= 24 * GIB,
    }
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, **summary, "summary": summary,
              "estimates": estimates}
    if not args.skip_validation:
        write(result, args.results)  # the estimates are kept even if the (slow) validation is interrupted
        result["validation"] = validate()
        result["validation_error_135m"] = result["validation"]["max_abs_relative_error"]
    write(result, args.results)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
