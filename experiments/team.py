"""A team of robot processes on this machine: ``python experiments/team.py CONFIG --output-dir DIR``
(see :mod:`experiments.team_launch`)."""

import sys

from experiments.checkout import warn_if_elsewhere
from experiments.team_launch import main

if __name__ == "__main__":
    warn_if_elsewhere(__file__)
    sys.exit(main())
