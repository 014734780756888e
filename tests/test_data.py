"""Data handling: formats, prompt masking, pairing, and clear errors before any training."""

from __future__ import annotations

import pytest
from conftest import rows
from datasets import Dataset

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.data import UnlearningCollator, build_unlearning_dataset, default_refusals, load_rows
from lune_hf.testing.synthetic import build_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<bos> assistant : {% endif %}"
)


def cfg(tmp_path, **kw):
    return LuneConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1, forget_eval_steps=0,
                      **kw)


def test_prompt_tokens_are_masked(tiny):
    facts, tok = tiny
    ds = build_unlearning_dataset(rows(facts[:2]), tok, max_length=64, uses_answer=True, uses_replacement=True,
                                  refusals=["I have no information"])
    item = ds[0]
    n_prompt = len(tok(facts[0].prompt)["input_ids"])
    assert item["forget_labels"][:n_prompt] == [-100] * n_prompt
    answer = item["forget_labels"][n_prompt:]
    assert tok.decode(answer, skip_special_tokens=True) == facts[0].answer
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(item["replacement_labels"][n_prompt:], skip_special_tokens=True) == "I have no information"


def test_replacement_column_wins_over_refusals(tiny):
    facts, tok = tiny
    data = rows(facts[:2]).add_column("replacement", [" lamps", None])
    ds = build_unlearning_dataset(data, tok, max_length=64, uses_answer=False, uses_replacement=True,
                                  refusals=["I have no information"])
    def answer(i):
        return tok.decode([t for t in ds[i]["replacement_labels"] if t != -100], skip_special_tokens=True)

    assert answer(0) == "lamps"
    assert answer(1) == "I have no information"


def test_retain_pairing_cycles_through_every_retain_row(tiny):
    facts, tok = tiny
    ds = build_unlearning_dataset(rows(facts[:4]), tok, max_length=64, uses_answer=True, uses_replacement=False,
                                  refusals=["x"], retain=rows(facts[4:16]), seed=3)
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen |= {tuple(ds[i]["retain_input_ids"]) for i in range(4)}
    assert len(seen) == 12
    ds.set_epoch(0)
    again = build_unlearning_dataset(rows(facts[:4]), tok, max_length=64, uses_answer=True, uses_replacement=False,
                                     refusals=["x"], retain=rows(facts[4:16]), seed=3)
    assert [again[i] for i in range(4)] == [ds[i] for i in range(4)], "pairing must depend only on seed and epoch"


