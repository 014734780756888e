"""LuneTrainer on tiny models: what moves, what stays, what the loss is, and that it really forgets."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import Poison, rows
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel

from lune_hf import OBJECTIVES, LuneConfig, LuneTrainer, NonFiniteLossError
from lune_hf import objectives as obj
from lune_hf.data import UnlearningCollator, tokenize_example
from lune_hf.evaluation import generate_answers, score_answers
from lune_hf.logits import answer_logits, answer_window
from lune_hf.metrics.functional import normalize_answer
from lune_hf.report import REPORT_FILE
from lune_hf.testing.synthetic import build_tiny_model, memorise


def config(tmp_path: Path, **kw) -> LuneConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        lora_dropout=0.0,
        forget_eval_steps=0,  # mechanics: no forget/retain checks (tests/test_outcome.py covers them)
    )
    base.update(kw)
    return LuneConfig(**base)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_moves_only_lora(objective, tiny, tiny_model, tmp_path):
    facts, tok = tiny
    backbone = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    trainer = LuneTrainer(
        tiny_model,
        config(tmp_path, objective=objective),
        train_dataset=rows(facts[:8], replacement=True),
        retain_dataset=rows(facts[8:24]),
        processing_class=tok,
    )
    assert isinstance(trainer.model, PeftModel)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    trainer.train()

    after = dict(trainer.model.named_parameters())
    moved = [n for n, v in lora_before.items() if not torch.equal(v, after[n].detach())]
    assert moved, f"{objective}: no LoRA parameter changed"
    base_now = trainer.model.get_base_model().state_dict()
    for key, value in backbone.items():
        peft_key = key.replace(".weight", ".base_layer.weight")
        now = base_now.get(key, base_now.get(peft_key))
        assert now is not None, key
        assert torch.equal(now, value), f"{objective}: backbone tensor {key} changed"
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "loss/forget" in logged and "loss/retain" in logged
    if OBJECTIVES[objective].uses_answer:
        assert "logps/forget" in logged
    if OBJECTIVES[objective].uses_replacement:
        assert "logps/replacement" in logged


def _hand_loss(objective: str, model, base, batch, args: LuneConfig,
               token_weights: torch.Tensor | None = None, teacher=None) -> torch.Tensor:
    """The loss recomputed from raw forward passes (base = an independent copy of the frozen model)."""

    def nll(m, prefix, weights=None):
        logits = m(input_ids=batch[f"{prefix}_input_ids"], attention_mask=batch[f"{prefix}_attention_mask"]).logits
        return logits, *obj.sequence_nll(logits, batch[f"{prefix}_labels"], weights)

    negative = 0.0
    if args.negative_weight and args.negative_loss == "dpo":
        negative = args.negative_weight * obj.dpo(nll(model, "replacement")[1], nll(model, "forget")[1],
                                                  nll(base, "replacement")[1], nll(base, "forget")[1], args.beta)
    elif args.negative_weight and args.negative_loss == "distill":
        negative = args.negative_weight * obj.kl_divergence(nll(model, "forget")[0], nll(teacher, "forget")[0],
                                                            batch["forget_labels"])
    elif args.negative_weight:
        negative = args.negative_weight * obj.npo(nll(model, "forget", token_weights)[1],
                                                  nll(base, "forget", token_weights)[1], args.beta)
    forget = {
        "lune": lambda: obj.nll(*nll(model, "replacement")[1:]) + negative,
        "idk_nll": lambda: obj.nll(*nll(model, "replacement")[1:]),
        "ga": lambda: obj.gradient_ascent(*nll(model, "forget")[1:]),
        "graddiff": lambda: obj.gradient_ascent(*nll(model, "forget")[1:]),
        "npo": lambda: obj.npo(nll(model, "forget")[1], nll(base, "forget")[1], args.beta),
        "simnpo": lambda: obj.simnpo(*nll(model, "forget")[1:], args.beta, args.delta),
        "idk_dpo": lambda: obj.dpo(
            nll(model, "replacement")[1], nll(model, "forget")[1],
            nll(base, "replacement")[1], nll(base, "forget")[1], args.beta,
        ),
        "ihl": lambda: obj.inverted_hinge(nll(model, "forget")[0], batch["forget_labels"]),
    }[objective]()
    if args.retain_loss == "kl":
        retain = obj.kl_divergence(nll(model, "retain")[0], nll(base, "retain")[0], batch["retain_labels"])
    else:
        retain = obj.nll(*nll(model, "retain")[1:])
    preserve = obj.answer_preservation(nll(model, "retain")[1], nll(model, "retain_refusal")[1], args.beta) \
        if args.preserve_weight else 0.0
    return args.forget_weight * forget + args.retain_weight * retain + args.preserve_weight * preserve


def loss_and_hand_loss(tiny, tiny_model, args: LuneConfig, token_weights=None,
                       forget=range(4), retain=range(4, 8)) -> tuple[float, float, LuneTrainer, dict]:
    """`compute_loss` and `_hand_loss` on one batch, the adapter moved off zero so that model and reference differ."""
    facts, tok = tiny
    base = copy.deepcopy(tiny_model).eval()
    trainer = LuneTrainer(tiny_model, args, train_dataset=rows([facts[i] for i in forget]),
                          retain_dataset=rows([facts[i] for i in retain]), processing_class=tok)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    trainer.model.eval()
    batch = UnlearningCollator(tok.pad_token_id)([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        want = _hand_loss(args.objective, trainer.model, base, batch, args, token_weights)
    return got.item(), want.item(), trainer, {"base": base, "batch": batch}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_loss_equals_hand_computation(objective, retain_loss, tiny, tiny_model, tmp_path):
    args = config(tmp_path, objective=objective, retain_loss=retain_loss, forget_weight=0.7, retain_weight=1.3)
    got, want, _, _ = loss_and_hand_loss(tiny, tiny_model, args)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("negative_loss", ["npo", "dpo"])
def test_lune_negative_term_equals_hand_computation(negative_loss, tiny, tiny_model, tmp_path):
    """`negative_weight` adds an NPO (or DPO) term on the original answer, reference = the adapter switched off."""
    args = config(tmp_path, objective="lune", negative_weight=0.5, negative_loss=negative_loss)
    assert args.spec.uses_answer and args.spec.needs_reference and negative_loss.upper() in args.spec.formula
    got, want, trainer, extra = loss_and_hand_loss(tiny, tiny_model, args)
    assert {"forget_input_ids", "replacement_input_ids"} <= extra["batch"].keys()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        without = _hand_loss("lune", trainer.model, extra["base"], extra["batch"], config(tmp_path, objective="lune"))
    assert abs(want - without.item()) > 1e-3  # the term is really there
    with pytest.raises(ValueError, match="negative_weight belongs to objective 'lune'"):
        config(tmp_path, objective="npo", negative_weight=1.0)
    with pytest.raises(ValueError, match="Unknown negative_loss 'kto'. Valid: npo, dpo"):
        config(tmp_path, objective="lune", negative_loss="kto")


def test_lune_distillation_term_equals_hand_computation(tiny, tiny_model, tmp_path):
    """`negative_loss='distill'`: KL(teacher || theta) on the original answer's tokens, the teacher a separate
    model; a teacher is required, must share the vocabulary, and belongs to that term only."""
    facts, tok = tiny
    teacher = build_tiny_model(len(tok), hidden_size=32, layers=1, seed=7).eval()
    args = config(tmp_path, objective="lune", negative_weight=0.8, negative_loss="distill")
    assert "KL(teacher || theta)" in args.spec.formula and not args.spec.needs_reference
    base = copy.deepcopy(tiny_model).eval()
    trainer = LuneTrainer(tiny_model, args, train_dataset=rows(facts[:4]), retain_dataset=rows(facts[4:8]),
                          processing_class=tok, teacher_model=teacher)
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    assert trainer._run_report()["hyperparameters"]["teacher_model"] == "LlamaForCausalLM"  # named in the card
    batch = UnlearningCollator(tok.pad_token_id)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch).item()
        want = _hand_loss("lune", trainer.model, base, batch, args, teacher=teacher).item()
        without = _hand_loss("lune", trainer.model, base, batch, config(tmp_path, objective="lune")).item()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want - without > 1e-3  # the term is there (a KL between two different models is positive)
    logged = trainer._metrics["eval"]["loss/negative"][-1].item()  # the KL alone, unweighted
    assert logged == pytest.approx((want - without) / 0.8, rel=1e-4)

    with pytest.raises(ValueError, match="none was given: set `teacher_model`"):
        LuneTrainer(build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0), args,
                    train_dataset=rows(facts[:4]), processing_class=tok)
    with pytest.raises(ValueError, match="only used by objective='lune' with negative_weight > 0"):
        LuneTrainer(build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0), config(tmp_path, objective="npo"),
                    train_dataset=rows(facts[:4]), processing_class=tok, teacher_model=teacher)
    with pytest.raises(ValueError, match="is the target of negative_loss='distill'"):
        config(tmp_path, objective="lune", negative_weight=1.0, teacher_model="some/model")
    with pytest.raises(ValueError, match="predicts 7 tokens, the trained model"):
        LuneTrainer(build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0), args,
                    train_dataset=rows(facts[:4]), processing_class=tok,
                    teacher_model=build_tiny_model(7, hidden_size=32, layers=1, seed=0))


def test_lune_push_on_specific_tokens_equals_hand_computation(tiny, tiny_model, tmp_path):
    """`negative_tokens='specific'`: the NPO term's NLLs weight each token by how specific it is to the forget
    answers, counted from the tokenised forget and retain answers."""
    facts, tok = tiny
    args = config(tmp_path, objective="lune", negative_weight=0.5, negative_tokens="specific")
    assert "NPO_w" in args.spec.formula
    # Forget answers "Mun Pothbo", "bicycles", "maps", "1972"; the retain answers repeat the first three.
    forget, retain = [8, 18, 14, 3], [24, 22, 30, 5]
    answers = [tok(facts[i].completion, add_special_tokens=False)["input_ids"] for i in forget + retain]
    weights = obj.specific_token_weights(answers[:4], answers[4:], len(tok))
    assert weights.count_nonzero() == 1 and weights[answers[3]].tolist() == [1.0]  # only "1972" is pushed
    got, want, trainer, extra = loss_and_hand_loss(tiny, tiny_model, args, weights, forget, retain)
    assert torch.equal(trainer.token_weights[:len(tok)], weights)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        unweighted = _hand_loss("lune", trainer.model, extra["base"], extra["batch"], args)
    assert abs(want - unweighted.item()) > 1e-3  # the weights really change the term
    with pytest.raises(ValueError, match="Unknown negative_tokens 'some'"):
        config(tmp_path, objective="lune", negative_weight=1.0, negative_tokens="some")
    for bad in ({"negative_weight": 0.0}, {"negative_weight": 1.0, "negative_loss": "dpo"}):
        with pytest.raises(ValueError, match="weights the tokens of lune's NPO term"):
            config(tmp_path, objective="lune", negative_tokens="specific", **bad)
    with pytest.raises(ValueError, match="no retain rows are trained on: pass `retain_dataset`"):
        LuneTrainer(tiny_model, args, train_dataset=rows(facts[:4]), processing_class=tok)


def test_answer_window_hand_cases():
    ign = obj.IGNORE_INDEX
    labels = torch.tensor([[ign, ign, 5, 6, ign], [ign, ign, ign, 7, 8]])
    # Earliest answer token at position 2 -> its logit sits at 1 -> keep positions 1..4.
    assert answer_window(labels) == 4
    assert answer_window(torch.tensor([[ign, 5, 6]])) == 3  # never more than the sequence
    assert answer_window(torch.full((2, 6), ign)) == 1  # a batch without answer tokens
    # A row whose answer was cut away does not widen the window.
    assert answer_window(torch.tensor([[ign, ign, ign, ign], [ign, ign, 3, 4]])) == 3


@pytest.mark.parametrize("objective", ["lune", "ihl"])
def test_lm_head_runs_only_where_answers_are_predicted(objective, tiny, tiny_model, tmp_path):
    """Prompt positions skip the vocabulary projection; the losses still equal full-logit ones (test above)."""
    facts, tok = tiny
    args = config(tmp_path, objective=objective, retain_loss="kl")
    trainer = LuneTrainer(
        tiny_model, args, train_dataset=rows(facts[:4]), retain_dataset=rows(facts[4:8]), processing_class=tok
    )
    batch = UnlearningCollator(tok.pad_token_id)([trainer.train_dataset[i] for i in range(4)])
    seen: list[int] = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    hook.remove()
    groups = [p for p in ("forget", "replacement", "retain") if f"{p}_labels" in batch]
    wanted = {answer_window(batch[f"{p}_labels"]) for p in groups}
    assert set(seen) == wanted
    assert all(n < batch[f"{p}_input_ids"].shape[1] for p in groups for n in [answer_window(batch[f"{p}_labels"])])


def test_scoring_with_answer_logits_equals_full_logits(tiny, tiny_model):
    """Teacher-forced scores use the same answer-only logits; batched, they equal one full forward per row."""
    facts, tok = tiny
    prompts, answers = [f.prompt for f in facts[:6]], [f.completion for f in facts[:6]]
    got = score_answers(tiny_model, tok, prompts, answers, batch_size=6)
    tiny_model.eval()
    for prompt, answer, scores in zip(prompts, answers, got, strict=True):
        ex = tokenize_example(tok, prompt, answer, 512, "row")
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([ex["input_ids"]])).logits
        want, mask = obj.token_logprobs(logits, torch.tensor([ex["labels"]]))
        assert scores == pytest.approx(want[mask].tolist(), abs=1e-5)


def test_answer_logits_falls_back_to_full_logits():
    class NoKeep(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            return SimpleNamespace(logits=torch.randn(*input_ids.shape, 7))

    labels = torch.tensor([[obj.IGNORE_INDEX, obj.IGNORE_INDEX, 3, 4]])
    logits, cut = answer_logits(NoKeep(), torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4), labels)
    assert logits.shape == (1, 4, 7) and torch.equal(cut, labels)


@pytest.mark.parametrize("objective", ["npo", "idk_dpo"])
def test_reference_is_the_disabled_adapter_not_a_second_model(objective, tiny, tiny_model, tmp_path, monkeypatch):
    facts, tok = tiny
    trainer = LuneTrainer(tiny_model, config(tmp_path, objective=objective), train_dataset=rows(facts[:8]),
                          processing_class=tok)
    created: list[str] = []
    original_init = PreTrainedModel.__init__
    monkeypatch.setattr(PreTrainedModel, "__init__", lambda self, *a, **k: (created.append(type(self).__name__),
                                                                              original_init(self, *a, **k))[1])
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the model was copied"))
    disabled = []
    original_disable = PeftModel.disable_adapter

    def spy(self):
        disabled.append(True)
        return original_disable(self)

    monkeypatch.setattr(PeftModel, "disable_adapter", spy)
    trainer.train()
    assert created == [], f"a second model was created: {created}"
    assert len(disabled) >= trainer.state.global_step, "the reference did not come from the disabled adapter"


def test_gradient_accumulation_matches_large_batch(tiny, tmp_path):
    facts, tok = tiny
    from lune_hf.testing.synthetic import build_tiny_model

    results = []
    for bs, ga in [(8, 1), (1, 8)]:
        model = build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0)
        trainer = LuneTrainer(
            model,
            config(tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                   max_steps=1, optim="sgd", learning_rate=0.5, warmup_steps=0, lr_scheduler_type="constant"),
            train_dataset=rows(facts[:8]),
            retain_dataset=rows(facts[8:30]),
            processing_class=tok,
        )
        trainer.train()
        results.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    big, small = results
    assert any(v.abs().sum() > 0 for n, v in big.items() if "lora_B" in n), "the step changed nothing"
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-4, atol=1e-6)


def test_answer_preservation_term_equals_hand_computation(tiny, tiny_model, tmp_path):
    """`preserve_weight` adds the answer-preservation term: each retain prompt answered with a refusal as well."""
    args = config(tmp_path, objective="lune", negative_weight=0.5, preserve_weight=0.8, refusals=["alpha beta"])
    got, want, trainer, extra = loss_and_hand_loss(tiny, tiny_model, args)
    batch, tok = extra["batch"], tiny[1]
    assert {"retain_input_ids", "retain_refusal_input_ids"} <= batch.keys()
    first = batch["retain_refusal_labels"][0]
    refusal = tok.decode(first[first != -100].tolist(), skip_special_tokens=True)
    assert refusal.replace(" ", "") == tok.decode(tok("alpha beta", add_special_tokens=False)["input_ids"],
                                                  skip_special_tokens=True).replace(" ", "")
    in_prompt = (batch["retain_labels"][0] == -100) & (batch["retain_attention_mask"][0] == 1)
    prompt = batch["retain_input_ids"][0][in_prompt]
    assert torch.equal(batch["retain_refusal_input_ids"][0][: len(prompt)], prompt)  # the same retain prompt
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        without = _hand_loss("lune", trainer.model, extra["base"], batch, config(tmp_path, objective="lune",
                                                                                  negative_weight=0.5))
    assert abs(want - without.item()) > 1e-3  # the term is really there


def test_answer_preservation_needs_retain_prompts(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    with pytest.raises(ValueError, match="no retain set was given"):
        LuneTrainer(tiny_model, config(tmp_path, preserve_weight=1.0), train_dataset=rows(facts[:4]),
                    processing_class=tok)
    with pytest.raises(ValueError, match="retain_loss='none' drops them"):
        config(tmp_path, preserve_weight=1.0, retain_loss="none")
    text_rows = Dataset.from_list([{"text": f.prompt + f.completion} for f in facts[4:8]])
    with pytest.raises(ValueError, match="retain row 0: answer preservation"):
        LuneTrainer(tiny_model, config(tmp_path, preserve_weight=1.0), train_dataset=rows(facts[:4]),
                    retain_dataset=text_rows, processing_class=tok)


def test_answer_preservation_keeps_retain_prompts_from_refusing(memorised, tmp_path):
    """Trained towards a refusal on the forget prompts, the model makes the refusal likelier on the retain prompts
    too; the answer-preservation term holds it back there, while the forget prompts still learn it."""
    forget = memorised.facts[::10]
    retain = [f for i, f in enumerate(memorised.facts) if i % 10]
    tok = memorised.tokenizer
    refusal = " ".join(memorised.facts[0].answer.split()[:1] * 3)

    def refusal_logp(model, facts) -> float:
        batch = UnlearningCollator(tok.pad_token_id)(
            [{f"retain_{k}": v for k, v in tokenize_example(tok, f.prompt, refusal, 64, "row").items()}
             for f in facts])
        with torch.no_grad():
            logits = model(input_ids=batch["retain_input_ids"], attention_mask=batch["retain_attention_mask"]).logits
        nll_sum, n = obj.sequence_nll(logits, batch["retain_labels"])
        return (-nll_sum / n).mean().item()

    after = {}
    for weight in (0.0, 1.0):
        trainer = LuneTrainer(
            copy.deepcopy(memorised.model),
            config(tmp_path / str(weight), max_steps=30, refusals=[refusal], preserve_weight=weight),
            train_dataset=rows(forget), retain_dataset=rows(retain), processing_class=tok,
        )
        trainer.train()
        after[weight] = refusal_logp(trainer.model, forget), refusal_logp(trainer.model, retain)
        if weight:
            assert any("loss/preserve" in entry for entry in trainer.state.log_history)
    before = refusal_logp(memorised.model, retain)
    (_, retain_plain), (forget_kept, retain_kept) = after[0.0], after[1.0]
    assert retain_plain > before + 0.5, "the refusal did not spread to the retain prompts: nothing to hold back"
    assert retain_kept < retain_plain - 0.5, f"retain refusal log-prob {retain_kept:.2f} vs {retain_plain:.2f}"
    assert forget_kept > retain_kept + 1.0, "the forget prompts no longer learn the refusal"


def test_lune_forgets_and_retains(memorised, memorised_copy, tmp_path):
    forget = memorised.facts[::10]
    retain = [f for i, f in enumerate(memorised.facts) if i % 10]
    tok = memorised.tokenizer

    def accuracy(model, facts):
        answers = generate_answers(model, tok, [f.prompt for f in facts], max_new_tokens=6)
        return sum(normalize_answer(a) == normalize_answer(f.answer) for a, f in zip(answers, facts,
                                                                                      strict=True)) / len(facts)

    forget_before, retain_before = accuracy(memorised_copy, forget), accuracy(memorised_copy, retain)
    assert forget_before >= 0.9 and retain_before >= 0.9, "the fixture did not memorise its facts"
    trainer = LuneTrainer(
        memorised_copy,
        config(tmp_path, max_steps=-1, num_train_epochs=100, lora_dropout=0.05, logging_steps=50),
        train_dataset=rows(forget),
        retain_dataset=rows(retain),
        processing_class=tok,
    )
    trainer.train()
    forget_after, retain_after = accuracy(trainer.model, forget), accuracy(trainer.model, retain)
    assert forget_after <= 0.1, f"forget accuracy {forget_after:.2f} (was {forget_before:.2f})"
    assert retain_after >= 0.9 * retain_before, f"retain accuracy {retain_after:.2f} (was {retain_before:.2f})"


def test_distillation_brings_the_answers_to_the_teachers_likelihood(memorised, tmp_path):
    """`negative_loss='distill'` toward a model that learnt the retain facts only (never the forget ones): the forget
    answers fall from memorised toward the teacher's own likelihood and not past it (a target: the NPO push, same
    weight and steps, runs far below it), while the retain facts stay."""
    forget = memorised.facts[::10]
    retain = [f for i, f in enumerate(memorised.facts) if i % 10]
    tok = memorised.tokenizer
    teacher = build_tiny_model(len(tok), seed=0)
    memorise(teacher, tok, [f.row() for f in retain], steps=350, seed=0)

    def answer_logp(model, facts) -> float:
        scored = score_answers(model, tok, [f.prompt for f in facts], [f.completion for f in facts])
        return sum(sum(logps) / len(logps) for logps in scored) / len(facts)  # mean per-token log-prob

    before, target = answer_logp(memorised.model, forget), answer_logp(teacher, forget)
    assert before > target + 3, "the teacher knows the forget facts: nothing to distil"
    after = {}
    for loss in ("distill", "npo"):
        trainer = LuneTrainer(
            copy.deepcopy(memorised.model),
            config(tmp_path / loss, max_steps=60, learning_rate=1e-2, negative_weight=3.0, negative_loss=loss,
                   forget_weight=1.0),
            train_dataset=rows(forget), retain_dataset=rows(retain), processing_class=tok,
            teacher_model=teacher if loss == "distill" else None,
        )
        trainer.train()
        after[loss] = answer_logp(trainer.model, forget), answer_logp(trainer.model, retain)
    (forget_distilled, retain_distilled), (forget_pushed, _) = after["distill"], after["npo"]
    # Measured: memorised -0.004 per token, teacher -3.87; distilled -2.35 (retain -0.24), NPO -12.7 (retain -6.0).
    assert forget_distilled < before - 0.5 * (before - target), (before, target, forget_distilled)
    assert forget_distilled > target - 0.5, "distillation ran past the teacher's likelihood"
    assert forget_pushed < target - 1.0, "the NPO push stopped at the teacher: the comparison shows nothing"
    assert retain_distilled > answer_logp(memorised.model, retain) - 0.5


def test_resume_from_checkpoint_continues(tiny, tmp_path):
    facts, tok = tiny
    from lune_hf.testing.synthetic import build_tiny_model

    def make(out, **kw):
        model = build_tiny_model(len(tok), hidden_size=32, layers=1, seed=0)
        return LuneTrainer(model, config(out, max_steps=6, per_device_train_batch_size=2, **kw),
                           train_dataset=rows(facts[:8]), retain_dataset=rows(facts[8:20]), processing_class=tok)

    straight = make(tmp_path / "straight")
    straight.train()
    want = {n: p.detach().clone() for n, p in straight.model.named_parameters() if p.requires_grad}

    first = make(tmp_path / "resumed", save_strategy="steps", save_steps=3)
    first.args.max_steps = 6
    first.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file()

    resumed = make(tmp_path / "resumed", save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    got = {n: p.detach() for n, p in resumed.model.named_parameters() if p.requires_grad}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_adapter(tiny, tiny_model, tmp_path):
    facts, tok = tiny
    trainer = LuneTrainer(tiny_model, config(tmp_path, max_steps=10, warmup_steps=0), train_dataset=rows(facts[:8]),
                          processing_class=tok)
    trainer.add_callback(Poison(trainer, step=2))
    with pytest.raises(NonFiniteLossError, match="became .* at step 2.*last good adapter"):
        trainer.train()
    out = Path(trainer.args.output_dir)
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k), "step-2 weights expected"
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["status"] == "failed" and "non-finite" in report["status_detail"]

