"""Forget by default: the trainer's own checks, stopping on the outcome, restoring the best adapter, the verdict,
and the evidence that reaches the report, the card and `publish`."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import rows
from fixtures_hub import FAKE_HUB_TOKEN
from transformers import TrainerCallback

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.callbacks import ForgetRetainCallback
from lune_hf.evaluator import Evaluator
from lune_hf.hub import PublishError, publish
from lune_hf.outcome import ForgetTarget, Verdict, advice, is_better, judge
from lune_hf.report import read_report
from lune_hf.snapshot import trainable_state

pytestmark = pytest.mark.xdist_group("outcome")  # its module fixtures run once, on one worker

# ---- pure functions, by hand ----------------------------------------------------------------------


def test_forget_target_parses_metric_and_threshold():
    assert ForgetTarget.parse("recalled<=0.1") == ForgetTarget("recalled", 0.1)
    assert ForgetTarget.parse("rouge_l <= 0.25") == ForgetTarget("rouge_l", 0.25)
    assert ForgetTarget.parse("0.2") == ForgetTarget("recalled", 0.2)
    assert ForgetTarget.parse(0.0) == ForgetTarget("recalled", 0.0)
    assert ForgetTarget("recalled", 0.1).met(0.1) and not ForgetTarget("recalled", 0.1).met(0.11)
    for bad, message in (("bleu<=0.1", "not one of"), ("recalled<0.1", "form"), ("recalled<=1.5", r"\[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            ForgetTarget.parse(bad)
    with pytest.raises(ValueError, match="forget_target"):
        LuneConfig(output_dir="x", forget_target="recalled>=0.1")


def test_judge_and_best_by_hand():
    target = ForgetTarget("recalled", 0.1)
    assert judge(target, 1.0, 0.1) is Verdict.FORGOTTEN
    assert judge(target, 1.0, 0.55) is Verdict.PARTLY_FORGOTTEN  # covered 0.45 of the 0.9 to go: half
    assert judge(target, 1.0, 0.56) is Verdict.NOT_FORGOTTEN
    assert judge(target, 0.05, 0.05) is Verdict.FORGOTTEN  # never known
    # lower forget wins; a tie goes to the later (more trained) check
    assert is_better((0.2, 10), (0.3, 20)) and not is_better((0.3, 30), (0.2, 10)) and is_better((0.2, 30), (0.2, 10))


def test_advice_names_the_likely_fix():
    common = dict(stop_reason=None, budget_used=True, has_retain=True)
    assert "fine-tuning rate" in advice(Verdict.NOT_FORGOTTEN, learning_rate=5e-5, **common)
    assert "budget ran out" in advice(Verdict.PARTLY_FORGOTTEN, learning_rate=1e-3, **common)
    floor = advice(Verdict.NOT_FORGOTTEN, learning_rate=1e-3, stop_reason="retain/recalled stayed below the floor",
                   budget_used=False, has_retain=True)
    assert "retain" in floor and "replacement" in floor
    fell = advice(Verdict.NOT_FORGOTTEN, learning_rate=1e-3, retain_fell=True, **common)  # last check discarded
    assert "earlier adapter was kept" in fell and "budget" not in fell
    assert advice(Verdict.FORGOTTEN, learning_rate=1e-3, **common) is None


def test_recalled_is_the_share_of_answers_still_given(tiny):
    from lune_hf import metrics

    rouge = metrics.load("rouge_l", keep_in_memory=True)
    out = rouge.compute(predictions=["Paris , France", "I do not know", "the red house"],
                        references=["Paris", "Rome", "a red barn house"])
    # per-row ROUGE-L recall 1, 0, 2/4: two of three rows reach 0.5
    assert out["recalled"] == pytest.approx(2 / 3)


# ---- the trainer's checks on tiny models --------------------------------------------------------


def _defaults(tmp_path, **kw) -> LuneConfig:
    """`LuneConfig(output_dir=...)` plus only what a test machine needs (CPU, no trackers, no bars)."""
    return LuneConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", disable_tqdm=True, **kw)


def test_a_forget_set_the_model_never_knew_stops_at_the_first_check(tiny, tiny_model, tmp_path):
    facts, tok = tiny  # an untrained model: it gives none of these answers (checked below)
    trainer = LuneTrainer(tiny_model, _defaults(tmp_path), train_dataset=rows(facts[:8]),
                          retain_dataset=rows(facts[8:24]), processing_class=tok)
    initial = trainable_state(trainer.model)
    output = trainer.train()
    # the Trainer honours a stop after the step in flight: one step ran, and its change was undone
    assert trainer.state.global_step <= 1 and trainer.outcome.restored_step in (None, 0)
    assert trainer.outcome.steps == 0 and output.metrics["unlearning_steps"] == 0
    now = trainable_state(trainer.model)
    assert all(torch.equal(now[k], v) for k, v in initial.items())
    assert trainer.outcome.before["forget/recalled"] == 0.0
    assert trainer.outcome.verdict is Verdict.FORGOTTEN
    assert output.metrics["verdict"] == "forgotten" and output.metrics["forget_recalled_after"] == 0.0
    assert "step 0" in trainer.outcome.stop_reason


def test_too_small_a_budget_ends_not_forgotten_with_the_fix(memorised, memorised_copy, tmp_path, capsys):
    facts = memorised.facts
    trainer = LuneTrainer(memorised_copy, _defaults(tmp_path, learning_rate=5e-5, max_steps=3),
                          train_dataset=rows(facts[:12]), retain_dataset=rows(facts[12:60]),
                          processing_class=memorised.tokenizer)
    output = trainer.train()
    assert trainer.outcome.verdict is Verdict.NOT_FORGOTTEN
    assert output.metrics["forget_recalled_before"] == output.metrics["forget_recalled_after"] == 1.0
    printed = capsys.readouterr().out
    assert "verdict: NOT FORGOTTEN" in printed and "learning_rate 5e-05 is a fine-tuning rate" in printed
    trainer.save_model()
    report = read_report(tmp_path / "out")
    assert report["status"] == "not_forgotten" and report["outcome"]["hint"].startswith("learning_rate 5e-05")
    assert report["outcome"]["stop_reason"] == "the training budget ran out"


def test_memorised_facts_are_forgotten_and_the_rest_kept(memorised, memorised_copy, tmp_path):
    """`LuneConfig(output_dir=...)` only: a 2-layer model trained from scratch holds its facts hard, and the step
    budget's floor (`min_budget_steps`) gives it the steps it needs at the default rate."""
    facts = memorised.facts
    forget, retain = facts[::10], [f for i, f in enumerate(facts) if i % 10]
    trainer = LuneTrainer(memorised_copy, _defaults(tmp_path),
                          train_dataset=rows(forget), retain_dataset=rows(retain),
                          processing_class=memorised.tokenizer)
    trainer.train()
    assert trainer.outcome.verdict is Verdict.FORGOTTEN
    assert trainer.state.global_step < trainer.state.max_steps  # stopped on the outcome, not the budget
    assert trainer.args.max_steps == -1  # the budget floor did not leak into the caller's config
    assert trainer.forget_check.quick_history  # the quick checks watched the answers between the full ones
    full = Evaluator({"forget": rows(forget), "retain": rows(retain)}, memorised.tokenizer,
                     metrics=("recalled",)).evaluate(trainer.model)
    assert full["forget/recalled"] <= 0.1
    assert full["retain/recalled"] >= 0.9


