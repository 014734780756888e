"""A TRL `SFTTrainer` script, turned into an unlearning script.

The fine-tuning version trained a LoRA adapter with `SFTTrainer` on prompt / completion rows. Two lines differ
(marked CHANGED): the trainer class, and the data — the rows to forget as `train_dataset`, the usual training rows
as `retain_dataset`. `SFTConfig`, `peft_config` and the rest stay; `SFTConfig` fields without a meaning for
unlearning (`packing`, ...) are named in one warning.

    lune-hf demo                      # writes lune-demo/ (a tiny base model and its data)
    python recipes/sft_trainer.py     # unlearns lune-demo/data/forget.jsonl from it
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from lune_hf import LuneTrainer  # CHANGED: was `from trl import SFTTrainer`

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="lune-demo/base_model", help="Model to fine-tune / unlearn from.")
parser.add_argument("--train-data", default="lune-demo/data/retain.jsonl", help="prompt/completion JSONL.")
parser.add_argument("--forget-data", default="lune-demo/data/forget.jsonl", help="The rows to forget.")
parser.add_argument("--output-dir", default="sft-output", help="Where the result is saved.")
parser.add_argument("--max-steps", type=int, default=-1, help="Stop after this many steps (-1: the epochs).")
cli = parser.parse_args()

model = AutoModelForCausalLM.from_pretrained(cli.model)
tokenizer = AutoTokenizer.from_pretrained(cli.model)
train = load_dataset("json", data_files=cli.train_data, split="train")
forget = load_dataset("json", data_files=cli.forget_data, split="train")

config = SFTConfig(
    output_dir=cli.output_dir,
    learning_rate=1e-3,
    num_train_epochs=3,
    max_steps=cli.max_steps,
    per_device_train_batch_size=8,
    max_length=256,
    packing=True,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
)
trainer = LuneTrainer(  # CHANGED: was SFTTrainer(model=..., train_dataset=train, ...)
    model=model,
    args=config,
    train_dataset=forget,
    retain_dataset=train,
    processing_class=tokenizer,
    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
)
trainer.train()
trainer.save_model()
print(f"Saved to {cli.output_dir}")
