"""The unlearning report saved next to every adapter: what was run, on what, and how it went.

It holds hyper-parameters, fingerprints of the data (never its text) and the forget/retain metrics that
an evaluation callback logged. The model card and the publisher read it; it is written last and
atomically, so a folder whose report says `completed` holds a complete adapter.
"""

from __future__ import annotations

import json
import os
import secrets
from enum import Enum
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "adapter_model.safetensors"
REPORT_FILE = "unlearning_report.json"
EVAL_PREFIXES = ("forget/", "retain/")


class RunStatus(str, Enum):
    """State of a run. A finished run with checks carries its verdict; `completed` means it ran without checks."""

    NOT_STARTED = "not_started"
    RUNNING = "running"
    COMPLETED = "completed"
    FORGOTTEN = "forgotten"
    PARTLY_FORGOTTEN = "partly_forgotten"
    NOT_FORGOTTEN = "not_forgotten"
    FAILED = "failed"


FINISHED = (RunStatus.COMPLETED, RunStatus.FORGOTTEN, RunStatus.PARTLY_FORGOTTEN, RunStatus.NOT_FORGOTTEN)


def is_verified(report: dict[str, Any]) -> bool:
    """True when the run's own checks found the forget set forgotten with retain above its floor."""
    outcome = report.get("outcome") or {}
    return report.get("status") == RunStatus.FORGOTTEN.value and outcome.get("retain_ok", False) is True


