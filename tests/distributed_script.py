"""Unlearning runs that `tests/test_distributed.py` launches on 2 ranks (and calls in-process for 1 rank).

    torchrun --nproc_per_node 2 tests/distributed_script.py DATA_DIR OUT_DIR --batch-size 2 [--eval-adapter FILE]

DATA_DIR has the layout `lune-hf demo --output-dir DATA_DIR` writes: `base_model/` (model and tokenizer) and
`data/forget.jsonl`, `data/retain.jsonl`. Every rank runs, with the same seed:

* `lune`: the demo's settings (no LoRA dropout, so runs are comparable) with a `ForgetRetainCallback` that stops
  once no forget answer is reproduced; the collator records which forget rows each of the rank's batches held;
* `npo` and `idk_dpo` with `retain_loss="kl"`: the disabled-adapter reference under DDP, a few steps each;
* `eval`: the callback once more, on the adapter in `--eval-adapter` (the 1-process result), gathered over ranks;
* `fsdp2_<objective>`: the model sharded with FSDP2 (`fully_shard`, as `fsdp_version: 2` does): one loss and
  backward through `LuneTrainer.compute_loss` with the reference computed by the sharded model, adapter off;
* `nan_guard`: the last rank alone puts an infinity into its adapter; every rank must stop, none may hang.

Each rank writes `OUT_DIR/rank<r>.json` and `OUT_DIR/<run>-rank<r>.safetensors` (its adapter weights, or for
`fsdp2_*` its gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed

from lune_hf import LuneTrainer, NonFiniteLossError
from lune_hf.callbacks import ForgetRetainCallback
from lune_hf.data import UnlearningCollator
from lune_hf.demo import demo_config
from lune_hf.objectives import IGNORE_INDEX
from lune_hf.snapshot import load_trainable_state, trainable_state

EVAL_STEPS = 5
ODD_ROWS = 13  # an extra evaluation set with an odd number of rows: uneven shards


def read_jsonl(path: Path) -> Dataset:
    """Rows of a JSONL file (read directly: no `datasets` cache shared by concurrent ranks)."""
    return Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line])


class RecordingCollator(UnlearningCollator):
    """Notes, for every batch, the indices of the forget rows it holds (found from their prompt tokens)."""

    def __init__(self, pad_token_id: int, prompt_index: dict[tuple[int, ...], int]) -> None:
        super().__init__(pad_token_id)
        self.prompt_index = prompt_index
        self.batches: list[list[int]] = []

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        prefix = "forget" if "forget_input_ids" in features[0] else "replacement"
        self.batches.append([
            self.prompt_index[tuple(t for t, lab in zip(f[f"{prefix}_input_ids"], f[f"{prefix}_labels"],
                                                        strict=True) if lab == IGNORE_INDEX)]
            for f in features
        ])
        return super().__call__(features)


class RecordingCallback(ForgetRetainCallback):
    """A `ForgetRetainCallback` that keeps the gathered per-row results of its last evaluation."""

    last_rows: dict[str, list[dict[str, Any]]]

    def evaluate(self, model) -> dict[str, float]:
        self.last_rows = {}
        compute = self.evaluator.compute

        def recording(rows: list[dict[str, Any]], answers: Sequence[Any]) -> dict[str, float]:
            self.last_rows[f"set{len(self.last_rows)}"] = rows
            return compute(rows, answers)

        self.evaluator.compute = recording
        try:
            return super().evaluate(model)
        finally:
            del self.evaluator.compute


class Poison(TrainerCallback):
    """After step 2, fills the adapter of one rank only with infinities."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2 and args.process_index == self.rank:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("inf"))


