"""lune-hf: make a language model forget, with LoRA adapters trained on negative examples."""

__version__ = "0.1.0"

from .config import LuneConfig  # noqa: E402
from .objectives import OBJECTIVES  # noqa: E402
from .trainer import LuneTrainer, NonFiniteLossError, default_lora_config  # noqa: E402

__all__ = ["LuneConfig", "LuneTrainer", "NonFiniteLossError", "OBJECTIVES", "default_lora_config", "__version__"]