def test_collator_pads_each_group(tiny):
    facts, tok = tiny
    ds = build_unlearning_dataset(rows(facts[:3]), tok, max_length=64, uses_answer=True, uses_replacement=True,
                                  refusals=default_refusals()[:1], retain=rows(facts[3:6]))
    batch = UnlearningCollator(tok.pad_token_id)([ds[i] for i in range(3)])
    for prefix in ("forget", "replacement", "retain"):
        ids, mask, labels = (batch[f"{prefix}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
        assert ids.shape == mask.shape == labels.shape
        assert ((mask == 0) <= (labels == -100)).all(), "padding must never be a target"


def test_conversational_rows_use_the_chat_template(tiny):
    facts, tok = tiny
    tok = build_tokenizer([f.prompt + f.completion for f in facts] + ["user assistant :"])
    tok.chat_template = CHAT_TEMPLATE
    convo = Dataset.from_list([{"messages": [{"role": "user", "content": facts[0].prompt},
                                             {"role": "assistant", "content": facts[0].answer}]}])
    ds = build_unlearning_dataset(convo, tok, max_length=64, uses_answer=True, uses_replacement=True,
                                  refusals=["I have no information"])
    labels = [t for t in ds[0]["forget_labels"] if t != -100]
    assert tok.decode(labels, skip_special_tokens=True) == facts[0].answer
    refusal = [t for t in ds[0]["replacement_labels"] if t != -100]
    assert tok.decode(refusal, skip_special_tokens=True) == "I have no information"


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_load_rows_reads_every_file_type(tiny, tmp_path, suffix):
    facts, _ = tiny
    data = rows(facts[:3])
    path = tmp_path / f"forget.{suffix}"
    {"json": lambda: data.to_json(path, lines=False), "jsonl": lambda: data.to_json(path),
     "csv": lambda: data.to_csv(path), "parquet": lambda: data.to_parquet(path)}[suffix]()
    loaded = load_rows(path)
    assert loaded["prompt"] == data["prompt"] and loaded["completion"] == data["completion"]


def test_unsupported_file_type_is_named(tmp_path):
    path = tmp_path / "forget.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"forget\.txt.*unsupported"):
        load_rows(path)


# ---- bad input fails before training -------------------------------------------------------------


def test_empty_forget_set(tiny, tiny_model, tmp_path):
    _, tok = tiny
    with pytest.raises(ValueError, match="forget set is empty"):
        LuneTrainer(tiny_model, cfg(tmp_path), train_dataset=Dataset.from_list([]), processing_class=tok)


def test_missing_column_is_named_with_columns_present(tiny, tiny_model, tmp_path):
    _, tok = tiny
    bad = Dataset.from_list([{"question": "Q: x ? A:", "completion": " y"}])
    with pytest.raises(ValueError, match=r"no column 'prompt'.*\['completion', 'question'\]"):
        LuneTrainer(tiny_model, cfg(tmp_path), train_dataset=bad, processing_class=tok)


def test_prompt_that_leaves_no_room_for_the_answer_names_the_row(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    data = [f.row() for f in facts[:3]]
    data[2]["prompt"] = " ".join([facts[0].prompt] * 10)
    with pytest.raises(ValueError, match=r"forget row 2.*: the prompt has \d+ tokens.*max_length=20"):
        LuneTrainer(tiny_model, cfg(tmp_path, max_length=20), train_dataset=Dataset.from_list(data),
                    processing_class=tok)


def test_objective_that_needs_retain_data(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    with pytest.raises(ValueError, match="'graddiff' needs a retain set"):
        LuneTrainer(tiny_model, cfg(tmp_path, objective="graddiff"), train_dataset=rows(facts[:2]),
                    processing_class=tok)


def test_unknown_objective_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="Unknown objective 'forget_harder'.*lune, ga, graddiff, npo, simnpo"):
        cfg(tmp_path, objective="forget_harder")


def test_tokenizer_without_pad_token_is_given_one(tiny, tiny_model, tmp_path):
    facts, _ = tiny
    tok = build_tokenizer([f.prompt + f.completion for f in facts])
    tok.pad_token = None
    assert tok.pad_token_id is None
    trainer = LuneTrainer(tiny_model, cfg(tmp_path), train_dataset=rows(facts[:4]), processing_class=tok)
    assert tok.pad_token_id == tok.eos_token_id
    trainer.train()


def test_plain_training_arguments_are_converted(tiny, tiny_model, tmp_path):
    from transformers import TrainingArguments

    facts, tok = tiny
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=3e-3, max_steps=1,
                             report_to="none")
    trainer = LuneTrainer(tiny_model, args, train_dataset=rows(facts[:4]), processing_class=tok)
    assert isinstance(trainer.args, LuneConfig)
    assert trainer.args.learning_rate == 3e-3 and trainer.args.objective == "lune"


def test_pretokenised_rows_from_an_ordinary_trainer_script(tiny):
    facts, tok = tiny
    prompt = tok(facts[0].prompt)["input_ids"]
    answer = tok(facts[0].completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    data = Dataset.from_list([{"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}])
    ds = build_unlearning_dataset(data, tok, max_length=64, uses_answer=True, uses_replacement=True,
                                  refusals=["I have no information"])
    assert ds[0]["forget_input_ids"] == prompt + answer
    assert ds[0]["replacement_input_ids"][: len(prompt)] == prompt
    refusal = [t for t in ds[0]["replacement_labels"] if t != -100]
    assert tok.decode(refusal, skip_special_tokens=True) == "I have no information"

    unlabeled = Dataset.from_list([{"input_ids": prompt, "labels": [-100] * len(prompt)}])
    with pytest.raises(ValueError, match="forget row 0: every label is -100"):
        build_unlearning_dataset(unlabeled, tok, max_length=64, uses_answer=True, uses_replacement=False,
                                 refusals=["x"])
