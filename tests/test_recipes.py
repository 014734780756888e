"""The accelerate configs in recipes/accelerate parse with accelerate's own classes and say what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = RECIPES / "accelerate"

# file -> (distributed_type, num_processes)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8),
    "fsdp_lora.yaml": (DistributedType.FSDP, 8),
    "fsdp2_lora.yaml": (DistributedType.FSDP, 8),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8),
}


def test_every_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerate(name):
    config = load_config_from_file(str(CONFIGS / name))  # raises on unknown keys
    assert isinstance(config, ClusterConfig)
    distributed_type, processes = EXPECTED[name]
    assert config.distributed_type == distributed_type
    assert config.num_processes == processes and config.num_machines == 1
    assert config.mixed_precision == "bf16" and config.use_cpu is False
    if distributed_type != DistributedType.FSDP:
        assert config.fsdp_config == {}
    if distributed_type != DistributedType.DEEPSPEED:
        assert config.deepspeed_config == {}


def test_fsdp2_config():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp2_lora.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # Settings FSDP2 has no use for (accelerate would warn and drop them).
    assert not {"fsdp_use_orig_params", "fsdp_sync_module_states", "fsdp_backward_prefetch"} & fsdp.keys()


def test_fsdp_config_has_the_settings_lora_needs():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp_lora.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 1
    assert fsdp["fsdp_use_orig_params"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_state_dict_type"] in ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
    # Loading on rank 0 only needs the others to receive the weights by broadcast.
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs(name, stage):
    ds = load_config_from_file(str(CONFIGS / name)).deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    # Values the Trainer fills in itself ("auto") must not be pinned here, or they could contradict its arguments.
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & ds.keys()
    if stage == 3:
        assert ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True
    else:
        assert ds.get("zero3_init_flag", False) is False


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_parses_the_configs_accelerate_builds(name, stage, monkeypatch):
    """DeepSpeed's own parser accepts what accelerate makes of the recipe (CPU accelerator: no GPU needed).

    The Trainer fills the "auto" values from its arguments; here they get LuneConfig's defaults (4 rows a step,
    no accumulation, one process)."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = load_config_from_file(str(CONFIGS / name)).deepspeed_config
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                             offload_param_device=ds["offload_param_device"],
                             zero3_init_flag=ds.get("zero3_init_flag", False),
                             zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False))
    filled = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "train_batch_size": 4,
              "gradient_clipping": 1.0}
    config = {k: filled.get(k, v) if v == "auto" else v for k, v in plugin.deepspeed_config.items()}
    assert "auto" not in str(config)
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == stage
    assert str(parsed.zero_config.offload_optimizer.device).endswith("none")
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save is True


def test_readme_launch_commands_name_existing_configs():
    text = (RECIPES / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"recipes/accelerate/{name}" in text, name
    assert "-m lune_hf.cli train --config" in text
