"""TOFU end to end: fine-tune, train the retain-only reference, unlearn with every objective, evaluate.

    python benchmarks/tofu.py --setup cpu --data ../shared/data/tofu \\
        --model ~/.cache/lune_hf/models/SmolLM2-135M-Instruct          # ~1-2 h on 2 CPU cores, see below
    python benchmarks/tofu.py --setup full --data locuslab/TOFU --model <model folder or Hub id>   # one GPU

Writes ``benchmarks/results/tofu_<setup>.json`` (a list of rows: ``split``, ``objective``, ``forget_quality``,
``model_utility``, ``forget_rouge``, ``retain_rouge``, ..., ``wall_s``, ``peak_mem_mb``) after every row, and
``benchmarks/results/tofu_<setup>.md`` beside it (the table, the setup, open-unlearning's published numbers).

Stages are cached under ``~/.cache/lune_hf/tofu/<setup>/`` (never in the repository): the fine-tuned and
retain models, the adapters and every finished row. Run the same command again after a crash and it resumes
where it stopped; ``--fresh`` starts over. Rows whose settings changed are recomputed; cached models whose
settings changed are an error (delete the folder or pass ``--fresh``).

Setups (stated again at the start of every run):

* ``cpu``: TOFU's last 6 authors (120 rows) - forget01 (authors 199-200, 40 rows) and 4 retain authors
  (195-198, 80 rows); full fine-tuning for 4 epochs at lr 1e-4 (batch 8), max_length 256; unlearning 5 epochs
  (batch 8, LoRA r=16); evaluation on all 40 forget rows, 20 retain rows with perturbations (author 195), the
  first 20 real-author and 20 world-fact rows, greedy answers of at most 48 tokens; one thread.
* ``smoke``: a one-minute check of the pipeline (last 3 authors, one epoch, 4 evaluation rows); meaningless
  numbers, for trying a tiny model.
* ``full``: TOFU's setting - all 4,000 rows, forget01/05/10, fine-tuning 5 epochs at lr 1e-5 (effective batch
  32, weight decay 0.01, one epoch of warm-up), max_length 512, unlearning 10 epochs (effective batch 32, as
  open-unlearning), evaluation on every row with greedy answers of at most 200 tokens.

Objectives are named as in ``LuneConfig``; ``name[key=value,...]`` runs a variant with other settings (any
``LuneConfig`` field, ``retain=false`` to drop the retain set, ``replacement=perturbed`` to give LUNE TOFU's
perturbed answers as replacement targets instead of refusals - the same wrong answers the truth ratio scores, so
not a clean result - or ``replacement=base`` for the base model's own greedy answers to the forget questions
(made-up answers of a model that never saw TOFU)), e.g. ``lune[learning_rate=5e-4,replacement=base]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OBJECTIVES = ("lune", "ga", "graddiff", "npo", "simnpo", "idk_nll", "idk_dpo", "ihl")
OPEN_UNLEARNING_SOURCE = (
    "open-unlearning, docs/results.md (\"Reproduce Results\", commit 8f9872c of "
    "https://github.com/locuslab/open-unlearning): full-parameter unlearning, lr 1e-5, 10 epochs, "
    "alpha = gamma = 1, beta = 0.1, 2 x L40s"
)
# (method, forget_quality, model_utility, forget_truth_ratio) on forget01, copied from that table.
OPEN_UNLEARNING_FORGET01 = {
    "Llama-2-7b-chat-hf": [
        ("Finetuned", "1.27e-03", "0.63", "0.53"), ("Retain", "1.0", "0.63", "0.68"),
        ("GradAscent", "1.88e-04", "0.55", "0.36"), ("GradDiff", "3.02e-03", "0.57", "0.41"),
        ("IdkDPO", "0.1", "0.56", "0.67"), ("NPO", "0.4", "0.58", "0.65"),
        ("SimNPO", "1.27e-03", "0.58", "0.41"), ("RMU", "6.76e-03", "7.18e-04", "0.84"),
    ],
    "Llama-3.2-1B-Instruct": [
        ("Finetuned", "0.01", "0.60", "0.47"), ("Retain", "1.0", "0.60", "0.65"),
        ("GradAscent", "0.27", "0.33", "0.59"), ("GradDiff", "0.77", "0.43", "0.57"),
        ("IdkDPO", "0.01", "0.51", "0.60"), ("NPO", "0.92", "0.56", "0.66"),
        ("SimNPO", "0.58", "0.46", "0.55"), ("RMU", "6.76e-03", "0.60", "0.47"),
    ],
}


@dataclass(frozen=True)
class Setup:
    """Sizes and hyper-parameters of one benchmark setup."""

    name: str
    n_authors: int | None
    forget_splits: tuple[str, ...]
    max_length: int
    finetune_epochs: float
    finetune_lr: float
    finetune_batch: int
    finetune_accum: int
    unlearn_epochs: float
    unlearn_batch: int
    unlearn_accum: int
    max_eval_rows: int | None
    max_new_tokens: int
    eval_batch: int
    prompt_format: str = "chat"
    threads: int | None = None

    def describe(self) -> str:
        authors = (f"the last {self.n_authors} TOFU authors ({self.n_authors * 20} rows)" if self.n_authors
                   else "all 200 TOFU authors (4,000 rows)")
        return (
            f"setup `{self.name}`: {authors}; forget splits {', '.join(self.forget_splits)}; prompt format "
            f"`{self.prompt_format}`; max_length {self.max_length}. Fine-tuning (finetuned and retain models): full "
            f"parameters, {self.finetune_epochs:g} epochs, lr {self.finetune_lr:g}, batch {self.finetune_batch} x "
            f"{self.finetune_accum} accumulation. Unlearning: LuneTrainer (LoRA r=16, every projection), "
            f"{self.unlearn_epochs:g} epochs, batch {self.unlearn_batch} x {self.unlearn_accum}. Evaluation: "
            + (f"at most {self.max_eval_rows} rows of the retain / real-author / world-fact sets (every forget row)"
               if self.max_eval_rows else "every row")
            + f", greedy answers of at most {self.max_new_tokens} tokens"
            + (f"; {self.threads} CPU thread(s)" if self.threads else "") + "."
        )


SETUPS = {
    "cpu": Setup("cpu", n_authors=6, forget_splits=("forget01",), max_length=256, finetune_epochs=4,
                 finetune_lr=1e-4, finetune_batch=8, finetune_accum=1, unlearn_epochs=5, unlearn_batch=8,
                 unlearn_accum=1, max_eval_rows=20, max_new_tokens=48, eval_batch=16, threads=1),
    "full": Setup("full", n_authors=None, forget_splits=("forget01", "forget05", "forget10"), max_length=512,
                  finetune_epochs=5, finetune_lr=1e-5, finetune_batch=8, finetune_accum=4, unlearn_epochs=10,
                  unlearn_batch=8, unlearn_accum=4, max_eval_rows=None, max_new_tokens=200, eval_batch=32),
    # A pipeline check in about a minute with a tiny model (numbers meaningless).
    "smoke": Setup("smoke", n_authors=3, forget_splits=("forget01",), max_length=128, finetune_epochs=1,
                   finetune_lr=1e-4, finetune_batch=8, finetune_accum=1, unlearn_epochs=1, unlearn_batch=8,
                   unlearn_accum=1, max_eval_rows=4, max_new_tokens=8, eval_batch=16, threads=1),
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_objective(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lune[learning_rate=5e-4,retain=false]"`` -> ``("lune", {"learning_rate": 5e-4, "retain": False})``."""
    name, _, rest = spec.partition("[")
    overrides: dict[str, Any] = {}
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"Bad objective spec {spec!r}: expected name[key=value,...].")
        for item in filter(None, rest[:-1].split(",")):
            key, _, value = item.partition("=")
            overrides[key.strip()] = _parse_value(value.strip())
    return name.strip(), overrides


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


