"""TOFU loader, row mapping and evaluation (tiny synthetic model over a few real TOFU rows)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from lune_hf.testing.synthetic import build_tiny_model, build_tokenizer
from lune_hf.tofu.data import (
    author_subset,
    first_author,
    forget_authors,
    load_refusals,
    load_tofu,
    make_prompt,
    retain_split_for,
    to_rows,
    tofu_sets,
    with_authors,
)
from lune_hf.tofu.evaluate import evaluate_tofu, normalised_probability, score_pairs

pytestmark = pytest.mark.xdist_group("tofu")  # its module fixtures run once, on one worker

SAMPLE = Path(__file__).parent / "data" / "tofu_sample.json"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tofu_dir(sample, tmp_path_factory) -> Path:
    """A local TOFU folder laid out like the real one (forget01.json carries the perturbed columns)."""
    folder = tmp_path_factory.mktemp("tofu")
    retain_qa = [{"question": r["question"], "answer": r["answer"]} for r in sample["retain_with_perturbations"]]

    def dump(name: str, rows: list) -> None:
        (folder / name).write_text(json.dumps(rows, indent=1), encoding="utf-8")

    dump("forget01.json", sample["forget01"])
    dump("forget10.json", sample["retain_with_perturbations"] + sample["forget01"])
    dump("retain99.json", retain_qa)
    dump("retain90.json", retain_qa)
    dump("real_authors_perturbed.json", sample["real_authors_perturbed"])
    # JSON lines, as some copies of TOFU ship them.
    (folder / "world_facts_perturbed.json").write_text(
        "\n".join(json.dumps(r) for r in sample["world_facts_perturbed"]), encoding="utf-8")
    (folder / "idontknow.jsonl").write_text("\n".join(sample["idontknow"]) + "\n", encoding="utf-8")
    return folder


def test_load_tofu_local_names(tofu_dir, sample):
    forget = load_tofu("forget01", tofu_dir)
    assert len(forget) == 4 and {"paraphrased_answer", "perturbed_answer"} <= set(forget.column_names)
    assert load_tofu("forget01_perturbed", tofu_dir)["question"] == forget["question"]
    assert len(load_tofu("real_authors", tofu_dir)) == 3
    assert load_tofu("world_facts_perturbed", tofu_dir)[0]["perturbed_answer"] == sample["world_facts_perturbed"][0][
        "perturbed_answer"]
    full = load_tofu("full", tofu_dir)
    assert full.column_names == ["question", "answer"] and len(full) == 4 + 8
    with pytest.raises(FileNotFoundError, match="retain_perturbed"):
        load_tofu("retain_perturbed", tofu_dir)
    with pytest.raises(FileNotFoundError):
        load_tofu("forget01", tofu_dir / "missing.json")
    assert load_refusals(tofu_dir) == sample["idontknow"]


def test_author_layout():
    assert retain_split_for("forget01") == "retain99" and retain_split_for("forget10_perturbed") == "retain90"
    assert forget_authors("forget01") == range(198, 200) and forget_authors("forget05") == range(190, 200)
    assert first_author("retain95") == 0 and first_author("forget10") == 180 and first_author("world_facts") is None
    with pytest.raises(ValueError):
        retain_split_for("retain99")
    rows = Dataset.from_list([{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)])
    tagged = with_authors(rows, "forget01")
    assert tagged["author"][0] == 198 and tagged["author"][-1] == 199
    subset = author_subset(rows, [199], "forget01")
    assert subset["question"] == [f"q{i}" for i in range(20, 40)]
    with pytest.raises(ValueError, match="whole number"):
        with_authors(rows.select(range(30)), "forget01")


def test_to_rows_formats(sample):
    rows = Dataset.from_list(sample["forget01"][:2])
    chat = to_rows(rows)
    assert chat[0]["prompt"] == [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": rows[0]["question"]}]
    assert chat[0]["completion"] == [{"role": "assistant", "content": rows[0]["answer"]}]
    assert "perturbed_answer" in chat.column_names  # other columns are kept
    plain = to_rows(rows, "plain")
    assert plain[0]["prompt"] == f"Question: {rows[0]['question']}\nAnswer:"
    assert plain[0]["completion"] == " " + rows[0]["answer"]
    assert to_rows(rows, system_prompt=None)[0]["prompt"] == [{"role": "user", "content": rows[0]["question"]}]
    with pytest.raises(ValueError, match="prompt_format"):
        to_rows(rows, "yaml")


def test_tofu_sets_local_fallback(tofu_dir):
    sets = tofu_sets(tofu_dir, "forget01")
    assert len(sets.forget) == 4 and len(sets.retain) == 4
    # No retain_perturbed locally: the perturbed retain rows come from forget10 outside the forget split.
    assert sets.retain_eval is not None and sets.retain_eval["question"] == sets.retain["question"]
    assert "forget10_perturbed" in sets.description
    assert len(sets.full) == 8 and len(sets.refusals) == 5
    assert len(tofu_sets(tofu_dir, "forget01", max_eval_rows=2).real_authors) == 2


def test_normalised_probability():
    half, quarter = math.log(0.5), math.log(0.25)
    out = normalised_probability([[half, half]], [[[quarter], [quarter, quarter]]])
    assert out["probability"] == pytest.approx(0.5, abs=1e-8)


@pytest.fixture(scope="module")
def tiny_tofu(tofu_dir):
    sets = tofu_sets(tofu_dir, "forget01")
    texts = []
    for rows in (sets.forget, sets.retain_eval, sets.real_authors, sets.world_facts):
        for row in rows:
            texts += [make_prompt(row["question"], "plain"), row["answer"], *row["perturbed_answer"],
                      row.get("paraphrased_answer") or ""]
    tokenizer = build_tokenizer(texts)
    model = build_tiny_model(len(tokenizer), hidden_size=32, layers=1, seed=0)
    return sets, model, tokenizer


def test_score_pairs_keeps_order(tiny_tofu):
    sets, model, tokenizer = tiny_tofu
    pairs = [(make_prompt(q, "plain"), " " + a) for q, a in zip(sets.forget["question"], sets.forget["answer"],
                                                                  strict=True)]
    pairs = pairs + [(pairs[0][0], " x")]  # a short answer, scored first
    from lune_hf.evaluation import score_answers

    direct = score_answers(model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], batch_size=1)
    sorted_ = score_pairs(model, tokenizer, pairs, batch_size=3)
    for a, b in zip(direct, sorted_, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_evaluate_tofu_end_to_end(tiny_tofu):
    sets, model, tokenizer = tiny_tofu
    result = evaluate_tofu(model, tokenizer, sets, prompt_format="plain", max_new_tokens=4, batch_size=8,
                           progress=False)
    assert result["forget_quality"] is None
    assert len(result["forget_truth_ratios"]) == len(sets.forget)
    assert all(math.isfinite(t) and t > 0 for t in result["forget_truth_ratios"])
    for key in ("forget", "retain", "real_authors", "world_facts"):
        for metric in ("probability", "rouge", "truth_ratio"):
            value = result[f"{key}_{metric}"]
            assert 0.0 <= value <= 1.0 and math.isfinite(value), (key, metric, value)
    assert len(result["model_utility_inputs"]) == 9 and 0.0 <= result["model_utility"] <= 1.0
    assert len(result["forget_samples"]) == 3

    # Forget quality of a model against itself is 1.0 (identical truth-ratio samples).
    again = evaluate_tofu(model, tokenizer, sets, prompt_format="plain", max_new_tokens=4, batch_size=8,
                          reference_truth_ratios=result["forget_truth_ratios"], progress=False)
    assert again["forget_quality"] == pytest.approx(1.0)
    assert again["forget_ks_statistic"] == pytest.approx(0.0)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("tofu_benchmark", REPO / "benchmarks" / "tofu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_benchmark_target_names_lune_and_the_best_other_objective():
    module = _benchmark_module()

    def row(variant, fq, mu):
        return {"split": "forget01", "variant": variant, "objective": variant.partition("[")[0],
                "forget_quality": fq, "model_utility": mu, "forget_rouge": 0.1, "retain_rouge": 0.3,
                "forget_truth_ratio": 0.6, "forget_probability": 0.5, "wall_s": 1.0, "peak_mem_mb": 1.0}

    rows = [row("finetuned", 0.01, 0.40), row("retain", 1.0, 0.39), row("lune", 0.03, 0.39),
            row("graddiff[learning_rate=5e-4]", 0.8, 0.30),  # forgets more but loses utility
            row("npo[learning_rate=1e-3]", 0.6, 0.39), row("ga", 0.02, 0.40)]
    text = module.render_markdown(module.SETUPS["cpu"], rows, "data", "model").split("## Target")[1]
    assert "`lune`: forget quality 0.030, model utility 97.5% of finetuned -> missed" in text
    assert "`npo[learning_rate=1e-3]` (best of the others): forget quality 0.600" in text
    assert "97.5% of finetuned -> met" in text
    assert "graddiff" not in text.split("## open-unlearning")[0]


def test_benchmark_objective_specs():
    module = _benchmark_module()
    assert module.parse_objective("npo") == ("npo", {})
    assert module.parse_objective("lune[learning_rate=5e-4,retain=false,replacement=perturbed]") == (
        "lune", {"learning_rate": 5e-4, "retain": False, "replacement": "perturbed"})
    with pytest.raises(ValueError):
        module.parse_objective("lune[learning_rate=1")
