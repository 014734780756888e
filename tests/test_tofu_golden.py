"""Golden test: fixed per-token log-probabilities and generations in, every TOFU number out.

The expected numbers come from a line-by-line transcription of open-unlearning's TOFU evaluation (commit d3d7cf9 of
https://github.com/locuslab/open-unlearning: ``configs/eval/tofu.yaml`` and its ``tofu_metrics``; the handlers in
``src/evals/metrics/memorization.py``, ``privacy.py``, ``utility.py``, ``utils.py``, ``mia/min_k.py``,
``mia/utils.py``), written independently of ``lune_hf.tofu.evaluate``. The tokenisation test transcribes
``src/data/utils.py::preprocess_chat_instance``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from rouge_score import rouge_scorer

from lune_hf.testing.synthetic import build_tokenizer
from lune_hf.tofu.evaluate import tofu_metrics
from lune_hf.tofu.template import TofuTemplate

IGNORE_INDEX = -100
WORDS = "the author was born in paris and wrote novels about war love his father a doctor her mother teacher".split()


# --------------------------------------------------------------------------------------------------
# Fixed logs (seeded): what `collect_logs` returns for a model
# --------------------------------------------------------------------------------------------------


def _answer(rng: np.random.Generator, length: int, hit_rate: float) -> dict:
    return {"logprobs": (-rng.gamma(1.5, 0.8, size=length)).tolist(),
            "hits": (rng.random(length) < hit_rate).tolist()}


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def make_logs(seed: int, hit_rate: float, n_forget: int = 9) -> dict:
    rng = np.random.default_rng(seed)
    logs: dict[str, list[dict]] = {}
    sizes = {"forget": n_forget, "retain": 7, "real_authors": 5, "world_facts": 6}
    for name, n in sizes.items():
        rows = []
        for _ in range(n):
            row = {"answer": _answer(rng, int(rng.integers(3, 12)), hit_rate),
                   "perturbed": [_answer(rng, int(rng.integers(3, 12)), 0.3) for _ in range(int(rng.integers(3, 6)))],
                   "ground_truth": _text(rng, int(rng.integers(4, 10))),
                   "generation": _text(rng, int(rng.integers(0, 10)))}
            if name in ("forget", "retain"):
                row["paraphrased"] = _answer(rng, int(rng.integers(3, 12)), hit_rate)
            rows.append(row)
        logs[name] = rows
    logs["holdout"] = [{"answer": _answer(rng, int(rng.integers(3, 12)), 0.3)} for _ in range(n_forget)]
    # Ties in the membership scores and one exact answer exercise the edge cases.
    logs["holdout"][0]["answer"]["logprobs"] = list(logs["forget"][0]["answer"]["logprobs"])
    logs["forget"][1]["generation"] = logs["forget"][1]["ground_truth"]
    logs["forget"][2]["generation"] = ""
    logs["forget"][3]["answer"]["hits"] = [True] * len(logs["forget"][3]["answer"]["hits"])
    return logs


# --------------------------------------------------------------------------------------------------
# open-unlearning, transcribed
# --------------------------------------------------------------------------------------------------


def ou_evaluate_probability(entry: dict) -> dict:
    """utils.py evaluate_probability: losses summed over labelled tokens / num_token_gt; prob = exp(-avg_loss)."""
    losses = -np.asarray(entry["logprobs"], dtype=np.float64)
    avg_loss = losses.sum() / len(losses)
    return {"prob": np.exp(-avg_loss), "avg_loss": avg_loss}


def aggregate_to_1D(x):  # noqa: N802  (open-unlearning's name)
    return np.mean(x, axis=tuple(range(1, x.ndim)))


def ou_probability(rows: list[dict]) -> float:
    """memorization.py probability: mean of aggregate_to_1D(prob)."""
    prob_values = aggregate_to_1D(np.array([ou_evaluate_probability(r["answer"])["prob"] for r in rows]))
    return float(np.mean(prob_values))


def ou_probability_w_options(rows: list[dict]) -> float:
    correct = np.array([ou_evaluate_probability(r["answer"])["prob"] for r in rows])
    all_wrong = [np.array([ou_evaluate_probability(p)["prob"] for p in r["perturbed"]]) for r in rows]
    wrong = np.array([np.sum(w) for w in all_wrong])  # np.sum over axis 1 of the options
    probs = correct / (correct + wrong + 1e-10)
    return float(np.mean(probs))


def closer_to_1_better(arr):
    return np.mean(np.minimum(arr, 1 / (arr + 1e-10)))


def true_better(arr):
    return np.mean(np.maximum(0, 1 - arr))


def ou_truth_ratio(rows: list[dict], correct_key: str, aggregator) -> tuple[float, np.ndarray]:
    correct_avg_losses = np.array([ou_evaluate_probability(r[correct_key])["avg_loss"] for r in rows])
    wrong_avg_losses = np.array([np.mean([ou_evaluate_probability(p)["avg_loss"] for p in r["perturbed"]])
                                 for r in rows])
    correct_prob = np.exp(-correct_avg_losses)
    wrong_prob = np.exp(-wrong_avg_losses)
    truth_ratios = wrong_prob / (correct_prob + 1e-10)
    return float(aggregator(truth_ratios)), truth_ratios


def ou_rouge(rows: list[dict]) -> float:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(r["ground_truth"], r["generation"])["rougeL"].recall for r in rows]))


def ou_extraction_strength(rows: list[dict]) -> float:
    """memorization.py extraction_strength over the labelled tokens but the last (the EOS prediction)."""
    scores = []
    for r in rows:
        labels = np.arange(len(r["answer"]["hits"]))[:-1]
        preds = np.where(np.asarray(r["answer"]["hits"])[:-1], labels, -1)
        valid_len = len(labels)
        for k in range(valid_len):
            suff_preds = preds[k:]
            suff_labels = labels[k:]
            if np.array_equal(suff_preds, suff_labels):
                break
        scores.append(1 - (k / valid_len))
    return float(np.mean(scores))


def ou_min_k_score(logprobs: list[float], k: float = 0.4) -> float:
    lp = np.asarray(logprobs[:-1], dtype=np.float64)  # token-wise helpers drop the last labelled token
    num_k = max(1, int(len(lp) * k))
    sorted_vals = np.sort(lp)
    return -np.mean(sorted_vals[:num_k])


def roc_auc_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    """sklearn's roc_auc_score, as pair counts: P(score of a 1 > score of a 0) + 0.5 P(tie)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def ou_mia_min_k(logs: dict) -> float:
    forget_scores = [ou_min_k_score(r["answer"]["logprobs"]) for r in logs["forget"]]
    holdout_scores = [ou_min_k_score(r["answer"]["logprobs"]) for r in logs["holdout"]]
    scores = np.array(forget_scores + holdout_scores)
    labels = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    return roc_auc_pairs(labels, scores)


