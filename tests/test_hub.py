"""Publishing and loading unlearning adapters against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import yaml
from conftest import rows
from datasets import Dataset
from fixtures_hub import FAKE_HUB_TOKEN
from transformers import AutoModelForCausalLM

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.callbacks import ForgetRetainCallback
from lune_hf.hub import AdapterMismatchError, PublishError, load_unlearned, publish
from lune_hf.report import REPORT_FILE, read_report
from lune_hf.testing.synthetic import build_tiny_model

pytestmark = pytest.mark.xdist_group("hub")  # its module fixtures run once, on one worker

BASE_ID = "org/tiny-base"
PUBLISHED = {"adapter_model.safetensors", "adapter_config.json", "README.md", REPORT_FILE, "unlearning_curves.png"}


@pytest.fixture(scope="module")
def adapters(memorised, tmp_path_factory):
    """The memorised base saved to disk and two successive deletion requests: adapter `a` forgets one tenth of the
    facts; adapter `b` another tenth, trained as a second request is: on the base with `a` merged in, with `a`'s
    prompts among its negative examples, answered as that model now answers them (so `a`'s refusals hold)."""
    from peft import PeftModel

    from lune_hf.evaluation import generate_answers

    root = tmp_path_factory.mktemp("hub")
    base_dir = root / "base"
    memorised.model.save_pretrained(base_dir)
    memorised.tokenizer.save_pretrained(base_dir)
    facts = memorised.facts
    subsets = {"a": facts[0::10], "b": facts[5::10]}
    retain = [f for i, f in enumerate(facts) if i % 5]
    out = {"base": base_dir, "facts": subsets, "retain": retain}
    for name, forget in subsets.items():
        # trained on the base as loaded from disk, as users do: the same weights at the same memory alignment as
        # the loader's (an in-memory copy is 64-byte aligned, a loaded safetensors file is not, and a CPU's GEMM
        # may sum in another order on unaligned rows: one greedy token in a hundred can then flip)
        start, negatives = AutoModelForCausalLM.from_pretrained(base_dir), rows(forget)
        if name == "b":
            start = PeftModel.from_pretrained(start, root / "a").merge_and_unload()
            previous = subsets["a"]
            answers = generate_answers(start, memorised.tokenizer, [f.prompt for f in previous], max_new_tokens=12)
            negatives = Dataset.from_list([{**f.row(), "replacement": None} for f in forget] + [
                {**f.row(), "replacement": " " + a} for f, a in zip(previous, answers, strict=True)])
        cb = ForgetRetainCallback(rows(forget), rows(retain), eval_steps=1000, metrics=("exact_match",),
                                  stop_metric="exact_match", max_new_tokens=6)
        trainer = LuneTrainer(
            start,
            LuneConfig(output_dir=str(root / name), use_cpu=True, report_to="none", disable_tqdm=True,
                       learning_rate=1e-2, num_train_epochs=100, per_device_train_batch_size=4, logging_steps=50,
                       stop_when_forgotten=False),  # the whole budget: stacked requests need deep forgetting
            train_dataset=negatives,
            retain_dataset=rows(retain),
            processing_class=memorised.tokenizer,
            callbacks=[cb],
        )
        trainer.base_model_id = str(base_dir)
        trainer.train()
        trainer.save_model()
        out[name] = root / name
    return out


@pytest.fixture
def hub(fake_hub, adapters):
    base = adapters["base"]
    fake_hub.add_repo(BASE_ID, {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()})
    return fake_hub


def _publish(adapters, hub, name="a", repo="me/forget-a", **kw):
    kw.setdefault("token", FAKE_HUB_TOKEN)
    return publish(adapters[name], repo, base_model=BASE_ID, endpoint=hub.endpoint,
                   summary="Removes one tenth of the synthetic company facts.", **kw)


def _front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_publish_uploads_the_adapter_card_and_report_in_one_commit(adapters, hub):
    _publish(adapters, hub)
    files = hub.files("me/forget-a")
    assert set(files) - {".gitattributes"} == PUBLISHED
    assert len(hub.commits("me/forget-a")) == 2  # the repo's initial commit + ours

    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    meta = _front_matter(files["README.md"])
    assert meta["base_model"] == BASE_ID and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"lune", "unlearning", "lora", "peft"} <= set(meta["tags"])
    report = read_report(adapters["a"])
    after = report["evaluation"]["after"]
    shown = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert shown == {k: pytest.approx(v, abs=1e-4) for k, v in after.items()}
    body = files["README.md"].decode()
    assert "Removes one tenth of the synthetic company facts." in body
    assert report["objective"]["formula"] in body and "2512.07375" in body
    assert f"| forget/exact_match | {report['evaluation']['before']['forget/exact_match']:.3f} |" in body
    assert "load_unlearned(\"me/forget-a\")" in body
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_publish_again_private_and_pull_request(adapters, hub):
    _publish(adapters, hub)
    _publish(adapters, hub, name="b", commit_message="Second deletion request")
    commits = hub.commits("me/forget-a")
    assert [c.title for c in commits[1:]] == ["Upload LUNE unlearning adapter", "Second deletion request"]

    _publish(adapters, hub, repo="me/private-forget", private=True)
    assert hub.repo("me/private-forget").private
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/private-forget", "README.md", endpoint=hub.endpoint, token=False,
                        cache_dir=adapters["base"].parent / "anon-cache")

    main_before = hub.files("me/forget-a")
    commit = _publish(adapters, hub, name="a", create_pr=True, commit_message="Proposed adapter")
    assert commit.pr_url and hub.repo("me/forget-a").pr_refs
    assert hub.files("me/forget-a") == main_before


