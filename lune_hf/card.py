"""Model cards for unlearning adapters, rendered from `model_cards/lune_adapter.md` with `huggingface_hub.ModelCard`.

The card is built only from the unlearning report (numbers, hyper-parameters, fingerprints): it never
sees the forget data, so it cannot leak it.
"""

from __future__ import annotations

from importlib import metadata, resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .report import before_after_rows, format_metric, is_verified, unverified_reason

TEMPLATE = "lune_adapter.md"
TAGS = ["lune", "unlearning", "lora", "peft"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def template_text() -> str:
    return resources.files("lune_hf.model_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")


def _readable(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters for the card: adapted modules shown by kind (`q_proj`, ...) rather than one by one."""
    out = dict(hyperparameters)
    targets = out.get("lora_target_modules")
    if isinstance(targets, list):
        out["lora_target_modules"] = ", ".join(sorted({name.split(".")[-1] for name in targets}))
    return out


def eval_results(report: dict[str, Any], dataset_name: str = "forget / retain sets") -> list[EvalResult]:
    """`model-index` entries: the after-unlearning value of every forget/* and retain/* metric."""
    results = []
    for key, _, after in before_after_rows(report):
        if after is None:
            continue
        split, metric = key.split("/", 1)
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Unlearning",
                dataset_type="lune-unlearning",
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric,
                metric_name=key,
                metric_value=round(float(after), 4),
            )
        )
    return results


def robustness_rows(probes: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """One row per end-of-run probe: its worst case, limit, result and what it measured (base model beside)."""
    rows = []
    for probe in probes or []:
        details = probe.get("details") or {}
        measured = details.get("variants") or {k: v for k, v in details.items() if isinstance(v, dict)}
        parts = [f"{name} {format_metric(v.get('recall'))} (base {format_metric(v.get('base_recall'))})"
                 for name, v in measured.items()]
        passed = probe.get("passed")
        rows.append({"name": probe["name"], "value": format_metric(probe.get("value")),
                     "limit": f"{probe['threshold']:g}", "result": {True: "pass", False: "**fail**"}.get(passed, "n/a"),
                     "details": ", ".join(parts) or probe.get("note", "")})
    return rows


def render_card(
    report: dict[str, Any],
    *,
    repo_id: str,
    base_model: str,
    summary: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    has_plot: bool = False,
) -> ModelCard:
    """The README.md of an unlearning adapter repository."""
    results = eval_results(report)
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=TAGS,
        license=license,
        datasets=datasets or None,
        model_name=repo_id,
        eval_results=results or None,
    )
    summary = summary or "An adapter that makes the base model forget a set of facts (summary not given)."
    rows = [
        {"name": key, "before": format_metric(before), "after": format_metric(after)}
        for key, before, after in before_after_rows(report)
    ]
    outcome = report.get("outcome")
    return ModelCard.from_template(
        card_data,
        template_str=template_text(),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=summary.strip(),
        base_model=base_model,
        objective=report["objective"],
        parameters=report["parameters"],
        forget_set=report["forget_set"],
        forget_commitment=report.get("forget_commitment"),
        retain_set=report.get("retain_set"),
        hyperparameters=_readable(report["hyperparameters"]),
        global_step=report.get("global_step"),
        stop_reason=report.get("stop_reason"),
        outcome=outcome,
        verdict=outcome["verdict"].replace("_", " ") if outcome else None,
        unverified=None if is_verified(report) else unverified_reason(report),
        results=rows,
        robustness=robustness_rows(report.get("robustness")),
        has_plot=has_plot,
        versions={p.replace("-", "_"): _version(p)
                  for p in ("lune-hf", "peft", "transformers", "torch", "huggingface_hub")},
    )
