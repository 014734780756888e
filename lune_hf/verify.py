"""`lune_hf.verify`: check an unlearning adapter's claims on your own data, and attack it.

An adapter's report claims numbers its publisher measured (forget recall after unlearning, retain quality). This
module loads the adapter exactly as users do (`lune_hf.hub.load_unlearned`, with all its checks), recomputes those
numbers with the same `Evaluator` on the data you give, runs the probes of `lune_hf.probes` (paraphrase, relearn,
quantize, mia) and says, claim by claim and probe by probe, whether it holds. `lune-hf verify` is the command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from .commitment import check_proof
from .evaluator import METRICS, Evaluator
from .hub import ADAPTER_DOWNLOAD, _adapter_config, _base_of, _local_copy, load_unlearned
from .probes import PROBES, ProbeResult, as_prompt_completion, run_probes
from .report import before_after_rows, read_report, save_figure, write_json_atomic

DEFAULT_PROBES = ("paraphrase", "relearn", "quantize", "mia")
# Metrics where a higher value on the forget set means more is still known (all of the Evaluator's).
LOWER_IS_FORGOTTEN = set(METRICS)


@dataclass
class Thresholds:
    """Pass / fail limits (all user-settable: `lune-hf verify --threshold name=value`).

    Args:
        claim_tolerance: how far a recomputed number may be worse than the claimed one (absolute).
        paraphrase: highest forget recall allowed under any rewrite of the prompts.
        relearn: highest share of the forgotten knowledge allowed to come back after the relearning attack.
        quantize: highest forget recall allowed after 8- or 4-bit quantisation.
        mia: highest Min-K% membership AUC allowed (0.5 = forget rows look like unseen rows).
    """

    claim_tolerance: float = 0.1
    paraphrase: float = 0.2
    relearn: float = 0.5
    quantize: float = 0.2
    mia: float = 0.65

    @classmethod
    def parse(cls, items: Sequence[str]) -> Thresholds:
        """From `name=value` strings."""
        values: dict[str, float] = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or name not in cls.__dataclass_fields__:
                raise ValueError(f"--threshold {item!r}: use name=value with name one of "
                                 f"{list(cls.__dataclass_fields__)}.")
            values[name] = float(value)
        return cls(**values)


@dataclass
class Claim:
    """One number of the adapter's report, recomputed."""

    metric: str
    claimed: float
    measured: float | None
    passed: bool | None