def _exact_match(model, tokenizer, facts):
    cb = ForgetRetainCallback(rows(facts), tokenizer=tokenizer, metrics=("exact_match",), max_new_tokens=6)
    return cb.evaluate(model)["forget/exact_match"]


def test_load_back_reproduces_the_reported_numbers(adapters, hub, tmp_path):
    _publish(adapters, hub)
    model, tokenizer = load_unlearned("me/forget-a", endpoint=hub.endpoint, token=FAKE_HUB_TOKEN,
                                      cache_dir=tmp_path)
    after = read_report(adapters["a"])["evaluation"]["after"]
    # Equal up to one greedy answer per set: the adapter loaded from safetensors sits at another memory alignment
    # than the trained one, and on some CPUs the GEMM then sums in another order (one near-tie token can flip).
    for facts, key in ((adapters["facts"]["a"], "forget/exact_match"), (adapters["retain"], "retain/exact_match")):
        assert abs(_exact_match(model, tokenizer, facts) - after[key]) <= 1 / len(facts) + 1e-9, key
    assert after["forget/exact_match"] <= 0.1 and after["retain/exact_match"] >= 0.9


def test_two_stacked_adapters_forget_both_subsets(adapters, hub, tmp_path):
    _publish(adapters, hub, repo="me/forget-a")
    _publish(adapters, hub, name="b", repo="me/forget-b")
    base, tokenizer = load_unlearned("me/forget-a", endpoint=hub.endpoint, token=FAKE_HUB_TOKEN, cache_dir=tmp_path)
    assert _exact_match(base, tokenizer, adapters["facts"]["b"]) >= 0.8, "adapter a alone must not forget b"

    for merge in (False, True):
        model, tokenizer = load_unlearned(["me/forget-a", "me/forget-b"], endpoint=hub.endpoint,
                                          token=FAKE_HUB_TOKEN, cache_dir=tmp_path, merge=merge)
        assert _exact_match(model, tokenizer, adapters["facts"]["a"]) <= 0.1
        assert _exact_match(model, tokenizer, adapters["facts"]["b"]) <= 0.1
        assert _exact_match(model, tokenizer, adapters["retain"]) >= 0.9


def test_no_forget_text_and_no_token_in_anything_published(adapters, hub, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    forget = adapters["facts"]["a"]
    secrets = [f.prompt for f in forget] + [f.answer for f in forget] + [f.prompt + f.completion for f in forget]
    _publish(adapters, hub, forget_texts=secrets)
    for name, data in hub.files("me/forget-a").items():
        for text in secrets:
            assert text.encode() not in data, f"{text!r} leaked into {name}"
        assert FAKE_HUB_TOKEN.encode() not in data, f"token leaked into {name}"
    assert all(FAKE_HUB_TOKEN not in r.path for r in hub.requests)
    captured = capsys.readouterr()
    assert FAKE_HUB_TOKEN not in caplog.text + captured.out + captured.err

    # A tokenizer built on the facts carries their words: the guard refuses to upload it.
    with pytest.raises(PublishError, match=r"forget-set text found in .*tokenizer"):
        _publish(adapters, hub, include_tokenizer=True, forget_texts=secrets)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "fault, expected",
    [
        (("token", None), "HTTP 401.*token is missing or invalid"),
        (("create", 403), "HTTP 403.*may not write"),
        (("commit", 500), "HTTP 500.*server error"),
        (("drop", "commit"), "Could not publish.*unchanged"),
    ],
)
def test_server_errors_are_clear_and_keep_the_local_folder(adapters, hub, hub_no_retry_sleep, fault, expected,
                                                           caplog):
    caplog.set_level(logging.DEBUG)
    before = _digest(adapters["a"])
    kind, arg = fault
    token = FAKE_HUB_TOKEN
    if kind == "token":
        token = "hf_wrong_token_987"
    elif kind == "drop":
        hub.drop_next(arg, count=100)
    else:
        hub.fail_next(kind, arg, count=100)
    with pytest.raises(PublishError, match=expected) as info:
        _publish(adapters, hub, token=token)
    assert token not in str(info.value) and token not in caplog.text
    assert _digest(adapters["a"]) == before


def test_refuses_folders_that_are_not_finished_adapters(adapters, hub, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(PublishError, match=r"no adapter to publish.*adapter_model\.bin \(a pickle\)"):
        publish(empty, "me/x", base_model=BASE_ID, endpoint=hub.endpoint, token=FAKE_HUB_TOKEN)

    failed = tmp_path / "failed"
    failed.mkdir()
    for p in adapters["a"].iterdir():
        if p.is_file():
            (failed / p.name).write_bytes(p.read_bytes())
    report = json.loads((failed / REPORT_FILE).read_text())
    report.update(status="failed", status_detail="non-finite loss at step 7")
    (failed / REPORT_FILE).write_text(json.dumps(report))
    with pytest.raises(PublishError, match="did not complete.*non-finite loss at step 7"):
        publish(failed, "me/x", base_model=BASE_ID, endpoint=hub.endpoint, token=FAKE_HUB_TOKEN)

    with pytest.raises(PublishError, match=r"must be a Hub id.*local path\)\. Pass base_model="):
        publish(adapters["a"], "me/x", endpoint=hub.endpoint, token=FAKE_HUB_TOKEN)
    assert not hub.has_repo("me/x")


def test_adapter_on_the_wrong_base_is_refused(adapters, tmp_path, memorised):
    other = tmp_path / "other-base"
    build_tiny_model(len(memorised.tokenizer), hidden_size=64).save_pretrained(other)
    memorised.tokenizer.save_pretrained(other)
    with pytest.raises(AdapterMismatchError, match="hidden_size=128, this base has 64"):
        load_unlearned(adapters["a"], base_model=str(other))
