"""`python -m sam_jax.cli`: the `sam-jax` command."""

import sys

from sam_jax.cli import main

sys.exit(main())