class Benchmark:
    """Runs the stages of one setup, caching models and rows, writing the results after every row."""

    def __init__(self, setup: Setup, data: str, model: str, cache: Path, results_dir: Path,
                 objectives: list[str], splits: list[str]) -> None:
        self.setup, self.data, self.model_path = setup, data, model
        self.cache, self.results_dir = cache, results_dir
        self.objectives, self.splits = objectives, splits
        self.rows: dict[str, dict[str, Any]] = {}
        self._tokenizer = None
        self.started = time.perf_counter()

    # ---- models ----

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from lune_hf.data import ensure_pad_token

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            ensure_pad_token(self._tokenizer)
        return self._tokenizer

    def load(self, folder: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return model

    def trained_model(self, name: str, rows, settings: dict[str, Any]) -> tuple[Path, dict[str, float]]:
        """Fine-tune the base model on `rows` once; cached under `<cache>/<name>` with its settings."""
        from lune_hf.tofu.data import to_rows
        from lune_hf.tofu.train import finetune

        folder = self.cache / name
        marker = folder / "lune_tofu_stage.json"
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info["settings"] != settings:
                raise SystemExit(f"{folder} was trained with other settings ({info['settings']}); delete it or pass "
                                 "--fresh.")
            log(f"{name}: cached model in {folder} ({info['wall_s']:.0f} s when trained)")
            return folder, info
        log(f"{name}: fine-tuning on {len(rows)} rows ...")
        if folder.exists():
            shutil.rmtree(folder)
        s = self.setup
        with PeakMemory() as mem:
            model = self.load(self.model_path)
            finetune(model, self.tokenizer(), to_rows(rows, s.prompt_format), folder, epochs=s.finetune_epochs,
                     learning_rate=s.finetune_lr, batch_size=s.finetune_batch, grad_accum=s.finetune_accum,
                     max_length=s.max_length, disable_tqdm=False)
        del model
        info = {"settings": settings, "wall_s": mem.seconds, "peak_mem_mb": mem.peak_mb, "rows": len(rows)}
        write_json_atomic(marker, info)
        log(f"{name}: trained in {mem.seconds:.0f} s, peak {mem.peak_mb:.0f} MB")
        return folder, info

    # ---- rows ----

    def row_path(self, split: str, variant: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in variant)
        return self.cache / "rows" / f"{split}__{safe}.json"

    def cached_row(self, split: str, variant: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        path = self.row_path(split, variant)
        if path.is_file():
            row = json.loads(path.read_text())
            if row.get("settings_digest") == digest(settings):
                return row
            log(f"{split}/{variant}: settings changed, recomputing")
        return None

    def record(self, row: dict[str, Any]) -> None:
        write_json_atomic(self.row_path(row["split"], row["variant"]), row)
        self.rows[f"{row['split']}/{row['variant']}"] = row
        self.write_results()

    def evaluate(self, model, sets, reference) -> tuple[dict[str, Any], float]:
        from lune_hf.tofu.evaluate import evaluate_tofu

        start = time.perf_counter()
        s = self.setup
        result = evaluate_tofu(model, self.tokenizer(), sets, reference_truth_ratios=reference,
                               prompt_format=s.prompt_format, max_new_tokens=s.max_new_tokens,
                               batch_size=s.eval_batch, max_length=s.max_length, progress=True)
        return result, time.perf_counter() - start

    def make_row(self, split: str, objective: str, variant: str, result: dict[str, Any], train: dict[str, Any],
                 eval_s: float, settings: dict[str, Any]) -> dict[str, Any]:
        keys = ["forget_quality", "model_utility", "forget_rouge", "retain_rouge", "forget_probability",
                "retain_probability", "forget_truth_ratio", "retain_truth_ratio", "real_authors_probability",
                "real_authors_rouge", "real_authors_truth_ratio", "world_facts_probability", "world_facts_rouge",
                "world_facts_truth_ratio", "forget_ks_statistic", "model_utility_inputs"]
        return {
            "setup": self.setup.name, "split": split, "objective": objective, "variant": variant,
            **{k: result.get(k) for k in keys},
            "wall_s": round(train["wall_s"], 1), "peak_mem_mb": round(train["peak_mem_mb"], 1),
            "eval_s": round(eval_s, 1), "settings": settings, "settings_digest": digest(settings),
            "forget_truth_ratios": result.get("forget_truth_ratios"), "forget_samples": result.get("forget_samples"),
        }

    # ---- driver ----

    def base_settings(self) -> dict[str, Any]:
        """What every cached model and row depends on."""
        s = self.setup
        return {"model": str(self.model_path), "data": str(self.data), "n_authors": s.n_authors,
                "epochs": s.finetune_epochs, "lr": s.finetune_lr, "batch": s.finetune_batch * s.finetune_accum,
                "max_length": s.max_length, "prompt_format": s.prompt_format}

    def run(self) -> None:
        import torch

        from lune_hf.tofu.data import to_rows, tofu_sets

        s = self.setup
        base = self.base_settings()
        eval_settings = {"max_eval_rows": s.max_eval_rows, "max_new_tokens": s.max_new_tokens}
        for split in self.splits:
            sets = tofu_sets(self.data, split, n_authors=s.n_authors, max_eval_rows=s.max_eval_rows)
            log(sets.description)
            ft_dir, ft_info = self.trained_model("finetuned", sets.full, {**base, "rows": "all kept authors"})
            rt_dir, rt_info = self.trained_model(f"retain_{split}", sets.retain, {**base, "rows": f"retain of {split}"})

            # Retain model first: its forget truth ratios are the reference of every forget quality.
            settings = {**base, **eval_settings, "stage": "retain"}
            row = self.cached_row(split, "retain", settings)
            if row is None:
                log(f"{split}/retain: evaluating ...")
                result, eval_s = self.evaluate(self.load(rt_dir), sets, None)
                result = {**result, **_self_quality(result)}
                row = self.make_row(split, "retain", "retain", result, rt_info, eval_s, settings)
                self.record(row)
            else:
                self.rows[f"{split}/retain"] = row
                self.write_results()
            reference = row["forget_truth_ratios"]
            log(f"{split}/retain: {summary(row)}")

            settings = {**base, **eval_settings, "stage": "finetuned"}
            row = self.cached_row(split, "finetuned", settings)
            if row is None:
                log(f"{split}/finetuned: evaluating ...")
                result, eval_s = self.evaluate(self.load(ft_dir), sets, reference)
                row = self.make_row(split, "finetuned", "finetuned", result, ft_info, eval_s, settings)
                self.record(row)
            else:
                self.rows[f"{split}/finetuned"] = row
                self.write_results()
            log(f"{split}/finetuned: {summary(row)}")

            forget_rows = to_rows(sets.forget, s.prompt_format)
            retain_rows = to_rows(sets.retain, s.prompt_format)
            for spec in self.objectives:
                objective, overrides = parse_objective(spec)
                from lune_hf.tofu.train import OBJECTIVE_SETTINGS

                effective = {**OBJECTIVE_SETTINGS.get(objective, {}), **overrides}
                settings = {**base, **eval_settings, "objective": objective, "overrides": overrides,
                            "objective_settings": effective,
                            "unlearn_epochs": s.unlearn_epochs, "unlearn_batch": s.unlearn_batch * s.unlearn_accum}
                row = self.cached_row(split, spec, settings)
                if row is None:
                    try:
                        row = self.unlearn_row(split, spec, objective, overrides, ft_dir, sets, forget_rows,
                                               retain_rows, reference, settings)
                    except Exception as err:  # one objective failing must not lose the others
                        log(f"{split}/{spec}: FAILED {type(err).__name__}: {err}")
                        logging.exception("objective failed")
                        continue
                    self.record(row)
                else:
                    self.rows[f"{split}/{spec}"] = row
                    self.write_results()
                log(f"{split}/{spec}: {summary(row)}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        log(f"done in {time.perf_counter() - self.started:.0f} s; results in {self.json_path}")

    def unlearn_row(self, split, spec, objective, overrides, ft_dir, sets, forget_rows, retain_rows, reference,
                    settings) -> dict[str, Any]:
        from lune_hf.tofu.train import unlearn

        s = self.setup
        overrides = dict(overrides)
        forget = forget_rows
        replacement = overrides.pop("replacement", "refusal")
        if replacement == "perturbed":
            answers = [p[i % len(p)].strip() for i, p in enumerate(sets.forget["perturbed_answer"])]
            forget = forget_rows.add_column("replacement", answers)
        elif replacement == "base":
            forget = forget_rows.add_column("replacement", self.base_answers(split, sets))
        elif replacement != "refusal":
            raise ValueError(f"replacement={replacement!r}: use refusal, perturbed or base")
        out = self.cache / split / "".join(c if c.isalnum() or c in "-_.=" else "_" for c in spec)
        log(f"{split}/{spec}: unlearning {len(forget)} forget rows (retain {len(retain_rows)}) ...")
        with PeakMemory() as mem:
            model = self.load(ft_dir)
            model = unlearn(model, self.tokenizer(), forget, retain_rows, objective, out, refusals=sets.refusals,
                            epochs=s.unlearn_epochs, batch_size=s.unlearn_batch, grad_accum=s.unlearn_accum,
                            max_length=s.max_length, overrides=overrides)
        train = {"wall_s": mem.seconds, "peak_mem_mb": mem.peak_mb}
        log(f"{split}/{spec}: unlearned in {mem.seconds:.0f} s, peak {mem.peak_mb:.0f} MB; evaluating ...")
        model = model.merge_and_unload()
        result, eval_s = self.evaluate(model, sets, reference)
        return self.make_row(split, objective, spec, result, train, eval_s, settings)

    def base_answers(self, split: str, sets) -> list[str]:
        """Greedy answers of the base model (never fine-tuned on TOFU) to the forget questions, cached.

        Plausible but made-up answers, like a model that never saw the forget authors gives: counterfactual
        replacement targets for LUNE that do not come from TOFU's evaluation answers.
        """
        from lune_hf.evaluation import generate_answers
        from lune_hf.tofu.data import make_prompt

        path = self.cache / f"base_answers_{split}.json"
        if path.is_file():
            return json.loads(path.read_text())
        log(f"{split}: generating the base model's answers to the forget questions (replacement targets) ...")
        model = self.load(self.model_path)
        prompts = [make_prompt(q, self.setup.prompt_format) for q in sets.forget["question"]]
        answers = generate_answers(model, self.tokenizer(), prompts, max_new_tokens=64,
                                   batch_size=self.setup.eval_batch, progress=True)
        answers = [a if a.strip() else "I don't know." for a in answers]
        write_json_atomic(path, answers)
        return answers

    # ---- output ----

    @property
    def json_path(self) -> Path:
        return self.results_dir / f"tofu_{self.setup.name}.json"

    def ordered_rows(self) -> list[dict[str, Any]]:
        # Reference models first, then each objective in the usual order, its variants right after it.
        order = ["finetuned", "retain", *DEFAULT_OBJECTIVES]
        return sorted(self.rows.values(), key=lambda r: (
            r["split"], order.index(r["objective"]) if r["objective"] in order else len(order),
            r["variant"] != r["objective"], r["variant"]))

    def write_results(self) -> None:
        rows = self.ordered_rows()
        write_json_atomic(self.json_path, rows)
        self.json_path.with_suffix(".md").write_text(render_markdown(self.setup, rows, self.data, self.model_path),
                                                     encoding="utf-8")


def _self_quality(result: dict[str, Any]) -> dict[str, Any]:
    """The retain model against itself: forget quality 1.0 by definition (KS test of a sample with itself)."""
    from lune_hf.metrics.functional import forget_quality

    fq = forget_quality(result["forget_truth_ratios"], result["forget_truth_ratios"])
    return {"forget_quality": fq["forget_quality"], "forget_ks_statistic": fq["ks_statistic"]}


def summary(row: dict[str, Any]) -> str:
    return (f"forget_quality {fmt(row['forget_quality'])}, model_utility {fmt(row['model_utility'])}, "
            f"forget_rouge {fmt(row['forget_rouge'])}, retain_rouge {fmt(row['retain_rouge'])}, "
            f"forget_truth_ratio {fmt(row['forget_truth_ratio'])} (train {row['wall_s']:.0f} s, "
            f"eval {row['eval_s']:.0f} s, peak {row['peak_mem_mb']:.0f} MB)")


def render_markdown(setup: Setup, rows: list[dict[str, Any]], data: str, model: str) -> str:
    """The results table, the setup, the target check and open-unlearning's published numbers."""
    lines = [f"# TOFU benchmark, setup `{setup.name}`", "",
             f"Model: `{Path(model).name}`; data: TOFU (Maini et al. 2024, arXiv 2401.06121, MIT) from `{data}`.", "",
             setup.describe(), "",
             "Written by `benchmarks/tofu.py` after every row (rows still missing are still running or failed).",
             "`MU/ft` = model utility relative to the finetuned model. `wall_s` / `peak_mem_mb`: training stage "
             "only (fine-tuning for finetuned / retain, unlearning otherwise), peak "
             + ("CUDA allocation." if setup.name == "full" else "RSS of the process (sampled)."), ""]
    header = ("| split | objective | forget quality | model utility | MU/ft | forget ROUGE | retain ROUGE | "
              "forget truth ratio | forget prob | wall_s | peak_mem_mb |")
    lines += [header, "|" + " --- |" * 11]
    finetuned = {r["split"]: r["model_utility"] for r in rows if r["objective"] == "finetuned"}
    for r in rows:
        ratio = r["model_utility"] / finetuned[r["split"]] if finetuned.get(r["split"]) else None
        lines.append(
            f"| {r['split']} | {r['variant']} | {fmt(r['forget_quality'])} | {fmt(r['model_utility'])} | "
            f"{fmt(ratio, 2)} | {fmt(r['forget_rouge'])} | {fmt(r['retain_rouge'])} | "
            f"{fmt(r['forget_truth_ratio'])} | {fmt(r['forget_probability'])} | {r['wall_s']:.0f} | "
            f"{r['peak_mem_mb']:.0f} |")
    notes = {
        "replacement=perturbed": "`replacement=perturbed`: LUNE trained towards TOFU's perturbed answers, the same "
        "wrong answers the truth ratio (hence forget quality) scores - it optimises the metric directly, not a clean "
        "result.",
        "replacement=base": "`replacement=base`: LUNE trained towards the base model's own greedy answers to the "
        "forget questions (made-up answers of a model that never saw TOFU); nothing from TOFU's evaluation answers.",
        "[": "`name[key=value]`: a variant with settings other than `lune_hf.tofu.train.OBJECTIVE_SETTINGS`.",
    }
    used = [text for key, text in notes.items() if any(key in r["variant"] for r in rows)]
    if used:
        lines += [""] + [f"- {text}" for text in used]
    notes_file = f"tofu_{setup.name}_notes.md"
    lines += ["", f"Hand-written analysis (when present): [{notes_file}]({notes_file}).", "", "## Target", "",
              "LUNE (and the best of the other objectives) on forget01: forget quality >= 0.5 with model utility "
              ">= 95% of the finetuned model's.", ""]

    def meets(r: dict[str, Any]) -> bool:
        return (r["forget_quality"] or 0) >= 0.5 and r["model_utility"] >= 0.95 * finetuned[r["split"]]

    unlearned = [r for r in rows if r["objective"] not in ("finetuned", "retain") and finetuned.get(r["split"])]
    others = [r for r in unlearned if r["objective"] != "lune"]
    # The best other run: the highest forget quality among those that keep the utility, else the highest overall.
    best = max(others, key=lambda r: (meets(r), r["forget_quality"] or 0, r["model_utility"]), default=None)
    for r in [r for r in unlearned if r["objective"] == "lune"] + ([best] if best else []):
        lines.append(f"- {r['split']} / `{r['variant']}`{' (best of the others)' if r is best else ''}: forget "
                     f"quality {fmt(r['forget_quality'])}, model utility "
                     f"{r['model_utility'] / finetuned[r['split']]:.1%} of finetuned -> "
                     f"{'met' if meets(r) else 'missed'}")
    lines += ["", "## open-unlearning's published numbers (forget01)", "",
              f"Source: {OPEN_UNLEARNING_SOURCE}. Other models and a different (full-parameter) training setup: for "
              "orientation, not a like-for-like comparison. Model utility there is the harmonic mean of the 9 "
              "TOFU values on all retain / real-author / world-fact rows.", "",
              "| model | method | forget quality | model utility | forget truth ratio |",
              "| --- | --- | --- | --- | --- |"]
    for model_name, entries in OPEN_UNLEARNING_FORGET01.items():
        for method, fq, mu, tr in entries:
            lines.append(f"| {model_name} | {method} | {fq} | {mu} | {tr} |")
    lines += ["", "LUNE itself is not in open-unlearning's table; the LUNE paper (arXiv 2512.07375) reports its own "
              "numbers (not quoted here: check the paper's TOFU table)."]
    return "\n".join(lines) + "\n"



@dataclass
class PeakMemory:
    """Peak memory of a block in MiB: CUDA's peak allocation on a GPU, else the peak RSS sampled every 0.1 s.

    ``with PeakMemory() as mem: ...`` then ``mem.peak_mb``; ``mem.seconds`` is the wall time of the block.
    """

    interval_s: float = 0.1
    peak_mb: float = 0.0
    seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def _rss_mb(self) -> float:
        with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        import torch

        self._start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self.seconds = time.perf_counter() - self._start
        if torch.cuda.is_available():
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=sorted(SETUPS), default="cpu", help="Benchmark size (see above).")
    parser.add_argument("--data", required=True, help="TOFU: a local folder of <split>.json files or a Hub id "
                        "(locuslab/TOFU).")
    parser.add_argument("--model", default=None, help="Base model folder or id (default: SmolLM2-135M-Instruct "
                        "from lune_hf.testing.smollm2.prepare_smollm2).")
    parser.add_argument("--objectives", nargs="+", default=list(DEFAULT_OBJECTIVES),
                        help="Objectives to run, in order; name[key=value,...] for a variant.")
    parser.add_argument("--splits", nargs="+", default=None, help="Forget splits (default: the setup's).")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Stage cache (default: ~/.cache/lune_hf/tofu/<setup>).")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="Where tofu_<setup>.json/.md go.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the setup's; cpu: 1, "
                        "which on a shared 2-core machine ran 3-5x faster than 2).")
    parser.add_argument("--fresh", action="store_true", help="Delete the stage cache first.")
    args = parser.parse_args(argv)

    setup = SETUPS[args.setup]
    threads = args.threads or setup.threads
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    if threads:
        torch.set_num_threads(threads)
        setup = dataclasses.replace(setup, threads=threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.model is None:
        from lune_hf.testing.smollm2 import prepare_smollm2

        args.model = str(prepare_smollm2())
    if Path(args.data).expanduser().is_dir():
        args.data = str(Path(args.data).expanduser().resolve())
    cache = (args.cache_dir or Path.home() / ".cache" / "lune_hf" / "tofu" / setup.name).expanduser()
    if cache.resolve().is_relative_to(REPO):
        raise SystemExit(f"--cache-dir {cache} is inside the repository; choose a folder outside it.")
    if args.fresh and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for spec in args.objectives:
        from lune_hf.objectives import OBJECTIVES

        if parse_objective(spec)[0] not in OBJECTIVES:
            parser.error(f"unknown objective {spec!r}; valid: {', '.join(OBJECTIVES)}")
    log(setup.describe())
    log(f"model {args.model}; data {args.data}; cache {cache}; objectives {' '.join(args.objectives)}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    bench = Benchmark(setup, args.data, args.model, cache, args.results_dir, args.objectives,
                      list(args.splits or setup.forget_splits))
    # Keep the rows of earlier runs (other objectives / variants) in the results file.
    base = bench.base_settings()
    for path in sorted((cache / "rows").glob("*.json")) if (cache / "rows").is_dir() else []:
        row = json.loads(path.read_text())
        if all(row["settings"].get(k) == v for k, v in base.items()):
            bench.rows[f"{row['split']}/{row['variant']}"] = row
    bench.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
