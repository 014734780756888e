"""`LuneConfig`: the unlearning knobs on top of `transformers.TrainingArguments`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from .objectives import DEFAULT_BETA, NEGATIVE_LOSSES, NEGATIVE_TOKENS, OBJECTIVES, RETAIN_LOSSES
from .outcome import ForgetTarget

# transformers 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name stays an alias).
CHECKPOINTING = next((f.name for f in fields(TrainingArguments) if f.name == "activation_checkpointing"),
                     "gradient_checkpointing")


# The attacks of `lune_hf.probes` (named here so the config can check `robustness_probes`).
PROBES = ("paraphrase", "relearn", "quantize", "mia")

@dataclass
class LuneConfig(TrainingArguments):
    r"""
    Configuration for [`LuneTrainer`]: every field of `transformers.TrainingArguments` plus the unlearning ones.

    Defaults that differ from `TrainingArguments`: `learning_rate=1e-3`, `num_train_epochs=20` (a budget: training
    stops once the forget set is forgotten, and runs at least `min_budget_steps` steps when it is not yet),
    `lr_scheduler_type="cosine"`, `warmup_steps=0.05` (5% of the steps), `per_device_train_batch_size=4`,
    `logging_steps=5`, `save_strategy="no"`, `remove_unused_columns=False` (the collator needs every column),
    activation checkpointing on (without it LoRA's activations outgrow full fine-tuning's memory at 7B:
    `benchmarks/results/memory_at_scale.md`). The LUNE paper's LoRA settings (rank 16, alpha 16, dropout 0.05)
    are kept; its 2e-4 over 5 epochs is documented in `benchmarks/results/defaults.md` as too slow to forget on
    its own.
    """

    # ---- objective -----------------------------------------------------------------------------
    objective: str = field(
        default="lune",
        metadata={
            "help": "Unlearning objective: " + ", ".join(OBJECTIVES) + ". `lune` (default) trains on negative / "
            "replacement answers (paper Eq. 4).",
        },
    )
    beta: float | None = field(
        default=None,
        metadata={"help": "Inverse temperature of npo, simnpo, idk_dpo, lune's NPO / DPO term (`negative_weight`) "
                  "and the preservation term. Default: the objective's own, 0.1, or 2.5 for simnpo (its paper's "
                  "TOFU value: at 0.1 its per-token term barely saturates and acts like gradient ascent)."},
    )
    delta: float = field(default=0.0, metadata={"help": "Margin subtracted from the per-token NLL in simnpo."})
    negative_weight: float = field(
        default=0.0,
        metadata={"help": "lune only: weight of a term on the original answer (its likelihood pushed below the "
                  "adapter-off model's, bounded; see `negative_loss`), added to the replacement answer's NLL. 0 "
                  "is the paper's Eq. 4: the model learns to say the replacement, and the true answer's likelihood "
                  "may stay where it was; > 0 also removes the answer (TOFU's forget quality measures that)."},
    )
    negative_loss: str = field(
        default="npo",
        metadata={"help": "lune with `negative_weight` > 0: how the original answer is pushed down. `npo` (default): "
                  "below its adapter-off likelihood, bounded. `dpo`: below the replacement answer, relative to the "
                  "adapter-off model (the DPO loss, replacement chosen, original rejected): where the two answers "
                  "share words (a counterfactual replacement such as \"Her father was a doctor\" against \"... a "
                  "lawyer\") those cancel and the push falls on the words that differ, the facts. `distill`: toward "
                  "a teacher that never learnt the forget set (`teacher_model`, e.g. the model before the fine-tune "
                  "that taught it the facts): KL(teacher || theta) at every token of the original answer, so the "
                  "answer becomes as likely, token by token, as to a model that never saw it (a target, not a push "
                  "without floor: rows already forgotten are not pushed further)."},
    )
    teacher_model: str | None = field(
        default=None,
        metadata={"help": "`negative_loss='distill'`: path or Hub id of the teacher, a causal LM with the trained "
                  "model's vocabulary that never learnt the forget set (loaded frozen, in the model's dtype, beside "
                  "it: one more model in memory). `LuneTrainer(teacher_model=...)` also takes a loaded model."},
    )
    negative_tokens: str = field(
        default="all",
        metadata={"help": "lune with `negative_weight` > 0 and `negative_loss='npo'`: which tokens of the original "
                  "answer the push lowers. `all` (default): every token alike. `specific`: each token weighted by how "
                  "specific it is to the forget answers, max(0, 1 - p_retain / p_forget) from the token counts of "
                  "the forget and retain answers (needs a retain set): the names, dates and titles that carry the "
                  "facts are pushed down, the wording the forget answers share with the retain answers (and with "
                  "wrong answers phrased alike) is not. Experimental: on TOFU forget05 it forgot less than `all` "
                  "and cost more utility on questions no retain row covers (benchmarks/results/tofu_cpu_notes.md)."},
    )
    forget_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the whole forget term in the total loss: for lune it multiplies the replacement "
                  "answer's NLL and `negative_weight` times the term on the original answer alike (to weaken the "
                  "replacement alone, lower `forget_weight` and raise `negative_weight` by the same factor)."},
    )
    preserve_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an answer-preservation term on the retain rows (needs a retain set with prompts): "
                  "on each retain prompt the true answer is preferred to a refusal sentence, "
                  "-(1/beta) log sigmoid(beta * (l(refusal | x) - l(y | x))). It keeps a refusal or replacement "
                  "objective from refusing the questions it should still answer; 0 (default) leaves it out."},
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight of the retain term (used only when a retain set is given)."}
    )
    retain_loss: str = field(
        default="nll",
        metadata={
            "help": "Retain term when a retain set is given: `nll` (keep its answers likely), `kl` (stay close to "
            "the model before unlearning, KL(ref || theta) on the retain answers) or `none`.",
        },
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Maximum tokens of prompt + answer. Answers are cut to fit; a prompt that leaves no room "
                  "for its answer is an error."},
    )
    # ---- negative targets ------------------------------------------------------------------------
    replacement_column: str = field(
        default="replacement",
        metadata={"help": "Column of the forget set holding the answer to give instead (a refusal or a "
                  "counterfactual). Rows without it get a refusal sentence."},
    )
    refusals: list[str] | None = field(
        default=None,
        metadata={"help": "Refusal sentences used as negative targets for forget rows without a replacement. "
                  "Default: the sentences shipped in `lune_hf/resources/refusals.txt`."},
    )
    text_prefix_tokens: int = field(
        default=32,
        metadata={"help": "Raw-text forget rows (`text`, or tokenised rows without a prompt): the first N tokens (at "
                  "most half the text) are the prompt and the rest the continuation to forget, as in MUSE's "
                  "verbatim setup. The checks measure how much of the continuation the model still reproduces."},
    )
    # ---- the outcome: checks during training, stop once forgotten, verdict ------------------------
    stop_when_forgotten: bool = field(
        default=True,
        metadata={"help": "Measure the forget set (and the retain set) before the first step, every so often and at "
                  "the end, and stop as soon as it counts as forgotten (`forget_target`). `num_train_epochs` / "
                  "`max_steps` are then a budget. False: train the whole budget; the checks still give a verdict."},
    )
    forget_target: str = field(
        default="recalled<=0.1",
        metadata={"help": "When the forget set counts as forgotten: `<metric><=<value>` on the forget set. The "
                  "default: at most 10%% of the forget answers are still given (`recalled`: greedy answer with "
                  "ROUGE-L recall >= 0.5 against the original). Other metrics: exact_match, contains, rouge_l, "
                  "probability."},
    )
    retain_floor: float = field(
        default=0.9,
        metadata={"help": "With a retain set: the lowest retain value (same metric as `forget_target`) allowed, as a "
                  "fraction of its value before training. Below it training stops and the best adapter that held "
                  "the floor is restored."},
    )
    forget_eval_steps: int | None = field(
        default=None,
        metadata={"help": "Check forget / retain every N optimizer steps. Default (None): spaced automatically so "
                  "each check costs at most 10%% of the training time since the previous one. 0: no checks (no "
                  "verdict, no stop on the outcome; publishing then needs `allow_unverified`)."},
    )
    boost_stalled_lr: bool = field(
        default=False,
        metadata={"help": "When a check finds the forget set stalled (the `forget_target` metric still at its value "
                  "before training and the forget answers' probability lower, but not halved, since the previous "
                  "check), multiply the learning rate by 4 (at most 16 times the configured one). Off by default: "
                  "pretrained models forget at the default rate, and a model whose answers move late (small models "
                  "trained from scratch at a high rate) is pushed into collapse by it "
                  "(benchmarks/results/defaults.md)."},
    )
    min_budget_steps: int = field(
        default=1000,
        metadata={"help": "With `stop_when_forgotten` and `max_steps` unset, the budget is at least this many "
                  "optimizer steps even when `num_train_epochs` passes over a small forget set are fewer: a "
                  "16-row forget set gives 80 steps in 20 epochs, and a model trained from scratch needed ~500 at "
                  "the default rate. Training still stops at the first check that finds the set forgotten. 0: the "
                  "epochs alone set the budget."},
    )
    forget_eval_max_rows: int = field(
        default=32,
        metadata={"help": "Rows of each set (forget, retain) used by the checks, evenly spaced: keeps them cheap on "
                  "big sets. Evaluate everything afterwards with `lune-hf eval`."},
    )
    robustness_probes: str = field(
        default="paraphrase,quantize",
        metadata={"help": "Cheap attacks run at the end of a run whose checks found the forget set forgotten "
                  "(comma-separated; `none` to skip): `paraphrase` (the prompts rewritten: a prefix, a system "
                  "prompt, another template, a `paraphrased_prompt` column) and `quantize` (the merged weights at 8 "
                  "and 4 bits). Each measures forget recall on at most `forget_eval_max_rows` rows, beside the base "
                  "model's; the results go into the report and the card's Robustness section. `relearn` and `mia` "
                  "are allowed too (slower; `lune-hf verify` runs all four). Skipped on FSDP / DeepSpeed-sharded "
                  "models."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results of an earlier run (adapter, report, checkpoints) in `output_dir`. "
                  "Off: a run refuses a folder that holds them, so nothing finished is lost and checkpoints of two "
                  "runs never mix (resuming with `resume_from_checkpoint` continues the same run and is allowed)."},
    )
    # ---- LoRA (used when the model is not already a PeftModel and no `peft_config` is passed) ----
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (paper: 16)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 16)."})
    lora_dropout: float = field(
        default=0.05,
        metadata={
            "help": "LoRA dropout (paper: 0.05). Each adapted projection then keeps a dropped-out copy of its input "
            "for the backward: 0.0 saves about 40%% of the activation memory and a few percent of the step time "
            "(benchmarks/results/profile.md)."
        },
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get adapters. Default: every attention and MLP projection (`all-linear`)."},
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is an id."},
    )
    # ---- TrainingArguments defaults that suit unlearning ----------------------------------------
    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Initial AdamW learning rate. The paper's 2e-4 left SmolLM2-135M's memorised facts in place "
                  "within 5 epochs; 1e-3 with stopping on the outcome forgets them (benchmarks/results/defaults.md)."},
    )
    num_train_epochs: float = field(
        default=20.0,
        metadata={"help": "Budget: at most this many passes over the forget set (or `min_budget_steps` steps, "
                  "whichever is more). With `stop_when_forgotten` training stops as soon as the forget set is "
                  "forgotten."},
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warm-up: steps, or a fraction of the total below 1 (paper: 5%%)."}
    )
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Forget rows per device and step."})
    logging_steps: float = field(default=5, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (`no`, `steps`, `epoch`)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the forget, replacement and retain columns."}
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Activation checkpointing (`activation_checkpointing` in transformers >= 5.24, either name "
                  "works). Unset: on. It recomputes each decoder layer in the backward instead of keeping its "
                  "activations: a 7B LoRA step at batch 8 x 512 needs 17 GiB instead of 115 GiB, for about 40%% "
                  "more step time on CPU (benchmarks/results/memory_at_scale.md, checkpointing.md). Pass False to "
                  "trade memory for speed.",
                  "nargs": "?", "const": True},
    )

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {self.objective!r}. Valid objectives: {', '.join(OBJECTIVES)}."
            )
        if self.beta is None:
            self.beta = OBJECTIVES[self.objective].recommended.get("beta", DEFAULT_BETA)
        if self.retain_loss is None:
            self.retain_loss = "none"
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"Unknown retain_loss {self.retain_loss!r}. Valid: {', '.join(RETAIN_LOSSES)}.")
        for name in ("beta", "delta", "forget_weight", "retain_weight", "negative_weight", "preserve_weight",
                     "learning_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}.")
        for name in ("forget_weight", "retain_weight", "negative_weight", "preserve_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (a negative weight turns the term's direction around), got "
                                 f"{getattr(self, name)}.")
        if self.preserve_weight > 0 and self.retain_loss == "none":
            raise ValueError("preserve_weight > 0 works on the retain rows, but retain_loss='none' drops them: use "
                             "retain_loss='nll' or 'kl', or preserve_weight=0.")
        if self.negative_loss not in NEGATIVE_LOSSES:
            raise ValueError(f"Unknown negative_loss {self.negative_loss!r}. Valid: {', '.join(NEGATIVE_LOSSES)}.")
        if self.negative_tokens not in NEGATIVE_TOKENS:
            raise ValueError(f"Unknown negative_tokens {self.negative_tokens!r}. Valid: {', '.join(NEGATIVE_TOKENS)}.")
        if self.negative_tokens != "all" and (self.objective != "lune" or self.negative_weight == 0
                                              or self.negative_loss != "npo"):
            raise ValueError(f"negative_tokens={self.negative_tokens!r} weights the tokens of lune's NPO term: set "
                             "objective='lune', negative_weight > 0 and negative_loss='npo' (the DPO term already "
                             "cancels the words two answers share), or leave negative_tokens='all'.")
        if self.teacher_model is not None and self.negative_loss != "distill":
            raise ValueError(f"teacher_model={self.teacher_model!r} is the target of negative_loss='distill' (got "
                             f"{self.negative_loss!r}): set negative_loss='distill' or leave teacher_model unset.")
        if self.negative_weight > 0 and self.objective != "lune":
            raise ValueError(f"negative_weight belongs to objective 'lune' (got {self.objective!r}); for an NPO term "
                             f"alone use objective='npo'.")
        if self.max_steps == 0:
            raise ValueError("max_steps=0 would train nothing: give a positive number of steps, or -1 to let "
                             "num_train_epochs set the budget.")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")
        ForgetTarget.parse(self.forget_target)  # a clear error now rather than after the model loaded
        if not (isinstance(self.retain_floor, (int, float)) and 0.0 <= self.retain_floor <= 1.0):
            raise ValueError(f"retain_floor is a fraction of the initial retain value in [0, 1], got "
                             f"{self.retain_floor}.")
        if self.forget_eval_steps is not None and self.forget_eval_steps < 0:
            raise ValueError(f"forget_eval_steps must be >= 0 (0: no checks; None: automatic), got "
                             f"{self.forget_eval_steps}.")
        if self.text_prefix_tokens < 1:
            raise ValueError(f"text_prefix_tokens must be at least 1, got {self.text_prefix_tokens}.")
        if self.min_budget_steps < 0:
            raise ValueError(f"min_budget_steps must be >= 0, got {self.min_budget_steps}.")
        unknown = [p for p in self.robustness_probe_names if p not in PROBES]
        if unknown:
            raise ValueError(f"robustness_probes: unknown {unknown}; choose from {list(PROBES)} or `none`.")
        if self.forget_eval_max_rows < 1:
            raise ValueError(f"forget_eval_max_rows must be at least 1, got {self.forget_eval_max_rows}.")
        if self.refusals is not None and not [r for r in self.refusals if r.strip()]:
            raise ValueError("refusals is an empty list: give at least one sentence or leave it unset.")
        if getattr(self, CHECKPOINTING, None) is None and self.gradient_checkpointing is None:
            setattr(self, CHECKPOINTING, True)  # on unless the caller said otherwise, under either name
        super().__post_init__()

    @property
    def robustness_probe_names(self) -> tuple[str, ...]:
        """`robustness_probes` as a tuple of names (empty for `none` or an empty string)."""
        names = [n.strip() for n in str(self.robustness_probes or "").split(",") if n.strip()]
        return () if names in ([], ["none"]) else tuple(names)

    @property
    def distills(self) -> bool:
        """Whether training pulls the original answers toward a teacher (lune, `negative_weight` > 0,
        `negative_loss='distill'`): the one case that loads `teacher_model`."""
        return self.objective == "lune" and self.negative_weight > 0 and self.negative_loss == "distill"

    @property
    def spec(self):
        """The [`ObjectiveSpec`] of the chosen objective (LUNE with `negative_weight` also uses the true answer)."""
        spec = OBJECTIVES[self.objective]
        if self.objective == "lune" and self.negative_weight > 0:
            needs_reference = not self.distills
            if self.distills:
                term, summary = "KL(teacher || theta)(y | x)", ("LUNE + distillation: NLL on the replacement answers, "
                                                                "and the original answers' token distributions "
                                                                "pulled toward a teacher that never learnt them")
            elif self.negative_loss == "dpo":
                term, summary = "DPO(y- > y | x)", ("LUNE + DPO: NLL on the replacement answers, and the original "
                                                    "answers pushed below them relative to the adapter-off model")
            else:
                term, summary = "NPO(y | x)", ("LUNE + NPO: NLL on the replacement answers, and the original answers "
                                               "pushed below the adapter-off model's likelihood (bounded)")
                if self.negative_tokens == "specific":
                    term, summary = "NPO_w(y | x)", f"{summary}, each token weighted by how specific it is to them"
            spec = dataclasses.replace(spec, uses_answer=True, needs_reference=needs_reference,
                                       formula=f"{spec.formula} + {self.negative_weight:g} * {term}",
                                       summary=f"{summary}; `negative_weight`, `negative_loss`, "
                                               + ("`teacher_model`." if self.distills
                                                  else "`negative_tokens`."))
        return spec
