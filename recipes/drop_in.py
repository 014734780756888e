"""An ordinary `transformers.Trainer` fine-tuning script, turned into an unlearning script.

Two lines differ from the fine-tuning version (marked CHANGED): the trainer class, and the data it gets — the
facts to forget as `train_dataset`, the usual training data as `retain_dataset`. Tokenisation, arguments,
`train()` and `save_model()` are untouched.

    lune-hf demo                      # writes lune-demo/ (a tiny base model and its forget / retain data)
    python recipes/drop_in.py         # unlearns lune-demo/data/forget.jsonl from it
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

from lune_hf import LuneTrainer  # CHANGED: was `from transformers import Trainer`

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="lune-demo/base_model", help="Model to fine-tune / unlearn from.")
parser.add_argument("--train-data", default="lune-demo/data/retain.jsonl", help="prompt/completion JSONL.")
parser.add_argument("--forget-data", default="lune-demo/data/forget.jsonl", help="The facts to forget.")
parser.add_argument("--output-dir", default="drop-in-output", help="Where the result is saved.")
cli = parser.parse_args()

model = AutoModelForCausalLM.from_pretrained(cli.model)
tokenizer = AutoTokenizer.from_pretrained(cli.model)


def tokenize(row):
    """Prompt + answer + EOS, with the prompt masked out of the labels."""
    prompt = tokenizer(row["prompt"])["input_ids"]
    answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


train = load_dataset("json", data_files=cli.train_data, split="train").map(tokenize, remove_columns=["prompt",
                                                                                                    "completion"])
forget = load_dataset("json", data_files=cli.forget_data, split="train").map(tokenize, remove_columns=["prompt",
                                                                                                      "completion"])
args = TrainingArguments(
    output_dir=cli.output_dir,
    learning_rate=1e-3,  # unlearning rates (LuneConfig's defaults); the fine-tuning script had its own
    num_train_epochs=20,
    per_device_train_batch_size=4,
    logging_steps=50,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
)
trainer = LuneTrainer(  # CHANGED: was Trainer(model=..., train_dataset=train, ...)
    model=model,
    args=args,
    train_dataset=forget,
    retain_dataset=train,
    data_collator=DataCollatorForSeq2Seq(tokenizer),
    processing_class=tokenizer,
)
trainer.train()
trainer.save_model()
print(f"Saved to {cli.output_dir}")
