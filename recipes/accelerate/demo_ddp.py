"""The demo's unlearning step on any number of processes, to compare 1 process with N.

First make the inputs (a memorised tiny Llama and its forget / retain facts):

    lune-hf demo --output-dir lune-demo

then run the same step on 1 process and on 2 (CPU ranks join over gloo, GPUs over NCCL):

    python recipes/accelerate/demo_ddp.py lune-demo out-1proc
    torchrun --nproc_per_node 2 recipes/accelerate/demo_ddp.py lune-demo out-2proc
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 2 \\
        recipes/accelerate/demo_ddp.py lune-demo out-2proc

The global batch stays the demo's 4 forget rows a step (2 per rank on 2 ranks), so every run takes the same
steps. Rank 0 prints the before / after table and writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset

from lune_hf import LuneTrainer
from lune_hf.callbacks import ForgetRetainCallback
from lune_hf.demo import BASE_MODEL_DIR, DATA_DIR, demo_config

GLOBAL_BATCH = 4


def read_jsonl(path: Path) -> Dataset:
    return Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path, help="the --output-dir of `lune-hf demo`")
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="the demo's 0.05; 0 for bit-comparable runs")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if GLOBAL_BATCH % world:
        raise SystemExit(f"{world} processes cannot share a global batch of {GLOBAL_BATCH} rows evenly.")
    forget = read_jsonl(args.demo_dir / DATA_DIR / "forget.jsonl")
    retain = read_jsonl(args.demo_dir / DATA_DIR / "retain.jsonl")
    callback = ForgetRetainCallback(  # the demo's settings
        forget, retain, eval_steps=25, metrics=("exact_match", "rouge_l", "probability"), stop_metric="exact_match",
        forget_target=0.0, retain_floor=0.8, max_new_tokens=8,
    )
    config = demo_config(args.output_dir, seed=args.seed, per_device_train_batch_size=GLOBAL_BATCH // world,
                         lora_dropout=args.lora_dropout, disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = LuneTrainer(str(args.demo_dir / BASE_MODEL_DIR), config, train_dataset=forget, retain_dataset=retain,
                          callbacks=[callback])
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        before, after = callback.history[0], callback.history[-1]
        result = {"processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
                  "stop_reason": callback.stop_reason, "before": before, "after": after}
        (args.output_dir / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"{trainer.accelerator.num_processes} process(es), {trainer.state.global_step} steps; "
              f"stop: {callback.stop_reason}")
        print(f"{'metric':<28}{'before':>10}{'after':>10}")
        for key in sorted(k for k in before if k != "step"):
            print(f"{key:<28}{before[key]:>10.4f}{after[key]:>10.4f}")
    trainer.accelerator.end_training()  # destroy the process group: every rank exits cleanly


if __name__ == "__main__":
    main()
