"""`lune-hf` under `accelerate launch` with an FSDP config, on CPU ranks (what `test_distributed.py` launches).

accelerate turns an FSDP config into FSDP only on accelerators: on CPU it falls back to plain multi-process DDP
(`DistributedType.MULTI_CPU`) and the recipe's sharding is never exercised. This launcher makes the one change a
GPU machine makes by itself, marking the state FSDP when accelerate built an FSDP plugin, and then runs the
ordinary CLI. Nothing else differs from a GPU launch: the trainer, the recipe and the save path are the real ones.

    accelerate launch --config_file recipes/accelerate/fsdp2_lora.yaml --num_processes 2 ... \
        tests/fsdp_cpu_cli.py train --config recipes/demo.yaml ...
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # later AcceleratorState() reads it


AcceleratorState.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    from lune_hf import cli

    sys.exit(cli.main(sys.argv[1:]))
