"""TOFU loader, row mapping and evaluation (tiny synthetic model over a few real TOFU rows)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from lune_hf.testing.synthetic import build_tiny_model, build_tokenizer
from lune_hf.tofu.data import (
    author_subset,
    first_author,
    forget_authors,
    load_refusals,
    load_tofu,
    retain_split_for,
    to_rows,
    tofu_sets,
    with_authors,
)
from lune_hf.tofu.evaluate import collect_logs, evaluate_tofu
from lune_hf.tofu.template import TofuTemplate

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
    dump("holdout01.json", sample["holdout01"])
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


def test_tofu_sets_retain_authors_and_holdout(sample, tmp_path):
    # 3 whole synthetic retain authors (60 rows), the sample's forget / utility / holdout rows.
    retain = [{"question": f"Question {i} about author {i // 20}?", "answer": f"Answer {i}."} for i in range(60)]
    for name, rows in {"retain99": retain, "forget01": sample["forget01"], "holdout01": sample["holdout01"],
                       "retain_perturbed": [dict(r, paraphrased_answer="p", perturbed_answer=["x", "y"])
                                            for r in retain[20:25]],
                       "real_authors_perturbed": sample["real_authors_perturbed"],
                       "world_facts_perturbed": sample["world_facts_perturbed"]}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    sets = tofu_sets(tmp_path, "forget01", retain_authors=[0, 2])
    assert sorted(set(sets.retain["author"])) == [0, 2] and len(sets.retain) == 40
    assert "restricted to authors 1, 3" in sets.description
    assert sets.retain_eval is None and "none (no perturbed retain rows)" in sets.description  # they are author 1's
    sets = tofu_sets(tmp_path, "forget01", retain_authors=range(2))
    # retain_perturbed rows of the kept authors: every row is evaluated by default ...
    assert len(sets.retain_eval) == 5 and "from retain_perturbed" in sets.description
    assert sets.eval_rows == {"forget": 4, "retain": 5, "real_authors": 3, "world_facts": 3, "holdout": 4}
    assert not sets.quick and "quick mode" not in sets.description
    # ... and --max-eval-rows is a labelled quick mode that never cuts the forget set.
    quick = tofu_sets(tmp_path, "forget01", retain_authors=range(2), max_eval_rows=2)
    assert quick.quick and "quick mode: at most 2 rows" in quick.description
    assert quick.eval_rows == {"forget": 4, "retain": 2, "real_authors": 2, "world_facts": 2, "holdout": 2}
    with pytest.raises(ValueError, match="retain authors of forget01"):
        tofu_sets(tmp_path, "forget01", retain_authors=[198])
    with pytest.raises(ValueError, match="not both"):
        tofu_sets(tmp_path, "forget01", n_authors=10, retain_authors=[0])


@pytest.fixture(scope="module")
def tiny_tofu(tofu_dir):
    sets = tofu_sets(tofu_dir, "forget01")
    texts = []
    template = TofuTemplate("plain")
    for rows in (sets.forget, sets.retain_eval, sets.real_authors, sets.world_facts, sets.holdout):
        for row in rows:
            texts += [template.plain_prompt(row["question"]), row["answer"], *(row.get("perturbed_answer") or []),
                      row.get("paraphrased_answer") or ""]
    tokenizer = build_tokenizer(texts)
    model = build_tiny_model(len(tokenizer), hidden_size=32, layers=1, seed=0)
    return sets, model, tokenizer


def test_collect_logs_scores_each_answer_as_alone(tiny_tofu):
    """Length-sorted batches give every answer the log-probabilities it gets scored on its own."""
    from lune_hf.evaluation import score_examples

    sets, model, tokenizer = tiny_tofu
    template = TofuTemplate("plain")
    logs = collect_logs(model, tokenizer, sets, template, max_new_tokens=2, batch_size=5, progress=False)
    row = sets.forget[1]
    alone = score_examples(model, [template.encode(tokenizer, row["question"], row["perturbed_answer"][2])],
                           tokenizer.pad_token_id, batch_size=1)[0]
    assert logs["forget"][1]["perturbed"][2]["logprobs"] == pytest.approx(alone[0], abs=1e-4)
    assert logs["forget"][1]["perturbed"][2]["hits"] == alone[1]
    assert len(logs["forget"][1]["perturbed"]) == len(row["perturbed_answer"])
    assert "generation" not in logs["holdout"][0] and "paraphrased" not in logs["real_authors"][0]
    # The ROUGE reference is the decoded answer tokens (open-unlearning's), not the raw string.
    answer = sets.forget[0]["answer"]
    decoded = tokenizer.decode(tokenizer(answer)["input_ids"], skip_special_tokens=True,
                               clean_up_tokenization_spaces=True).strip()
    assert logs["forget"][0]["ground_truth"] == decoded != answer  # "Al - Kuwaiti" with this word-level tokenizer


def test_evaluate_tofu_end_to_end(tiny_tofu):
    sets, model, tokenizer = tiny_tofu
    template = TofuTemplate("plain")
    result = evaluate_tofu(model, tokenizer, sets, template=template, max_new_tokens=4, batch_size=8,
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
    assert 0.0 <= result["mia_min_k"] <= 1.0 and result["replacement_share"] is not None
    assert result["eval_rows"]["holdout"] == 4

    # Against itself: forget quality 1.0 (identical truth-ratio samples) and privleak 0.
    again = evaluate_tofu(model, tokenizer, sets, template=template, max_new_tokens=4, batch_size=8,
                          reference=result, progress=False)
    assert again["forget_quality"] == pytest.approx(1.0)
    assert again["forget_ks_statistic"] == pytest.approx(0.0)
    assert again["privleak"] == pytest.approx(0.0, abs=1e-6)



class _Killed(Exception):
    """Stands for a fine-tuning process killed part-way."""


def test_finetune_resumes_from_its_last_checkpoint(tiny_tofu, tmp_path):
    """A fine-tuning stopped after its step-2 checkpoint goes on from there and ends with the weights of an
    uninterrupted run; the checkpoints are gone once the model is saved."""
    import torch
    from transformers import TrainerCallback

    from lune_hf.tofu.train import finetune

    sets, _, tokenizer = tiny_tofu
    examples = TofuTemplate("plain").encode_rows(tokenizer, sets.forget, 64)  # 4 rows: 2 steps an epoch

    def run(folder, **kwargs):
        model = build_tiny_model(len(tokenizer), hidden_size=32, layers=1, seed=0)
        return finetune(model, tokenizer, examples, tmp_path / folder, epochs=3, learning_rate=1e-2, batch_size=2,
                        grad_accum=1, max_length=64, warmup_ratio=0.0, disable_tqdm=True, **kwargs)

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise _Killed

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.done: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.done.append(state.global_step)

    whole = run("whole")
    with pytest.raises(_Killed):
        run("cut", checkpoint_steps=2, callbacks=[KillAtStep3()])
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-2"]
    steps = Steps()
    resumed = run("cut", checkpoint_steps=2, callbacks=[steps])
    assert steps.done == [3, 4, 5, 6]  # steps 1-2 came from the checkpoint
    assert not list((tmp_path / "cut").glob("checkpoint-*"))
    assert (tmp_path / "cut" / "model.safetensors").is_file()
    untrained = build_tiny_model(len(tokenizer), hidden_size=32, layers=1, seed=0).state_dict()
    for name, weight in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], weight, msg=name)
    assert any(not torch.equal(untrained[n], w) for n, w in whole.state_dict().items())

def _benchmark_module():
    spec = importlib.util.spec_from_file_location("tofu_benchmark", REPO / "benchmarks" / "tofu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_benchmark_targets_pool_seeds_and_name_the_best_rows(tmp_path):
    module = _benchmark_module()

    def row(variant, fq, mu, share=0.0, seed=0, quick=False, split="forget01", spill=None):
        return {"split": split, "variant": variant, "objective": variant.partition("[")[0], "seed": seed,
                "quick": quick, "forget_quality": fq, "model_utility": mu, "forget_rouge": 0.1, "privleak": -50.0,
                "replacement_share": share, "refusal_spill": spill, "forget_truth_ratio": 0.6, "wall_s": 1.0,
                "peak_mem_mb": 1.0,
                "eval_rows": {"forget": 40, "retain": 400}}

    rows = [row("finetuned", 0.01, 0.40), row("retain", 1.0, 0.39), row("lune", 0.03, 0.39, share=0.95),
            # the combined objective, three seeds: mean FQ 0.6 (std 0.08165), MU 0.39, share 0.95 -> met
            *[row(f"lune[negative_weight=1,seed={s}]" if s else "lune[negative_weight=1]", fq, 0.39, 0.95, s,
                  spill=spill) for s, fq, spill in ((0, 0.5, 0.1), (1, 0.6, 0.2), (2, 0.7, None))],
            row("lune[learning_rate=1e-3]", 0.9, 0.39, 0.95, quick=True),  # quick mode: never "met"
            row("finetuned", 0.01, 0.50, quick=True),  # quick rows compare with the quick finetuned row
            row("graddiff[learning_rate=5e-4]", 0.8, 0.30),  # forgets more but loses utility
            row("npo[learning_rate=1e-3]", 0.6, 0.39), row("ga", 0.02, 0.40),
            row("finetuned", 1e-5, 0.40, split="forget05"), row("npo", 0.2, 0.39, split="forget05")]
    grouped = {(g["split"], g["variant"]): g for g in module.group_rows(rows)}
    combined = grouped[("forget01", "lune[negative_weight=1]")]
    assert combined["seeds"] == [0, 1, 2] and combined["forget_quality"] == pytest.approx(0.6)
    assert combined["forget_quality_std"] == pytest.approx(0.0816497, rel=1e-5)
    text = module.render_markdown(module.SETUPS["cpu"], rows, "data", "model")
    assert "| forget01 | lune[negative_weight=1] | 0,1,2 | 0.600 ± 0.082 | 0.390 ± 0.000 |" in text
    assert "| 0.95 | 0.15 | 0.600 |" in text  # refusal spill: the mean of the seeds that measured it
    assert "forget01: rows evaluated per set: forget 40, retain 400" in text
    targets = text.split("## Targets")[1].split("## open-unlearning")[0]
    assert ("forget01 / pure LUNE `lune` (seeds 0): forget quality 0.030, model utility 97.5% of finetuned, "
            "refusal/replacement share 0.95 -> missed") in targets
    assert "forget01 / best LUNE-family `lune[negative_weight=1]` (seeds 0,1,2): forget quality 0.600" in targets
    assert "-> met" in targets.split("forget01 / best LUNE-family")[1].split("\n")[0]
    assert "forget01 / best of the others `npo[learning_rate=1e-3]`" in targets
    assert "forget05 / best of the others `npo` (seeds 0): forget quality 0.200" in targets
    assert "graddiff" not in targets
    quick = grouped[("forget01", "lune[learning_rate=1e-3]")]
    assert quick["quick"] and module.meets_target(quick, 0.40)  # its numbers pass, but quick rows are never "met":
    assert "`lune[learning_rate=1e-3]`" not in targets  # the full-mode combined row ranks first
    assert "| forget01 | lune[learning_rate=1e-3] | 0 (quick) | 0.900 | 0.390 | 0.78 |" in text  # 0.39 / 0.50
    assert "forget01 (quick): rows evaluated per set" in text
    assert "| forget05 | NPO | 0.14 | 0.45 | 0.70 |" in text  # open-unlearning's Llama-3.2-1B rows
    module.render_scatter(rows, tmp_path / "scatter.png")
    assert (tmp_path / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_targets_say_which_bar_was_missed():
    """No row meets every bar: the best one meets the most bars on the most seeds, and its line names what it missed."""
    module = _benchmark_module()

    def row(variant, fq, mu, share, seed=0):
        return {"split": "forget01", "variant": variant, "objective": variant.partition("[")[0], "seed": seed,
                "quick": False, "forget_quality": fq, "model_utility": mu, "forget_rouge": 0.1, "privleak": 0.0,
                "replacement_share": share, "refusal_spill": None, "forget_truth_ratio": 0.6, "wall_s": 1.0,
                "peak_mem_mb": 1.0, "eval_rows": {"forget": 40}}

    rows = [row("finetuned", 0.01, 0.40, 0.0), row("retain", 1.0, 0.39, 0.0),
            row("lune[a=1]", 0.95, 0.37, 0.80),  # forget quality only: 1 bar
            row("lune[b=1]", 0.90, 0.39, 0.85),  # forget quality and utility, one seed: 2 bars
            # forget quality and refusals on three seeds (mean utility 0.37 < 0.38): 2 bars, more seeds
            *[row(f"lune[c=1,seed={s}]" if s else "lune[c=1]", 0.6, mu, 0.95, s)
              for s, mu in ((0, 0.38), (1, 0.37), (2, 0.36))]]
    targets = module.render_markdown(module.SETUPS["cpu"], rows, "data", "model").split("## Targets")[1]
    line = targets.split("forget01 / best LUNE-family ")[1].split("\n")[0]
    assert line.startswith("`lune[c=1]` (seeds 0,1,2): forget quality 0.600, model utility 92.5% of finetuned")
    assert line.endswith("-> missed (model utility)")
    best = {g["variant"]: g for g in module.group_rows(rows)}
    assert module.target_checks(best["lune[b=1]"], 0.40) == {"forget quality": True, "model utility": True,
                                                             "refusal share": False}
    assert module.target_checks(best["lune[c=1]"], None) is None


def test_benchmark_truth_ratio_per_author():
    """Each forget author's mean truth ratio (20 rows each, in TOFU's order), seeds pooled, full-mode rows only."""
    module = _benchmark_module()
    assert module.author_means([0.5] * 20 + [1.0] * 10 + [2.0] * 10) == pytest.approx([0.5, 1.5])
    assert module.author_means([0.5] * 30) is None and module.author_means(None) is None

    def row(variant, ratios, seed=0, quick=False, split="forget01"):
        return {"split": split, "variant": variant, "objective": variant.partition("[")[0], "seed": seed,
                "quick": quick, "forget_truth_ratios": ratios}

    rows = [row("finetuned", [0.6] * 40), row("retain", [0.8] * 20 + [0.9] * 20),
            row("lune[a=1]", [0.6] * 20 + [0.8] * 20), row("lune[a=1,seed=1]", [0.8] * 20 + [1.0] * 20, seed=1),
            row("lune[b=1]", [2.0] * 40, quick=True),  # quick rows are left out
            row("npo", None),  # no per-row ratios: left out
            row("finetuned", [0.5] * 200, split="forget05")]
    grouped = module.group_rows(rows)
    assert {g["variant"]: g.get("author_truth_ratios") for g in grouped if g["split"] == "forget01"}["lune[a=1]"] \
        == pytest.approx([0.7, 0.9])
    text = "\n".join(module.author_table(grouped))
    assert "| forget01: objective | seeds | author 199 | author 200 |" in text
    assert "| lune[a=1] | 0,1 | 0.70 | 0.90 |" in text and "| retain | 0 | 0.80 | 0.90 |" in text
    assert "lune[b=1]" not in text and "| npo |" not in text
    assert "| forget05: objective | seeds | author 191 | author 192 |" in text and "| 0.50 |" in text
    assert "## Forget truth ratio per author" in module.render_markdown(module.SETUPS["cpu"], [
        {**r, "forget_quality": 0.5, "model_utility": 0.4} for r in rows[:3]], "data", "model")


def test_benchmark_objective_specs():
    module = _benchmark_module()
    assert module.parse_objective("npo") == ("npo", {})
    assert module.parse_objective("lune[learning_rate=5e-4,retain=false,replacement=perturbed]") == (
        "lune", {"learning_rate": 5e-4, "retain": False, "replacement": "perturbed"})
    assert module.parse_objective("npo[lora_target_modules=up_proj+down_proj,beta=1]") == (
        "npo", {"lora_target_modules": ["up_proj", "down_proj"], "beta": 1})
    with pytest.raises(ValueError):
        module.parse_objective("lune[learning_rate=1")
    assert module.base_variant("npo[learning_rate=1e-3,seed=2]") == "npo[learning_rate=1e-3]"
    assert module.base_variant("npo[seed=1]") == "npo"
    assert module.with_seed("npo", 0) == "npo" and module.with_seed("npo", 2) == "npo[seed=2]"
    assert module.with_seed("npo[learning_rate=1e-3]", 1) == "npo[learning_rate=1e-3,seed=1]"

    overrides = {"anchor": "general+literature", "replacement": "base", "learning_rate": 1e-3}
    assert module.pop_data_options(overrides) == ("base", ["general", "literature"])
    assert overrides == {"learning_rate": 1e-3}
    assert module.pop_data_options({}) == ("refusal", [])
    for bad in ({"anchor": "books"}, {"anchor": "general+general"}, {"replacement": "idk"}):
        with pytest.raises(ValueError, match="anchor=|replacement="):
            module.pop_data_options(bad)


@pytest.mark.parametrize(("spec", "message"), [
    ("lune[anchor=books]", "anchor='books': use one or more of general, literature"),
    ("lune[replacement=idk]", "replacement='idk': use refusal, perturbed, base"),
    ("lune[learning_rate=1", "Bad objective spec"),
    ("nope", "unknown objective 'nope'"),
])
def test_benchmark_refuses_a_bad_spec_before_touching_the_cache(tmp_path, capsys, monkeypatch, spec, message):
    """A bad objective spec is a command-line error, raised before --fresh empties the stage cache."""
    module = _benchmark_module()
    # main() sets the process's thread count and environment for a benchmark run; keep this test process's.
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    for name in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    cache = tmp_path / "cache"
    (cache / "rows").mkdir(parents=True)
    (cache / "rows" / "forget01__retain.json").write_text("{}")
    with pytest.raises(SystemExit):
        module.main(["--data", str(tmp_path), "--model", "m", "--cache-dir", str(cache), "--fresh",
                     "--objectives", spec])
    assert message in capsys.readouterr().err
    assert (cache / "rows" / "forget01__retain.json").is_file()


def test_benchmark_stage_resumes_only_its_own_checkpoints(tmp_path):
    """A stopped stage's checkpoints are kept for a run with the same settings (its earlier time counted) and
    cleared for a run with other settings."""
    module = _benchmark_module()
    folder = tmp_path / "stage"
    first = module.Resumable(folder, {"lr": 1})
    assert not first.resumed and first.spent_before == 0.0
    (folder / "checkpoint-25").mkdir()
    module.write_json_atomic(first.path, {"settings": {"lr": 1}, "wall_s": 120.0})  # what on_save records

    again = module.Resumable(folder, {"lr": 1})
    assert again.resumed and again.spent_before == 120.0 and "resuming" in again.note
    mem = module.PeakMemory(seconds=30.0)
    assert again.finish(mem) == {"wall_s": 150.0, "resumed": True} and not again.path.exists()

    module.write_json_atomic(again.path, {"settings": {"lr": 1}, "wall_s": 120.0})
    other = module.Resumable(folder, {"lr": 2})
    assert not other.resumed and other.spent_before == 0.0 and not (folder / "checkpoint-25").exists()


def test_benchmark_general_questions_refuse_evaluation_questions(tmp_path):
    """The anchor questions train the model: one that an evaluation set asks is refused, naming the file."""
    module = _benchmark_module()
    questions = module.general_questions()
    assert len(questions) >= 50 and len(set(questions)) == len(questions)
    assert not any(q.startswith("#") for q in questions)
    evaluation = Dataset.from_dict({"question": ["What is the capital of Australia?", questions[3].upper()]})
    with pytest.raises(ValueError, match=r"general_questions\.txt: 1 question\(s\) belong to a TOFU evaluation set"):
        module.general_questions([evaluation])
    own = tmp_path / "q.txt"
    own.write_text("# comment\nWhat is 2 + 2?\n\n", encoding="utf-8")
    assert module.general_questions([evaluation], own) == ["What is 2 + 2?"]

    retain = to_rows(Dataset.from_dict({"question": ["q1"], "answer": ["a1"], "author": [3]}))
    anchor = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
                                 "completion": [{"role": "assistant", "content": "4"}]}])
    both = module.with_anchor(retain, anchor)
    assert both.column_names == ["prompt", "completion"] and len(both) == 2
    assert both[1]["completion"][0]["content"] == "4" and both[0]["completion"][0]["content"] == "a1"


def test_benchmark_restores_rows_and_trains_no_model_for_a_finished_row(tmp_path):
    """A cleared cache gets the results file's rows back; a reference row found there needs no model, one that
    is missing trains it; rows of other settings are restored but not used."""
    module = _benchmark_module()
    results, cache = tmp_path / "results", tmp_path / "cache"
    bench = module.Benchmark(module.SETUPS["cpu"], "data", "model", cache, results, [], ["forget01"])
    settings = {**bench.base_settings(), "max_eval_rows": None, "stage": "retain"}
    row = {"split": "forget01", "variant": "retain", "objective": "retain", "seed": 0, "quick": False,
           "settings": settings, "settings_digest": module.digest(settings), "forget_quality": 1.0,
           "model_utility": 0.3, "forget_rouge": 0.4, "retain_rouge": 0.5, "privleak": 0.0, "replacement_share": 0.0,
           "refusal_spill": 0.0, "forget_truth_ratio": 0.7, "wall_s": 1.0, "peak_mem_mb": 1.0, "eval_s": 1.0,
           "eval_rows": {"forget": 40, "retain": 400}}
    quick = {**row, "variant": "finetuned", "settings": {**settings, "max_eval_rows": 4}}
    module.write_json_atomic(bench.json_path, [row, quick])

    assert bench.restore_rows() == 2 and bench.restore_rows() == 0
    assert bench.row_path("forget01", "retain", "").is_file()
    assert bench.row_path("forget01", "finetuned", "quick4").is_file()

    def no_model():
        raise AssertionError("a finished row must not train its model")

    assert bench.reference_row("forget01", "retain", no_model, None, settings)["model_utility"] == 0.3
    trained = []

    def model():
        trained.append(1)
        raise RuntimeError("training")

    with pytest.raises(RuntimeError, match="training"):  # other settings: the row is recomputed
        bench.reference_row("forget01", "retain", model, None, {**settings, "epochs": 99})
    assert trained == [1]


def test_benchmark_anchor_rows_are_the_finetuned_models_own_answers(tiny_tofu, tmp_path):
    """anchor=general: the finetuned model's greedy answers to the general questions, generated once and cached."""
    import dataclasses

    from lune_hf.evaluation import generate_answers
    from lune_hf.tofu.data import make_prompt

    module = _benchmark_module()
    sets, model, tokenizer = tiny_tofu
    folder = tmp_path / "finetuned"
    model.save_pretrained(folder)
    setup = dataclasses.replace(module.SETUPS["cpu"], prompt_format="plain", max_new_tokens=3, eval_batch=16)
    bench = module.Benchmark(setup, "data", "model", tmp_path / "cache", tmp_path / "results", [], ["forget01"])
    bench._tokenizer = tokenizer
    rows = bench.anchor_rows("forget01", folder, sets)
    questions = module.general_questions()
    expected = generate_answers(model.eval(), tokenizer, [make_prompt(q, "plain") for q in questions],
                                max_new_tokens=3)
    kept = [(q, a.strip()) for q, a in zip(questions, expected, strict=True) if a.strip()]
    assert len(kept) > len(questions) // 2 and len(rows) == len(kept)
    assert rows[0]["prompt"] == make_prompt(kept[0][0], "plain") and rows[0]["completion"] == " " + kept[0][1]

    bench.load = lambda _folder: (_ for _ in ()).throw(AssertionError("cached answers are not generated again"))
    assert bench.anchor_rows("forget01", folder, sets)["completion"] == rows["completion"]

    # anchor=general+literature: a second question file, its answers cached under their own name.
    del bench.load
    literature = module.general_questions(path=module.QUESTIONS_DIR / "literature_questions.txt")
    assert len(literature) >= 40 and not set(literature) & set(questions)
    books = bench.anchor_rows("forget01", folder, sets, "literature")
    assert books[0]["prompt"] == make_prompt(literature[0], "plain")
    assert (tmp_path / "cache" / "anchor_answers_forget01_literature.json").is_file()
    assert bench.anchor_rows("forget01", folder, sets)["completion"] == rows["completion"]


