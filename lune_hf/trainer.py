"""`LuneTrainer`: a `transformers.Trainer` that unlearns with LoRA adapters on a frozen backbone."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from filelock import FileLock, Timeout
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from . import objectives as obj
from .callbacks import ForgetRetainCallback
from .commitment import commit_rows, load_or_create_key
from .config import CHECKPOINTING, LuneConfig
from .data import (
    FORGET_PREFIX,
    GROUPS,
    REPLACEMENT_PREFIX,
    RETAIN_PREFIX,
    RETAIN_REFUSAL_PREFIX,
    UnlearningCollator,
    UnlearningDataset,
    build_unlearning_dataset,
    default_refusals,
    ensure_pad_token,
    row_format,
    tokenize_retain,
    validate_columns,
)
from .logits import answer_logits
from .outcome import Outcome
from .report import (
    ADAPTER_WEIGHTS,
    REPORT_FILE,
    RunStatus,
    build_run_report,
    write_json_atomic,
    write_report_files,
    write_text_atomic,
)
from .snapshot import load_trainable_state, trainable_state

logger = logging.getLogger(__name__)
LOCK_FILE = ".lune-hf.lock"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good adapter was restored and saved."""


def default_lora_config(args: LuneConfig) -> LoraConfig:
    """The LUNE paper's adapter: r=16, alpha=16, dropout 0.05 on every attention and MLP projection."""
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )


def attach_adapter(model, args: LuneConfig, peft_config: PeftConfig | None = None) -> PeftModel:
    """`model` with the seeded LoRA adapter of `args` (or `peft_config`); with activation checkpointing on, the frozen
    embeddings give the checkpointed layers an input that requires grad.

    Seeded: the same adapter init on every rank (ZeRO-3 / FSDP shard it without a broadcast from rank 0) and
    whatever the launcher or number of processes. peft's FutureWarning about transformers' renamed checkpointing
    property is silenced."""
    if getattr(args, CHECKPOINTING):
        model.enable_input_require_grads()
    set_seed(args.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_config or default_lora_config(args))


