"""Share unlearning adapters on the Hugging Face Hub: `publish` an output folder, `load_unlearned` it back.

Everything goes through `huggingface_hub` (`HfApi.create_repo`, `HfApi.upload_folder`, `snapshot_download`):
the default endpoint is the real Hub; `endpoint=` (or `HF_ENDPOINT`) points at another Hub-compatible server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from .card import render_card
from .report import (
    ADAPTER_WEIGHTS,
    BASE_CONFIG_KEYS,
    FINISHED,
    PLOT_FILE,
    REPORT_FILE,
    is_verified,
    read_report,
    unverified_reason,
)

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What `load_unlearned` downloads from an adapter repo: weights in safetensors, configs, card, report, plot and the
# tokenizer's data files. Never pickles, code or anything else a repo may hold.
ADAPTER_DOWNLOAD = [ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md", REPORT_FILE, PLOT_FILE, *TOKENIZER_FILES]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class PublishError(RuntimeError):
    """Publishing failed; the local output folder is untouched."""


class AdapterMismatchError(ValueError):
    """An adapter does not fit the base model it is applied to."""


def is_hub_id(value: str | None) -> bool:
    """A Hub repo id (`name` or `namespace/name`) that is not an existing local path."""
    return bool(value) and _REPO_ID.match(value) is not None and not Path(value).exists() and ".." not in value


def _redact(text: str, tokens: str | Sequence[str | None] | None) -> str:
    for token in [tokens] if isinstance(tokens, str) or tokens is None else tokens:
        text = text.replace(token, "<token>") if token else text
    return text


def client_tokens(token: str | None) -> list[str]:
    """Every token a Hub call may send: the argument and the one `huggingface_hub` finds by itself (HF_TOKEN, the
    stored login)."""
    return [t for t in dict.fromkeys([token, get_token()]) if t]


# --------------------------------------------------------------------------------------------------
# Publish
# --------------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str | Path, *, allow_unverified: bool = True) -> dict[str, Any]:
    """Refuse a folder that holds no complete, safetensors adapter from a finished run; return its report.

    With `allow_unverified=False` also refuse a run whose verdict is not `forgotten` or whose retain fell below
    its floor.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such folder.")
    present = sorted(p.name for p in folder.iterdir())
    if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / ADAPTER_CONFIG).is_file():
        pickles = [name for name in present if name.startswith("adapter_model") and name.endswith(PICKLE_SUFFIXES)]
        hint = (f" It holds {pickles[0]} (a pickle): re-save with safetensors (the default of save_pretrained)."
                if pickles else "")
        raise PublishError(
            f"{folder}: no adapter to publish (needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}; found {present}).{hint}"
        )
    report = read_report(folder)
    if report is None:
        raise PublishError(f"{folder}: no {REPORT_FILE}; the run did not finish saving. Train and save again.")
    if report.get("status") not in {status.value for status in FINISHED}:
        detail = report.get("status_detail") or ""
        raise PublishError(
            f"{folder}: the run did not complete (status {report.get('status')!r}{': ' + detail if detail else ''}); "
            "refusing to publish a failed or unfinished adapter."
        )
    if not allow_unverified and not is_verified(report):
        raise PublishError(
            f"{folder}: refusing to publish an adapter that is not shown to forget: {unverified_reason(report)}. "
            "Train until the verdict is 'forgotten' (the log's table says the likely fix), or publish anyway with "
            "allow_unverified=True (lune-hf publish --allow-unverified): the card then says so in its first lines."
        )
    return report


