"""TOFU end to end: fine-tune, train the retain-only reference, unlearn with every objective, evaluate.

    python benchmarks/tofu.py --setup cpu --data ../shared/data/tofu \\
        --model ~/.cache/lune_hf/models/SmolLM2-135M-Instruct          # hours on 2 CPU cores, see below
    python benchmarks/tofu.py --setup full --data locuslab/TOFU --model <model folder or Hub id>   # one GPU

Writes ``benchmarks/results/tofu_<setup>.json`` (a list of rows: ``split``, ``objective``, ``forget_quality``,
``model_utility``, ``forget_rouge``, ``retain_rouge``, ..., ``wall_s``, ``peak_mem_mb``) after every row, and
``benchmarks/results/tofu_<setup>.md`` beside it (the table, the setup, open-unlearning's published numbers).

Stages are cached under ``~/.cache/lune_hf/tofu/<setup>/`` (never in the repository): the fine-tuned and
retain models, the adapters and every finished row. Run the same command again after a crash and it resumes
where it stopped (a finished adapter is evaluated again, not trained again; so is one evaluated in another
mode); ``--fresh`` starts over. Rows whose settings changed are recomputed; cached models whose settings changed
are an error (delete the folder or pass ``--fresh``).

Setups (stated again at the start of every run):

* ``cpu``: TOFU authors 1-20 (the 400 rows TOFU's ``retain_perturbed`` split evaluates) plus the split's forget
  authors for the finetuned model, authors 1-20 alone for the retain model; forget01 and forget05; full
  fine-tuning for 4 epochs at lr 1e-4 (batch 8), max_length 256; unlearning 5 epochs (batch 8, LoRA r=16);
  TOFU's evaluation (every row of forget, retain_perturbed, real authors, world facts and holdout, greedy answers
  of at most 200 tokens); one thread. About an hour per fine-tuned model and 40 minutes per evaluation on this
  kind of 2-core machine; ``--max-eval-rows`` is the quick mode.
* ``smoke``: a one-minute check of the pipeline (last 3 authors, one epoch, 4 evaluation rows); meaningless
  numbers, for trying a tiny model.
* ``full``: TOFU's setting - all 4,000 rows, forget01/05/10, fine-tuning 5 epochs at lr 1e-5 (effective batch
  32, weight decay 0.01, one epoch of warm-up), max_length 512, unlearning 10 epochs (effective batch 32, as
  open-unlearning), evaluation on every row with greedy answers of at most 200 tokens.

Objectives are named as in ``LuneConfig``; ``name[key=value,...]`` runs a variant with other settings (any
``LuneConfig`` field, ``retain=false`` to drop the retain set, ``replacement=perturbed`` to give LUNE TOFU's
perturbed answers as replacement targets instead of refusals - the same wrong answers the truth ratio scores, so
not a clean result - or ``replacement=base`` for the base model's own greedy answers to the forget questions
(made-up answers of a model that never saw TOFU), ``anchor=general`` to add the finetuned model's own answers to the
general questions of ``benchmarks/data/general_questions.txt`` to the retain rows, ``anchor=general+literature`` to
add those of ``literature_questions.txt`` (other real books) as well, ``teacher_model=base`` for the base model
(before its TOFU fine-tune) as the teacher of ``negative_loss=distill``), e.g.
``lune[learning_rate=5e-4,replacement=base]``.
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
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OBJECTIVES = ("lune", "ga", "graddiff", "npo", "simnpo", "idk_nll", "idk_dpo", "ihl")
OPEN_UNLEARNING_SOURCE = (
    "open-unlearning, docs/repro.md (commit d3d7cf9 of https://github.com/locuslab/open-unlearning): "
    "Llama-3.2-1B-Instruct fine-tuned on all 200 authors, full-parameter unlearning, lr 1e-5, 10 epochs, "
    "alpha = gamma = 1, beta = 0.1, effective batch 32, 2 x L40s. Last changed before open-unlearning fixed the "
    "date string and moved its forget metrics to the `_perturbed` splits, so its own current code may not "
    "reproduce them"
)
# (method, forget_quality, model_utility, forget_truth_ratio) per split, copied from that table.
OPEN_UNLEARNING_LLAMA_1B = {
    "forget01": [("Finetuned", "0.01", "0.60", "0.47"), ("Retain", "1.0", "0.60", "0.65"),
                 ("GradAscent", "0.27", "0.33", "0.59"), ("GradDiff", "0.77", "0.43", "0.57"),
                 ("IdkDPO", "0.01", "0.51", "0.60"), ("NPO", "0.92", "0.56", "0.66"),
                 ("SimNPO", "0.58", "0.46", "0.55"), ("RMU", "0.16", "0.55", "0.70")],
    "forget05": [("Finetuned", "1.33e-13", "0.60", "0.47"), ("Retain", "1.0", "0.60", "0.64"),
                 ("GradAscent", "1.94e-119", "0", "2.52e-23"), ("GradDiff", "1.94e-119", "0.53", "3.87e-34"),
                 ("IdkDPO", "1.12e-05", "0.07", "0.62"), ("NPO", "0.14", "0.45", "0.70"),
                 ("SimNPO", "5.01e-100", "0.58", "4.19e-03"), ("RMU", "4.87e-10", "0.58", "0.77")],
}
QUESTIONS_DIR = Path(__file__).resolve().parent / "data"
GENERAL_QUESTIONS = QUESTIONS_DIR / "general_questions.txt"
ANCHORS = ("general", "literature")  # anchor=<name>[+<name>...]: benchmarks/data/<name>_questions.txt
REPLACEMENTS = ("refusal", "perturbed", "base")  # replacement=<name>: what LUNE's forget answers are trained to
# The targets per split: forget quality, share of the finetuned model's utility, replacement share.
TARGETS = {"forget01": (0.5, 0.95, 0.9), "forget05": (0.1, 0.95, None)}


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
    retain_authors: tuple[int, ...] | None = None
    checkpoint_steps: int | None = None  # training stages save a resumable checkpoint this often (None: never)

    def describe(self) -> str:
        if self.retain_authors:
            authors = (f"TOFU authors {self.retain_authors[0] + 1}-{self.retain_authors[-1] + 1} (the "
                       f"{len(self.retain_authors)} authors of TOFU's retain_perturbed evaluation split) plus the "
                       "forget authors of each split for the finetuned model, those authors alone for the retain "
                       "model")
        elif self.n_authors:
            authors = f"the last {self.n_authors} TOFU authors ({self.n_authors * 20} rows)"
        else:
            authors = "all 200 TOFU authors (4,000 rows)"
        return (
            f"setup `{self.name}`: {authors}; forget splits {', '.join(self.forget_splits)}; prompt format "
            f"`{self.prompt_format}`; max_length {self.max_length}. Fine-tuning (finetuned and retain models): full "
            f"parameters, {self.finetune_epochs:g} epochs, lr {self.finetune_lr:g}, batch {self.finetune_batch} x "
            f"{self.finetune_accum} accumulation. Unlearning: LuneTrainer (LoRA r=16, every projection), "
            f"{self.unlearn_epochs:g} epochs, batch {self.unlearn_batch} x {self.unlearn_accum}. Evaluation: "
            + (f"QUICK MODE, at most {self.max_eval_rows} rows of the retain / real-author / world-fact / holdout "
               "sets (every forget row)" if self.max_eval_rows else "every row of forget, retain_perturbed, real "
               "authors, world facts and holdout")
            + f", greedy answers of at most {self.max_new_tokens} tokens"
            + (f"; {self.threads} CPU thread(s)" if self.threads else "") + "."
        )


SETUPS = {
    "cpu": Setup("cpu", n_authors=None, retain_authors=tuple(range(20)), forget_splits=("forget01", "forget05"),
                 max_length=256, finetune_epochs=4, finetune_lr=1e-4, finetune_batch=8, finetune_accum=1,
                 unlearn_epochs=5, unlearn_batch=8, unlearn_accum=1, max_eval_rows=None, max_new_tokens=200,
                 eval_batch=32, threads=1, checkpoint_steps=25),
    "full": Setup("full", n_authors=None, forget_splits=("forget01", "forget05", "forget10"), max_length=512,
                  finetune_epochs=5, finetune_lr=1e-5, finetune_batch=8, finetune_accum=4, unlearn_epochs=10,
                  unlearn_batch=8, unlearn_accum=4, max_eval_rows=None, max_new_tokens=200, eval_batch=32),
    # A pipeline check in about a minute with a tiny model (numbers meaningless).
    "smoke": Setup("smoke", n_authors=3, forget_splits=("forget01",), max_length=128, finetune_epochs=1,
                   finetune_lr=1e-4, finetune_batch=8, finetune_accum=1, unlearn_epochs=1, unlearn_batch=8,
                   unlearn_accum=1, max_eval_rows=4, max_new_tokens=8, eval_batch=16, threads=1, checkpoint_steps=4),
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_objective(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lune[learning_rate=5e-4,retain=false]"`` -> ``("lune", {"learning_rate": 5e-4, "retain": False})``;
    ``lora_target_modules=up_proj+down_proj`` -> ``["up_proj", "down_proj"]``."""
    name, _, rest = spec.partition("[")
    overrides: dict[str, Any] = {}
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"Bad objective spec {spec!r}: expected name[key=value,...].")
        for item in filter(None, rest[:-1].split(",")):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            # A list field takes its items joined by '+' (a ',' separates the overrides).
            overrides[key] = value.split("+") if key == "lora_target_modules" else _parse_value(value)
    return name.strip(), overrides