def ou_privleak(auc: float, ref_auc: float | None) -> float:
    score = auc
    ref = 0.5 if ref_auc is None else ref_auc
    score = 1 - score
    ref = 1 - ref
    return (score - ref) / (ref + 1e-10) * 100


def open_unlearning(logs: dict, retain_logs: dict | None) -> dict:
    out = {}
    out["forget_truth_ratio"], forget_tr = ou_truth_ratio(logs["forget"], "paraphrased", closer_to_1_better)
    out["forget_probability"] = ou_probability(logs["forget"])
    out["forget_rouge"] = ou_rouge(logs["forget"])
    out["retain_probability"] = ou_probability(logs["retain"])
    out["retain_rouge"] = ou_rouge(logs["retain"])
    out["retain_truth_ratio"], _ = ou_truth_ratio(logs["retain"], "paraphrased", true_better)
    for name in ("real_authors", "world_facts"):
        out[f"{name}_probability"] = ou_probability_w_options(logs[name])
        out[f"{name}_rouge"] = ou_rouge(logs[name])
        out[f"{name}_truth_ratio"], _ = ou_truth_ratio(logs[name], "answer", true_better)
    pre_compute = ["retain_probability", "retain_rouge", "retain_truth_ratio", "real_authors_probability",
                   "real_authors_rouge", "real_authors_truth_ratio", "world_facts_probability", "world_facts_rouge",
                   "world_facts_truth_ratio"]
    out["model_utility"] = float(scipy.stats.hmean([out[k] for k in pre_compute]))
    out["extraction_strength"] = ou_extraction_strength(logs["forget"])
    out["mia_min_k"] = ou_mia_min_k(logs)
    ref_auc = None
    if retain_logs is not None:
        _, retain_tr = ou_truth_ratio(retain_logs["forget"], "paraphrased", closer_to_1_better)
        out["forget_quality"] = float(scipy.stats.ks_2samp(forget_tr, retain_tr).pvalue)
        ref_auc = ou_mia_min_k(retain_logs)
    else:
        out["forget_quality"] = None
    out["privleak"] = ou_privleak(out["mia_min_k"], ref_auc)
    return out


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_tofu_number_equals_open_unlearning(seed):
    retain_logs = make_logs(100 + seed, hit_rate=0.3)
    model_logs = make_logs(seed, hit_rate=0.8)
    retain_result = tofu_metrics(retain_logs)
    result = tofu_metrics(model_logs, reference=retain_result)
    expected = open_unlearning(model_logs, retain_logs)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert result["model_utility_inputs"] == ["retain_probability", "retain_rouge", "retain_truth_ratio",
                                              "real_authors_probability", "real_authors_rouge",
                                              "real_authors_truth_ratio", "world_facts_probability",
                                              "world_facts_rouge", "world_facts_truth_ratio"]
    assert result["eval_rows"] == {"forget": 9, "retain": 7, "real_authors": 5, "world_facts": 6, "holdout": 9}
    # Without the retain model: no forget quality, privleak relative to 0.5 (open-unlearning's ref_value).
    alone = tofu_metrics(model_logs)
    assert alone["forget_quality"] is None
    assert alone["privleak"] == pytest.approx(open_unlearning(model_logs, None)["privleak"], abs=1e-12)


