"""Tune an experiment's pairs: ``python experiments/tune.py CONFIG.yaml [--trials N] [--workers K] ...``
(see :mod:`experiments.tuning`)."""

import sys

from experiments.checkout import warn_if_elsewhere  # noqa: E402
from experiments.tuning import main  # noqa: E402

if __name__ == "__main__":
    warn_if_elsewhere(__file__)
    sys.exit(main())