def resolve_base_model(output_dir: Path, report: dict[str, Any], base_model: str | None) -> str:
    """The Hub id of the base model: the argument, else what the run recorded; an error if neither is a Hub id."""
    config = json.loads((output_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    candidates = [base_model, report.get("base_model"), config.get("base_model_name_or_path")]
    for candidate in candidates:
        if candidate and is_hub_id(candidate):
            return candidate
        if candidate and base_model is not None:
            raise PublishError(f"base_model {candidate!r} is not a Hub repo id (namespace/name).")
    recorded = [c for c in candidates[1:] if c]
    found = f"the run recorded {recorded[0]!r} (a local path)" if recorded else "the run recorded no base model"
    raise PublishError(
        f"The base model must be a Hub id so that others can load the adapter; {found}. "
        "Pass base_model='namespace/name' (lune-hf publish --base-model namespace/name)."
    )


def stage_folder(
    output_dir: str | Path,
    staging: Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    summary: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    include_tokenizer: bool = False,
    allow_unverified: bool = False,
) -> list[str]:
    """Copy exactly the files to publish into `staging`, with the card and the real base id; return their names."""
    folder = Path(output_dir)
    report = check_output_dir(folder, allow_unverified=allow_unverified)
    manifest = report.get("files")  # what the run wrote; older reports have none

    def written(name: str) -> bool:
        return (folder / name).is_file() and (manifest is None or name in manifest)

    stale = [name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not written(name)]
    if stale:
        raise PublishError(f"{folder}: {', '.join(stale)} was not written by the run whose report is there "
                           f"(the report lists {manifest}); save the run again.")
    base = resolve_base_model(folder, report, base_model)
    shutil.copy2(folder / ADAPTER_WEIGHTS, staging / ADAPTER_WEIGHTS)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    report = {**report, "base_model": base}
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    has_plot = written(PLOT_FILE)
    if has_plot:
        shutil.copy2(folder / PLOT_FILE, staging / PLOT_FILE)
    if include_tokenizer:
        for name in TOKENIZER_FILES:
            if written(name):
                shutil.copy2(folder / name, staging / name)
    card = render_card(report, repo_id=repo_id, base_model=base, summary=summary, license=license,
                       datasets=list(datasets) if datasets else None, has_plot=has_plot)
    card.save(staging / "README.md")
    return sorted(p.name for p in staging.iterdir())


def _normalise(text: str) -> str:
    """Unicode-normalised (NFKC), case-folded, whitespace squeezed: how a reader compares texts."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _json_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_json_strings(k), *_json_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _json_strings(v)]
    return []


def readable_text(path: Path) -> str:
    """The text a reader of the file would see: UTF-8 (undecodable bytes dropped) plus, for JSON, every string
    value decoded (`\u00c9` escapes included); normalised with `_normalise`."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="ignore")
    parts = [text]
    try:
        parts += _json_strings(json.loads(text))
    except (json.JSONDecodeError, RecursionError):
        pass
    return _normalise("\n".join(parts))


def _vocabulary(path: Path) -> set[str]:
    """The words of a tokenizer file's vocabulary, without the word-start / continuation markers."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="ignore"))
    except json.JSONDecodeError:
        return set()
    vocab = (data.get("model") or {}).get("vocab") if isinstance(data, dict) else None
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        vocab = {piece[0]: 0 for piece in vocab if piece}
    if not isinstance(vocab, dict):
        return set()
    return {_normalise(word.lstrip("▁Ġ").removeprefix("##")) for word in vocab}


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", _normalise(text)) if len(w) >= 3 and not w.isdigit()]


def find_leaks(folder: Path, secrets: Sequence[str]) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in a file of `folder`: in its decoded, normalised text (JSON escapes
    and case do not hide it), and for tokenizer files also when the vocabulary holds every word of it."""
    leaks = []
    needles = [(s, _normalise(s)) for s in secrets if s and s.strip()]
    for path in sorted(folder.iterdir()):
        text = readable_text(path)
        found = {secret for secret, needle in needles if needle in text}
        if path.name in TOKENIZER_FILES:
            vocab = _vocabulary(path)
            found |= {secret for secret, _ in needles if (words := _words(secret)) and set(words) <= vocab}
        leaks.extend((path.name, secret) for secret, _ in needles if secret in found)
    return leaks


def publish(
    output_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    summary: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    include_tokenizer: bool = False,
    forget_texts: Sequence[str] | None = None,
    allow_unverified: bool = False,
):
    """Publish an unlearning run's output folder to the Hub, in one commit.

    Refuses a run whose own checks did not find the forget set forgotten (verdict other than `forgotten`, retain
    below its floor, or no checks) unless `allow_unverified=True`; the card of such an adapter says so first.
    Uploads `adapter_model.safetensors`, `adapter_config.json` (with the real base model id),
    `unlearning_report.json`, the plot and a generated `README.md` model card. Never pickles, training arguments
    or data. A repo this call created is deleted again if the upload fails.

    Args:
        output_dir (`str` or `Path`): the run's folder (`LuneTrainer.save_model` wrote it).
        repo_id (`str`): `namespace/name` on the Hub.
        base_model (`str`, *optional*): the base model's Hub id when the report records a local path.
        token, endpoint (`str`, *optional*): as in `huggingface_hub.HfApi`.
        private, revision, create_pr, commit_message: as in `HfApi.create_repo` / `HfApi.upload_folder`.
        summary, license, datasets: extra card fields.
        include_tokenizer (`bool`): upload the tokenizer files too (off: LoRA leaves the base tokenizer
            unchanged, and a tokenizer built on the forget data would carry its words).
        forget_texts (`Sequence[str]`, *optional*): the forget set's prompts and answers; publishing is refused
            if any of them appears in a file about to be uploaded.
        allow_unverified (`bool`): publish a run whose checks did not find the forget set forgotten.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> publish("outputs/forget-alice", "me/smollm2-forget-alice")  # doctest: +SKIP
    """
    if not is_hub_id(repo_id) or "/" not in repo_id:
        raise PublishError(f"repo_id {repo_id!r} must look like 'namespace/name'.")
    tokens = client_tokens(token)
    with tempfile.TemporaryDirectory(prefix="lune-publish-") as tmp:
        staging = Path(tmp)
        files = stage_folder(output_dir, staging, repo_id=repo_id, base_model=base_model, summary=summary,
                             license=license, datasets=datasets, include_tokenizer=include_tokenizer,
                             allow_unverified=allow_unverified)
        refuse_leaks(staging, tokens, forget_texts)
        commit = _upload(HfApi(endpoint=endpoint, token=token), staging, repo_id, tokens, output_dir=output_dir,
                         private=private, revision=revision, create_pr=create_pr,
                         commit_message=commit_message or "Upload LUNE unlearning adapter")
    logger.info("Published %s to %s", ", ".join(files), repo_id)
    return commit


def refuse_leaks(staging: Path, tokens: Sequence[str], forget_texts: Sequence[str] | None) -> None:
    """Raise `PublishError` if a Hub token or a forget-set text appears in a staged file."""
    leaks = find_leaks(staging, list(tokens) + list(forget_texts or []))
    if not leaks:
        return
    names = sorted({name for name, _ in leaks})
    what = "a Hub token" if any(text in tokens for _, text in leaks) else "forget-set text"
    hint = (" (a tokenizer trained on the forget data carries its words: publish without the tokenizer; "
            "users load the base model's)" if any(n in TOKENIZER_FILES for n in names) else "")
    raise PublishError(f"Refusing to publish: {what} found in {names}{hint}.")


def _upload(api: HfApi, staging: Path, repo_id: str, tokens: Sequence[str], *, output_dir, private: bool,
            revision: str | None, create_pr: bool, commit_message: str):
    """Create the repo if needed and upload the staged folder in one commit; on failure undo the creation and
    raise a `PublishError` with no token in it."""
    created = False
    try:
        if not api.repo_exists(repo_id, repo_type="model"):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            created = True
        return api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model", revision=revision,
                                 create_pr=create_pr, commit_message=commit_message)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        left = _undo_create(api, repo_id, created)
        raise PublishError(_redact(_http_message(repo_id, status, err) + left, tokens)) from None
    except Exception as err:  # network failures: connection refused, dropped mid-upload, timeouts
        left = _undo_create(api, repo_id, created)
        raise PublishError(
            _redact(f"Could not publish to {repo_id}: {type(err).__name__}: {err}. The local folder "
                    f"{output_dir} is unchanged; try again.{left}", tokens)
        ) from None


def _undo_create(api: HfApi, repo_id: str, created: bool) -> str:
    """Delete the repo this call created (and only that one); say what is left on the Hub."""
    if not created:
        return f" Nothing was committed to {repo_id}."
    try:
        api.delete_repo(repo_id, repo_type="model")
    except Exception as err:  # the connection may be down for this call too
        return (f" The repo {repo_id} was created by this call but could not be deleted ({type(err).__name__}): it "
                "is empty apart from the Hub's initial files; delete it in its settings or publish again.")
    return f" The repo {repo_id} that this call had created was deleted again."


def _http_message(repo_id: str, status: int | None, err: Exception) -> str:
    reasons = {
        401: "the token is missing or invalid (log in with `hf auth login` or pass token=)",
        403: "the token may not write to this namespace (use a write token with access to it)",
    }
    reason = reasons.get(status) or (
        "the Hub had a server error; try again later" if status and status >= 500 else f"{err}"
    )
    return f"Could not publish to {repo_id} (HTTP {status}): {reason}. The local output folder is unchanged."


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


def _local_copy(source: str | Path, *, token, revision, endpoint, cache_dir, allow_patterns=None) -> Path:
    """A local folder as it is, or a Hub repo downloaded (only `allow_patterns` when given)."""
    path = Path(source)
    if path.is_dir():
        return path
    if not is_hub_id(str(source)):
        raise FileNotFoundError(f"{source}: neither a local folder nor a Hub repo id.")
    return Path(snapshot_download(str(source), revision=revision, token=token, endpoint=endpoint,
                                  cache_dir=cache_dir, allow_patterns=allow_patterns))


def check_adapter_fits(base, adapter_dir: Path, config: dict[str, Any]) -> None:
    """Compare architecture, sizes and target modules of an adapter with a base model; explain a mismatch."""
    report = read_report(adapter_dir) or {}
    recorded = report.get("base_config") or {}
    for key in BASE_CONFIG_KEYS:
        want, have = recorded.get(key), getattr(base.config, key, None)
        if want is not None and have is not None and want != have:
            raise AdapterMismatchError(
                f"{adapter_dir.name}: the adapter was trained on a base with {key}={want}, this base has {have}."
            )
    from safetensors import safe_open

    modules = dict(base.named_modules())
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():
            match = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
            if not match:
                continue
            module_name, which = match.groups()
            module = modules.get(module_name)
            if module is None:
                raise AdapterMismatchError(
                    f"{adapter_dir.name}: the adapter targets {module_name!r}, which this base model does not have."
                )
            shape = handle.get_slice(key).get_shape()
            size, expected = (shape[1], getattr(module, "in_features", None)) if which == "A" else (
                shape[0], getattr(module, "out_features", None))
            if expected is not None and size != expected:
                raise AdapterMismatchError(
                    f"{adapter_dir.name}: {module_name} has {'input' if which == 'A' else 'output'} size "
                    f"{expected} in this base model but {size} in the adapter."
                )


def load_unlearned(
    adapter_repo_or_path: str | Path | Sequence[str | Path],
    base_model: str | None = None,
    *,
    merge: bool = False,
    token: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    torch_dtype: Any = None,
):
    """Download a base model and one or more unlearning adapters, apply them, return `(model, tokenizer)`.

    Several adapters (successive deletion requests) are stacked: their low-rank updates are summed
    (peft `add_weighted_adapter(..., combination_type="cat")`), or with `merge=True` merged into the weights.
    Each adapter is checked against the base (architecture, sizes, target modules) before it is applied; no code
    from a repo is ever run.

    Args:
        adapter_repo_or_path: a Hub repo id or a local folder, or a list of them (applied together).
        base_model (`str`, *optional*): the base model; by default the one the adapters record (a downloaded
            adapter that records a local path needs it given).
        merge (`bool`): merge the adapters into the weights (a plain `transformers` model).
        token, revision, endpoint, cache_dir: as in `huggingface_hub.snapshot_download`.
        torch_dtype: dtype of the base model's weights.

    Example:
        >>> model, tokenizer = load_unlearned("me/smollm2-forget-alice")  # doctest: +SKIP
    """
    sources = [adapter_repo_or_path] if isinstance(adapter_repo_or_path, (str, Path)) else list(adapter_repo_or_path)
    if not sources:
        raise ValueError("Give at least one adapter.")
    folders = [_local_copy(s, token=token, revision=revision, endpoint=endpoint, cache_dir=cache_dir,
                           allow_patterns=ADAPTER_DOWNLOAD) for s in sources]
    configs = [_adapter_config(folder) for folder in folders]
    base_model = _base_of(sources, configs, base_model)
    model, tokenizer = _load_base(base_model, folders, token=token, endpoint=endpoint, cache_dir=cache_dir,
                                  torch_dtype=torch_dtype)
    for folder, config in zip(folders, configs, strict=True):
        check_adapter_fits(model, folder, config)
    model = _apply_adapters(model, folders)
    if merge:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def _adapter_config(folder: Path) -> dict[str, Any]:
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG}; is this an adapter?")
    return json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def _base_of(sources: Sequence[str | Path], configs: Sequence[dict[str, Any]], base_model: str | None) -> str:
    """The base model to load: the one given, or the one every adapter records (a Hub id, never a local path
    named by a downloaded adapter)."""
    recorded = {c.get("base_model_name_or_path") for c in configs} - {None}
    for source, config in zip(sources, configs, strict=True):
        named = config.get("base_model_name_or_path")
        if base_model is None and not Path(source).is_dir() and named and not is_hub_id(named):
            raise ValueError(f"{source}: its adapter config names the base {named!r}, a path on someone else's "
                             "machine, not a Hub id; pass base_model= explicitly (a downloaded adapter never picks "
                             "a local folder by itself).")
    if base_model is None:
        if len(recorded) != 1:
            raise ValueError(f"Cannot tell the base model (adapters record {sorted(recorded) or 'none'}); "
                             "pass base_model=.")
        return recorded.pop()
    if len(recorded) > 1:
        logger.warning("The adapters were trained on different bases %s; applying them to %s.", recorded, base_model)
    return base_model


def _load_base(base_model: str, folders: Sequence[Path], *, token, endpoint, cache_dir, torch_dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = _local_copy(base_model, token=token, revision=None, endpoint=endpoint, cache_dir=cache_dir)
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    # Never run code from a repo and never ask: trust_remote_code=False refuses an `auto_map` instead of prompting.
    model = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=False, **kwargs)
    tokenizer_dir = next((f for f in folders if (f / "tokenizer_config.json").is_file()), base_dir)
    return model, AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)


def _apply_adapters(model, folders: Sequence[Path]):
    """A `PeftModel` with every adapter applied (several are stacked into one, `stacked`)."""
    from peft import PeftModel

    names = [f"unlearn_{i}" for i in range(len(folders))]
    model = PeftModel.from_pretrained(model, folders[0], adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    if len(names) > 1:
        model.add_weighted_adapter(names, weights=[1.0] * len(names), adapter_name="stacked",
                                   combination_type="cat")
        model.set_adapter("stacked")
        for name in names:
            model.delete_adapter(name)
    return model
