"""What lune-hf guarantees: lose nothing, leak nothing, run nothing, and say clearly what is wrong with the input.

Each test is one promise (the README's "What lune-hf guarantees" lists them); the Hub ones run against the loopback
test server, with its fault injection.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import pytest
from conftest import Poison, rows
from datasets import Dataset
from filelock import FileLock
from fixtures_hub import FAKE_HUB_TOKEN
from huggingface_hub import ModelCard
from transformers import TrainerCallback

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.data import build_unlearning_dataset, load_rows
from lune_hf.hub import PublishError, load_unlearned, publish
from lune_hf.report import PLOT_FILE, REPORT_FILE, read_report
from lune_hf.trainer import LOCK_FILE, NonFiniteLossError

pytestmark = pytest.mark.xdist_group("reliability")  # its module fixtures run once, on one worker

BASE_ID = "org/tiny-base"


def _config(out: Path, **kw) -> LuneConfig:
    kw.setdefault("forget_eval_steps", 0)
    kw.setdefault("max_steps", 2)
    return LuneConfig(output_dir=str(out), use_cpu=True, report_to="none", disable_tqdm=True, **kw)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(model, facts, tok, out: Path, **kw) -> LuneTrainer:
    trainer = LuneTrainer(copy.deepcopy(model), _config(out, **kw), train_dataset=rows(facts[:8]),
                          retain_dataset=rows(facts[8:24]), processing_class=tok)
    trainer.train()
    trainer.save_model()
    return trainer


# ---- 1, 2: nothing lost -------------------------------------------------------------------------


def test_1_a_failing_run_never_replaces_a_finished_one(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    out = tmp_path / "run"
    _run(tiny_model, facts, tok, out)
    finished = _digest(out)
    trainer = LuneTrainer(copy.deepcopy(tiny_model), _config(out, max_steps=5), train_dataset=rows(facts[:8]),
                          processing_class=tok)
    trainer.add_callback(Poison(trainer))
    with pytest.raises(FileExistsError, match="holds the results of another run"):
        trainer.train()
    assert _digest(out) == finished and read_report(out)["status"] == "completed"
    # told to overwrite, the failing run may replace it, and says it failed
    trainer = LuneTrainer(copy.deepcopy(tiny_model), _config(out, max_steps=5, overwrite_output_dir=True),
                          train_dataset=rows(facts[:8]), processing_class=tok)
    trainer.add_callback(Poison(trainer))
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert read_report(out)["status"] == "failed"


def test_1_a_card_that_fails_to_write_leaves_the_previous_card_whole(tiny, tiny_model, tmp_path, monkeypatch):
    facts, tok = tiny
    out = tmp_path / "run"
    trainer = _run(tiny_model, facts, tok, out)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "forget" in card

    unwritable = ModelCard("---\nlicense: mit\n---\n\ud800")  # cannot be encoded: the write fails part-way
    monkeypatch.setattr("lune_hf.card.render_card", lambda *a, **k: unwritable)
    with pytest.raises(UnicodeEncodeError):
        trainer.save_model()
    after = (out / "README.md").read_text(encoding="utf-8")
    # peft's save refreshes the front matter of an existing card; the body, the run's card, stays whole
    assert after.split("\n---\n", 1)[1] == card.split("\n---\n", 1)[1]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("README.md", REPORT_FILE):  # written like any file: readable by whom the umask allows
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_2_a_reused_folder_is_refused_unless_overwritten_and_checkpoints_never_mix(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    out = tmp_path / "run"
    _run(tiny_model, facts, tok, out)
    with pytest.raises(FileExistsError, match=r"adapter_model.safetensors.*overwrite_output_dir=True"):
        _run(tiny_model, facts, tok, out)
    _run(tiny_model, facts, tok, out, overwrite_output_dir=True)
    # a folder holding another run's checkpoints: resuming from it would mix runs
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-50").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="checkpoint-50"):
        _run(tiny_model, facts, tok, ckpt)


def test_2_a_second_concurrent_run_into_one_folder_is_stopped(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE)):  # another run holds the folder
        with pytest.raises(RuntimeError, match="in use by another run"):
            _run(tiny_model, facts, tok, out)
    assert not (out / "adapter_model.safetensors").exists()
    _run(tiny_model, facts, tok, out)  # once it is free, the run goes ahead


def test_2_publish_uploads_exactly_the_files_this_run_wrote(tiny, tiny_model, tmp_path, fake_hub):
    facts, tok = tiny
    out = tmp_path / "run"
    _run(tiny_model, facts, tok, out, forget_eval_steps=1)  # with checks: a plot
    assert (out / PLOT_FILE).is_file()
    _run(tiny_model, facts, tok, out, overwrite_output_dir=True)  # no checks, no plot: the old one stays on disk
    assert (out / PLOT_FILE).is_file() and PLOT_FILE not in read_report(out)["files"]
    publish(out, "me/manifest", base_model=BASE_ID, token=FAKE_HUB_TOKEN, endpoint=fake_hub.endpoint,
            allow_unverified=True)
    assert PLOT_FILE not in fake_hub.files("me/manifest")


# ---- 3: a failed publish leaves nothing behind --------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished run's folder; its base model saved beside it (`../base`)."""
    from lune_hf.testing.synthetic import build_tiny_model

    facts, tok = tiny
    root = tmp_path_factory.mktemp("finished")
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    _run(model, facts, tok, root / "run")
    return root / "run"