@dataclass
class Verification:
    """What `verify` found: the claims re-checked, the probes, the proof (if one was checked)."""

    adapter: str
    base_model: str | None
    rows: dict[str, int]
    claims: list[Claim]
    probes: list[ProbeResult]
    thresholds: Thresholds
    proof: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no claim, probe or proof failed (a probe with nothing to measure does not fail)."""
        checks = [c.passed for c in self.claims] + [p.passed for p in self.probes] + [self.proof]
        return all(c is not False for c in checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": "lune-hf/verification/1", "adapter": self.adapter, "base_model": self.base_model,
            "passed": self.passed, "rows": self.rows, "thresholds": vars(self.thresholds),
            "claims": [vars(c) for c in self.claims], "probes": [p.as_dict() for p in self.probes],
            "proof": self.proof, "notes": self.notes,
        }

    def table(self) -> str:
        """The plain-text table `lune-hf verify` prints."""
        lines = [f"{'check':<40}{'claimed':>9}{'measured':>10}{'limit':>9}  result"]
        tol = self.thresholds.claim_tolerance
        for c in self.claims:
            limit = (f"<={c.claimed:g}" if c.metric.startswith("verdict")
                     else f"{'+' if c.metric.startswith('forget/') else '-'}{tol:g}")
            lines.append(f"{'claim ' + c.metric:<40}{c.claimed:>9.3f}{_fmt(c.measured):>10}{limit:>9}  "
                         f"{_verdict(c.passed)}")
        for p in self.probes:
            label = f"probe {p.name}" + (f" ({p.details['worst_variant']})" if "worst_variant" in p.details else "")
            lines.append(f"{label:<40}{'':>9}{_fmt(p.value):>10}{'<=' + format(p.threshold, 'g'):>9}  "
                         f"{_verdict(p.passed)}{'  ' + p.note if p.note else ''}")
        if self.proof is not None:
            lines.append(f"{'proof of forget-set membership':<40}{'':>9}{'':>10}{'':>9}  {_verdict(self.proof)}")
        lines.append(f"\n{'PASSED' if self.passed else 'FAILED'}: " + (
            "every claim and probe holds." if self.passed else "at least one claim or probe does not hold."))
        return "\n".join(lines + self.notes)

    def markdown(self) -> str:
        rows = ["| check | claimed | measured | limit | result |", "| --- | ---: | ---: | ---: | --- |"]
        for c in self.claims:
            limit = f"<= {c.claimed:g}" if c.metric.startswith("verdict") else f"±{self.thresholds.claim_tolerance:g}"
            rows.append(f"| claim `{c.metric}` | {c.claimed:.3f} | {_fmt(c.measured)} | {limit} | "
                        f"{_verdict(c.passed)} |")
        for p in self.probes:
            rows.append(f"| probe `{p.name}` | | {_fmt(p.value)} | <= {p.threshold:g} | {_verdict(p.passed)} "
                        f"{p.note} |")
        overall = "passed" if self.passed else "FAILED"
        details = "\n".join(f"- `{p.name}`: `{json.dumps(p.details, default=str)}`" for p in self.probes)
        return "\n".join([
            f"# Verification of `{self.adapter}`", "",
            f"Base model: `{self.base_model}`; rows: {self.rows}. Overall: **{overall}**.",
            "", *rows, "", "Probe details (base model = adapter off):", "", details, "",
        ])

    def write(self, json_path: str | Path) -> list[Path]:
        """JSON at `json_path`, the Markdown and a PNG beside it (same stem). Returns the paths written."""
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.as_dict())
        md = path.with_suffix(".md")
        md.write_text(self.markdown(), encoding="utf-8")
        written = [path, md]
        png = plot_verification(self, path.with_suffix(".png"))
        return written + ([png] if png else [])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[passed]


def plot_verification(result: Verification, path: Path) -> Path | None:
    """Bars: forget recall of the adapter (and of the base model) under each check that measures recall."""
    bars: list[tuple[str, float, float | None]] = []
    for c in result.claims:
        if c.metric == "forget/recalled" and c.measured is not None:
            bars.append(("as claimed\n(recomputed)", c.measured, None))
    for p in result.probes:
        if p.name == "paraphrase":
            bars += [(f"paraphrase:\n{k}", v["recall"], v.get("base_recall")) for k, v in p.details["variants"].items()]
        elif p.name == "quantize":
            bars += [(k, v["recall"], v.get("base_recall")) for k, v in p.details.items() if isinstance(v, dict)]
        elif p.name == "relearn" and "recall_after_attack" in p.details:
            bars.append(("relearned\n(held-out half)", p.details["recall_after_attack"],
                         p.details.get("base_recall_after_attack")))
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars)), 3.8), dpi=110)
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], width=0.4, label="with the adapter")
    ax.bar([x + 0.2 for x in xs], [b[2] or 0.0 for b in bars], width=0.4, alpha=0.5, label="base model")
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("forget recall")
    ax.set_title(f"{result.adapter}: {'passed' if result.passed else 'FAILED'}", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def recheck_claims(report: Mapping[str, Any] | None, measured: Mapping[str, float],
                   tolerance: float) -> list[Claim]:
    """Compare every after-unlearning number of the report with the recomputed one: forget metrics may not be
    higher than claimed by more than `tolerance`, retain metrics not lower."""
    claims = []
    for key, _, after in before_after_rows(dict(report or {})):
        if after is None or key not in measured:
            continue
        value = measured[key]
        if key.startswith("forget/") and key.split("/", 1)[1] in LOWER_IS_FORGOTTEN:
            ok = value <= after + tolerance
        else:
            ok = value >= after - tolerance
        claims.append(Claim(key, float(after), float(value), bool(ok)))
    return claims


def recheck_verdict(report: Mapping[str, Any] | None, measured: Mapping[str, float]) -> Claim | None:
    """The report's verdict as a claim: "forgotten" means the forget metric meets the run's target; a run that
    did not forget claims nothing, and says so (the check fails: the adapter is not an unlearning result)."""
    outcome = (report or {}).get("outcome") or {}
    match = re.fullmatch(r"\s*(?:forget/)?(\w+)\s*<=\s*([0-9.eE+-]+)\s*", str(outcome.get("target", "")))
    key = f"forget/{match.group(1)}" if match else None
    if key not in measured:
        return None
    limit = float(match.group(2))
    claimed_forgotten = outcome.get("verdict") == "forgotten"
    return Claim(f"verdict {outcome.get('verdict')} ({key})", limit, float(measured[key]),
                 bool(claimed_forgotten and measured[key] <= limit))


def _claimed_metrics(report: Mapping[str, Any] | None) -> tuple[str, ...]:
    keys = {key.split("/", 1)[1] for key, _, after in before_after_rows(dict(report or {})) if after is not None}
    return tuple(m for m in METRICS if m in keys) or ("recalled",)


def _download(adapter: str | Path, **hub: Any) -> Path:
    """The adapter's folder: itself when local, else its files downloaded from the Hub (no weights of the base)."""
    return _local_copy(adapter, cache_dir=None, allow_patterns=ADAPTER_DOWNLOAD, **hub)


