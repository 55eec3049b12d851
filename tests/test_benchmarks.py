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
                        "--whole-batch-nodes", "2", "--threads", "1", "--profile"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"evaluation / matmul-rate time: \d+\.\d\d", lines[-1])
    assert any(line.strip().startswith("whole-batch blocks") for line in lines)
    assert any(re.match(r"blocks of \d+ robots x \d+ digits \(no floor", line.strip()) for line in lines)
    profiled = lines[lines.index(next(line for line in lines if "profile of one evaluation" in line)) + 1:-1]
    assert profiled and all(re.fullmatch(r"\s+\S+\s+\d+\.\d\d s\s+\d+\.\d%\s+\(\d+ calls\)", row) for row in profiled)


def test_round_time_judges_each_local_step_against_the_centralized_step(capsys):
    from benchmarks import round_time

    def row(nodes, batch, optimizer, stack_ms, central_ms=10.0):
        return {"setting": f"N={nodes} B={batch}", "num_nodes": nodes, "batch": batch, "optimizer": optimizer,
                "requested": "auto", "stack_ms": stack_ms, "central_ms": central_ms, "loop_ms": 4 * stack_ms}

    rows = [row(100, 8, "dinno", 29.0),  # two primal steps: 1.45x per step
            row(100, 8, "dsgd", 16.0), row(100, 8, "dsgt", 14.0),
            row(10, 64, "dsgd", 11.0), row(10, 64, "dinno", 40.0)]  # DiNNO at N = 10 has no per-step target
    assert round_time.per_step_ratio(rows[0]) == 29.0 / 2 / 10.0
    assert not round_time.check_targets(rows, "auto")
    out = capsys.readouterr().out
    assert "PASS  N=100 B=8 dinno: stack per step <= 1.6x centralized step  (1.45x)" in out
    assert "FAIL  N=100 B=8 dsgd: stack per step <= 1.4x centralized step  (1.60x)" in out
    assert "PASS  N=10 B=64 dsgd: stack per step <= 1.3x centralized step  (1.10x)" in out
    assert "N=10 B=64 dinno: stack per step" not in out and "N=100 B=8 dsgt: stack per step" not in out
    rows[1]["stack_ms"] = 13.0
    assert round_time.check_targets(rows, "auto")


def test_round_time_profile_sorts_operators_and_accounts_for_the_whole_round():
    from benchmarks import round_time

    assert round_time.profile_category("aten::bmm") == "matrix products"
    assert round_time.profile_category("aten::baddbmm") == "matrix products"
    assert round_time.profile_category("aten::_fused_adam_") == "optimizer update"
    assert round_time.profile_category("aten::mkldnn_convolution") == "convolution"
    assert round_time.profile_category("aten::max_pool2d_with_indices_backward") == "pooling"
    assert round_time.profile_category("aten::copy_") == "copies and layout"
    assert round_time.profile_category("aten::relu") == "element-wise and other"

    class Runner:
        a, b = torch.randn(64, 64), torch.randn(64, 64)

        def round(self):
            (self.a @ self.b).relu_()

    profile = round_time.profile_round(Runner(), rounds=3)
    assert profile["matrix products"] > 0 and profile["element-wise and other"] > 0
    assert "mm" in profile.pop("top")
    assert all(v >= 0 for v in profile.values())
    assert profile["total"] >= profile["matrix products"]  # wall time per round holds the operators' own time


def test_the_gpu_check_runs_its_cpu_part_and_says_what_it_skipped(capsys):
    import torch

    from benchmarks import gpu_check

    assert gpu_check.main(["--rounds", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    for name in ("mnist", "density", "rl"):
        assert any(line.startswith(f"INFO {name} on CPU: ") and "ms/round" in line for line in lines), name
        expected = "PASS" if torch.cuda.is_available() else "SKIP"
        assert any(line.startswith(f"{expected} {name} on CUDA against CPU") for line in lines), name