class LuneTrainer(Trainer):
    """Drop-in `Trainer` for unlearning.

    Args:
        model: a causal LM, a `PeftModel` (trained as given), or a Hub id / local path.
        args: a [`LuneConfig`] (a plain `TrainingArguments` is converted, keeping its values).
        train_dataset: the **forget set**: rows with `prompt`, `completion` and optionally `replacement`;
            conversational `messages`; raw `text` (a passage to forget); or tokenised `input_ids` (+ `labels`).
        retain_dataset: optional rows whose answers must survive, in the same formats (tokenised rows without
            `labels` train on every non-pad token, as `DataCollatorForLanguageModeling` labels them).
        eval_dataset: a validation set, evaluated with the retain loss (`eval_loss`), as a Trainer script expects;
            or a dict of sets: the one named `"forget"` is evaluated with the forget term of the objective
            (`eval_forget_loss`), every other one with the retain loss (`eval_<name>_loss`).
        processing_class: the tokenizer (loaded from `model` when it is an id).
        peft_config: the LoRA config; default [`default_lora_config`]. Ignored for a `PeftModel`.
        ref_model: optional separate reference model. By default the reference is the same model with its
            adapter disabled, so no second copy lives in memory.
        teacher_model: `negative_loss='distill'` only: a model (or its path / Hub id) that never learnt the forget
            set, with the trained model's vocabulary; the original answers are pulled toward its token
            distributions. Default: `args.teacher_model`.
        formatting_func: as in TRL's `SFTTrainer`: turns a row into its text; every set's rows become raw `text`.
        quantization_config: as in `SFTTrainer`: used to load `model` when it is an id.

    `SFTTrainer`'s other arguments (`data_collator`, `compute_loss_func`, ...) and `SFTConfig` fields without a
    meaning for unlearning (`packing`, `eos_token`, ...) are accepted and named in one warning.
    """

    _tag_names = ["lune", "unlearning", "lora"]
    # Every objective returns a per-example mean, so the Trainer must divide by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        args: LuneConfig | TrainingArguments | None = None,
        train_dataset: Dataset | None = None,
        retain_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        ref_model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
        formatting_func=None,
        compute_loss_func=None,
        quantization_config=None,
        **kwargs: Any,
    ) -> None:
        model_id = model if isinstance(model, str) else None
        args, (train_dataset, retain_dataset, eval_dataset) = _drop_in_arguments(
            model_id or type(model).__name__, args, (train_dataset, retain_dataset, eval_dataset), formatting_func,
            data_collator=data_collator, compute_loss_func=compute_loss_func, quantization_config=quantization_config,
            model_given=model_id is None, **kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and args.world_size == 1:
            raise RuntimeError(
                f"Launched as {launched} processes, but training would run {launched} independent single-process "
                "copies: on a machine without GPUs set `use_cpu=True` (`--use_cpu true` on the command line) so the "
                "processes join over gloo."
            )
        _check_data(args, train_dataset, retain_dataset, eval_dataset)  # before any model loads
        model, processing_class = _model_and_tokenizer(model, processing_class, args, peft_config, ref_model)
        self.ref_model = ref_model
        self.teacher_model, self.teacher_model_id = _teacher(args, teacher_model, model)
        self.base_model_id = _base_model_id(model, model_id)
        self.forget_dataset, self.retain_dataset = train_dataset, retain_dataset
        train_tokens, eval_tokens = _tokenised(args, processing_class, train_dataset, retain_dataset, eval_dataset)
        self.token_weights = _push_weights(args, train_tokens, model, processing_class)

        super().__init__(
            model=model,
            args=args,
            data_collator=UnlearningCollator(processing_class.pad_token_id),
            train_dataset=train_tokens,
            eval_dataset=eval_tokens,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        if self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if self.teacher_model is not None:
            self.teacher_model = self.accelerator.prepare_model(self.teacher_model, evaluation_mode=True)
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list),
                                                                   "eval": defaultdict(list)}
        self._last_good: dict[str, torch.Tensor] | None = None
        self._last_good_step = 0
        self.run_status = RunStatus.NOT_STARTED
        self.run_status_detail = ""
        self.add_callback(_RetainPairingCallback(train_tokens))
        self.forget_check = self._forget_check(args, train_dataset, retain_dataset, processing_class)
        self.outcome: Outcome | None = None
        self.robustness: list[dict[str, Any]] | None = None  # the end-of-run probes, when they ran
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "bind"):
                callback.bind(self)

    def _forget_check(self, args: LuneConfig, forget: Dataset, retain: Dataset | None,
                      tokenizer) -> ForgetRetainCallback | None:
        """The callback whose measurements decide when to stop and give the verdict.

        A `ForgetRetainCallback` with a forget target passed in `callbacks` is used as it is; otherwise one is
        built from the config (unless `forget_eval_steps=0`).
        """
        given = [cb for cb in self.callback_handler.callbacks if isinstance(cb, ForgetRetainCallback)]
        with_target = [cb for cb in given if cb.target is not None]
        if with_target:
            return with_target[0]
        if args.forget_eval_steps == 0:
            return None
        check = ForgetRetainCallback(
            forget,
            retain,
            tokenizer=tokenizer,
            eval_steps=args.forget_eval_steps,
            forget_target=args.forget_target,
            stop_when_forgotten=args.stop_when_forgotten,
            retain_floor=args.retain_floor if retain is not None else None,
            max_rows=args.forget_eval_max_rows,
            boost_stalled_lr=args.boost_stalled_lr,
            text_prefix_tokens=args.text_prefix_tokens,
            trainer=self,
        )
        self.add_callback(check)
        return check

    # ---------------------------------------------------------------------------------------------
    # Loss
    # ---------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = [f"{p}_{k}" for p in GROUPS for k in ("input_ids", "labels")]

    @staticmethod
    def _logits(model, inputs: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of one group, the lm_head run only where answer tokens are predicted."""
        return answer_logits(
            model, inputs[f"{prefix}_input_ids"], inputs[f"{prefix}_attention_mask"], inputs[f"{prefix}_labels"]
        )

    @contextlib.contextmanager
    def _reference(self, model):
        """Yields the module that computes reference logits: the adapter-off model, or `ref_model`."""
        with torch.no_grad():
            if self.ref_model is not None:
                yield self.ref_model
            else:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    yield model

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        args: LuneConfig = self.args
        mode = "train" if model.training else "eval"
        logged: dict[str, torch.Tensor] = {}

        def answer_stats(prefix: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, labels = self._logits(model, inputs, prefix)
            nll_sum, n_tok = obj.sequence_nll(logits, labels)
            logged[f"logps/{prefix}"] = (-nll_sum / n_tok.clamp(min=1)).mean().detach()
            return logits, labels, nll_sum, n_tok

        def reference_nll(prefix: str, token_weights: torch.Tensor | None = None) -> torch.Tensor:
            with self._reference(model) as ref:
                return obj.sequence_nll(*self._logits(ref, inputs, prefix), token_weights)[0]

        if f"{FORGET_PREFIX}_input_ids" in inputs or f"{REPLACEMENT_PREFIX}_input_ids" in inputs:
            loss = args.forget_weight * self._forget_loss(inputs, answer_stats, reference_nll, logged)
            retain_weight = args.retain_weight
        else:  # a validation set: the retain term alone
            loss, retain_weight = 0.0, 1.0

        if f"{RETAIN_PREFIX}_input_ids" in inputs:
            logits_ret, labels_ret, nll_ret, n_ret = answer_stats(RETAIN_PREFIX)
            if args.retain_loss == "kl":
                with self._reference(model) as ref:
                    ref_logits, _ = self._logits(ref, inputs, RETAIN_PREFIX)
                retain_loss = obj.kl_divergence(logits_ret, ref_logits, labels_ret)
            else:
                retain_loss = obj.nll(nll_ret, n_ret)
            loss = loss + retain_weight * retain_loss
            logged["loss/retain"] = retain_loss.detach()
            if f"{RETAIN_REFUSAL_PREFIX}_input_ids" in inputs:  # preserve_weight > 0
                refusal_nll = answer_stats(RETAIN_REFUSAL_PREFIX)[2]
                preserve_loss = obj.answer_preservation(nll_ret, refusal_nll, args.beta)
                loss = loss + args.preserve_weight * preserve_loss
                logged["loss/preserve"] = preserve_loss.detach()

        for key, value in logged.items():
            # One scalar per rank: `gather`, not `gather_for_metrics`, which would cut it to the last batch's remainder.
            # Kept as a tensor and read at logging time: no device-to-host sync per term and step.
            self._metrics[mode][key].append(self.accelerator.gather(value.reshape(1)).mean())

        if mode == "train":
            self._guard_finite(model, loss)
        return (loss, None) if return_outputs else loss

    def _forget_loss(self, inputs, answer_stats, reference_nll, logged) -> torch.Tensor:
        """The objective's forget term on a batch of forget rows: its registry entry's loss."""
        spec = self.args.spec
        batch = obj.ForgetBatch(answer_stats, reference_nll, FORGET_PREFIX, REPLACEMENT_PREFIX, self.token_weights,
                                self._teacher_logits(inputs) if self.teacher_model is not None else None)
        if spec.uses_answer:  # the answer's forward first, then the replacement's (a fixed order of dropout draws)
            batch.answer()
        if spec.uses_replacement:
            batch.replacement()
        forget_loss = spec.loss(batch, self.args)
        logged["loss/forget"] = forget_loss.detach()
        logged.update(batch.terms)
        return forget_loss

    def _teacher_logits(self, inputs):
        """A function giving one group's answer logits under the frozen teacher (`negative_loss='distill'`)."""
        def logits(prefix: str) -> torch.Tensor:
            with torch.no_grad():
                return self._logits(self.teacher_model, inputs, prefix)[0]
        return logits

    def _guard_finite(self, model, loss: torch.Tensor) -> None:
        """Keep a copy of the adapter weights that gave a finite loss; on NaN/inf restore it, save and stop.

        Under several processes the decision is taken together: one rank stopping alone would leave the
        others waiting in the gradient all-reduce.
        """
        value = loss.item()
        finite = math.isfinite(value)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(torch.tensor([float(finite)], device=loss.device))
            finite = bool(flags.min().item() > 0)
        if finite:
            unwrapped = self.accelerator.unwrap_model(model)
            if isinstance(unwrapped, PeftModel) and self.state.global_step >= self._last_good_step:
                self._last_good = trainable_state(unwrapped)
                self._last_good_step = self.state.global_step + 1
            return
        step = self.state.global_step
        what = str(value) if not math.isfinite(value) else "non-finite on another process"
        saved = ""
        if self._last_good is not None:
            load_trainable_state(self.accelerator.unwrap_model(model), self._last_good)
            self.run_status = RunStatus.FAILED
            self.run_status_detail = f"non-finite loss at step {step}"
            self.save_model(_internal_call=True)  # never pushed
            good_step = self._last_good_step - 1
            saved = f" The last good adapter (weights of step {good_step}) was saved to {self.args.output_dir}."
        bounded = "" if self.args.objective in ("npo", "simnpo", "lune", "idk_nll") else (
            ", or switch to a bounded objective such as 'npo'")
        raise NonFiniteLossError(
            f"The {self.args.objective!r} loss became {what} at step {step}.{saved} Lower the learning rate "
            f"(or the number of steps for gradient ascent){bounded}."
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The Trainer's evaluation; the loss terms are logged as `<metric_key_prefix>_loss/forget`, ..."""
        self._eval_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = getattr(self, "_eval_prefix", "eval")
        if "loss" not in logs and f"{prefix}_loss" not in logs:  # e.g. a callback's evaluation: keep the terms
            return super().log(logs, start_time)
        metrics = {k: torch.stack(v).mean().item() for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ---------------------------------------------------------------------------------------------
    # Training and saving
    # ---------------------------------------------------------------------------------------------

    def train(self, *args, **kwargs):
        """Train until the forget set is forgotten (or the budget runs out), then show and record the verdict.

        The returned `TrainOutput.metrics` carries the forget / retain numbers before and after
        (`forget_recalled_before`, ...), the steps used and the `verdict`.
        """
        self.run_status = RunStatus.RUNNING
        self.run_status_detail = ""
        self.outcome = self.robustness = None
        resume = kwargs.get("resume_from_checkpoint")
        if isinstance(resume, str) and resume.lower() in ("true", "false"):  # `--resume_from_checkpoint true`
            kwargs["resume_from_checkpoint"] = resume.lower() == "true" or None
        self._claim_output_dir_once(resuming=bool(kwargs.get("resume_from_checkpoint")))
        configured_max_steps = self.args.max_steps
        self.args.max_steps = self._budget_steps()
        try:
            output = super().train(*args, **kwargs)
        except BaseException as err:
            if self.run_status != RunStatus.FAILED:
                self.run_status = RunStatus.FAILED
                self.run_status_detail = f"{type(err).__name__}"
            raise
        finally:
            self.args.max_steps = configured_max_steps  # the caller's config is left as it was given
            if getattr(self, "_lock", None) is not None:
                self._lock.release()
                self._lock = None
        self.outcome = self.forget_check.outcome if self.forget_check is not None else None
        if self.outcome is None:
            self.run_status = RunStatus.COMPLETED
            return output
        self.run_status = RunStatus(self.outcome.verdict.value)
        self.run_status_detail = self.outcome.stop_reason
        output.metrics.update(self.outcome.train_metrics())
        if self.is_world_process_zero():
            print(f"\nUnlearning result ({self.args.objective}, {self.outcome.steps} steps)\n{self.outcome.table()}\n",
                  flush=True)
        self.robustness = self._robustness_probes()
        return output

    def _robustness_probes(self) -> list[dict[str, Any]] | None:
        """The configured cheap attacks (`robustness_probes`) on a run that forgot; None when none ran."""
        from .outcome import Verdict
        from .probes import as_prompt_completion, run_probes

        names = self.args.robustness_probe_names
        if not names or self.outcome is None or self.outcome.verdict != Verdict.FORGOTTEN:
            return None
        sharded = str(getattr(self.accelerator.distributed_type, "value", "NO")) in ("FSDP", "DEEPSPEED")
        if sharded:  # the probes copy and merge the whole model: not on sharded weights
            logger.warning("Robustness probes skipped under %s: run `lune-hf verify` on the saved adapter.",
                           self.accelerator.distributed_type)
            return None
        try:
            rows = as_prompt_completion(self.forget_dataset)
        except ValueError as err:
            logger.warning("Robustness probes skipped: %s", err)
            return None
        model = self.accelerator.unwrap_model(self.model)
        results = run_probes(model, self.processing_class, rows, names, max_rows=self.args.forget_eval_max_rows,
                             seed=self.args.seed, progress=not self.args.disable_tqdm)
        if self.is_world_process_zero():
            lines = [f"  {r.name:<11} forget recall {r.value if r.value is not None else float('nan'):.3f} "
                     f"(limit {r.threshold:g}): {'pass' if r.passed else 'FAIL' if r.passed is False else 'n/a'}"
                     + (f" ({r.details['worst_variant']})" if "worst_variant" in r.details else "")
                     for r in results]
            print("Robustness (measured by this run; `lune-hf verify` re-checks it):\n" + "\n".join(lines) + "\n",
                  flush=True)
        return [r.as_dict() for r in results]

    def _budget_steps(self) -> int:
        """`max_steps` for this run: the configured value, or `min_budget_steps` when the epochs give fewer steps
        and training stops on the outcome (the epochs are a budget, not a recipe)."""
        args: LuneConfig = self.args
        if (args.max_steps > 0 or not args.min_budget_steps or self.forget_check is None
                or not self.forget_check.stop_when_forgotten):
            return args.max_steps
        per_epoch = max(len(self.get_train_dataloader()) // args.gradient_accumulation_steps, 1)
        from_epochs = math.ceil(args.num_train_epochs * per_epoch)
        return args.min_budget_steps if from_epochs < args.min_budget_steps else args.max_steps

    def _claim_output_dir_once(self, resuming: bool) -> None:
        """`_claim_output_dir` on the main process; under several processes its verdict reaches every rank, so
        none is left waiting in a collective while the main process stops."""
        failure: list[tuple[type, str] | None] = [None]
        if self.is_world_process_zero():
            try:
                self._claim_output_dir(resuming)
            except (FileExistsError, RuntimeError) as err:
                failure[0] = (type(err), str(err))
        if self.accelerator.num_processes > 1:
            broadcast_object_list(failure, from_process=0)
        if failure[0] is not None:
            kind, message = failure[0]
            raise kind(message)

    def _claim_output_dir(self, resuming: bool) -> None:
        """Lock `output_dir` for this run, and refuse one that holds another run's results (unless told to
        overwrite them, or resuming this run from its checkpoint)."""
        folder = Path(self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if getattr(self, "_lock", None) is None:
            lock = FileLock(str(folder / LOCK_FILE))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise RuntimeError(f"{folder} is in use by another run (it holds the lock {LOCK_FILE}); wait for it to "
                                   "finish or choose another output_dir.") from None
            self._lock = lock  # held while this run trains
        if resuming or self.args.overwrite_output_dir or getattr(self, "_claimed", False):
            self._claimed = True
            return
        found = sorted(p.name for p in folder.iterdir()
                       if p.name in (REPORT_FILE, ADAPTER_WEIGHTS) or p.name.startswith("checkpoint-"))
        if found:
            self._lock.release()
            self._lock = None
            raise FileExistsError(
                f"{folder} holds the results of another run ({', '.join(found)}): choose another output_dir, or "
                "pass overwrite_output_dir=True (--overwrite_output_dir true) to replace them."
            )
        self._claimed = True

    def _run_report(self) -> dict[str, Any]:
        """The report of this run (`report.build_run_report` from this trainer's values)."""
        stop_reasons = [cb.stop_reason for cb in self.callback_handler.callbacks if getattr(cb, "stop_reason", None)]
        return build_run_report(
            args=self.args, model=self.accelerator.unwrap_model(self.model), log_history=self.state.log_history,
            global_step=self.state.global_step, budget_steps=self.state.max_steps, base_model_id=self.base_model_id,
            forget_rows=self.forget_dataset, retain_rows=self.retain_dataset, status=self.run_status,
            status_detail=self.run_status_detail, outcome=self.outcome, stop_reason=next(iter(stop_reasons), None),
            distributed_type=str(getattr(self.accelerator.distributed_type, "value", "NO")),
            robustness=self.robustness,
            forget_commitment=commit_rows(self.forget_dataset, load_or_create_key(self.args.output_dir)),
            teacher_model=self.teacher_model_id,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save adapter and tokenizer, then the model card and the unlearning report (written last: a report means a
        complete folder).

        The report lists the files this save wrote (`files`): `publish` uploads those and nothing older. The Hub
        token is never written (`training_args.bin` is saved without it)."""
        output_dir = output_dir or self.args.output_dir
        for cfg in getattr(self.accelerator.unwrap_model(self.model), "peft_config", {}).values():
            cfg.base_model_name_or_path = cfg.base_model_name_or_path or self.base_model_id
        folder = Path(output_dir)
        before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}
        token, self.args.hub_token = self.args.hub_token, None
        try:
            super().save_model(output_dir, _internal_call=True)  # pushed below, once the report is written
        finally:
            self.args.hub_token = token
        if self.is_world_process_zero():
            report = self._run_report()
            write_report_files(output_dir, report)
            self._write_card(folder, report)  # the unlearning card in place of peft's placeholder README.md
            written = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
                       and before.get(p.name) != p.stat().st_mtime_ns]
            report["files"] = sorted({*written, REPORT_FILE})
            write_json_atomic(folder / REPORT_FILE, report)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    # ---------------------------------------------------------------------------------------------
    # The Trainer's Hub path, routed through `lune_hf.hub.publish`
    # ---------------------------------------------------------------------------------------------

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Nothing is created before the run has a result: `publish` creates the repo with the first commit."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoints are not pushed (they hold optimizer state and pickled arguments); the result is, at the
        end, by `push_to_hub`."""

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the unlearning model card (the one `publish` uploads) as `README.md` in `output_dir`. Accepts and
        ignores the keyword arguments transformers and TRL pass (`dataset_name`, `tags`, ...)."""
        from .report import read_report

        folder = Path(self.args.output_dir)
        report = read_report(folder)
        if report is None:
            raise FileNotFoundError(f"{folder}: no {REPORT_FILE} yet; call save_model() first.")
        self._write_card(folder, report, license=kwargs.get("license"))

    def _write_card(self, folder: Path, report: dict[str, Any], license: str | None = None) -> None:
        from .card import render_card
        from .report import PLOT_FILE

        repo_id = self.args.hub_model_id or folder.absolute().name
        card = render_card(report, repo_id=repo_id, base_model=report.get("base_model"), license=license,
                           has_plot=(folder / PLOT_FILE).is_file())
        write_text_atomic(folder / "README.md", str(card))  # never a half-written card beside a report

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any):
        """Publish `output_dir` with `lune_hf.hub.publish` (same checks, same card, one commit). Accepts the keyword
        arguments transformers and TRL pass; `license`, `dataset` / `dataset_name`, `summary`, `base_model` and
        `allow_unverified` are used."""
        from huggingface_hub import HfApi

        from .hub import publish
        from .report import read_report

        if not self.is_world_process_zero():
            return None
        if read_report(self.args.output_dir) is None:
            self.save_model(_internal_call=True)
        token = token if token is not None else self.args.hub_token
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        if "/" not in repo_id:
            repo_id = f"{HfApi(token=token).whoami()['name']}/{repo_id}"
        datasets = kwargs.get("dataset") or kwargs.get("dataset_name")
        return publish(self.args.output_dir, repo_id, token=token,
                       private=self.args.hub_private_repo if private is None else private,
                       revision=revision or self.args.hub_revision, commit_message=commit_message,
                       base_model=kwargs.get("base_model"), summary=kwargs.get("summary"),
                       license=kwargs.get("license"), datasets=[datasets] if isinstance(datasets, str) else datasets,
                       allow_unverified=kwargs.get("allow_unverified", False))


class _RetainPairingCallback(TrainerCallback):
    """Tells the training set which epoch starts, so each epoch pairs the forget rows with new retain rows."""

    def __init__(self, dataset: UnlearningDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


def _to_lune_config(args: TrainingArguments) -> LuneConfig:
    """A `LuneConfig` with every value of a plain `TrainingArguments` (or a TRL config) that it knows."""
    known = {f.name for f in dataclasses.fields(LuneConfig) if f.init}
    values = {k: v for k, v in args.to_dict().items() if k in known}
    values["hub_token"] = args.hub_token  # to_dict() masks it
    return LuneConfig(**values)


# Fields of TRL configs that LuneTrainer reads itself (the text column) and so never reports as ignored.
_HONOURED_FIELDS = {"dataset_text_field"}


def _ignored_fields(args: TrainingArguments) -> list[str]:
    """`name=value` for each field of a foreign config (e.g. TRL's `SFTConfig`) that `LuneConfig` lacks and that
    the user set to something other than its default."""
    known = {f.name for f in dataclasses.fields(LuneConfig)} | _HONOURED_FIELDS
    out = []
    for f in dataclasses.fields(args):
        if f.name in known or not f.init:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(args, f.name, default)
        if value != default:
            out.append(f"{f.name}={value!r}")
    return out


def _as_text_column(rows, field: str):
    """Rows whose text column has another name (`SFTConfig.dataset_text_field`) get it as `text`."""
    if isinstance(rows, dict):
        return {k: _as_text_column(v, field) for k, v in rows.items()}
    if rows is None or field == "text" or field not in rows.column_names or "text" in rows.column_names:
        return rows
    return rows.rename_column(field, "text")


def _formatted(rows, formatting_func):
    """Rows turned into raw `text` by an `SFTTrainer`-style `formatting_func`."""
    if isinstance(rows, dict):
        return {k: _formatted(v, formatting_func) for k, v in rows.items()}
    if rows is None:
        return None
    return rows.map(lambda row: {"text": formatting_func(row)}, remove_columns=rows.column_names)


def _warn_prompt_less_rows(rows: Dataset) -> None:
    """Say when tokenised forget rows carry no prompt (run_clm style) and so are read as raw text."""
    if row_format(rows.column_names) != "tokenised" or "labels" not in rows.column_names:
        return
    n = sum(1 for labels in rows["labels"] if labels and labels[0] != obj.IGNORE_INDEX)
    if n:
        logger.warning("%d of %d tokenised forget rows have no prompt (their first token is labelled, as run_clm "
                       "labels a text): they are treated as raw text, the first `text_prefix_tokens` tokens as the "
                       "prompt and the rest as the continuation to forget.", n, len(rows))


def _drop_in_arguments(name: str, args, datasets: tuple, formatting_func, *, data_collator, compute_loss_func,
                       quantization_config, model_given: bool, **kwargs) -> tuple[LuneConfig, tuple]:
    """What a Trainer / SFTTrainer script passes, made into LuneTrainer's inputs: a `LuneConfig` (from
    `TrainingArguments` / `SFTConfig`, or a default one), the datasets in a text or formatted form, and one
    warning that names every argument LuneTrainer does not use."""
    ignored: list[str] = []
    if args is None:
        args = LuneConfig(output_dir=f"{name.rstrip('/').split('/')[-1]}-lune")
    elif not isinstance(args, LuneConfig):
        given = args
        args = _to_lune_config(given)
        ignored += _ignored_fields(given)
        text_field = getattr(given, "dataset_text_field", "text")
        datasets = tuple(_as_text_column(d, text_field) for d in datasets)
    if formatting_func is not None:
        datasets = tuple(_formatted(d, formatting_func) for d in datasets)
    if data_collator is not None:
        ignored.append(f"data_collator ({type(data_collator).__name__}: LuneTrainer pads forget, replacement and "
                       "retain rows in their own groups; tokenised rows without labels are labelled as "
                       "DataCollatorForLanguageModeling does)")
    if compute_loss_func is not None:
        ignored.append("compute_loss_func (the loss is the unlearning objective)")
    for key in ("compute_metrics", "preprocess_logits_for_metrics"):
        if kwargs.get(key) is not None:
            ignored.append(f"{key} (evaluation reports losses; forget / retain metrics come from the checks "
                           "and ForgetRetainCallback)")
    if quantization_config is not None:
        if model_given:
            ignored.append("quantization_config (the model is already loaded)")
        else:
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), "quantization_config": quantization_config}
    if ignored:
        logger.warning("LuneTrainer does not use: %s.", "; ".join(ignored))
    return args, datasets


def _check_data(args: LuneConfig, train_dataset, retain_dataset, eval_dataset) -> None:
    """Every set's columns and types, and the objective's needs: nothing is loaded or trained on bad input."""
    if train_dataset is None:
        raise ValueError("LuneTrainer needs a forget set: pass it as `train_dataset`.")
    validate_columns(train_dataset, "forget")
    if retain_dataset is not None:
        validate_columns(retain_dataset, "retain")
    for name, rows in (eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}).items():
        if rows is not None:
            validate_columns(rows, f"eval_dataset[{name!r}]" if name != "eval" else "eval_dataset")
    if args.spec.needs_retain and retain_dataset is None:
        raise ValueError(f"The objective {args.objective!r} needs a retain set: pass `retain_dataset`.")
    if args.negative_tokens == "specific" and (retain_dataset is None or args.retain_loss == "none"):
        raise ValueError("negative_tokens='specific' weighs each forget-answer token against how often the retain "
                         "answers use it, but no retain rows are trained on: pass `retain_dataset` (with "
                         "retain_loss 'nll' or 'kl'), or negative_tokens='all'.")
    if args.preserve_weight > 0 and retain_dataset is None:
        raise ValueError(f"preserve_weight={args.preserve_weight:g} keeps the retain prompts answered, but no retain "
                         "set was given: pass `retain_dataset` (prompt/completion rows), or preserve_weight=0.")


def _model_and_tokenizer(model, processing_class, args: LuneConfig, peft_config, ref_model):
    """The model (loaded if an id, wrapped with the seeded adapter unless already a `PeftModel`) and its tokenizer
    (with a pad token)."""
    model_id = model if isinstance(model, str) else None
    if model_id is not None:
        model = AutoModelForCausalLM.from_pretrained(model_id, **(args.model_init_kwargs or {}))
    if processing_class is None:
        source = model_id or getattr(model.config, "_name_or_path", None)
        if not source:
            raise ValueError("The model was built from a config: pass its tokenizer as `processing_class`.")
        processing_class = AutoTokenizer.from_pretrained(source)
    ensure_pad_token(processing_class)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = processing_class.pad_token_id

    if not isinstance(model, PeftModel):
        model = attach_adapter(model, args, peft_config)
    if getattr(args, CHECKPOINTING) and getattr(args, f"{CHECKPOINTING}_kwargs") is None:
        setattr(args, f"{CHECKPOINTING}_kwargs", {"use_reentrant": False})
    if (args.spec.needs_reference or args.retain_loss == "kl") and ref_model is None \
            and not isinstance(model, PeftModel):
        raise ValueError(f"{args.objective!r} needs a reference: train with LoRA or pass `ref_model`.")
    return model, processing_class


def _teacher(args: LuneConfig, teacher_model: PreTrainedModel | str | None,
             model) -> tuple[PreTrainedModel | None, str | None]:
    """The frozen teacher of `negative_loss='distill'` (loaded in the model's dtype if given as an id) and its name
    for the report, or (None, None)."""
    teacher = teacher_model if teacher_model is not None else args.teacher_model
    if teacher is None:
        if args.distills:
            raise ValueError("negative_loss='distill' pulls the original answers toward a teacher that never learnt "
                             "them, but none was given: set `teacher_model` (a path or Hub id, e.g. the model "
                             "before the fine-tune that taught it the forget set) or pass "
                             "`LuneTrainer(teacher_model=...)`.")
        return None, None
    if not args.distills:
        raise ValueError("A teacher model is only used by objective='lune' with negative_weight > 0 and "
                         f"negative_loss='distill' (got objective={args.objective!r}, negative_weight="
                         f"{args.negative_weight:g}, negative_loss={args.negative_loss!r}).")
    if isinstance(teacher, (str, Path)):
        name = str(teacher)
        teacher = AutoModelForCausalLM.from_pretrained(name, dtype=model.dtype)
    else:
        name = getattr(teacher.config, "_name_or_path", None) or type(teacher).__name__
    vocab = model.get_output_embeddings().weight.shape[0]
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if vocab != teacher_vocab:
        raise ValueError(f"The teacher model ({name}) predicts {teacher_vocab} tokens, the trained model "
                         f"{vocab}: distillation compares their distributions token by token, so the teacher needs "
                         "the same tokenizer (e.g. the same base model before fine-tuning).")
    teacher.eval().requires_grad_(False)
    return teacher, name


def _tokenised(args: LuneConfig, tokenizer, train_dataset, retain_dataset, eval_dataset):
    """The forget set paired with retain rows, and the evaluation set(s), tokenised for the collator."""
    spec = args.spec
    refusals = args.refusals or default_refusals()

    def prepare(rows: Dataset, retain: Dataset | None, name: str = "forget") -> UnlearningDataset:
        return build_unlearning_dataset(
            rows, tokenizer, max_length=args.max_length, uses_answer=spec.uses_answer,
            uses_replacement=spec.uses_replacement, refusals=refusals,
            replacement_column=None if spec.refusal_only else args.replacement_column,
            retain=retain if args.retain_loss != "none" else None, seed=args.seed,
            text_prefix_tokens=args.text_prefix_tokens, forget_name=name,
            retain_refusals=refusals if args.preserve_weight > 0 else None,
        )

    def validation(rows: Dataset, name: str) -> UnlearningDataset:
        return UnlearningDataset(tokenize_retain(rows, tokenizer, args.max_length, name), None)

    train_tokens = prepare(train_dataset, retain_dataset)
    _warn_prompt_less_rows(train_dataset)
    if isinstance(eval_dataset, dict):
        eval_tokens = {k: prepare(v, None, "eval_dataset['forget']") if k == "forget"
                       else validation(v, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
    else:
        eval_tokens = validation(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    return train_tokens, eval_tokens


def _push_weights(args: LuneConfig, tokens: UnlearningDataset, model, tokenizer) -> torch.Tensor | None:
    """Per-vocabulary-id weights of lune's push on the original answer (`negative_tokens='specific'`), or None."""
    if args.negative_tokens != "specific":
        return None

    def answers(rows: list[dict[str, list[int]]], prefix: str) -> list[list[int]]:
        return [[t for t in row[f"{prefix}_labels"] if t != obj.IGNORE_INDEX] for row in rows]

    forget = answers(tokens.forget, FORGET_PREFIX)
    weights = obj.specific_token_weights(forget, answers(tokens.retain, RETAIN_PREFIX),
                                         model.get_input_embeddings().num_embeddings)
    pushed = torch.tensor([t for seq in forget for t in seq])
    top = sorted(set(pushed.tolist()), key=lambda t: -weights[t].item())[:12]
    logger.info("negative_tokens='specific': the push carries %.0f%% of the weight `all` would give the forget "
                "answers' tokens; fully pushed (weight 1) e.g. %s", 100 * weights[pushed].mean().item(),
                ", ".join(repr(tokenizer.decode([t])) for t in top if weights[t] >= 1.0) or "none")
    return weights


def _base_model_id(model, model_id: str | None) -> str | None:
    """The id or path the backbone came from (a local folder made absolute), or None for a model built from a
    config."""
    name = model_id
    if not name and isinstance(model, PeftModel):
        name = next(iter(model.peft_config.values())).base_model_name_or_path
        model = model.get_base_model()
    name = name or getattr(model.config, "_name_or_path", None) or None
    if name and Path(name).is_dir():  # a local folder: absolute, so the adapter loads from anywhere
        return str(Path(name).resolve())
    return name
