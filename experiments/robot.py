"""One robot of a team of processes: ``python experiments/robot.py CONFIG --robot I --output-dir DIR``
(``experiments/team.py`` starts one per robot on this machine; on several computers, start each by hand)."""

import signal
import sys


def _interrupted_while_starting(signum, frame):
    print("interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)
signal.signal(signal.SIGTERM, _interrupted_while_starting)

from experiments.checkout import warn_if_elsewhere  # noqa: E402
from experiments.team_launch import robot_main  # noqa: E402

if __name__ == "__main__":
    warn_if_elsewhere(__file__)
    status = robot_main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