def sharded_loss_and_grads(trainer: LuneTrainer, out: Path) -> dict[str, Any]:
    """Shard the adapter model with FSDP2 when distributed, then one loss and backward on the first 4 rows.

    Every rank uses the same rows, so the gradients FSDP2 averages equal the gradients of one process.
    """
    model = trainer.model
    with torch.no_grad():  # a non-zero adapter: the policy and the adapter-off reference differ
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    if dist.is_initialized():
        from torch.distributed.fsdp import fully_shard

        for layer in model.get_base_model().model.layers:
            fully_shard(layer)
        fully_shard(model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
             for n, p in model.named_parameters() if p.grad is not None}
    save_file({n: g.contiguous() for n, g in grads.items()}, str(out.with_name(
        f"{out.name}-rank{trainer.accelerator.process_index}.safetensors")))
    return {"loss": loss.item(), "model": type(model).__name__}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every check on this rank; returns (and writes) what it saw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--batch-size", type=int, required=True, help="per-device forget rows per step")
    parser.add_argument("--eval-adapter", type=Path, help="adapter weights the callback evaluates at the end")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    base = args.data_dir / "base_model"
    tokenizer = AutoTokenizer.from_pretrained(base)
    forget = read_jsonl(args.data_dir / "data" / "forget.jsonl")
    retain = read_jsonl(args.data_dir / "data" / "retain.jsonl")
    prompt_index = {tuple(tokenizer(p)["input_ids"]): i for i, p in enumerate(forget["prompt"])}
    report: dict[str, Any] = {}

    def trainer_for(name: str, collator=None, callbacks=(), **overrides: Any) -> LuneTrainer:
        set_seed(0)
        settings = dict(per_device_train_batch_size=args.batch_size, lora_dropout=0.0, logging_steps=1,
                        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
                        forget_eval_steps=0,  # the `lune` run's own callback is its check; the others need none
                        learning_rate=1e-2, num_train_epochs=100, min_budget_steps=0)  # forgets in ~20 steps
        settings.update(overrides)
        trainer = LuneTrainer(
            AutoModelForCausalLM.from_pretrained(base),
            demo_config(args.out_dir / name, **settings),
            train_dataset=forget,
            retain_dataset=retain,
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
        if collator is not None:
            trainer.data_collator = collator  # same batches as LuneTrainer's collator, plus a record of the rows
        return trainer

    def finish(name: str, trainer: LuneTrainer, **extra: Any) -> None:
        rank = trainer.accelerator.process_index
        save_file(trainable_state(trainer.model), str(args.out_dir / f"{name}-rank{rank}.safetensors"))
        logs = [e for e in trainer.state.log_history if "loss" in e]
        report[name] = {
            "global_step": trainer.state.global_step,
            "loss": [e["loss"] for e in logs],
            "loss_forget": [e["loss/forget"] for e in logs],
            "loss_retain": [e["loss/retain"] for e in logs],
            **extra,
        }

    # ---- lune, with the evaluation callback and the batch recorder ----
    collator = RecordingCollator(tokenizer.pad_token_id, prompt_index)
    callback = RecordingCallback(
        forget, retain, extra_sets={"odd": retain.select(range(ODD_ROWS))}, eval_steps=EVAL_STEPS,
        metrics=("exact_match", "rouge_l", "probability"), stop_metric="exact_match", forget_target=0.0,
        max_new_tokens=8,
        # stop exactly where the target is met: the retain-recovery rule compares retain with 95% of its start,
        # which float differences between 1 and 2 processes can put on either side
        consolidation_checks=0,
    )
    trainer = trainer_for("lune", collator, [callback])
    trainer.train()
    state = trainer.accelerator.state
    report["world"] = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "torch_world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "ddp_wrapped": type(trainer.model_wrapped).__name__,
    }
    finish("lune", trainer, batches=collator.batches, history=callback.history, stop_reason=callback.stop_reason)

    if args.eval_adapter is not None:
        load_trainable_state(trainer.model, load_file(str(args.eval_adapter)))
        metrics = callback.evaluate(trainer.model)
        report["eval"] = {"metrics": metrics, "rows": callback.last_rows}

    # ---- objectives with the disabled-adapter reference ----
    for objective in ("npo", "idk_dpo"):
        trainer = trainer_for(objective, objective=objective, retain_loss="kl", max_steps=3, warmup_steps=0)
        trainer.train()
        finish(objective, trainer)

    # ---- the disabled-adapter reference inside an FSDP2-sharded model (1 process: the same, unsharded) ----
    for objective in ("npo", "idk_dpo"):
        trainer = trainer_for(f"fsdp2_{objective}", objective=objective, retain_loss="kl")
        report[f"fsdp2_{objective}"] = sharded_loss_and_grads(trainer, args.out_dir / f"fsdp2_{objective}")

    # ---- one rank diverges: all must stop together ----
    trainer = trainer_for("nan_guard", callbacks=[Poison(rank=state.num_processes - 1)], max_steps=6)
    try:
        trainer.train()
        error = None
    except NonFiniteLossError as err:
        error = str(err)
    report["nan_guard"] = {"error": error, "global_step": trainer.state.global_step}

    out = args.out_dir / f"rank{state.process_index}.json"
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    if dist.is_initialized():
        dist.barrier()
    state.destroy_process_group()
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    main(sys.argv[1:])
