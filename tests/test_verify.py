"""`lune-hf verify`, the probes and the forget-set commitment, on the tiny memorised model."""

from __future__ import annotations

import copy
import json
import stat

import pytest
import torch
from datasets import Dataset

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.cli import main
from lune_hf.commitment import KEY_FILE, check_proof, commit_rows, load_key, reveal
from lune_hf.demo import split_facts
from lune_hf.probes import mia_probe, paraphrase_probe, prompt_variants, quantize_weights, recall, relearn_probe
from lune_hf.report import read_report

pytestmark = pytest.mark.xdist_group("demo")  # one worker runs the session's demo


@pytest.fixture(scope="module")
def unlearned(demo_run):
    """The demo's run: a LUNE adapter trained with the `LuneConfig` defaults on its forget / retain files."""
    folder = demo_run[0].output_dir
    return {"folder": folder, "base": folder / "base_model", "files": folder / "data",
            "forget": Dataset.from_json(str(folder / "data" / "forget.jsonl"))}


def test_the_run_records_robustness_and_a_commitment_that_holds_no_text(unlearned, tmp_path):
    folder, forget = unlearned["folder"], unlearned["forget"]
    report = read_report(folder)
    assert report["outcome"]["verdict"] == "forgotten"
    probes = {p["name"]: p for p in report["robustness"]}
    assert set(probes) == {"paraphrase", "quantize"}
    assert set(probes["paraphrase"]["details"]["variants"]) == {"prefix", "system", "template"}
    assert set(probes["quantize"]["details"]) >= {"8bit", "4bit"}
    for probe in probes.values():  # the base model knew every fact under every attack
        details = probe["details"]
        measured = details.get("variants") or {k: v for k, v in details.items() if isinstance(v, dict)}
        assert all(v["base_recall"] == 1.0 for v in measured.values())
        assert probe["value"] == max(v["recall"] for v in measured.values())
    assert main(["card", str(folder), "me/demo-forget", "--base-model", "me/demo-base", "--output",
                 str(tmp_path / "README.md")]) == 0
    card = (tmp_path / "README.md").read_text()
    assert "## Robustness" in card and f"| paraphrase | {probes['paraphrase']['value']:.3f} |" in card

    commitment = report["forget_commitment"]
    assert commitment["rows"] == len(forget) == len(commitment["hashes"])
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in commitment["hashes"])
    text = json.dumps(commitment)
    for row in forget:
        assert row["prompt"] not in text and row["completion"].strip() not in text
    key = folder / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and KEY_FILE not in report["files"]
    assert commit_rows(forget, load_key(folder)) == commitment  # recomputable by the key's holder only


def test_commitment_round_trip():
    rows = Dataset.from_list([{"prompt": f"Q: fact {i} ? A:", "completion": f" answer {i}"} for i in range(5)])
    key = bytes(range(32))
    commitment = commit_rows(rows, key)
    for i in range(5):
        assert check_proof(commitment, reveal(rows, key, i))
    by_content = reveal(rows, key, {"prompt": "Q: fact 3 ? A:", "completion": " answer 3", "other": "ignored"})
    assert by_content == reveal(rows, key, 3)
    forged = {**by_content, "row": {"prompt": "Q: fact 3 ? A:", "completion": " another answer"}}
    assert not check_proof(commitment, forged)
    assert not check_proof(commitment, {**by_content, "salt": reveal(rows, key, 2)["salt"]})
    assert not check_proof(commit_rows(rows, bytes(32)), by_content)  # another key, other hashes
    with pytest.raises(ValueError, match="not in the forget set"):
        reveal(rows, key, {"prompt": "Q: unknown ? A:", "completion": " x"})


def test_reveal_and_prove_through_the_command_line(unlearned, tmp_path, capsys):
    folder, files = unlearned["folder"], unlearned["files"]
    proof = tmp_path / "proof.json"
    assert main(["reveal", str(folder), "--forget", str(files / "forget.jsonl"), "--index", "2",
                 "--out", str(proof)]) == 0
    assert main(["verify", str(folder), "--prove", str(proof)]) == 0
    assert "IS in the forget set" in capsys.readouterr().out
    tampered = json.loads(proof.read_text())
    tampered["row"]["completion"] = " somebody else"
    proof.write_text(json.dumps(tampered))
    assert main(["verify", str(folder), "--prove", str(proof)]) == 1


def test_verify_rechecks_the_claims_and_exits_by_the_result(unlearned, tmp_path):
    folder, base, files = unlearned["folder"], unlearned["base"], unlearned["files"]
    common = [str(folder), "--base-model", str(base), "--retain", str(files / "retain.jsonl")]
    out = tmp_path / "ok.json"
    code = main(["verify", *common, "--forget", str(files / "forget.jsonl"), "--probes", "paraphrase", "quantize",
                 "--json", str(out)])
    result = json.loads(out.read_text())
    claims = {c["metric"]: c for c in result["claims"]}
    assert {"forget/recalled", "retain/recalled"} <= set(claims)
    assert claims["forget/recalled"]["measured"] <= 0.1 and claims["retain/recalled"]["measured"] >= 0.9
    assert code == (0 if result["passed"] else 1)
    assert all(c["passed"] for c in result["claims"])
    assert result["claims"][0]["metric"] == "verdict forgotten (forget/recalled)"
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 0

    # the retain rows passed off as the forget set: the "forgotten" claim does not hold on them
    wrong = tmp_path / "wrong.json"
    assert main(["verify", *common, "--forget", str(files / "retain.jsonl"), "--probes", "--json", str(wrong)]) == 1
    failed = {c["metric"] for c in json.loads(wrong.read_text())["claims"] if not c["passed"]}
    assert {"forget/recalled", "verdict forgotten (forget/recalled)"} <= failed


