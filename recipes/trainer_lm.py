"""A plain `transformers.Trainer` language-modelling script (run_clm style), turned into an unlearning script.

The fine-tuning version tokenised its text with `tokenizer(...)` and let `DataCollatorForLanguageModeling` make the
labels. Two lines differ (marked CHANGED): the trainer class, and the data it gets — the passages to forget as
`train_dataset`, the usual training text as `retain_dataset`. Rows without labels are labelled as the collator
would (every non-pad token); a forget passage is prompted with its first tokens and trained to stop reproducing
the rest.

    lune-hf demo                      # writes lune-demo/ (a tiny base model and its data)
    python recipes/trainer_lm.py      # unlearns the forget passages from it
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

from lune_hf import LuneTrainer  # CHANGED: was `from transformers import Trainer`

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="lune-demo/base_model", help="Model to fine-tune / unlearn from.")
parser.add_argument("--train-data", default="lune-demo/data/retain.jsonl", help="JSONL of the training text.")
parser.add_argument("--forget-data", default="lune-demo/data/forget.jsonl", help="JSONL of the text to forget.")
parser.add_argument("--output-dir", default="trainer-lm-output", help="Where the result is saved.")
parser.add_argument("--max-steps", type=int, default=-1, help="Stop after this many steps (-1: the epochs).")
cli = parser.parse_args()

model = AutoModelForCausalLM.from_pretrained(cli.model)
tokenizer = AutoTokenizer.from_pretrained(cli.model)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token


def tokenize(batch):
    """One passage per row (here: each fact as a sentence); the collator makes the labels."""
    texts = [p + c for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
    return tokenizer(texts, truncation=True, max_length=128)


def load(path):
    rows = load_dataset("json", data_files=path, split="train")
    return rows.map(tokenize, batched=True, remove_columns=rows.column_names)


train = load(cli.train_data)
forget = load(cli.forget_data)  # CHANGED (new): the text to forget, tokenised the same way
args = TrainingArguments(
    output_dir=cli.output_dir,
    learning_rate=1e-3,
    num_train_epochs=3,
    max_steps=cli.max_steps,
    per_device_train_batch_size=8,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
)
trainer = LuneTrainer(  # CHANGED: was Trainer(model=..., train_dataset=train, ...)
    model=model,
    args=args,
    train_dataset=forget,
    retain_dataset=train,
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    processing_class=tokenizer,
)
trainer.train()
trainer.save_model()
print(f"Saved to {cli.output_dir}")