def test_3_a_failed_publish_deletes_the_repo_it_created_and_only_that(finished, fake_hub, hub_no_retry_sleep):
    fake_hub.fail_next("commit", 500, count=100)
    with pytest.raises(PublishError, match="that this call had created was deleted"):
        publish(finished, "me/new-repo", base_model=BASE_ID, token=FAKE_HUB_TOKEN, endpoint=fake_hub.endpoint,
                allow_unverified=True)
    assert not fake_hub.has_repo("me/new-repo")
    fake_hub.clear_faults()
    fake_hub.add_repo("me/existing", {"keep.txt": b"mine"})
    fake_hub.drop_next("commit", count=100)
    with pytest.raises(PublishError, match="Nothing was committed to me/existing"):
        publish(finished, "me/existing", base_model=BASE_ID, token=FAKE_HUB_TOKEN, endpoint=fake_hub.endpoint,
                allow_unverified=True)
    assert fake_hub.files("me/existing")["keep.txt"] == b"mine"


# ---- 4, 5, 6: nothing leaks ---------------------------------------------------------------------


def test_4_a_token_from_the_environment_is_never_published(finished, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HUB_TOKEN)
    with pytest.raises(PublishError, match=r"a Hub token found in \['README.md'\]"):
        publish(finished, "me/leak", base_model=BASE_ID, endpoint=fake_hub.endpoint, allow_unverified=True,
                summary=f"pasted by mistake: {FAKE_HUB_TOKEN}")
    assert not fake_hub.has_repo("me/leak")


def test_5_forget_text_is_found_through_json_escapes_case_and_tokenizer_files(tiny, tiny_model, tmp_path, fake_hub):
    facts, tok = tiny
    out = tmp_path / "run"
    _run(tiny_model, facts, tok, out)
    report = json.loads((out / REPORT_FILE).read_text())
    report["status_detail"] = "notes on Élodie Durand"
    (out / REPORT_FILE).write_text(json.dumps(report))  # ensure_ascii: written as \u00c9lodie
    assert "Élodie" not in (out / REPORT_FILE).read_text()
    kw = dict(base_model=BASE_ID, token=FAKE_HUB_TOKEN, endpoint=fake_hub.endpoint, allow_unverified=True)
    with pytest.raises(PublishError, match=rf"forget-set text found in \['{REPORT_FILE}'\]"):
        publish(out, "me/escaped", forget_texts=["ÉLODIE DURAND"], **kw)
    # a tokenizer built on the forget data holds its words
    with pytest.raises(PublishError, match=r"tokenizer.json.*publish without the tokenizer"):
        publish(out, "me/tok", forget_texts=[facts[0].prompt + facts[0].completion], include_tokenizer=True, **kw)
    assert not fake_hub.has_repo("me/escaped") and not fake_hub.has_repo("me/tok")


def test_6_the_hub_token_is_never_written_by_save(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    secret = "hf_secret_never_on_disk_42"
    trainer = _run(tiny_model, facts, tok, tmp_path / "run", hub_token=secret, save_strategy="steps", save_steps=1)
    assert trainer.args.hub_token == secret  # still usable by this process
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# ---- 7, 8: no one else's code runs; the Trainer's Hub path is ours --------------------------------


def test_7_a_hostile_adapter_repo_runs_no_code_and_downloads_only_adapter_files(finished, fake_hub, tmp_path,
                                                                                 monkeypatch):
    base = finished.parent / "base"
    fake_hub.add_repo(BASE_ID, {p.name: p.read_bytes() for p in base.iterdir()})
    config = json.loads((finished / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "../../home/someone/base"
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    fake_hub.add_repo("evil/adapter", {
        "adapter_model.safetensors": (finished / "adapter_model.safetensors").read_bytes(),
        "adapter_config.json": json.dumps(config).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config).encode(),
        "tokenizer.json": (base / "tokenizer.json").read_bytes(),
        "evil.py": b"raise SystemExit('repo code ran')\n",
        "pytorch_model.bin": b"pickle" * 100,
        "junk.dat": b"x" * 300_000,
    })
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked the user whether to run repo code"))
    kw = dict(endpoint=fake_hub.endpoint, token=FAKE_HUB_TOKEN, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="path on someone else's machine"):
        load_unlearned("evil/adapter", **kw)
    try:
        load_unlearned("evil/adapter", base_model=BASE_ID, **kw)
    except ValueError as err:  # refusing the auto_map is fine; running or prompting is not
        assert "trust_remote_code" in str(err) or "remote" in str(err)
    downloaded = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert not {"evil.py", "pytorch_model.bin", "junk.dat"} & downloaded


def test_8_the_trainers_own_push_goes_through_publish(tiny, tiny_model, tmp_path, fake_hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake_hub.endpoint)
    facts, tok = tiny
    trainer = LuneTrainer(copy.deepcopy(tiny_model),
                          _config(tmp_path / "run", push_to_hub=True, hub_model_id="me/pushed",
                                  hub_token=FAKE_HUB_TOKEN),
                          train_dataset=rows(facts[:8]), processing_class=tok)
    assert not fake_hub.has_repo("me/pushed")  # nothing is created before there is a result
    trainer.train()
    with pytest.raises(PublishError, match="not shown to forget"):  # the same refusal as publish
        trainer.save_model()
    trainer.push_to_hub(dataset_name="company-facts", tags=["x"], base_model=BASE_ID, allow_unverified=True)
    files = fake_hub.files("me/pushed")
    assert set(files) <= {".gitattributes", "adapter_model.safetensors", "adapter_config.json", "README.md",
                          REPORT_FILE, PLOT_FILE}
    assert b"Unverified unlearning" in files["README.md"] and b"company-facts" in files["README.md"]
    trainer.create_model_card(dataset_name="company-facts", model_name="x")  # the keywords TRL passes
    assert "Unverified unlearning" in (tmp_path / "run" / "README.md").read_text()


# ---- 9: bad input: a clear error, before any model loads ----------------------------------------


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "the file is empty"),
    ("blank.jsonl", b"\n  \n\n", "the file is empty"),
    ("latin1.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n',
     r"line 2: not UTF-8"),
    ("broken.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', r"line 2: not a JSON object"),
    ("ragged.csv", b"prompt,completion\na,b\nc,d,e\n", r"line 3: 3 fields where the header has 2"),
])
def test_9_bad_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name}.*{message}"):
        load_rows(path)