def test_the_edge_rows_behave_as_open_unlearning():
    logs = make_logs(5, hit_rate=0.0)
    result = tofu_metrics(logs)
    # No token predicted: open-unlearning's loop ends at k = N - 1 -> 1/N per row (never 0); the strict variant: 0.
    expected = np.mean([1 / (len(r["answer"]["hits"]) - 1) for r in logs["forget"] if not all(r["answer"]["hits"])]
                       + [1.0])  # row 3 has every token predicted
    assert result["extraction_strength"] == pytest.approx(float(expected))
    assert result["strict_extraction_strength"] == pytest.approx(1 / len(logs["forget"]))
    assert result["extraction_strength"] == pytest.approx(ou_extraction_strength(logs["forget"]))


def test_replacement_share_counts_refusals():
    logs = make_logs(3, hit_rate=0.5, n_forget=4)
    logs["forget"][0]["generation"] = "I'm not sure."
    logs["forget"][1]["generation"] = "I am not sure about that."
    result = tofu_metrics(logs, replacements=["I'm not sure.", "I don't know."])
    # row 0 exact (F1 1); row 1 "i am not sure about that" vs "i m not sure": LCS 3 -> P 1/2, R 3/4, F1 0.6;
    # rows 2 and 3 are random words that share nothing with a refusal
    assert result["replacement_share"] == pytest.approx(0.5)
    assert tofu_metrics(logs)["replacement_share"] is None


def test_refusal_spill_counts_refusals_on_the_sets_to_keep():
    logs = make_logs(4, hit_rate=0.5, n_forget=4)
    sizes = {name: len(logs[name]) for name in ("retain", "real_authors", "world_facts")}
    logs["retain"][0]["generation"] = "I don't know."
    logs["real_authors"][1]["generation"] = "I'm not sure."
    logs["real_authors"][2]["generation"] = "I do not know that."
    refusals = ["I'm not sure.", "I don't know."]
    result = tofu_metrics(logs, refusals=refusals)
    # "i do not know that" vs "i don t know": LCS i, know -> P 2/5, R 2/4, F1 0.44 < 0.5: not a refusal
    assert result["retain_refusal_share"] == pytest.approx(1 / sizes["retain"])
    assert result["real_authors_refusal_share"] == pytest.approx(1 / sizes["real_authors"])
    assert result["world_facts_refusal_share"] == 0.0
    assert result["refusal_spill"] == pytest.approx(2 / sum(sizes.values()))
    # a shared refusal list given as `replacements` serves both; per-row replacement answers do not
    assert tofu_metrics(logs, replacements=refusals)["refusal_spill"] == result["refusal_spill"]
    per_row = [["x"]] * len(logs["forget"])
    assert tofu_metrics(logs, replacements=per_row)["refusal_spill"] is None
    assert tofu_metrics(logs, replacements=per_row, refusals=refusals)["refusal_spill"] == result["refusal_spill"]
    del logs["world_facts"][0]["generation"]  # a row without an answer counts on neither side
    assert tofu_metrics(logs, refusals=refusals)["refusal_spill"] == pytest.approx(2 / (sum(sizes.values()) - 1))


