""""Change one class name": the scripts people have (plain Trainer on tokenised text, TRL's SFTTrainer), raw-text
forget sets, validation sets, and the messages a swapped script meets."""

from __future__ import annotations

import copy
import json
import logging
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import rows
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments
from trl import SFTConfig

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.cli import main
from lune_hf.data import DEFAULT_TEXT_PREFIX_TOKENS, RETAIN_PREFIX, build_unlearning_dataset, default_refusals
from lune_hf.evaluator import Evaluator
from lune_hf.outcome import Verdict
from lune_hf.report import read_report
from lune_hf.testing.synthetic import build_tiny_model, memorise

pytestmark = pytest.mark.xdist_group("drop_in")  # its module fixtures run once, on one worker

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, **kw) -> LuneConfig:
    return LuneConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", disable_tqdm=True, **kw)


def _tokenised(tokenizer, facts) -> Dataset:
    """What `dataset.map(lambda b: tokenizer(b["text"]))` gives: input_ids and attention_mask, no labels."""
    return Dataset.from_list([dict(tokenizer(f.prompt + f.completion)) for f in facts])


# ---- data formats ---------------------------------------------------------------------------------


def test_tokenised_retain_rows_without_labels_train_every_token(memorised):
    tok, facts = memorised.tokenizer, memorised.facts
    retain = _tokenised(tok, facts[8:12])
    data = build_unlearning_dataset(rows(facts[:4]), tok, max_length=64, uses_answer=False, uses_replacement=True,
                                    refusals=default_refusals(), retain=retain)
    for item in data.retain:
        ids, labels = item[f"{RETAIN_PREFIX}_input_ids"], item[f"{RETAIN_PREFIX}_labels"]
        # DataCollatorForLanguageModeling labels every token; the first one is never predicted (nothing before it)
        assert labels[1:] == ids[1:] and ids in [r["input_ids"] for r in retain]


def test_tokenised_retain_loss_equals_the_language_modelling_loss(memorised, memorised_copy, tmp_path):
    """LuneTrainer's retain term on a validation set = the loss a plain Trainer + LM collator computes."""
    tok, facts = memorised.tokenizer, memorised.facts
    valid = _tokenised(tok, facts[20:28])
    trainer = LuneTrainer(memorised_copy, _config(tmp_path, per_device_eval_batch_size=8),
                          train_dataset=rows(facts[:4]), eval_dataset=valid, processing_class=tok)
    ours = trainer.evaluate()["eval_loss"]
    trainer.model.eval()
    per_row = []  # LuneTrainer averages over rows (each row's mean token NLL), like every lune-hf loss
    for r in valid:
        with torch.no_grad():
            per_row.append(trainer.model(**DataCollatorForLanguageModeling(tok, mlm=False)([dict(r)])).loss.item())
    assert ours == pytest.approx(sum(per_row) / len(per_row), rel=1e-4)


@pytest.fixture(scope="module")
def text_model(memorised):
    """A tiny model that has memorised whole passages of three facts each (every token, as run_clm trains)."""
    tok = memorised.tokenizer
    facts = [f.prompt + f.completion for f in memorised.facts]
    texts = [" ".join(facts[i:i + 3]) for i in range(0, len(facts), 3)]
    model = build_tiny_model(len(tok), seed=1)
    memorise(model, tok, [{"prompt": "", "completion": t} for t in texts], steps=400, seed=1)
    return model, tok, texts


def test_raw_text_rows_are_forgotten_verbatim(text_model, tmp_path):
    model, tok, texts = text_model
    forget = Dataset.from_list([{"text": t} for t in texts[:8]])
    retain = Dataset.from_list([{"text": t} for t in texts[8:]])
    sets = {"forget": forget, "retain": retain}
    before = Evaluator(sets, tok, metrics=("rouge_l", "recalled")).evaluate(model)
    # verbatim continuation: given the first tokens, the model still writes the rest of each passage
    assert before["forget/recalled"] >= 0.75 and before["retain/recalled"] >= 0.75
    # a model trained from scratch on these texts needs a higher rate than a pretrained one
    trainer = LuneTrainer(copy.deepcopy(model), _config(tmp_path, learning_rate=5e-3), train_dataset=forget,
                          retain_dataset=retain, processing_class=tok)
    trainer.train()
    assert trainer.outcome.verdict is Verdict.FORGOTTEN
    after = Evaluator(sets, tok, metrics=("rouge_l", "recalled")).evaluate(trainer.model)
    assert after["forget/recalled"] <= 0.1 and after["retain/recalled"] >= 0.9 * before["retain/recalled"]


