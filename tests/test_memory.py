"""`lune_hf.memory` and `lune-hf estimate-memory`: fake-tensor estimates against the real CPU step.

The real step runs the same code on real tensors and reads the peak from the CPU allocator's own events (the
profiler), which knows nothing of the tracker: an estimate that missed a buffer, or a step that stopped being the
trainer's, shows as a difference. Kernel scratch (buffers one operator allocates and frees inside its CPU kernel,
which differ between CPUs) is left out. Measured on 2 CPU cores: within 0.1% on these configs.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig

from lune_hf import LuneConfig, LuneTrainer
from lune_hf.cli import main
from lune_hf.memory import StepShape, estimate_step_memory

pytestmark = pytest.mark.xdist_group("memory")  # its module fixtures run once, on one worker

SMALL = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=512, vocab_size=4096)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("config")
    LlamaConfig(**SMALL).save_pretrained(folder)
    return folder / "config.json"


def relative_error(estimate: int, real: int) -> float:
    return abs(estimate / real - 1)


def test_cli_estimate_matches_the_real_cpu_step(config_file, tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate-memory", str(config_file), "--batch-size", "2", "--max-length", "64",
                 "--objective", "npo", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "peak" in printed and "full fine-tuning, same batch" in printed and "24 GiB yes" in printed
    estimate = json.loads(out.read_text())
    shape = StepShape(**estimate["shape"])
    assert shape.objective == "npo" and shape.retain and shape.activation_checkpointing and shape.answer_tokens == 32
    real = estimate_step_memory(LlamaConfig(**SMALL), shape, real=True)
    assert relative_error(estimate["peak_bytes"], real.peak_bytes) < 0.05, (estimate["peak_bytes"], real.peak_bytes)
    full = estimate_step_memory(LlamaConfig(**SMALL), StepShape(method="full", batch_size=2, max_length=64,
                                                                answer_tokens=32, activation_checkpointing=False),
                                real=True)
    assert relative_error(estimate["full_finetuning_peak_bytes"], full.peak_bytes) < 0.05
    assert estimate["peak_bytes"] < 0.5 * full.peak_bytes  # LoRA holds no gradients or AdamW states of the base


@pytest.mark.parametrize("settings", [
    dict(objective="lune", retain=False, activation_checkpointing=False, lora_dropout=0.05),
    dict(method="full_reference", activation_checkpointing=False),
    dict(objective="lune", teacher=True, retain=False, activation_checkpointing=False),
])
def test_estimate_matches_the_real_cpu_step(settings):
    shape = StepShape(**settings, batch_size=2, max_length=64, answer_tokens=16)
    fake = estimate_step_memory(LlamaConfig(**SMALL), shape)
    real = estimate_step_memory(LlamaConfig(**SMALL), shape, real=True)
    assert relative_error(fake.peak_bytes, real.peak_bytes) < 0.05, (fake.peak_bytes, real.peak_bytes)
    if shape.method == "full_reference":
        assert fake.parameters["reference"] == fake.parameters["total"]  # a whole second model
    if shape.teacher:  # a frozen copy of the base model, and the step that reads it
        assert fake.parameters["teacher"] == fake.parameters["total"] - fake.parameters["trainable"]
        alone = estimate_step_memory(LlamaConfig(**SMALL), StepShape(**{**settings, "teacher": False}, batch_size=2,
                                                                      max_length=64, answer_tokens=16))
        assert fake.peak_bytes > alone.peak_bytes + 2 * fake.parameters["teacher"]  # bf16 weights, at least


def test_checkpointing_and_dropout_move_the_estimate_as_measured():
    """Longer rows make activations dominate: checkpointing saves most of them, dropout adds copies."""
    def peak(**kw) -> int:
        return estimate_step_memory(LlamaConfig(**SMALL), StepShape(batch_size=2, max_length=256, **kw)).peak_bytes

    on, off, off_no_dropout = (peak(activation_checkpointing=True), peak(activation_checkpointing=False),
                               peak(activation_checkpointing=False, lora_dropout=0.0))
    assert on < off_no_dropout < off


def test_checkpointing_is_on_by_default_and_changes_only_memory(memorised, tmp_path):
    import copy

    """The default turns activation checkpointing on; the trained adapter equals the one trained without it."""
    from datasets import Dataset

    from lune_hf.demo import split_facts

    forget, retain = split_facts(memorised.facts)
    rows = [Dataset.from_list([f.row() for f in part]) for part in (forget, retain)]
    adapters = []
    for checkpointing in (None, False):
        extra = {} if checkpointing is None else {"gradient_checkpointing": checkpointing}
        args = LuneConfig(output_dir=str(tmp_path / str(checkpointing)), max_steps=4, stop_when_forgotten=False,
                          forget_eval_steps=0, logging_steps=1, report_to=[], use_cpu=True, seed=3, **extra)
        trainer = LuneTrainer(copy.deepcopy(memorised.model), args, train_dataset=rows[0], retain_dataset=rows[1],
                              processing_class=memorised.tokenizer)
        trainer.train()
        inner = trainer.model.get_base_model()
        assert any(getattr(m, "gradient_checkpointing", False) for m in inner.modules()) is (checkpointing is None)
        adapters.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    assert any(w.abs().max() > 0 for n, w in adapters[0].items() if "lora_B" in n)
    for name, value in adapters[1].items():
        torch.testing.assert_close(adapters[0][name], value, rtol=1e-5, atol=1e-7)


def test_bad_input_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="answer_tokens"):
        StepShape(max_length=64, answer_tokens=64)
    with pytest.raises(ValueError, match="method"):
        StepShape(method="qlora")
    with pytest.raises(ValueError, match="teacher=True"):
        StepShape(objective="npo", teacher=True)
    assert main(["estimate-memory", str(tmp_path / "missing")]) == 2
    assert "lune-hf estimate-memory: error:" in capsys.readouterr().err


def test_both_flag_spellings_and_python_m(config_file, capsys):
    """Every subcommand takes `--batch-size` and `--batch_size` alike; `python -m lune_hf` is the same CLI."""
    import subprocess
    import sys

    assert main(["estimate-memory", str(config_file), "--batch_size", "2", "--max_length", "64", "--no_baseline",
                 "--gpu", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 x 64" in out and "2 GiB yes" in out and "full fine-tuning" not in out
    proc = subprocess.run([sys.executable, "-m", "lune_hf", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "estimate-memory" in proc.stdout


def test_the_cpu_peak_leaves_out_kernel_scratch():
    """A batched matmul of strided inputs copies them inside its CPU kernel (here one slice after another): the
    allocator sees the copies, no tensor of the step holds them, and their size depends on the CPU's kernels."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from lune_hf.memory import _cpu_allocator_peak

    class Tracking(TorchDispatchMode):  # the tracker's place in the real step
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    a, b = torch.randn(2, 4, 64, 32).transpose(2, 3)[..., ::2, :], torch.randn(2, 4, 64, 64)
    out: list[torch.Tensor] = []

    def run() -> None:
        with Tracking():
            out.append(torch.matmul(a, b))

    peak, with_scratch = _cpu_allocator_peak(run)
    assert peak == out[0].untyped_storage().nbytes() == 2 * 4 * 16 * 64 * 4
    assert with_scratch >= peak
