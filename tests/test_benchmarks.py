"""The benchmark scripts run from a fresh clone and count what they claim to count."""

import re

import torch

from benchmarks import eval_time
from problems.mnist import mnist_cnn


def test_eval_time_counts_the_paper_cnns_multiply_adds():
    # conv 3 x 24 x 24 outputs x 25 taps, 432 -> 64, 64 -> 10
    assert eval_time.multiply_adds_per_digit(mnist_cnn()) == 3 * 24 * 24 * 25 + 432 * 64 + 64 * 10


def test_eval_time_runs_and_prints_its_ratio_last(capsys):
    threads = torch.get_num_threads()
    try:
        eval_time.main(["--nodes", "3", "--digits", "40", "--val-batch", "16", "--repeats", "1",
                        "--whole-batch-nodes", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"evaluation / matmul-rate time: \d+\.\d\d", lines[-1])
    assert any(line.strip().startswith("whole-batch blocks") for line in lines)
