"""`python -m lune_hf.cli`: what the launchers (`accelerate launch -m`, `torchrun -m`) start."""

import sys

from . import main

sys.exit(main())
