"""lune-hf: make a language model forget, with LoRA adapters trained on negative examples."""

from ._version import __version__
from .config import LuneConfig
from .objectives import OBJECTIVES
from .trainer import LuneTrainer, NonFiniteLossError, default_lora_config

__all__ = ["LuneConfig", "LuneTrainer", "NonFiniteLossError", "OBJECTIVES", "default_lora_config", "__version__"]
