"""`python -m lune_hf <command>`: the same as the `lune-hf` command."""

import sys

from .cli import main

sys.exit(main())