def test_raw_text_splits_for_replacement_objectives_and_trains_whole_for_the_others(text_model):
    _, tok, texts = text_model
    forget = Dataset.from_list([{"text": t} for t in texts[:2]])
    ids = tok(texts[0])["input_ids"]
    cut = min(DEFAULT_TEXT_PREFIX_TOKENS, len(ids) // 2)
    lune = build_unlearning_dataset(forget, tok, max_length=64, uses_answer=True, uses_replacement=True,
                                    refusals=["I don't know."], text_prefix_tokens=DEFAULT_TEXT_PREFIX_TOKENS)
    row = lune[0]
    assert row["forget_input_ids"] == ids and row["forget_labels"] == [-100] * cut + ids[cut:]
    refusal = tok("I don't know.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["replacement_input_ids"] == ids[:cut] + refusal
    ga = build_unlearning_dataset(forget, tok, max_length=64, uses_answer=True, uses_replacement=False,
                                  refusals=["x"])
    assert ga[0]["forget_labels"] == [-100] + ids[1:]


def test_run_clm_style_forget_rows_are_read_as_text_and_said_so(memorised, memorised_copy, tmp_path, caplog):
    tok, facts = memorised.tokenizer, memorised.facts
    clm = _tokenised(tok, facts[:4]).map(lambda r: {"labels": r["input_ids"]})
    with caplog.at_level(logging.WARNING, logger="lune_hf.trainer"):
        trainer = LuneTrainer(memorised_copy, _config(tmp_path, forget_eval_steps=0), train_dataset=clm,
                              processing_class=tok)
    assert "4 of 4 tokenised forget rows have no prompt" in caplog.text
    ids = clm[0]["input_ids"]
    cut = min(DEFAULT_TEXT_PREFIX_TOKENS, len(ids) // 2)
    assert trainer.train_dataset[0]["replacement_input_ids"][:cut] == ids[:cut]


def test_bad_rows_name_the_set_row_and_column(memorised):
    tok = memorised.tokenizer
    kw = dict(max_length=64, uses_answer=True, uses_replacement=True, refusals=["no"])
    with pytest.raises(ValueError, match=r"forget row 1: `completion` is NoneType None"):
        build_unlearning_dataset(Dataset.from_list([{"prompt": "a", "completion": "b"},
                                                    {"prompt": "a", "completion": None}]), tok, **kw)
    with pytest.raises(ValueError, match=r"forget row 0: `completion` is int 7"):
        build_unlearning_dataset(Dataset.from_list([{"prompt": "a", "completion": 7}]), tok, **kw)
    with pytest.raises(ValueError, match=r"forget row 0: `text` is str ''"):
        build_unlearning_dataset(Dataset.from_list([{"text": ""}]), tok, **kw)
    with pytest.raises(ValueError, match=r"none of the columns .* present: \['question'\].*raw `text`"):
        build_unlearning_dataset(Dataset.from_list([{"question": "a"}]), tok, **kw)


# ---- eval_dataset ---------------------------------------------------------------------------------


def test_eval_dataset_is_a_validation_set_or_a_dict_of_named_sets(memorised, memorised_copy, tmp_path):
    tok, facts = memorised.tokenizer, memorised.facts
    trainer = LuneTrainer(memorised_copy, _config(tmp_path, forget_eval_steps=0), train_dataset=rows(facts[:4]),
                          retain_dataset=rows(facts[4:20]),
                          eval_dataset={"forget": rows(facts[:4]), "retain": rows(facts[20:28])},
                          processing_class=tok)
    metrics = trainer.evaluate()
    assert {"eval_forget_loss", "eval_retain_loss"} <= set(metrics)
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    # the forget set is scored with the objective's forget term (NLL of the refusal), the retain one with NLL
    assert logged["eval_forget_loss"] == pytest.approx(logged["eval_forget_loss/forget"], rel=1e-5)
    assert logged["eval_retain_loss"] == pytest.approx(logged["eval_retain_loss/retain"], rel=1e-5)
    assert logged["eval_retain_loss"] < 0.5 < logged["eval_forget_loss"]  # memorised answers vs unseen refusals


def test_a_bad_eval_set_is_named(memorised, memorised_copy, tmp_path):
    tok, facts = memorised.tokenizer, memorised.facts
    with pytest.raises(ValueError, match=r"eval_dataset\['retain'\] set has no column 'completion'"):
        LuneTrainer(memorised_copy, _config(tmp_path), train_dataset=rows(facts[:4]), processing_class=tok,
                    eval_dataset={"retain": Dataset.from_list([{"prompt": "a"}])})


# ---- TRL's SFTTrainer arguments and SFTConfig -----------------------------------------------------


def test_sft_trainer_keywords_and_config_fields(memorised, memorised_copy, tmp_path, caplog):
    tok, facts = memorised.tokenizer, memorised.facts
    config = SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, report_to="none", packing=True,
                       eos_token="<eos>", dataset_text_field="content", max_length=96, max_steps=1)
    forget = Dataset.from_list([{"content": f.prompt + f.completion} for f in facts[:4]])
    with caplog.at_level(logging.WARNING, logger="lune_hf.trainer"):
        trainer = LuneTrainer(memorised_copy, config, train_dataset=forget, processing_class=tok,
                              peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
                              compute_loss_func=lambda *a, **k: 0.0, compute_metrics=lambda p: {})
    warning = caplog.text
    assert "packing=True" in warning and "eos_token='<eos>'" in warning and "compute_loss_func" in warning
    assert "compute_metrics" in warning and "dataset_text_field" not in warning  # honoured: `content` is the text
    assert trainer.args.max_length == 96 and trainer.model.peft_config["default"].r == 4
    assert trainer.train_dataset[0]["replacement_input_ids"]  # the text column was read


def test_formatting_func_turns_rows_into_text(memorised, memorised_copy, tmp_path):
    tok, facts = memorised.tokenizer, memorised.facts
    seen = []

    def formatting_func(row):
        seen.append(row["prompt"])
        return row["prompt"] + row["completion"]

    trainer = LuneTrainer(memorised_copy, _config(tmp_path, forget_eval_steps=0), train_dataset=rows(facts[:4]),
                          processing_class=tok, formatting_func=formatting_func)
    assert len(seen) >= 4
    ids = tok(facts[0].prompt + facts[0].completion)["input_ids"]
    cut = min(DEFAULT_TEXT_PREFIX_TOKENS, len(ids) // 2)  # a raw text: its first tokens are the prompt
    assert trainer.train_dataset[0]["replacement_input_ids"][:cut] == ids[:cut]


# ---- the two ordinary scripts, swapped ----------------------------------------------------------


@pytest.mark.parametrize("script", ["trainer_lm.py", "sft_trainer.py"])
def test_ordinary_scripts_run_with_lune_trainer(script, demo_files, tmp_path, monkeypatch, caplog):
    out = tmp_path / script
    monkeypatch.setattr(sys, "argv", [script, "--model", str(demo_files / "base_model"),
                                      "--train-data", str(demo_files / "data" / "retain.jsonl"),
                                      "--forget-data", str(demo_files / "data" / "forget.jsonl"),
                                      "--output-dir", str(out), "--max-steps", "3"])
    with caplog.at_level(logging.WARNING, logger="lune_hf.trainer"):
        runpy.run_path(str(ROOT / "recipes" / script), run_name="__main__")
    report = read_report(out)
    assert report["global_step"] <= 3 and report["outcome"] is not None
    assert (out / "adapter_model.safetensors").is_file()
    expected = "DataCollatorForLanguageModeling" if script == "trainer_lm.py" else "packing=True"
    assert expected in caplog.text
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base) == (demo_files / "base_model").resolve()


# ---- small items --------------------------------------------------------------------------------


def test_demo_tokenizer_decodes_refusals_as_written(memorised, tmp_path):
    memorised.tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # as the demo's saved tokenizer loads
    refusals = default_refusals()
    assert "I don't know." in refusals
    for text in refusals:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("argv, message", [
    (["card", "no-such-folder", "me/forget-x"], "no-such-folder"),
    (["eval", "--model", "no-such-model-folder", "--forget", "missing.jsonl"], "missing.jsonl"),
])
def test_cli_user_errors_exit_2_without_a_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"lune-hf {argv[0]}: error:" in err and message in err and "Traceback" not in err


def test_plain_training_arguments_keep_their_values(memorised, memorised_copy, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "o"), learning_rate=3e-4, use_cpu=True, report_to="none")
    trainer = LuneTrainer(memorised_copy, args, train_dataset=rows(memorised.facts[:4]),
                          processing_class=memorised.tokenizer)
    assert isinstance(trainer.args, LuneConfig) and trainer.args.learning_rate == 3e-4