def unverified_reason(report: dict[str, Any]) -> str:
    """Why a finished run does not count as verified, in a few words."""
    outcome = report.get("outcome")
    if not outcome:
        return "the run made no forget/retain checks (forget_eval_steps=0), so nothing shows it forgot"
    if outcome.get("retain_ok") is False:
        return f"retain fell below its floor ({outcome.get('retain_floor')})"
    return f"its verdict is '{outcome['verdict'].replace('_', ' ')}' (target {outcome.get('target')})"


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file in the same folder, then rename it over `path`: a reader sees the old file or
    the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # opened as a plain file: the umask's mode
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_report(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def evaluation_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `forget/*` and `retain/*` entries of a Trainer's log history, with their step."""
    rows = []
    for entry in log_history:
        metrics = {k: v for k, v in entry.items() if k.startswith(EVAL_PREFIXES)}
        if metrics:
            rows.append({"step": entry.get("step", 0), **metrics})
    return rows


def before_after(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """First and last value of each evaluation metric."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for row in history:
        for key, value in row.items():
            if key == "step":
                continue
            first.setdefault(key, value)
            last[key] = value
    return {"before": first, "after": last}


def _lora_settings(model) -> dict[str, Any]:
    configs = getattr(model, "peft_config", None) or {}
    if not configs:
        return {}
    cfg = next(iter(configs.values()))
    targets = cfg.target_modules
    return {
        "peft_type": str(getattr(cfg, "peft_type", "")).split(".")[-1],
        "r": getattr(cfg, "r", None),
        "lora_alpha": getattr(cfg, "lora_alpha", None),
        "lora_dropout": getattr(cfg, "lora_dropout", None),
        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
    }


BASE_CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size")


def base_config_summary(model) -> dict[str, Any]:
    """The backbone's architecture and sizes, to check later that an adapter meets the right base."""
    config = getattr(model, "config", None)
    return {key: getattr(config, key, None) for key in BASE_CONFIG_KEYS} if config is not None else {}


def build_run_report(*, args, model, log_history: list[dict[str, Any]], global_step: int, budget_steps: int,
                     base_model_id: str | None, forget_rows, retain_rows=None, status: RunStatus = RunStatus.COMPLETED,
                     status_detail: str = "", outcome=None, stop_reason: str | None = None,
                     distributed_type: str = "NO", robustness: list[dict[str, Any]] | None = None,
                     forget_commitment: dict[str, Any] | None = None,
                     teacher_model: str | None = None) -> dict[str, Any]:
    """Everything the model card needs about a `LuneTrainer` run, from explicit values.

    Args:
        args: the run's `LuneConfig`.
        model: the trained model, unwrapped (a `PeftModel` for adapter runs).
        log_history / global_step / budget_steps: the Trainer state's log, steps taken and step budget.
        base_model_id: where the backbone came from (Hub id or absolute folder).
        teacher_model: the teacher of `negative_loss='distill'` (Hub id, folder or class name), if any.
        forget_rows / retain_rows: the datasets trained on (their row counts and fingerprints are recorded).
        status / status_detail: completed or failed, and why.
        outcome: the trainer's `Outcome` (before/after checks, verdict), if it measured one.
        stop_reason: why training stopped early, when a callback stopped it.
        distributed_type: accelerate's distributed type (NO, MULTI_GPU, FSDP, DEEPSPEED, ...).
        robustness: the end-of-run probes (`lune_hf.probes.ProbeResult.as_dict()` each), if any ran.
        forget_commitment: salted hashes of the forget rows (`lune_hf.commitment.commit_rows`).
    """
    from ._version import __version__
    from .data import fingerprint

    spec = args.spec
    history = evaluation_history(log_history)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    # The outcome's "after" is what the saved adapter measured (the best check, when one was restored).
    evaluation = {"history": history, **before_after(history)}
    if outcome is not None:
        evaluation |= {"before": outcome.before, "after": outcome.after}
    return {
        "format": "lune-hf/unlearning-report/1",
        "lune_hf_version": __version__,
        "status": RunStatus(status).value,
        "status_detail": status_detail,
        "base_model": base_model_id,
        "objective": {"name": spec.name, "formula": spec.formula, "summary": spec.summary},
        "hyperparameters": _hyperparameters(args, model, budget_steps, distributed_type, retain_rows is not None,
                                            teacher_model),
        "parameters": {"trainable": n_trainable, "total": n_total},
        "base_config": base_config_summary(model),
        "global_step": global_step,
        "stop_reason": outcome.stop_reason if outcome is not None else stop_reason,
        "outcome": outcome.as_dict() if outcome is not None else None,
        "forget_set": {"rows": len(forget_rows), "sha256": fingerprint(forget_rows)},
        "forget_commitment": forget_commitment,
        "robustness": robustness,
        "retain_set": (
            {"rows": len(retain_rows), "sha256": fingerprint(retain_rows)}
            if retain_rows is not None
            else None
        ),
        "evaluation": evaluation,
        "train_log": [
            {k: v for k, v in entry.items() if isinstance(v, (int, float))}
            for entry in log_history
            if "loss" in entry or "train_loss" in entry
        ],
    }


def _hyperparameters(args, model, budget_steps: int, distributed_type: str, has_retain: bool,
                     teacher_model: str | None = None) -> dict[str, Any]:
    """The settings a reader needs to reproduce the run (LoRA's from the model itself)."""
    return {
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "budget_steps": budget_steps,
        "min_budget_steps": args.min_budget_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "distributed_type": distributed_type,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "beta": args.beta,
        "delta": args.delta,
        "forget_weight": args.forget_weight,
        "negative_weight": args.negative_weight,
        "negative_loss": args.negative_loss,
        "negative_tokens": args.negative_tokens,
        **({"teacher_model": teacher_model} if teacher_model else {}),
        "retain_weight": args.retain_weight,
        "preserve_weight": args.preserve_weight,
        "retain_loss": args.retain_loss if has_retain else "none",
        "max_length": args.max_length,
        "stop_when_forgotten": args.stop_when_forgotten,
        "forget_target": str(args.forget_target),
        "retain_floor": args.retain_floor,
        "seed": args.seed,
        **{f"lora_{k}" if not k.startswith("lora") else k: v for k, v in _lora_settings(model).items()},
    }


PLOT_FILE = "unlearning_curves.png"
MARKDOWN_FILE = "unlearning_report.md"


def plot_history(history: list[dict[str, Any]], path: Path) -> Path | None:
    """One figure: every forget/* and retain/* metric against the training step. None if nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if k != "step"})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key in keys:
        points = [(row["step"], row[key]) for row in history if key in row]
        style = "-" if key.startswith("forget/") else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("score")
    ax.set_title("Forget (solid) and retain (dashed) metrics during unlearning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
    return path


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (a half-written PNG never sits under the final name), then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def before_after_rows(report: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, before, after) for every evaluation metric of a report."""
    evaluation = report.get("evaluation") or {}
    before, after = evaluation.get("before", {}), evaluation.get("after", {})
    return [(key, before.get(key), after.get(key)) for key in sorted(set(before) | set(after))]


def format_metric(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_markdown(report: dict[str, Any], plot_name: str | None) -> str:
    """A human-readable Markdown page of a run report."""
    lines = [
        "# Unlearning report",
        "",
        f"- status: **{report.get('status')}** {report.get('status_detail') or ''}".rstrip(),
        f"- base model: `{report.get('base_model')}`",
        f"- objective: `{report['objective']['name']}` — {report['objective']['summary']}",
        f"- formula: `{report['objective']['formula']}`",
        f"- steps: {report.get('global_step')}; forget rows: {report['forget_set']['rows']}"
        + (f"; retain rows: {report['retain_set']['rows']}" if report.get("retain_set") else ""),
    ]
    outcome = report.get("outcome")
    if outcome:
        lines.append(f"- verdict: **{outcome['verdict'].replace('_', ' ')}** (target `{outcome['target']}`)"
                     + ("" if outcome.get("retain_ok", True) else "; retain fell below its floor"))
        if outcome.get("restored_step") is not None:
            lines.append(f"- adapter kept: the one of step {outcome['restored_step']} (best check)")
        if outcome.get("hint"):
            lines.append(f"- likely fix: {outcome['hint']}")
    if report.get("stop_reason"):
        lines.append(f"- stopped: {report['stop_reason']}")
    rows = before_after_rows(report)
    if rows:
        lines += ["", "| metric | before | after |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {format_metric(b)} | {format_metric(a)} |" for k, b, a in rows]
    if plot_name:
        lines += ["", f"![forget and retain metrics over training]({plot_name})"]
    lines += ["", "## Hyper-parameters", "", "| name | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in report.get("hyperparameters", {}).items()]
    return "\n".join(lines) + "\n"


def write_report_files(folder: str | Path, report: dict[str, Any]) -> tuple[Path, Path | None]:
    """Write the Markdown report and the PNG plot of a run's evaluation history into `folder`."""
    folder = Path(folder)
    plot = plot_history(report.get("evaluation", {}).get("history", []), folder / PLOT_FILE)
    md_path = folder / MARKDOWN_FILE
    write_text_atomic(md_path, render_markdown(report, plot.name if plot else None))
    return md_path, plot