def test_benchmark_unlearns_while_another_run_evaluates_the_reference(tmp_path, monkeypatch):
    """A run that finds the retain row busy leaves both reference rows to the other run, unlearns without a
    reference, then waits for the retain row and adds forget quality and privleak to its row."""
    import lune_hf.tofu.data as tofu_data

    module = _benchmark_module()
    bench = module.Benchmark(module.SETUPS["cpu"], "data", "model", tmp_path / "cache", tmp_path / "results",
                             ["lune"], ["forget01"])
    monkeypatch.setattr(bench, "write_results", lambda: None)
    monkeypatch.setattr(tofu_data, "tofu_sets", lambda *a, **k: SimpleNamespace(description="", forget=[], retain=[],
                                                                                full=[]))
    monkeypatch.setattr(tofu_data, "to_rows", lambda rows, fmt: rows)
    monkeypatch.setattr(bench, "trained_model", lambda name, rows, settings: (tmp_path / name, {}))
    retain = {"split": "forget01", "variant": "retain", "forget_truth_ratios": [0.5, 0.6, 0.7, 0.8],
              "mia_min_k": 0.5, "forget_quality": 1.0}
    calls = []

    def reference_row(split, name, model, sets, settings, wait=True):
        calls.append((name, wait))
        return (retain if name == "retain" else {"variant": name}) if wait else None  # busy until waited for

    def unlearn_row(split, spec, objective, overrides, ft_dir, sets, forget_rows, retain_rows, reference, settings):
        calls.append((spec, reference))
        return {"split": split, "variant": spec, "forget_truth_ratios": [0.5, 0.6, 0.7, 0.9],
                "mia_min_k": 0.6, "forget_quality": None, "model_utility": 0.3, "forget_rouge": 0.1,
                "retain_rouge": 0.4, "forget_truth_ratio": 0.7, "wall_s": 1.0, "eval_s": 1.0, "peak_mem_mb": 1.0}

    monkeypatch.setattr(bench, "reference_row", reference_row)
    monkeypatch.setattr(bench, "unlearn_row", unlearn_row)
    quick = {"split": "forget01", "variant": "npo", "forget_quality": None}  # another mode's row: not this run's
    bench.rows["forget01/npo@quick4"] = quick
    bench.run()

    assert calls == [("retain", False), ("lune", None), ("retain", True), ("finetuned", True)]
    row = bench.rows[bench.key("forget01", "lune")]
    assert row["forget_quality"] == pytest.approx(1.0)  # KS statistic 0.25 on 4 + 4 rows
    assert row["privleak"] == pytest.approx(-20.0)  # AUC 0.6 against the retain model's 0.5
    assert quick["forget_quality"] is None
