"""ForgetRetainCallback: evaluation during training, logging through the Trainer, early stops."""

from __future__ import annotations

import pytest
import torch
from conftest import rows
from transformers import Trainer, TrainingArguments

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.callbacks import ForgetRetainCallback
from lune_hf.report import read_report
from lune_hf.snapshot import trainable_state


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", disable_tqdm=True,
                per_device_train_batch_size=2, learning_rate=1e-2, logging_steps=1, lora_dropout=0.0,
                warmup_steps=0, forget_eval_steps=0)
    base.update(kw)
    return LuneConfig(**base)


class Scripted(ForgetRetainCallback):
    """Returns scripted metrics instead of evaluating, and remembers the adapter at each evaluation."""

    def __init__(self, forget_values, retain_values, **kw):
        self.script = list(zip(forget_values, retain_values, strict=True))
        self.weights_at: dict[int, dict] = {}
        super().__init__(kw.pop("forget"), kw.pop("retain"), metrics=("exact_match",), stop_metric="exact_match",
                         **kw)

    def evaluate(self, model):
        f, r = self.script.pop(0)
        return {"forget/exact_match": f, "retain/exact_match": r}

    def _apply_stop_rules(self, state, control, model, results, **kw):
        self.weights_at[state.global_step] = trainable_state(model)
        super()._apply_stop_rules(state, control, model, results, **kw)


