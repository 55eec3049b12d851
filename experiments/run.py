"""Run an experiment: ``python experiments/run.py experiments/configs/mnist_demo.yaml``."""

import signal
import sys
from pathlib import Path


def _interrupted_while_starting(signum, frame):
    print("interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)


# Until the runner takes over (after the imports below), Ctrl-C / SIGTERM end the process quietly.
signal.signal(signal.SIGINT, _interrupted_while_starting)
signal.signal(signal.SIGTERM, _interrupted_while_starting)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.runner import main  # noqa: E402

if __name__ == "__main__":
    status = main(restore_signals=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting: nothing left to interrupt
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
