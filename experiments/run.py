"""Run an experiment: ``python experiments/run.py experiments/configs/mnist_demo.yaml``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