def test_paraphrase_probe_catches_an_adapter_that_forgets_only_the_exact_prompts(memorised, memorised_copy, tmp_path):
    forget, retain = split_facts(memorised.facts)
    forget_rows = Dataset.from_list([f.row() for f in forget])
    # a fake: trained to refuse the exact prompts while answering the same questions with a prefix
    prefixed = prompt_variants(forget_rows, memorised.tokenizer)["prefix"]
    trainer = LuneTrainer(memorised_copy, LuneConfig(output_dir=str(tmp_path), report_to="none", disable_tqdm=True,
                                                     robustness_probes="none"),
                          train_dataset=forget_rows,
                          retain_dataset=Dataset.from_list([f.row() for f in retain] + list(prefixed)),
                          processing_class=memorised.tokenizer)
    trainer.train()
    assert trainer.outcome.verdict.value == "forgotten"  # its own checks, on the exact prompts, are fooled
    result = paraphrase_probe(trainer.model, memorised.tokenizer, forget_rows)
    assert result.passed is False and result.value >= 0.5
    assert result.details["variants"]["prefix"]["recall"] >= 0.5


def test_relearn_probe_sees_knowledge_come_back_after_gradient_ascent(memorised, memorised_copy, tmp_path):
    forget, retain = split_facts(memorised.facts)
    forget_rows = Dataset.from_list([f.row() for f in forget])
    trainer = LuneTrainer(memorised_copy, LuneConfig(output_dir=str(tmp_path), objective="ga", learning_rate=2e-4,
                                                     report_to="none", disable_tqdm=True, robustness_probes="none"),
                          train_dataset=forget_rows, processing_class=memorised.tokenizer)
    trainer.train()
    result = relearn_probe(trainer.model, memorised.tokenizer, forget_rows, steps=50, lr=2e-3)
    d = result.details
    assert d["recall_before"] <= 0.2 and d["base_recall"] == 1.0
    assert d["base_recall_after_attack"] == 1.0  # the attack does not damage a model that knows
    assert result.value >= 0.5 and result.passed is False


def test_quantize_weights_round_to_nearest_per_group():
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(4, 1, bias=False))
    model.add_module("lm_head", torch.nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model.proj.weight.copy_(torch.tensor([[0.7, -0.2, 0.1, 0.35]]))
        model.lm_head.weight.copy_(torch.tensor([[0.7, -0.2, 0.1, 0.35]]))
    quantize_weights(model, bits=4, group_size=2)
    # groups (0.7, -0.2): scale 0.7/7 = 0.1 -> (0.7, -0.2); (0.1, 0.35): scale 0.05 -> (0.1, 0.35)
    torch.testing.assert_close(model.proj.weight, torch.tensor([[0.7, -0.2, 0.1, 0.35]]))
    with torch.no_grad():
        model.proj.weight.copy_(torch.tensor([[0.7, -0.26, 0.1, 0.33]]))
    quantize_weights(model, bits=4, group_size=2)
    # -0.26 / 0.1 = -2.6 -> -3 -> -0.3;  0.33 / 0.33*7 -> scale 0.33/7, 0.1 / scale = 2.12 -> 2 -> 0.0943
    torch.testing.assert_close(model.proj.weight, torch.tensor([[0.7, -0.3, 2 * 0.33 / 7, 0.33]]))
    torch.testing.assert_close(model.lm_head.weight, torch.tensor([[0.7, -0.2, 0.1, 0.35]]))  # left alone


def test_prompt_variants_of_plain_and_chat_rows(memorised):
    plain = Dataset.from_list([{"prompt": "Q: Who ? A:", "completion": " Ann",
                                "paraphrased_prompt": "Q: Who is it ? A:"}])
    variants = prompt_variants(plain, memorised.tokenizer)
    assert variants["paraphrased"][0]["prompt"] == "Q: Who is it ? A:"
    assert variants["prefix"][0]["prompt"] == "Answer briefly: Q: Who ? A:"
    assert variants["system"][0]["prompt"].endswith("\n\nQ: Who ? A:")
    assert variants["template"][0] == {"prompt": "Question: Q: Who ? A:\nAnswer:", "completion": " Ann"}
    chat = Dataset.from_list([{"messages": [{"role": "system", "content": "Be terse."},
                                            {"role": "user", "content": "Who?"},
                                            {"role": "assistant", "content": "Ann"}]}])
    variants = prompt_variants(chat, memorised.tokenizer)
    assert variants["system"][0]["prompt"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert variants["prefix"][0]["prompt"][-1] == {"role": "user", "content": "Answer briefly: Who?"}
    assert variants["template"][0] == {"prompt": "Question: Who?\nAnswer:", "completion": " Ann"}


def test_recall_of_the_memorised_model_is_full(memorised):
    rows = Dataset.from_list([f.row() for f in memorised.facts[:8]])
    assert recall(copy.deepcopy(memorised.model), memorised.tokenizer, rows) == 1.0


def test_mia_probe_tells_memorised_rows_from_unseen_ones(memorised):
    forget, _ = split_facts(memorised.facts)
    members = Dataset.from_list([f.row() for f in forget])
    # the same questions with answers the model never saw (each fact's answer moved to the next question)
    unseen = Dataset.from_list([{"prompt": f.prompt, "completion": g.completion}
                                for f, g in zip(forget, forget[1:] + forget[:1], strict=True)])
    result = mia_probe(memorised.model, memorised.tokenizer, members, unseen)
    assert result.value >= 0.9 and result.passed is False  # memorised rows stand out
    assert "base_auc" not in result.details  # a plain model: no adapter to switch off
    skipped = mia_probe(memorised.model, memorised.tokenizer, members, None)
    assert skipped.passed is None and "holdout" in skipped.note
