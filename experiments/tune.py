"""Tune an experiment's pairs: ``python experiments/tune.py CONFIG.yaml [--trials N] [--workers K] ...``
(see :mod:`experiments.tuning`)."""

import sys
from pathlib import Path

from experiments.tuning import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
