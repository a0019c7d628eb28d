"""``python -m rm_jax.cli ...`` (the same as ``rm-jax ...``)."""

import sys

from rm_jax.cli import main

sys.exit(main())
