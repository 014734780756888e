"""What activation checkpointing (on by default) costs on CPU, and that it changes nothing but memory.

    python benchmarks/checkpointing.py [--model DIR] [--data ../shared/data/tofu] [--steps 12] [--repeats 2]

The TOFU forget01 job of `benchmarks/defaults.py tofu`: the model TOFU's CPU setup fine-tuned (or any model folder),
the 40 forget01 rows with refusal targets and the retain rows of the last authors, `LuneTrainer` at its defaults
except for a fixed step count, no checks (`stop_when_forgotten=False`) and the setting under test. The runs are
interleaved (A B C D A B C D ...) so machine load hits them alike; step times are medians over steps after the
first two, ratios against the default. Per-step loss terms and the final adapters of each setting are compared
with the default's: checkpointing replays each layer's forward (dropout masks included), so a run with it and one
without must train the same adapter up to float rounding.

Writes `benchmarks/results/checkpointing.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.config import CHECKPOINTING

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {  # name -> (activation checkpointing, lora dropout)
    "default (checkpointing, dropout 0.05)": (True, 0.05),
    "no checkpointing, dropout 0.05": (False, 0.05),
    "checkpointing, dropout 0": (True, 0.0),
    "no checkpointing, dropout 0": (False, 0.0),
}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def rows(data: Path) -> tuple[list[dict], list[dict]]:
    forget = json.loads((data / "forget01.json").read_text(encoding="utf-8"))
    retain = json.loads((data / "retain_perturbed.json").read_text(encoding="utf-8"))[:40]
    as_row = lambda r: {"prompt": r["question"], "completion": r["answer"]}  # noqa: E731
    return [as_row(r) for r in forget], [as_row(r) for r in retain]


def run(model_dir: Path, forget, retain, checkpointing: bool, dropout: float, steps: int) -> dict:
    from datasets import Dataset

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = LuneConfig(output_dir=out, max_steps=steps, stop_when_forgotten=False, forget_eval_steps=0,
                          logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                          lora_dropout=dropout, **{CHECKPOINTING: checkpointing})
        trainer = LuneTrainer(model, args, train_dataset=Dataset.from_list(forget),
                              retain_dataset=Dataset.from_list(retain), processing_class=tokenizer,
                              callbacks=[timer])
        trainer.train()
    losses = [[h["loss/forget"], h["loss/retain"]] for h in trainer.state.log_history if "loss/forget" in h]
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {"step_times": timer.times, "losses": losses, "adapter": adapter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path.home() / ".cache/lune_hf/tofu/cpu/finetuned")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "tofu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forget, retain = rows(args.data)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, (checkpointing, dropout) in SETTINGS.items():
            result = run(args.model, forget, retain, checkpointing, dropout, args.steps)
            runs[name].append(result)
            print(f"repeat {repeat} {name}: median step {statistics.median(result['step_times'][2:]):.2f} s",
                  flush=True)
    default = next(iter(SETTINGS))
    base = runs[default][0]
    base_time = statistics.median(t for r in runs[default] for t in r["step_times"][2:])
    table = []
    for name, results in runs.items():
        median = statistics.median(t for r in results for t in r["step_times"][2:])
        same_dropout = SETTINGS[name][1] == SETTINGS[default][1]
        loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for got, want in zip(results[0]["losses"], base["losses"],
                                                                               strict=True)
                        for a, b in zip(got, want, strict=True))
        adapter_diff = max((results[0]["adapter"][k] - v).abs().max().item() for k, v in base["adapter"].items())
        table.append({"setting": name, "median_step_s": round(median, 3),
                      "time_over_default": round(median / base_time, 3), "max_relative_loss_difference": loss_diff,
                      "max_adapter_difference": adapter_diff, "same_dropout_as_default": same_dropout})
    result = {"date": time.strftime("%Y-%m-%d"), "model": str(args.model), "steps": args.steps,
              "repeats": args.repeats, "threads": args.threads, "rows": table}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "checkpointing.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = ["# Activation checkpointing on CPU: time cost, and the same training", "",
             f"`python benchmarks/checkpointing.py` ({result['date']}): SmolLM2-135M fine-tuned on TOFU (CPU setup), "
             f"forget01 (40 rows, refusal targets) + 40 retain rows, batch 4 + 4, {args.steps} steps, "
             f"{args.repeats} interleaved repeats, {args.threads} thread(s); medians of steps 3+.", "",
             "| setting | median step (s) | time / default | max rel. loss difference vs default | "
             "max adapter difference vs default |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['setting']} | {r['median_step_s']:.2f} | {r['time_over_default']:.2f} | "
              f"{r['max_relative_loss_difference']:.1e} | {r['max_adapter_difference']:.1e} |" for r in table]
    lines += ["", "Same dropout, with or without checkpointing: the same losses and adapter up to float rounding, so "
              "the demo's and TOFU's outcomes do not move. Dropout 0 trains a different adapter (no dropout noise).",
              ""]
    (args.results / "checkpointing.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