# --------------------------------------------------------------------------------------------------
# Tokens: open-unlearning's preprocess_chat_instance, transcribed
# --------------------------------------------------------------------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{% if m['role'] == 'system' %}Today Date: {{ date_string | default('26 Jul 2024') }}\n\n{% endif %}"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def ou_preprocess(tokenizer, template_config: dict, prompt: str, response: str, max_length: int) -> dict:
    """src/data/utils.py preprocess_chat_instance (one pair, no few-shot), predict_with_generate=False."""
    def ids(out):
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    if template_config["apply_chat_template"]:
        chat = []
        system_prompt = template_config.get("system_prompt", None)
        if system_prompt:
            chat += [{"role": "system", "content": system_prompt}]
        chat += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        date_str = template_config.get("date_string", None)
        date_info = {"date_string": date_str} if date_str is not None else {}
        chat_ids = ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, **date_info))
        prompt_ids = ids(tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True,
                                                       **date_info))
    else:
        wrapped_prompt = template_config["user_start_tag"] + prompt + template_config["user_end_tag"] + \
            template_config["asst_start_tag"]
        chat_ids = tokenizer(wrapped_prompt + response, add_special_tokens=True, max_length=max_length,
                             truncation=True)["input_ids"]
        prompt_ids = tokenizer(wrapped_prompt, add_special_tokens=True, max_length=max_length,
                               truncation=True)["input_ids"]
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    len_matched = len(prompt_ids)
    return {"input_ids": chat_ids, "labels": [IGNORE_INDEX] * len_matched + chat_ids[len_matched:],
            "prompt_ids": prompt_ids}


@pytest.fixture(scope="module")
def chat_tokenizer():
    specials = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    texts = ["system user assistant You are a helpful assistant . Today Date : 10 Apr 2025 26 Jul 2024",
             "Question : Who wrote the novel ? Answer : Jane Doe wrote it ."]
    tokenizer = build_tokenizer(texts)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


@pytest.mark.parametrize("style", ["chatml", "llama3", "plain"])
def test_tokens_equal_open_unlearning(chat_tokenizer, style):
    tok = chat_tokenizer
    question, answer = "Who wrote the novel ?", "Jane Doe wrote it ."
    if style == "plain":
        template = TofuTemplate("plain")
        config = {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n",
                  "asst_start_tag": "Answer: "}
    else:
        tok.chat_template = CHATML if style == "chatml" else LLAMA3
        # Llama-3: the conversation ends with its EOS (nothing appended); ChatML here: it does not (EOS appended,
        # as open-unlearning does after SmolLM2's and Qwen's "<|im_end|>\n").
        tok.eos_token = "<|eot_id|>" if style == "llama3" else "<eos>"
        template = TofuTemplate("chat")
        config = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant.",
                  "date_string": "10 Apr 2025"}
    expected = ou_preprocess(tok, config, question, answer, 512)
    got = template.encode(tok, question, answer, 512)
    assert got["input_ids"] == expected["input_ids"]
    assert got["labels"] == expected["labels"]
    assert template.prompt_ids(tok, question) == expected["prompt_ids"]
    scored = [t for t in got["labels"] if t != IGNORE_INDEX]
    if style == "chatml":  # the template's end of turn, then the appended EOS, both scored
        assert tok.convert_ids_to_tokens(scored[-2:]) == ["<|im_end|>", "<eos>"]
    if style == "llama3":  # the fixed date, not today's; EOS not doubled
        assert "10 Apr 2025" in tok.decode(got["input_ids"])
        assert tok.convert_ids_to_tokens(scored[-2:]) == [".", "<|eot_id|>"]
    if style == "plain":
        assert tok.convert_ids_to_tokens(scored) == ["Jane", "Doe", "wrote", "it", ".", "<eos>"]
    tok.eos_token = "<eos>"