def _check_proof(adapter: str | Path, report: Mapping[str, Any] | None, proof: Mapping[str, Any]) -> bool:
    commitment = (report or {}).get("forget_commitment")
    if commitment is None:
        raise ValueError(f"{adapter}: its report carries no forget-set commitment to check a proof against.")
    return check_proof(commitment, proof)


def check_membership(
    adapter: str | Path,
    proof: Mapping[str, Any],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
) -> tuple[bool, int]:
    """Check a proof of forget-set membership (`lune-hf reveal`) against an adapter's report, loading no model.

    Returns whether the proof holds and how many rows the commitment covers. Raises `ValueError` when the report
    carries no commitment.
    """
    report = read_report(_download(adapter, token=token, revision=revision, endpoint=endpoint))
    return _check_proof(adapter, report, proof), report["forget_commitment"]["rows"]


def verify(
    adapter: str | Path,
    forget: Dataset,
    *,
    retain: Dataset | None = None,
    holdout: Dataset | None = None,
    paraphrases: Dataset | None = None,
    base_model: str | None = None,
    probes: Sequence[str] = DEFAULT_PROBES,
    thresholds: Thresholds | None = None,
    proof: Mapping[str, Any] | None = None,
    max_rows: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    relearn_steps: int = 50,
    relearn_lr: float = 1e-3,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> Verification:
    """Load an adapter (local folder or Hub repo), recompute its claims on `forget` / `retain`, run the probes.

    Args:
        adapter: the adapter's folder or Hub repo id.
        forget: the forget rows to check (question / answer rows: `prompt` + `completion`, or `messages`); a
            `paraphrased_prompt` column adds a paraphrase variant.
        retain: rows the model must still know (re-checks the retain claims).
        holdout: rows the model never saw, for the `mia` probe.
        paraphrases: your own rephrasings of the forget prompts, with the same answers.
        base_model: the base model, when the adapter records none or a local path.
        probes: any of `paraphrase`, `relearn`, `quantize`, `mia`.
        thresholds: pass / fail limits (:class:`Thresholds`).
        proof: a proof of forget-set membership (`lune-hf reveal`) to check against the report's commitment.
        max_rows: run the probes on at most this many forget rows (evenly spaced).
        relearn_steps, relearn_lr: the relearning attack's budget (LoRA r=8, batch 8, on half the forget rows).

    Example:
        >>> result = verify("me/smollm2-forget-alice", load_rows("forget.jsonl"))  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    thresholds = thresholds or Thresholds()
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"Unknown probes {unknown}; choose from {list(PROBES)}.")
    forget = as_prompt_completion(forget)
    folder = _download(adapter, token=token, revision=revision, endpoint=endpoint)
    report = read_report(folder)
    notes = [] if report else ["The adapter has no unlearning_report.json: it claims nothing to re-check."]
    result = Verification(str(adapter), None, {"forget": len(forget)}, [], [], thresholds, notes=notes)
    if proof is not None:
        result.proof = _check_proof(adapter, report, proof)
    base_model = _base_of([adapter], [_adapter_config(folder)], base_model)
    result.base_model = base_model
    model, tokenizer = load_unlearned(folder, base_model, token=token, endpoint=endpoint)
    from .data import ensure_pad_token

    ensure_pad_token(tokenizer)
    sets = {"forget": forget, **({"retain": retain} if retain is not None else {})}
    result.rows = {name: len(rows) for name, rows in sets.items()} | ({"holdout": len(holdout)} if holdout else {})
    measured = Evaluator(sets, tokenizer, metrics=_claimed_metrics(report), batch_size=batch_size,
                         progress=progress).evaluate(model)
    verdict = recheck_verdict(report, measured)
    result.claims = ([verdict] if verdict else []) + recheck_claims(report, measured, thresholds.claim_tolerance)
    result.probes = run_probes(model, tokenizer, forget, probes, thresholds=vars(thresholds), holdout=holdout,
                               paraphrases=paraphrases, max_rows=max_rows, batch_size=batch_size, seed=seed,
                               relearn_steps=relearn_steps, relearn_lr=relearn_lr, progress=progress)
    return result