def test_forget_target_stops_at_the_first_step_that_meets_it(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    cb = Scripted([1.0, 0.8, 0.5, 0.1, 0.0, 0.0], [1.0] * 6, forget=rows(facts[:4]), retain=rows(facts[4:8]),
                  eval_steps=2, forget_target=0.1)
    trainer = LuneTrainer(tiny_model, args(tmp_path, max_steps=20), train_dataset=rows(facts[:8]),
                          processing_class=tok, callbacks=[cb])
    trainer.train()
    # evaluations at steps 0, 2, 4, 6: the fourth (0.1 <= 0.1) stops training at step 6
    assert [h["step"] for h in cb.history] == [0, 2, 4, 6]
    assert trainer.state.global_step == 6
    assert "reached 0.100" in cb.stop_reason and "step 6" in cb.stop_reason
    logged = [e for e in trainer.state.log_history if "forget/exact_match" in e]
    assert [e["step"] for e in logged] == [0, 2, 4, 6]


def test_retain_floor_stops_and_restores_the_last_good_adapter(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    # initial retain 0.8, floor 0.9 * 0.8 = 0.72: step 6 (0.7) crosses it, step 4 was the last good one
    cb = Scripted([1.0, 0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.75, 0.7, 0.7], forget=rows(facts[:4]),
                  retain=rows(facts[4:8]), eval_steps=2, retain_floor=0.9, retain_patience=1)
    trainer = LuneTrainer(tiny_model, args(tmp_path, max_steps=20), train_dataset=rows(facts[:8]),
                          processing_class=tok, callbacks=[cb])
    trainer.train()
    assert trainer.state.global_step == 6
    assert "below the floor 0.720" in cb.stop_reason
    assert cb.outcome is None  # no forget target: no verdict, but the best adapter is kept all the same
    now = trainable_state(trainer.model)
    for name, value in cb.weights_at[4].items():
        assert torch.equal(now[name], value), "the adapter of step 4 was not restored"
    assert any(not torch.equal(now[n], v) for n, v in cb.weights_at[6].items())
    trainer.save_model()
    assert read_report(trainer.args.output_dir)["stop_reason"] == cb.stop_reason


def test_real_evaluation_logs_through_a_plain_trainer(memorised, memorised_copy, tmp_path):
    """Works with an ordinary transformers Trainer too: metrics land in the log history (and trackers)."""
    from lune_hf.data import UnlearningCollator, build_unlearning_dataset

    tok = memorised.tokenizer
    forget = rows(memorised.facts[:6])
    retain = rows(memorised.facts[6:30])
    cb = ForgetRetainCallback(forget, retain, tokenizer=tok, eval_steps=2, max_new_tokens=6,
                              metrics=("exact_match", "contains", "rouge_l", "probability"))
    data = build_unlearning_dataset(forget, tok, max_length=64, uses_answer=True, uses_replacement=False,
                                    refusals=["x"])

    class PlainLM(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(input_ids=inputs["forget_input_ids"], attention_mask=inputs["forget_attention_mask"],
                         labels=inputs["forget_labels"]).loss

    trainer = PlainLM(model=memorised_copy, args=TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, max_steps=4, report_to="none", remove_unused_columns=False,
        per_device_train_batch_size=2, learning_rate=1e-4), train_dataset=data,
        data_collator=UnlearningCollator(tok.pad_token_id), processing_class=tok)
    cb.bind(trainer)
    trainer.add_callback(cb)
    trainer.train()
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    first = cb.history[0]
    # The memorised model answers its facts before unlearning.
    assert first["forget/exact_match"] == 1.0 and first["forget/rouge_l"] == 1.0
    assert first["retain/contains"] == 1.0 and 0.5 < first["retain/probability"] <= 1.0
    assert sum("forget/rouge_l" in e for e in trainer.state.log_history) == 3


def test_bad_callback_settings_are_refused(tiny):
    facts, _ = tiny
    with pytest.raises(ValueError, match="Unknown metrics"):
        ForgetRetainCallback(rows(facts[:2]), metrics=("bleu",))
    with pytest.raises(ValueError, match="retain_floor needs a retain_dataset"):
        ForgetRetainCallback(rows(facts[:2]), retain_floor=0.9, stop_metric="rouge_l")
    with pytest.raises(ValueError, match="stop_metric 'probability' must be one of"):
        ForgetRetainCallback(rows(facts[:2]), metrics=("rouge_l",), stop_metric="probability", forget_target=0.1)


def test_a_quick_check_asks_for_a_full_check_once_the_greedy_prefix_halves(tiny, monkeypatch):
    """Between the (costly) full checks, a teacher-forced pass watches how much of the answers' start a greedy
    answer still reproduces; a full check runs as soon as that share halves since the last full check."""
    facts, tok = tiny
    # full checks never due by time, quick ones always
    check = ForgetRetainCallback(rows(facts[:4]), tokenizer=tok, eval_steps=None, forget_target="recalled<=0.1",
                                 max_overhead=1e-9, quick_overhead=1e9)
    assert check.quick_checks
    quick = iter([0.7, 0.5, 0.39, 0.38])
    monkeypatch.setattr(check.evaluator, "greedy_prefix", lambda model, name="forget": next(quick))
    full = []
    monkeypatch.setattr(check, "_run", lambda state, control, model, **kw: full.append(state.global_step))
    check._quick_reference, check._last_check_seconds = 0.8, 1.0
    check._last_check_end = __import__("time").perf_counter()
    state, control = type("S", (), {})(), type("C", (), {})()
    for step in (1, 2, 3):
        state.global_step = step
        check.on_step_end(None, state, control, model=None)
    assert full == [3]  # 0.7 and 0.5 are above half of 0.8; 0.39 is not
    assert check.quick_history == [(1, 0.7), (2, 0.5), (3, 0.39)]
    fixed = ForgetRetainCallback(rows(facts[:4]), tokenizer=tok, eval_steps=10, forget_target="recalled<=0.1")
    assert not fixed.quick_checks  # a fixed schedule is kept as asked


def test_while_retain_is_down_a_quick_check_asks_for_a_full_check_once_it_is_back(tiny, monkeypatch):
    facts, tok = tiny
    check = ForgetRetainCallback(rows(facts[:4]), rows(facts[4:12]), tokenizer=tok, eval_steps=None,
                                 forget_target="recalled<=0.1", retain_floor=0.9, max_overhead=1e-9,
                                 quick_overhead=1e9)
    retain = iter([0.3, 0.5, 0.62])
    monkeypatch.setattr(check.evaluator, "greedy_prefix",
                        lambda model, name="forget": 0.02 if name == "forget" else next(retain))
    full = []
    monkeypatch.setattr(check, "_run", lambda state, control, model, **kw: full.append(state.global_step))
    # after a full check that found the answers gone and retain down: forget's prefix is already ~0
    check._quick_reference, check._retain_quick_level = 0.02, 0.6
    check._last_check_seconds, check._last_check_end = 1.0, __import__("time").perf_counter()
    state, control = type("S", (), {})(), type("C", (), {})()
    for step in (1, 2, 3):
        state.global_step = step
        check.on_step_end(None, state, control, model=None)
    assert full == [3]  # retain's prefix back above 0.6 at step 3


def test_extra_looks_asked_for_by_quick_checks_do_not_use_up_the_retain_patience(tiny):
    facts, tok = tiny
    check = ForgetRetainCallback(rows(facts[:4]), rows(facts[4:12]), tokenizer=tok, eval_steps=None,
                                 forget_target="recalled<=0.1", retain_floor=0.9, retain_patience=2)
    check._initial, check._floor = {"forget/recalled": 1.0, "retain/recalled": 1.0}, 0.9
    state, control = type("S", (), {"global_step": 5})(), type("C", (), {"should_training_stop": False})()
    down = {"forget/recalled": 0.0, "retain/recalled": 0.2}
    for _ in range(3):
        check._apply_stop_rules(state, control, None, down, scheduled=False)
    assert not control.should_training_stop and check._checks_below_floor == 0
    for _ in range(2):
        check._apply_stop_rules(state, control, None, down)
    assert control.should_training_stop and "stayed below the floor" in check.stop_reason
