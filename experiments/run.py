"""Run an experiment: ``python experiments/run.py experiments/configs/mnist_demo.yaml``, or as K
processes: ``torchrun --nproc-per-node K experiments/run.py CONFIG.yaml``."""

import signal
import sys


def _interrupted_while_starting(signum, frame):
    print("interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)


# Until the runner takes over (after the imports below), Ctrl-C / SIGTERM end the process quietly.
signal.signal(signal.SIGINT, _interrupted_while_starting)
signal.signal(signal.SIGTERM, _interrupted_while_starting)

from experiments.checkout import warn_if_elsewhere  # noqa: E402
from experiments.runner import main  # noqa: E402
from optimizers.comm.dist_launch import exit_on_peer_loss  # noqa: E402

if __name__ == "__main__":
    warn_if_elsewhere(__file__)
    # a lost peer rank ends this one with one line and status 1 (one process: never happens)
    status = exit_on_peer_loss(lambda: main(restore_signals=False))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting: nothing left to interrupt
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
