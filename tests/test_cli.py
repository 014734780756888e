"""The command line and the example scripts, run in-process on the tiny memorised model."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from lune_hf.cli import main
from lune_hf.config import LuneConfig
from lune_hf.report import MARKDOWN_FILE, PLOT_FILE, REPORT_FILE, read_report

ROOT = Path(__file__).resolve().parents[1]


def test_train_reads_the_recipe_and_flags_then_eval_measures(demo_files, tmp_path, capsys):
    out = tmp_path / "trained"
    code = main([
        "train", "--config", str(ROOT / "recipes" / "demo.yaml"),
        "--model_name_or_path", str(demo_files / "base_model"),
        "--forget_data", str(demo_files / "data" / "forget.jsonl"),
        "--retain_data", str(demo_files / "data" / "retain.jsonl"),
        "--output_dir", str(out), "--use_cpu", "true", "--disable_tqdm", "true",
    ])
    assert code == 0
    report = read_report(out)
    assert report["status"] == "forgotten"
    # the recipe is the defaults written out: a 2-layer model trained from scratch forgets within its step budget
    assert report["hyperparameters"]["learning_rate"] == 1e-3 and report["hyperparameters"]["budget_steps"] == 1000
    assert report["evaluation"]["after"]["forget/recalled"] <= 0.1  # the default forget target stopped it
    assert (out / "adapter_model.safetensors").is_file() and (out / MARKDOWN_FILE).is_file()

    results = tmp_path / "eval.json"
    eval_args = ["eval", "--model", str(demo_files / "base_model"), "--adapter", str(out),
                 "--forget", str(demo_files / "data" / "forget.jsonl"),
                 "--retain", str(demo_files / "data" / "retain.jsonl"), "--json", str(results)]
    assert main([*eval_args, "--max-new-tokens", "6"]) == 0
    payload = json.loads(results.read_text())
    assert payload["rows"] == {"forget": 12, "retain": 108}
    assert payload["results"]["forget/exact_match"] <= 0.1
    assert payload["results"]["retain/exact_match"] >= 0.9
    assert "forget/rouge_l" in capsys.readouterr().out

    # the report's "after" is what the saved adapter measures once reloaded, on the checks' rows and settings
    assert main([*eval_args, "--max-rows", str(LuneConfig.forget_eval_max_rows)]) == 0
    reloaded = json.loads(results.read_text())["results"]
    after = report["evaluation"]["after"]
    assert set(after) <= set(reloaded)
    assert {k: reloaded[k] for k in after} == pytest.approx(after, abs=1e-4)


def test_train_names_a_missing_column(demo_files, tmp_path, capsys):
    assert main(["train", "--model_name_or_path", str(demo_files / "base_model"),
                 "--forget_data", str(demo_files / "data" / "forget.jsonl"), "--prompt_column", "question",
                 "--output_dir", str(tmp_path), "--use_cpu", "true"]) == 2
    err = capsys.readouterr().err
    assert "forget.jsonl: no column 'question'; columns present: ['prompt', 'completion']" in err
    assert "Traceback" not in err


def test_drop_in_script_unlearns_with_an_ordinary_trainer_setup(demo_files, tmp_path, monkeypatch, memorised):
    from lune_hf.callbacks import ForgetRetainCallback
    from lune_hf.data import load_rows
    from lune_hf.hub import load_unlearned

    out = tmp_path / "drop-in"
    monkeypatch.setattr(sys, "argv", ["drop_in.py", "--model", str(demo_files / "base_model"),
                                      "--train-data", str(demo_files / "data" / "retain.jsonl"),
                                      "--forget-data", str(demo_files / "data" / "forget.jsonl"),
                                      "--output-dir", str(out)])
    runpy.run_path(str(ROOT / "recipes" / "drop_in.py"), run_name="__main__")
    model, tokenizer = load_unlearned(out, base_model=str(demo_files / "base_model"))
    cb = ForgetRetainCallback(load_rows(demo_files / "data" / "forget.jsonl"),
                              load_rows(demo_files / "data" / "retain.jsonl"), tokenizer=tokenizer,
                              metrics=("exact_match",), max_new_tokens=6)
    results = cb.evaluate(model)
    assert results["forget/exact_match"] <= 0.1 and results["retain/exact_match"] >= 0.9


def test_unknown_command_exits_2(capsys):
    assert main(["forget-everything"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.xdist_group("demo")
def test_demo_meets_its_thresholds(demo_run):
    result, out = demo_run
    assert result.after["forget/exact_match"] <= 0.1
    assert result.after["retain/exact_match"] >= 0.9 * result.before["retain/exact_match"]
    assert "forget/exact_match" in out and "sample answers" in out and MARKDOWN_FILE in out
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", REPORT_FILE, PLOT_FILE):
        assert (result.output_dir / name).is_file(), name
    # the folder's README.md is the unlearning card with the run's numbers, not peft's placeholder
    card = (result.output_dir / "README.md").read_text(encoding="utf-8")
    key = "forget/exact_match"
    assert f"| {key} | {result.before[key]:.3f} | {result.after[key]:.3f} |" in card
    assert "Model Card for Model ID" not in card
    assert "README.md" in read_report(result.output_dir)["files"]


@pytest.mark.parametrize("command", ["demo", "train", "eval", "card", "publish", "pull", "estimate-memory"])
def test_every_subcommand_prints_its_help(command, capsys):
    """argparse formats help with `%`: a bare percent sign in a field's help broke `lune-hf train --help`."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert f"lune-hf {command}" in out
    if command == "train":
        assert "--negative_weight" in out and "5%)" in out