@pytest.mark.parametrize("data, row", [
    ([{"prompt": "q", "completion": 7}], 0),
    ([{"prompt": "q", "completion": {"a": 1}}], 0),
    ([{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": None}], 1),
])
def test_9_bad_values_name_the_row_and_column_before_the_model_loads(data, row, tmp_path):
    # the model id does not exist: reaching it would raise a different error
    with pytest.raises(ValueError, match=rf"forget row {row}: `completion` is"):
        LuneTrainer("no-such/model-id", _config(tmp_path), train_dataset=Dataset.from_list(data))


@pytest.mark.parametrize("field, value, message", [
    ("beta", math.nan, "beta must be a finite number"),
    ("retain_weight", math.inf, "retain_weight must be a finite number"),
    ("retain_weight", -1.0, "retain_weight must be >= 0"),
    ("preserve_weight", -0.5, "preserve_weight must be >= 0"),
    ("max_steps", 0, "max_steps=0 would train nothing"),
])
def test_9_bad_settings_are_refused_by_the_config(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        LuneConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize("objective, beta", [("lune", 0.1), ("npo", 0.1), ("idk_dpo", 0.1), ("simnpo", 2.5)])
def test_beta_defaults_to_the_objectives_own_and_an_explicit_value_wins(tmp_path, objective, beta):
    # SimNPO's per-token term at 0.1 would hardly saturate (close to gradient ascent): it gets its paper's 2.5
    assert LuneConfig(output_dir=str(tmp_path), objective=objective).beta == beta
    assert LuneConfig(output_dir=str(tmp_path), objective=objective, beta=0.7).beta == 0.7


def test_9_the_non_finite_message_never_suggests_the_objective_in_use(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    trainer = LuneTrainer(tiny_model, _config(tmp_path / "npo", objective="npo", max_steps=5),
                          train_dataset=rows(facts[:8]), processing_class=tok)
    trainer.add_callback(Poison(trainer))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    assert "such as 'npo'" not in str(info.value) and "Lower the learning rate" in str(info.value)


def test_9_answers_cut_by_max_length_are_counted(tiny, caplog):
    facts, tok = tiny
    longest_prompt = max(len(tok(f.prompt)["input_ids"]) for f in facts[:4])
    with caplog.at_level(logging.WARNING, logger="lune_hf.data"):  # one answer token fits, the rest is cut
        build_unlearning_dataset(rows(facts[:4]), tok, max_length=longest_prompt + 1, uses_answer=True,
                                 uses_replacement=False, refusals=["no"])
    assert f"4 answer(s) of the forget set were cut to fit max_length={longest_prompt + 1}" in caplog.text


def test_9_resume_from_checkpoint_true_resumes_the_latest(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    out = tmp_path / "run"
    first = LuneTrainer(copy.deepcopy(tiny_model), _config(out, max_steps=2, save_strategy="steps", save_steps=2),
                        train_dataset=rows(facts[:8]), processing_class=tok)
    first.train()
    assert (out / "checkpoint-2").is_dir()
    again = LuneTrainer(copy.deepcopy(tiny_model), _config(out, max_steps=3, save_strategy="steps", save_steps=2),
                        train_dataset=rows(facts[:8]), processing_class=tok)
    started = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            started.append(state.global_step)

    again.add_callback(Record())
    again.train(resume_from_checkpoint="true")  # what `--resume_from_checkpoint true` passes
    assert again.state.global_step == 3 and started == [2]  # steps 1-2 came from checkpoint-2