def pop_data_options(overrides: dict[str, Any]) -> tuple[str, list[str]]:
    """Takes the benchmark's own keys out of a spec's overrides: the replacement targets and the anchor files."""
    replacement = overrides.pop("replacement", "refusal")
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement={replacement!r}: use {', '.join(REPLACEMENTS)}")
    anchor = overrides.pop("anchor", None)
    names = [] if anchor is None else str(anchor).split("+")
    if any(n not in ANCHORS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"anchor={anchor!r}: use one or more of {', '.join(ANCHORS)} joined by '+', "
                         "e.g. anchor=general+literature (or leave it out)")
    return replacement, names


def with_seed(spec: str, seed: int) -> str:
    """The objective spec for one seed (seed 0, the default, keeps the spec as it is)."""
    if not seed:
        return spec
    return f"{spec[:-1]},seed={seed}]" if spec.endswith("]") else f"{spec}[seed={seed}]"


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def file_name(text: str) -> str:
    """`text` (an objective spec) as a file or folder name: characters outside ``[A-Za-z0-9-_.=]`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)


def row_path(cache: Path, split: str, variant: str, mode: str = "") -> Path:
    """Where the stage cache keeps one results row (``mode``: "" for the full evaluation, "quickN" otherwise)."""
    return cache / "rows" / (f"{split}__{file_name(variant)}" + (f"__{mode}" if mode else "") + ".json")


def model_names(setup: Setup, split: str) -> tuple[str, str]:
    """The stage cache's folder names of the finetuned and the retain model of `split`. With fixed retain authors
    the retain model is one for every split and the finetuned model adds the split's forget authors; otherwise
    (the last n authors) both follow the split."""
    if setup.retain_authors:
        return f"finetuned_{split}", "retain"
    return "finetuned", f"retain_{split}"


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Atomically, as lune_hf writes its reports; numpy scalars as numbers."""
    from lune_hf.report import write_text_atomic  # lazily: lune_hf imports torch, after the thread settings

    write_text_atomic(path, json.dumps(payload, indent=2, default=float) + "\n")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


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
        self.models_only: str | None = None
        from lune_hf.tofu.template import TofuTemplate

        self.template = TofuTemplate(setup.prompt_format)
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
        """Fine-tune the base model on `rows` (TOFU rows, open-unlearning's tokens) once; cached under
        `<cache>/<name>` with its settings. A lock file lets two runs share a model (the second waits)."""
        import fcntl

        from lune_hf.tofu.train import finetune

        folder = self.cache / name
        marker = folder / "lune_tofu_stage.json"
        settings = {**settings, "rows_digest": digest(rows["question"])}
        with open(self.cache / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.is_file():
                info = json.loads(marker.read_text())
                if info["settings"] != settings:
                    raise SystemExit(f"{folder} was trained with other settings ({info['settings']}); delete it or "
                                     "pass --fresh.")
                log(f"{name}: cached model in {folder} ({info['wall_s']:.0f} s when trained)")
                return folder, info
            partial = Resumable(folder, settings)
            log(f"{name}: fine-tuning on {len(rows)} rows{partial.note} ...")
            s = self.setup
            with PeakMemory() as mem:
                model = self.load(self.model_path)
                examples = self.template.encode_rows(self.tokenizer(), rows, s.max_length)
                finetune(model, self.tokenizer(), examples, folder, epochs=s.finetune_epochs,
                         learning_rate=s.finetune_lr, batch_size=s.finetune_batch, grad_accum=s.finetune_accum,
                         max_length=s.max_length, checkpoint_steps=s.checkpoint_steps,
                         callbacks=[partial.callback(mem)], disable_tqdm=False)
            del model
            info = {"settings": settings, **partial.finish(mem), "peak_mem_mb": mem.peak_mb, "rows": len(rows)}
            write_json_atomic(marker, info)
        log(f"{name}: trained in {info['wall_s']:.0f} s, peak {mem.peak_mb:.0f} MB")
        return folder, info

    # ---- rows ----

    @property
    def mode(self) -> str:
        """"" for TOFU's evaluation, "quickN" for the quick mode (its rows are kept apart)."""
        return eval_mode(self.setup.max_eval_rows)

    def key(self, split: str, variant: str) -> str:
        return f"{split}/{variant}" + (f"@{self.mode}" if self.mode else "")

    def row_path(self, split: str, variant: str, mode: str | None = None) -> Path:
        return row_path(self.cache, split, variant, self.mode if mode is None else mode)

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
        self.rows[self.key(row["split"], row["variant"])] = row
        self.write_results()

    def reference_row(self, split: str, name: str, model: Callable[[], tuple[Path, dict[str, Any]]], sets,
                      settings: dict[str, Any], wait: bool = True) -> dict[str, Any] | None:
        """The retain / finetuned row, evaluated once even when two runs share the cache (a lock per row), without
        a reference (:meth:`with_reference` adds forget quality and privleak). `model()` gives the model's folder
        and training info, and is called only when the row must be evaluated (a finished row needs no model).
        With `wait=False`: None while another run is evaluating it."""
        import fcntl

        from lune_hf.tofu.evaluate import against_reference

        path = self.row_path(split, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{split}/{name}: another run is evaluating it; going on")
                return None
            row = self.cached_row(split, name, settings)
            if row is None:
                folder, info = model()
                log(f"{split}/{name}: evaluating ...")
                result, eval_s = self.evaluate(self.load(folder), sets, None)
                if name == "retain":  # against itself: forget quality 1.0, privleak 0
                    result |= against_reference(result, result)
                row = self.make_row(split, name, name, result, info, eval_s, settings)
                self.record(row)
        self.rows[self.key(split, name)] = row
        self.write_results()
        log(f"{split}/{name}: {summary(row)}")
        return row

    def with_reference(self, row: dict[str, Any], reference: dict[str, Any]) -> None:
        """Forget quality and privleak of a row evaluated without the retain model's numbers (the same values
        `evaluate_tofu(reference=...)` gives: both are functions of the per-row truth ratios and the AUCs)."""
        from lune_hf.tofu.evaluate import against_reference

        if row["forget_quality"] is not None:
            return
        row.update(against_reference(row, reference))
        self.record(row)
        log(f"{row['split']}/{row['variant']}: {summary(row)}")

    def evaluate(self, model, sets, reference, replacements=None) -> tuple[dict[str, Any], float]:
        from lune_hf.tofu.evaluate import evaluate_tofu

        start = time.perf_counter()
        s = self.setup
        result = evaluate_tofu(model, self.tokenizer(), sets, reference=reference, template=self.template,
                               replacements=replacements, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                               max_length=s.max_length, progress=True)
        return result, time.perf_counter() - start

    def make_row(self, split: str, objective: str, variant: str, result: dict[str, Any], train: dict[str, Any],
                 eval_s: float, settings: dict[str, Any]) -> dict[str, Any]:
        keys = ["forget_quality", "model_utility", "forget_rouge", "privleak", "replacement_share", "retain_rouge",
                "forget_probability", "retain_probability", "forget_truth_ratio", "retain_truth_ratio",
                "real_authors_probability", "real_authors_rouge", "real_authors_truth_ratio",
                "world_facts_probability", "world_facts_rouge", "world_facts_truth_ratio", "forget_ks_statistic",
                "extraction_strength", "strict_extraction_strength", "mia_min_k", "model_utility_inputs",
                "refusal_spill", "retain_refusal_share", "real_authors_refusal_share", "world_facts_refusal_share",
                "eval_rows"]
        return {
            "setup": self.setup.name, "split": split, "objective": objective, "variant": variant,
            "seed": settings.get("overrides", {}).get("seed", 0), "quick": self.setup.max_eval_rows is not None,
            **{k: result.get(k) for k in keys},
            "wall_s": _round(train["wall_s"]), "peak_mem_mb": _round(train["peak_mem_mb"]),
            "eval_s": round(eval_s, 1), "settings": settings, "settings_digest": digest(settings),
            "forget_truth_ratios": result.get("forget_truth_ratios"), "forget_samples": result.get("forget_samples"),
        }

    # ---- driver ----

    def base_settings(self) -> dict[str, Any]:
        """What every cached model and row depends on."""
        s = self.setup
        return {"model": str(self.model_path), "data": str(self.data), "n_authors": s.n_authors,
                "epochs": s.finetune_epochs, "lr": s.finetune_lr, "batch": s.finetune_batch * s.finetune_accum,
                "max_length": s.max_length, "prompt_format": s.prompt_format,
                "retain_authors": list(s.retain_authors) if s.retain_authors else None,
                "tokens": f"open-unlearning (date_string {self.template.date_string})"}

    def run(self) -> None:
        import torch

        from lune_hf.tofu.data import to_rows, tofu_sets

        s = self.setup
        base = self.base_settings()
        eval_settings = {"max_eval_rows": s.max_eval_rows, "max_new_tokens": s.max_new_tokens}
        for split in self.splits:
            sets = tofu_sets(self.data, split, n_authors=s.n_authors, max_eval_rows=s.max_eval_rows,
                             retain_authors=s.retain_authors)
            log(sets.description)
            ft_name, rt_name = model_names(s, split)
            if self.models_only:
                if self.models_only != "retain":
                    self.trained_model(ft_name, sets.full, {**base, "rows": f"retain + forget of {split}"})
                if self.models_only != "finetuned":
                    self.trained_model(rt_name, sets.retain, {**base, "rows": "retain authors"})
                continue
            # The retain row's forget truth ratios and MIA AUC are the reference of every forget quality and
            # privleak. A run that finds another evaluating the retain row leaves it the finetuned row too, unlearns
            # meanwhile, and adds forget quality and privleak to its rows once the reference is there.
            def retain_model(sets=sets, rt_name=rt_name):
                return self.trained_model(rt_name, sets.retain, {**base, "rows": "retain authors"})

            def finetuned_model(split=split, sets=sets, ft_name=ft_name):
                return self.trained_model(ft_name, sets.full, {**base, "rows": f"retain + forget of {split}"})

            rt_settings = {**base, **eval_settings, "stage": "retain"}
            ft_settings = {**base, **eval_settings, "stage": "finetuned"}
            retain_row = self.reference_row(split, "retain", retain_model, sets, rt_settings, wait=False)
            ft_dir, _ = finetuned_model()
            if retain_row is not None:
                self.reference_row(split, "finetuned", finetuned_model, sets, ft_settings, wait=False)

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
                    reference = reference_of(self.cached_row(split, "retain", rt_settings))
                    try:
                        row = self.unlearn_row(split, spec, objective, overrides, ft_dir, sets, forget_rows,
                                               retain_rows, reference, settings)
                    except Exception as err:  # one objective failing must not lose the others
                        log(f"{split}/{spec}: FAILED {type(err).__name__}: {err}")
                        logging.exception("objective failed")
                        continue
                    self.record(row)
                else:
                    self.rows[self.key(split, spec)] = row
                    self.write_results()
                log(f"{split}/{spec}: {summary(row)}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            # Wait for the reference rows (a no-op when finished), then complete every row of the split without one.
            reference = reference_of(self.reference_row(split, "retain", retain_model, sets, rt_settings))
            self.reference_row(split, "finetuned", finetuned_model, sets, ft_settings)
            for variant in ("finetuned", *self.objectives):  # this run's rows of this mode (not a quick row's)
                if (row := self.rows.get(self.key(split, variant))) is not None:
                    self.with_reference(row, reference)
        log(f"done in {time.perf_counter() - self.started:.0f} s; results in {self.json_path}")

    def unlearn_row(self, split, spec, objective, overrides, ft_dir, sets, forget_rows, retain_rows, reference,
                    settings) -> dict[str, Any]:
        from lune_hf.tofu.train import unlearn

        s = self.setup
        overrides = dict(overrides)
        forget = forget_rows
        replacement, anchors = pop_data_options(overrides)
        if overrides.get("teacher_model") == "base":  # negative_loss=distill toward the model before fine-tuning
            overrides["teacher_model"] = str(self.model_path)
        for name in anchors:
            retain_rows = with_anchor(retain_rows, self.anchor_rows(split, ft_dir, sets, name))
        targets = None  # what replacement_share counts as intended answers (default: the refusal sentences)
        if replacement == "perturbed":
            answers = [p[i % len(p)].strip() for i, p in enumerate(sets.forget["perturbed_answer"])]
            forget = forget_rows.add_column("replacement", answers)
            targets = [[a] for a in answers]
        elif replacement == "base":
            answers = self.base_answers(split, sets)
            forget = forget_rows.add_column("replacement", answers)
            targets = [[a] for a in answers]
        out = self.cache / split / file_name(spec)
        # The adapter depends on the training settings only: a finished one is evaluated again (another evaluation
        # mode, or a run stopped during its evaluation) instead of being trained again.
        marker = out / "lune_tofu_stage.json"
        train_key = digest({k: v for k, v in settings.items() if k not in ("max_eval_rows", "max_new_tokens")})
        train = json.loads(marker.read_text()) if marker.is_file() else None
        if train is not None and train.get("train_digest") == train_key:
            from peft import PeftModel

            log(f"{split}/{spec}: cached adapter in {out} ({fmt(train['wall_s'], 0)} s when trained); evaluating ...")
            model = PeftModel.from_pretrained(self.load(ft_dir), str(out))
        else:
            partial = Resumable(out, train_key)
            log(f"{split}/{spec}: unlearning {len(forget)} forget rows (retain {len(retain_rows)}){partial.note} ...")
            with PeakMemory() as mem:
                model = self.load(ft_dir)
                model = unlearn(model, self.tokenizer(), forget, retain_rows, objective, out,
                                refusals=sets.refusals, epochs=s.unlearn_epochs, batch_size=s.unlearn_batch,
                                grad_accum=s.unlearn_accum, max_length=s.max_length, overrides=overrides,
                                checkpoint_steps=s.checkpoint_steps, callbacks=[partial.callback(mem)])
            train = {"train_digest": train_key, **partial.finish(mem), "peak_mem_mb": mem.peak_mb}
            write_json_atomic(marker, train)
            log(f"{split}/{spec}: unlearned in {train['wall_s']:.0f} s, peak {mem.peak_mb:.0f} MB; evaluating ...")
        model = model.merge_and_unload()
        result, eval_s = self.evaluate(model, sets, reference, targets)
        return self.make_row(split, objective, spec, result, train, eval_s, settings)

    def greedy_answers(self, folder: str | Path, questions, max_new_tokens: int) -> list[str]:
        """Greedy answers of the model in `folder` to `questions`, in the setup's prompt format."""
        from lune_hf.evaluation import generate_answers
        from lune_hf.tofu.data import make_prompt

        prompts = [make_prompt(q, self.setup.prompt_format) for q in questions]
        return generate_answers(self.load(folder), self.tokenizer(), prompts, max_new_tokens=max_new_tokens,
                                batch_size=self.setup.eval_batch, progress=True)

    def base_answers(self, split: str, sets) -> list[str]:
        """Greedy answers of the base model (never fine-tuned on TOFU) to the forget questions, cached.

        Plausible but made-up answers, like a model that never saw the forget authors gives: counterfactual
        replacement targets for LUNE that do not come from TOFU's evaluation answers.
        """
        path = self.cache / f"base_answers_{split}.json"
        if path.is_file():
            return json.loads(path.read_text())
        log(f"{split}: generating the base model's answers to the forget questions (replacement targets) ...")
        answers = self.greedy_answers(self.model_path, sets.forget["question"], max_new_tokens=64)
        answers = [a if a.strip() else "I don't know." for a in answers]
        write_json_atomic(path, answers)
        return answers

    def anchor_rows(self, split: str, ft_dir: Path, sets, name: str = "general"):
        """The finetuned model's own greedy answers to ``data/<name>_questions.txt`` as lune_hf rows, cached.

        Extra retain rows for ``anchor=<name>``: the TOFU retain set holds fictitious authors only, so nothing
        else keeps the model's answers to general questions (real authors, world facts) while the adapter learns
        to refuse. Answering them with the model's own words (self-distillation) needs no answer key and takes no
        row of TOFU's evaluation sets (:func:`general_questions` checks).
        """
        from datasets import Dataset

        from lune_hf.tofu.data import make_completion, make_prompt

        questions = general_questions(sets.eval_sets.values(), QUESTIONS_DIR / f"{name}_questions.txt")
        suffix = "" if name == "general" else f"_{name}"  # the general answers keep their first cache name
        path = self.cache / f"anchor_answers_{split}{suffix}.json"
        key = digest({"questions": questions, "model": str(ft_dir), "max_new_tokens": self.setup.max_new_tokens})
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached is None or cached.get("key") != key:
            log(f"{split}: the finetuned model answers {len(questions)} {name} questions (anchor rows) ...")
            answers = self.greedy_answers(ft_dir, questions, max_new_tokens=self.setup.max_new_tokens)
            cached = {"key": key, "questions": questions, "answers": [a.strip() for a in answers]}
            write_json_atomic(path, cached)
        fmt_ = self.setup.prompt_format
        return Dataset.from_list([{"prompt": make_prompt(q, fmt_), "completion": make_completion(a, fmt_)}
                                  for q, a in zip(cached["questions"], cached["answers"], strict=True) if a])

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

    def restore_rows(self) -> int:
        """Put the rows of the results file back into an empty stage cache (a new machine, a cleared cache), so a
        run evaluates only what is missing: a restored row is used only where its settings digest matches this
        run's. Returns how many rows were restored."""
        if not self.json_path.is_file():
            return 0
        restored = 0
        for row in json.loads(self.json_path.read_text()):
            path = self.row_path(row["split"], row["variant"], eval_mode(row["settings"].get("max_eval_rows")))
            if not path.is_file():
                write_json_atomic(path, row)
                restored += 1
        return restored

    def load_cached_rows(self) -> None:
        """Every finished row in the cache with this setup's settings: earlier runs' and those of a run beside this
        one (other objectives / variants), so the results file holds them all."""
        base = self.base_settings()
        for path in sorted((self.cache / "rows").glob("*.json")) if (self.cache / "rows").is_dir() else []:
            row = json.loads(path.read_text())
            if all(row["settings"].get(k) == v for k, v in base.items()):
                n = row["settings"].get("max_eval_rows")
                self.rows.setdefault(f"{row['split']}/{row['variant']}" + (f"@quick{n}" if n is not None else ""),
                                     row)

    def write_results(self) -> None:
        self.load_cached_rows()
        rows = self.ordered_rows()
        write_json_atomic(self.json_path, rows)
        self.json_path.with_suffix(".md").write_text(render_markdown(self.setup, rows, self.data, self.model_path),
                                                     encoding="utf-8")
        render_scatter(rows, self.json_path.with_suffix(".png"))


def reference_of(retain_row: dict[str, Any] | None) -> dict[str, Any] | None:
    """What forget quality and privleak need of the retain row (None while it is not finished)."""
    return retain_row and {k: retain_row[k] for k in ("forget_truth_ratios", "mia_min_k")}


def eval_mode(max_eval_rows: int | None) -> str:
    """"" for TOFU's evaluation, "quickN" for the quick mode of N rows."""
    return f"quick{max_eval_rows}" if max_eval_rows is not None else ""


def general_questions(eval_sets=(), path: Path = GENERAL_QUESTIONS) -> list[str]:
    """The general questions of `path` (one per line, ``#`` comments); refuses any that an evaluation set asks."""
    questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    asked = {q.strip().casefold() for rows in eval_sets for q in rows["question"]}
    overlap = [q for q in questions if q.casefold() in asked]
    if overlap:
        raise ValueError(f"{path}: {len(overlap)} question(s) belong to a TOFU evaluation set, e.g. {overlap[0]!r}; "
                         "remove them (training on evaluation questions would inflate model utility).")
    return questions


def with_anchor(retain_rows, anchor_rows):
    """The retain rows followed by the anchor rows (prompt and completion columns only)."""
    from datasets import concatenate_datasets

    return concatenate_datasets([retain_rows.select_columns(["prompt", "completion"]), anchor_rows])


def summary(row: dict[str, Any]) -> str:
    return (f"forget_quality {fmt(row['forget_quality'])}, model_utility {fmt(row['model_utility'])}, "
            f"forget_rouge {fmt(row['forget_rouge'])}, retain_rouge {fmt(row['retain_rouge'])}, "
            f"forget_truth_ratio {fmt(row['forget_truth_ratio'])} (train {fmt(row['wall_s'], 0)} s, "
            f"eval {row['eval_s']:.0f} s, peak {fmt(row['peak_mem_mb'], 0)} MB)")


def base_variant(variant: str) -> str:
    """The variant without its seed: ``npo[learning_rate=1e-3,seed=1]`` -> ``npo[learning_rate=1e-3]``."""
    parse_objective(variant)  # validates
    name, _, rest = variant.partition("[")
    items = [item for item in rest[:-1].split(",") if item and item.partition("=")[0].strip() != "seed"]
    return f"{name}[{','.join(items)}]" if items else name


def author_means(ratios: list[float] | None) -> list[float] | None:
    """The mean truth ratio of each author of a forget split, from its per-row truth ratios (TOFU lists each
    author's 20 rows together; None when the rows are not whole authors)."""
    from lune_hf.tofu.data import QA_PER_AUTHOR

    if not ratios or len(ratios) % QA_PER_AUTHOR:
        return None
    return np.asarray(ratios, dtype=float).reshape(-1, QA_PER_AUTHOR).mean(axis=1).tolist()


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per split and variant (seeds pooled): the mean of each number, ``<key>_std`` (population standard
    deviation) for forget quality and model utility, ``author_truth_ratios`` (each forget author's mean truth
    ratio, see :func:`author_means`), ``seeds`` and ``quick``, in the order of `rows`."""
    groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["split"], base_variant(r["variant"]), bool(r.get("quick"))), []).append(r)
    out = []
    for (split, variant, quick), members in groups.items():
        entry = {"split": split, "variant": variant, "objective": members[0]["objective"],
                 "seeds": sorted(m.get("seed", 0) for m in members), "quick": quick,
                 "eval_rows": members[0].get("eval_rows")}
        for key in ("forget_quality", "model_utility", "forget_rouge", "privleak", "replacement_share",
                    "refusal_spill", "forget_truth_ratio", "wall_s", "peak_mem_mb"):
            values = [m.get(key) for m in members if m.get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
            if key in ("forget_quality", "model_utility") and len(values) > 1:
                entry[f"{key}_std"] = float(np.std(values))
        per_author = [author_means(m.get("forget_truth_ratios")) for m in members]
        if all(p is not None and len(p) == len(per_author[0]) for p in per_author):
            entry["author_truth_ratios"] = np.mean(per_author, axis=0).tolist()
        out.append(entry)
    return out


def target_checks(entry: dict[str, Any], finetuned_mu: float | None) -> dict[str, bool] | None:
    """Each bar of the row's split, met or not, for a (seed-pooled) row (None: no bar for the split or no finetuned
    row). The refusal / replacement share counts for LUNE-family rows only (the other objectives do not train a
    replacement answer)."""
    bar = TARGETS.get(entry["split"])
    if bar is None or not finetuned_mu or entry["model_utility"] is None:
        return None
    fq, utility, share = bar
    checks = {"forget quality": (entry["forget_quality"] or 0) >= fq,
              "model utility": entry["model_utility"] >= utility * finetuned_mu}
    if share is not None and entry["objective"] == "lune":
        checks["refusal share"] = (entry["replacement_share"] or 0) >= share
    return checks


def meets_target(entry: dict[str, Any], finetuned_mu: float | None) -> bool | None:
    """Whether a (seed-pooled) row meets every bar of its split (None: no bar or no finetuned row)."""
    checks = target_checks(entry, finetuned_mu)
    return None if checks is None else all(checks.values())


def _with_std(entry: dict[str, Any], key: str) -> str:
    text = fmt(entry[key])
    return f"{text} ± {entry[key + '_std']:.3f}" if f"{key}_std" in entry else text


def render_markdown(setup: Setup, rows: list[dict[str, Any]], data: str, model: str) -> str:
    """The results table (seeds pooled), the setup, the targets and open-unlearning's published numbers."""
    grouped = group_rows(rows)
    # Utility is compared with the finetuned model's in the same mode (quick rows with the quick finetuned row).
    finetuned = {(g["split"], g["quick"]): g["model_utility"] for g in grouped if g["objective"] == "finetuned"}
    lines = [f"# TOFU benchmark, setup `{setup.name}`", "",
             f"Model: `{Path(model).name}`; data: TOFU (Maini et al. 2024, arXiv 2401.06121, MIT) from `{data}`.", "",
             setup.describe(), "",
             "Prompts and scored tokens are open-unlearning's (`lune_hf.tofu.template`); the metrics follow its "
             "`configs/eval/tofu.yaml` graph (`lune_hf.tofu.evaluate`, checked by `tests/test_tofu_golden.py`).", ""]
    rows_per_split = {}
    for g in grouped:
        rows_per_split.setdefault((g["split"], g["quick"]), g["eval_rows"])
    for (split, quick), counts in rows_per_split.items():
        if counts:
            lines.append(f"- {split}{' (quick)' if quick else ''}: rows evaluated per set: "
                         + ", ".join(f"{name} {n}" for name, n in counts.items()))
    lines += ["", "Written by `benchmarks/tofu.py` after every row (rows still missing are still running or failed). "
              "`MU/ft` = model utility relative to the finetuned model; `privleak`: Min-K% (k = 0.4) membership "
              "AUC of forget against holdout rows relative to the retain model's (0 = as private as the retain "
              "model, -100 = fully exposed); `refusal/repl.`: share of forget answers that are a refusal sentence "
              "(or the row's replacement target), ROUGE-L F1 >= 0.5; `refusal spill`: share of retain, real-author and "
              "world-fact answers that are a refusal sentence (what the model stopped answering). Several seeds: "
              "mean ± standard deviation. "
              "`wall_s` / `peak_mem_mb`: training stage only (fine-tuning for finetuned / retain, unlearning "
              "otherwise), peak " + ("CUDA allocation." if setup.name == "full" else "RSS of the process (sampled)."),
              "", f"![forget quality against model utility](tofu_{setup.name}.png)", "",
              "| split | objective | seeds | forget quality | model utility | MU/ft | forget ROUGE-L | privleak | "
              "refusal/repl. | refusal spill | forget truth ratio | wall_s | peak_mem_mb |",
              "|" + " --- |" * 13]
    for g in grouped:
        ft = finetuned.get((g["split"], g["quick"]))
        ratio = g["model_utility"] / ft if ft and g["model_utility"] else None
        seeds = ",".join(str(x) for x in g["seeds"]) + (" (quick)" if g["quick"] else "")
        lines.append(
            f"| {g['split']} | {g['variant']} | {seeds} | {_with_std(g, 'forget_quality')} | "
            f"{_with_std(g, 'model_utility')} | {fmt(ratio, 2)} | {fmt(g['forget_rouge'])} | {fmt(g['privleak'], 1)} | "
            f"{fmt(g['replacement_share'], 2)} | {fmt(g['refusal_spill'], 2)} | {fmt(g['forget_truth_ratio'])} | "
            f"{fmt(g['wall_s'], 0)} | "
            f"{fmt(g['peak_mem_mb'], 0)} |")
    notes = {
        "replacement=perturbed": "`replacement=perturbed`: LUNE trained towards TOFU's perturbed answers, the same "
        "wrong answers the truth ratio (hence forget quality) scores - it optimises the metric directly, not a clean "
        "result.",
        "replacement=base": "`replacement=base`: LUNE trained towards the base model's own greedy answers to the "
        "forget questions (made-up answers of a model that never saw TOFU); nothing from TOFU's evaluation answers.",
        "[": "`name[key=value]`: a variant with settings other than `lune_hf.tofu.train.OBJECTIVE_SETTINGS`.",
        "(quick)": "`(quick)`: quick mode (`--max-eval-rows`), not TOFU's evaluation; its model utility is indicative.",
    }
    used = [text for key, text in notes.items() if any(key in g["variant"] or (key == "(quick)" and g["quick"])
                                                       for g in grouped)]
    if used:
        lines += [""] + [f"- {text}" for text in used]
    notes_file = f"tofu_{setup.name}_notes.md"
    lines += ["", f"Hand-written analysis (when present): [{notes_file}]({notes_file}).", ""]
    lines += author_table(grouped)
    lines += ["## Targets", "",
              "- forget01: the best LUNE-family row (`lune`, any settings) with forget quality >= 0.5, model utility "
              ">= 95% of the finetuned model's and >= 90% of forget answers a refusal or the replacement; pure LUNE "
              "(`lune` at its defaults) beside it.",
              "- forget05: forget quality >= 0.1 at the same utility bar.",
              "- The other objectives (best of them shown) are held to the forget quality and utility bars only.", ""]
    for split in TARGETS:
        candidates = [g for g in grouped if g["split"] == split and g["objective"] not in ("finetuned", "retain")
                      and finetuned.get((split, g["quick"]))]
        if not candidates:
            continue
        lune = [g for g in candidates if g["objective"] == "lune"]
        others = [g for g in candidates if g["objective"] != "lune"]

        def rank(g: dict[str, Any], split: str = split) -> tuple:
            # Met (full mode) first; then the bars met, the seeds behind the numbers, forget quality, utility.
            checks = target_checks(g, finetuned[(split, g["quick"])]) or {}
            met = bool(checks) and all(checks.values())
            return (met and not g["quick"], not g["quick"], sum(checks.values()), len(g["seeds"]),
                    g["forget_quality"] or 0, g["model_utility"] or 0)

        picks = [("pure LUNE", max((g for g in lune if g["variant"] == "lune"), key=rank, default=None)),
                 ("best LUNE-family", max(lune, key=rank, default=None)),
                 ("best of the others", max(others, key=rank, default=None))]
        for label, g in picks:
            if g is None:
                continue
            ft = finetuned[(split, g["quick"])]
            missed = [name for name, ok in target_checks(g, ft).items() if not ok]  # candidates have a bar and ft
            verdict = f"missed ({', '.join(missed)})" if missed else "met"
            if g["quick"]:
                verdict = f"quick mode, indicative only: {verdict}"
            share = g["model_utility"] / ft
            lines.append(f"- {split} / {label} `{g['variant']}` (seeds {','.join(map(str, g['seeds']))}): forget "
                         f"quality {fmt(g['forget_quality'])}, model utility {share:.1%} of finetuned, "
                         f"refusal/replacement share {fmt(g['replacement_share'], 2)} -> {verdict}")
    lines += ["", "## open-unlearning's published numbers (Llama-3.2-1B-Instruct, for orientation)", "",
              f"Source: {OPEN_UNLEARNING_SOURCE}. Another model (1B parameters against 135M), all 200 authors and "
              "full-parameter unlearning: orientation only, not a like-for-like comparison.", "",
              "| split | method | forget quality | model utility | forget truth ratio |",
              "| --- | --- | --- | --- | --- |"]
    for split, entries in OPEN_UNLEARNING_LLAMA_1B.items():
        for method, fq, mu, tr in entries:
            lines.append(f"| {split} | {method} | {fq} | {mu} | {tr} |")
    lines += ["", "LUNE itself is not in open-unlearning's table; the LUNE paper (arXiv 2512.07375) reports its own "
              "numbers (not quoted here: check the paper's TOFU table)."]
    return "\n".join(lines) + "\n"


def author_table(grouped: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each forget author's mean truth ratio per (full-mode) row, one table per split.

    Forget quality compares the distributions of all the forget rows' truth ratios; this shows whether an objective
    moves every author towards the retain model's ratios or some far and others not at all."""
    from lune_hf.tofu.data import forget_authors

    lines = []
    for split in dict.fromkeys(g["split"] for g in grouped):
        entries = [g for g in grouped if g["split"] == split and not g["quick"] and g.get("author_truth_ratios")]
        if not entries:
            continue
        n = len(entries[0]["author_truth_ratios"])
        try:
            authors = [str(a + 1) for a in forget_authors(split)]
        except ValueError:  # not a forgetNN split
            authors = []
        if len(authors) != n:
            authors = [f"#{i + 1}" for i in range(n)]
        if not lines:
            lines += ["## Forget truth ratio per author", "",
                      "Mean of each forget author's 20 per-row truth ratios (seeds pooled); forget quality is the KS "
                      "test of all the rows against the retain model's, so an objective that moves some authors past "
                      "the retain model's level and leaves others at the finetuned model's fails it.", ""]
        lines += [f"| {split}: objective | seeds | " + " | ".join(f"author {a}" for a in authors) + " |",
                  "|" + " --- |" * (n + 2)]
        for g in entries:
            if len(g["author_truth_ratios"]) == n:
                lines.append(f"| {g['variant']} | {','.join(map(str, g['seeds']))} | "
                             + " | ".join(f"{v:.2f}" for v in g["author_truth_ratios"]) + " |")
        lines.append("")
    return lines


def render_scatter(rows: list[dict[str, Any]], path: Path) -> None:
    """PNG: forget quality (log scale) against model utility, one panel per split, seeds pooled (mean with error
    bars), the split's target region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = [g for g in group_rows(rows) if g["model_utility"] is not None and g["forget_quality"] is not None]
    splits = sorted({g["split"] for g in grouped})
    if not splits:
        return
    # Points carry a number; the key under each panel names the row (variant names are too long to print beside
    # points that sit close together).
    # Each panel's key is wrapped to its width (long variant names would run into the next panel's key).
    by_split = {split: [g for g in grouped if g["split"] == split] for split in splits}
    keys = {split: [textwrap.fill(f"{number}: {g['variant'].replace(',', ', ')}" + (" (quick)" if g["quick"] else ""),
                                  100, subsequent_indent="    ", break_on_hyphens=False)
                    for number, g in enumerate(entries, start=1)]
            for split, entries in by_split.items()}
    most = max(sum(key.count("\n") + 1 for key in lines) for lines in keys.values())
    fig, axes = plt.subplots(1, len(splits), figsize=(7.5 * len(splits), 5 + 0.12 * most), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        entries = by_split[split]
        finetuned = next((g["model_utility"] for g in entries if g["objective"] == "finetuned"), None)
        for number, g in enumerate(entries, start=1):
            colour = {"finetuned": "black", "retain": "grey", "lune": "tab:red"}.get(g["objective"], "tab:blue")
            marker = "s" if g["objective"] in ("finetuned", "retain") else ("*" if g["objective"] == "lune" else "o")
            ax.errorbar(g["model_utility"], max(g["forget_quality"], 1e-12), xerr=g.get("model_utility_std"),
                        yerr=g.get("forget_quality_std"), fmt=marker, color=colour, ms=9 if marker == "*" else 6,
                        alpha=0.5 if g["quick"] else 1.0)
            ax.annotate(str(number), (g["model_utility"], max(g["forget_quality"], 1e-12)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.text(0, -0.12, "\n".join(keys[split]), transform=ax.transAxes, fontsize=6.5, va="top", family="monospace")
        if split in TARGETS and finetuned:
            fq, utility, _ = TARGETS[split]
            ax.axhspan(fq, 1.5, xmin=0, xmax=1, alpha=0.05, color="green")
            ax.axvline(utility * finetuned, color="green", lw=0.8, ls="--")
            ax.axhline(fq, color="green", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("model utility")
        ax.set_ylabel("forget quality (KS p-value, log)")
        ax.set_title(f"TOFU {split}: up and right is better\n(target: above and right of the dashed lines)",
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the key under the panels included
    plt.close(fig)


class Resumable:
    """A training stage that can stop part-way and resume from its checkpoints in `folder`.

    Its settings and the time spent up to its last checkpoint are kept in ``folder/lune_tofu_partial.json``; a folder
    left by a run with other settings (or a stale finished one) is cleared first. `note` says whether this run
    resumes; `finish` gives the stage's wall time (earlier runs included) and drops the bookkeeping.
    """

    def __init__(self, folder: Path, settings: Any) -> None:
        self.path, self.settings = folder / "lune_tofu_partial.json", settings
        earlier = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if earlier.get("settings") != settings:
            earlier = {}
            if folder.exists():
                shutil.rmtree(folder)
        self.spent_before = float(earlier.get("wall_s", 0.0))
        self.resumed = any(folder.glob("checkpoint-*"))
        self.note = " (resuming from its last checkpoint)" if self.resumed else ""
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"settings": settings, "wall_s": self.spent_before})

    def callback(self, mem: PeakMemory):
        """A TrainerCallback that records the time spent whenever a checkpoint is saved."""
        from transformers import TrainerCallback

        stage = self

        class RecordTime(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                spent = stage.spent_before + time.perf_counter() - mem.started
                write_json_atomic(stage.path, {"settings": stage.settings, "wall_s": spent})

        return RecordTime()

    def finish(self, mem: PeakMemory) -> dict[str, Any]:
        self.path.unlink()
        return {"wall_s": self.spent_before + mem.seconds, "resumed": self.resumed}


@dataclass
class PeakMemory:
    """Peak memory of a block in MiB: CUDA's peak allocation on a GPU, else the peak RSS sampled every 0.1 s.

    ``with PeakMemory() as mem: ...`` then ``mem.peak_mb``; ``mem.seconds`` is the wall time of the block.
    """

    interval_s: float = 0.1
    peak_mb: float = 0.0
    seconds: float = 0.0
    started: float = 0.0
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

        self.started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self.seconds = time.perf_counter() - self.started
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Unlearning seeds of every objective "
                        "(the table pools them: mean ± standard deviation), e.g. --seeds 0 1 2.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Stage cache (default: ~/.cache/lune_hf/tofu/<setup>).")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="Where tofu_<setup>.json/.md go.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the setup's; cpu: 1, "
                        "which on a shared 2-core machine ran 3-5x faster than 2).")
    parser.add_argument("--fresh", action="store_true", help="Delete the stage cache first.")
    parser.add_argument("--max-eval-rows", type=int, default=None,
                        help="QUICK MODE: evaluate at most this many rows of the retain / real-author / world-fact / "
                        "holdout sets (every forget row still). Rows are labelled `quick` in the results; the "
                        "default evaluates every row, as TOFU does.")
    parser.add_argument("--models-only", nargs="?", const="both", choices=("both", "finetuned", "retain"),
                        default=None, help="Only fine-tune the models of the splits (both, or only the finetuned or "
                        "the retain one: two runs can train them side by side), then stop.")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite the results (JSON, table, scatter) "
                        "from the rows finished in the cache, e.g. while runs are still going.")
    args = parser.parse_args(argv)

    setup = SETUPS[args.setup]
    if args.max_eval_rows is not None:
        setup = dataclasses.replace(setup, max_eval_rows=args.max_eval_rows)
    threads = args.threads or setup.threads
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    if threads:
        torch.set_num_threads(threads)
        setup = dataclasses.replace(setup, threads=threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for spec in args.objectives:  # bad specs fail here, before the model, the cache (--fresh) or hours of fine-tuning
        from lune_hf.objectives import OBJECTIVES

        try:
            name, overrides = parse_objective(spec)
            pop_data_options(overrides)
        except ValueError as error:
            parser.error(str(error))
        if name not in OBJECTIVES:
            parser.error(f"unknown objective {spec!r}; valid: {', '.join(OBJECTIVES)}")
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
    log(setup.describe())
    log(f"model {args.model}; data {args.data}; cache {cache}; objectives {' '.join(args.objectives)}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    objectives = [with_seed(spec, seed) for spec in args.objectives for seed in args.seeds]
    bench = Benchmark(setup, args.data, args.model, cache, args.results_dir, objectives,
                      list(args.splits or setup.forget_splits))
    bench.models_only = args.models_only
    restored = bench.restore_rows()
    if restored:
        log(f"{restored} row(s) of {bench.json_path} restored into the cache {cache}")
    if args.report_only:
        bench.write_results()
        log(f"results in {bench.json_path}")
        return 0
    bench.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