def test_the_budget_is_at_least_min_budget_steps_when_stopping_on_the_outcome(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    seen = []

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(state.max_steps)
            control.should_training_stop = True

    for kw in ({"min_budget_steps": 7}, {"min_budget_steps": 7, "max_steps": 3},
               {"min_budget_steps": 7, "stop_when_forgotten": False}, {"min_budget_steps": 0}):
        trainer = LuneTrainer(copy.deepcopy(tiny_model), _defaults(tmp_path, num_train_epochs=1, **kw),
                              train_dataset=rows(facts[:8]),
                              processing_class=tok, callbacks=[Budget()])
        trainer.train()
    # 8 rows, batch 4: one epoch is 2 steps; the floor applies only when the run stops on the outcome
    assert seen == [7, 3, 2, 2]


def test_retain_collapse_stops_and_restores_the_best_adapter(memorised, memorised_copy, tmp_path):
    facts = memorised.facts
    trainer = LuneTrainer(memorised_copy, _defaults(tmp_path, objective="ga", learning_rate=0.05, max_steps=40,
                                                    forget_eval_steps=2),
                          train_dataset=rows(facts[:12]), retain_dataset=rows(facts[12:60]),
                          processing_class=memorised.tokenizer)
    best_weights = {}
    original = trainer.forget_check._track

    def track(state, model, results):
        original(state, model, results)
        best_weights[state.global_step] = trainable_state(model)

    trainer.forget_check._track = track
    trainer.train()
    outcome = trainer.outcome
    assert "stayed below the floor" in outcome.stop_reason
    assert trainer.state.global_step < 40 and outcome.restored_step is not None
    # the saved adapter is the one of the best check, which held retain above the floor
    now = trainable_state(trainer.model)
    assert all(torch.equal(now[k], v) for k, v in best_weights[outcome.restored_step].items())
    assert outcome.retain_ok and outcome.after["retain/recalled"] >= outcome.retain_floor
    measured = trainer.forget_check.evaluate(trainer.model)
    assert measured["retain/recalled"] == pytest.approx(outcome.after["retain/recalled"])


def test_a_given_callback_with_a_target_is_the_trainers_check(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    cb = ForgetRetainCallback(rows(facts[:4]), forget_target="exact_match<=0.5", eval_steps=1,
                              metrics=("exact_match",))
    trainer = LuneTrainer(tiny_model, _defaults(tmp_path, max_steps=2), train_dataset=rows(facts[:8]),
                          processing_class=tok, callbacks=[cb])
    assert trainer.forget_check is cb
    assert sum(isinstance(c, ForgetRetainCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert trainer.outcome.target == ForgetTarget("exact_match", 0.5)


def test_checks_off_give_no_verdict(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    trainer = LuneTrainer(tiny_model, _defaults(tmp_path, max_steps=2, forget_eval_steps=0),
                          train_dataset=rows(facts[:8]), processing_class=tok)
    assert trainer.forget_check is None
    trainer.train()
    trainer.save_model()
    report = read_report(tmp_path / "out")
    assert report["status"] == "completed" and report["outcome"] is None


def test_a_stalled_forget_set_raises_the_learning_rate(memorised, memorised_copy, tmp_path):
    facts = memorised.facts
    trainer = LuneTrainer(memorised_copy, _defaults(tmp_path, learning_rate=1e-6, max_steps=4, forget_eval_steps=2,
                                                    lr_scheduler_type="constant", warmup_steps=0,
                                                    boost_stalled_lr=True),
                          train_dataset=rows(facts[:8]), processing_class=memorised.tokenizer)
    trainer.train()
    # nothing moves at 1e-6: x4 at the check of step 4 (step 2 compared with step 0 already stalled)
    assert trainer.forget_check.lr_scale == 16.0
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
    assert scheduler.base_lrs == [pytest.approx(1.6e-5)] * len(scheduler.base_lrs)


# ---- evidence: report, card, publish ------------------------------------------------------------


@pytest.fixture(scope="module")
def not_forgotten_run(memorised, tmp_path_factory):
    root = tmp_path_factory.mktemp("unverified")
    facts = memorised.facts
    trainer = LuneTrainer(copy.deepcopy(memorised.model),
                          LuneConfig(output_dir=str(root / "run"), use_cpu=True, report_to="none", disable_tqdm=True,
                                     max_steps=2),
                          train_dataset=rows(facts[:12]), retain_dataset=rows(facts[12:40]),
                          processing_class=memorised.tokenizer)
    trainer.train()
    trainer.save_model()
    return root / "run"


def test_publish_refuses_a_run_that_did_not_forget_unless_allowed(not_forgotten_run, fake_hub):
    fake_hub.add_repo("org/base", {"config.json": b"{}"})
    kw = dict(base_model="org/base", endpoint=fake_hub.endpoint, token=FAKE_HUB_TOKEN)
    with pytest.raises(PublishError, match="not shown to forget.*not forgotten.*allow_unverified"):
        publish(not_forgotten_run, "me/unverified", **kw)
    assert not fake_hub.has_repo("me/unverified")

    publish(not_forgotten_run, "me/unverified", allow_unverified=True, **kw)
    readme = fake_hub.files("me/unverified")["README.md"].decode()
    body = readme.split("---\n", 2)[2]
    first_lines = body.strip().splitlines()[:4]
    assert any("Unverified unlearning" in line for line in first_lines)
    assert "**Verdict: not forgotten**" in readme
    assert "model-index" in readme and "forget/recalled" in readme


def test_card_of_every_checked_run_carries_numbers(not_forgotten_run):
    report = read_report(not_forgotten_run)
    assert report["evaluation"]["before"]["forget/recalled"] == 1.0
    assert set(report["evaluation"]["after"]) == set(report["evaluation"]["before"])
    assert report["outcome"]["verdict"] == "not_forgotten"


def test_retain_rows_without_a_retain_set_are_not_watched(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    trainer = LuneTrainer(tiny_model, _defaults(tmp_path, max_steps=1), train_dataset=rows(facts[:4]),
                          processing_class=tok)
    assert trainer.forget_check.retain_floor is None
    assert set(trainer.forget_check.sets) == {"forget"}


def test_checks_measure_tokenised_rows_like_text_rows(memorised):
    """Rows an ordinary Trainer script tokenised itself are measured on their decoded prompt and answer."""
    tok = memorised.tokenizer
    facts = memorised.facts[:6]
    tokenised = []
    for f in facts:
        prompt = tok(f.prompt)["input_ids"]
        answer = tok(f.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        tokenised.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    from datasets import Dataset

    as_ids = Evaluator({"forget": Dataset.from_list(tokenised)}, tok).evaluate(memorised.model)
    as_text = Evaluator({"forget": rows(facts)}, tok).evaluate(memorised.model)
    assert as_ids == pytest.approx(as_text)
    assert as_text["forget/recalled"] == 1.0
