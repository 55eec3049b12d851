"""The experiment runner: config validation, outputs, the original configs, and accuracy on MNIST."""

import copy
import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml

from experiments.runner import main
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TINY, data_overrides, run, write_config

SEED_CONFIGS = REPO_ROOT.parent / "shared" / "seed" / "configs"


# ------------------------------------------------------------------------------------ end to end

def test_tiny_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, TINY), out) == 0
    names = ["dinno", "dsgd", "dsgt", "individual", "centralized"]
    for name in names:
        assert (out / f"{name}_results.pt").is_file()
        assert (out / f"{name}_metrics.csv").is_file()
    for f in ["config.yaml", "manifest.json", "graph.json", "summary.csv", "dinno_profile.json",
              "figures/validation_loss.png", "figures/top1_accuracy.png", "figures/consensus_error.png",
              "figures/graph.png"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [p["problem_name"] for p in manifest["pairs"]] == names
    assert all(p["status"] == "completed" for p in manifest["pairs"])
    assert manifest["data"]["num_train"] > 0 and "source" in manifest["data"]
    assert manifest["versions"]["torch"] == torch.__version__

    res = torch.load(out / "dinno_results.pt", weights_only=True)
    assert res["round"] == [0, 2, 4]
    assert res["top1_accuracy"][-1].shape == (4,)
    assert res["validation_as_vector"][-1].shape == (4, 1000) and manifest["data"]["num_validation"] == 1000
    assert res["consensus_pairwise"][-1].shape == (4, 4)
    assert torch.equal(res["forward_pass_count"][-1], torch.full((4,), 4 * 2 * 16))
    assert (res["bytes_sent"][-1] > 0).all()
    # accuracy recomputed from the per-sample correctness vector
    assert torch.allclose(res["validation_as_vector"][-1].double().mean(1), res["top1_accuracy"][-1].double())

    dsgt = torch.load(out / "dsgt_results.pt", weights_only=True)
    assert dsgt["round"] == [0, 2, 3]  # every evaluate_frequency rounds and the last one
    assert torch.equal(dsgt["forward_pass_count"][-1], torch.full((4,), (3 + 1) * 16))  # + init_grads

    with open(out / "dsgd_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 4 and {"round", "node", "validation_loss", "top1_accuracy"} <= set(rows[0])
    with open(out / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["problem_name"] for r in summary] == names

    # every pair started from the same base model and the same splits
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["experiment"]["problem"] == "mnist"
    graph = json.loads((out / "graph.json").read_text())
    assert len(graph["nodes"]) == 4 and len(graph["edges"]) == 4


@pytest.mark.integration
def test_same_config_same_numbers(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    cfg["problem_configs"]["problem1"]["optimizer_config"]["profile"] = False
    cfg["experiment"]["execution"] = "grouped"  # "auto" may pick another kernel: equal up to rounding
    path = write_config(tmp_path, cfg)
    assert run(path, tmp_path / "a") == 0
    assert run(path, tmp_path / "b") == 0
    for name in ("dinno", "dsgd", "dsgt"):
        a = torch.load(tmp_path / "a" / f"{name}_final_params.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / f"{name}_final_params.pt", weights_only=True)
        assert torch.equal(a, b)


def test_pairs_runs_only_the_named_pairs_and_records_the_selection(tmp_path):
    out = tmp_path / "out"
    assert main([str(write_config(tmp_path, TINY)), "--output-dir", str(out), "--quiet", "--pairs", "dsgt,centralized",
                 *sum((["--set", s] for s in data_overrides()), [])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["problem_name"] for p in manifest["pairs"]] == ["dsgt", "centralized"]  # the config's order
    assert manifest["pairs_selected"] == ["dsgt", "centralized"] and manifest["status"] == "completed"
    assert sorted(p.name for p in out.glob("*_results.pt")) == ["centralized_results.pt", "dsgt_results.pt"]


@pytest.mark.integration
def test_selected_pairs_match_a_full_run_and_a_resume_adds_a_pair(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"]["execution"] = "grouped"  # "auto" may pick another kernel: equal up to rounding
    cfg["problem_configs"]["problem1"]["optimizer_config"]["profile"] = False
    path = write_config(tmp_path, cfg)
    sets = sum((["--set", s] for s in data_overrides()), [])
    assert main([str(path), "--output-dir", str(tmp_path / "all"), "--quiet", *sets]) == 0
    part = tmp_path / "part"
    assert main([str(path), "--output-dir", str(part), "--quiet", "--pairs", "dsgd", *sets]) == 0
    assert main(["--resume", str(part), "--quiet"]) == 0  # keeps its selection: nothing more to run
    assert [p["problem_name"] for p in json.loads((part / "manifest.json").read_text())["pairs"]] == ["dsgd"]
    assert main(["--resume", str(part), "--quiet", "--pairs", "dsgd,dinno,individual"]) == 0
    manifest = json.loads((part / "manifest.json").read_text())
    assert [p["problem_name"] for p in manifest["pairs"]] == ["dsgd", "dinno", "individual"]
    assert manifest["status"] == "completed" and manifest["pairs_selected"] == ["dsgd", "dinno", "individual"]
    for name in ("dsgd", "dinno", "individual"):
        a = torch.load(tmp_path / "all" / f"{name}_final_params.pt", weights_only=True)
        b = torch.load(part / f"{name}_final_params.pt", weights_only=True)
        assert torch.equal(a, b), name


def test_diverging_pair_is_marked_and_the_next_pair_still_runs(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    cfg["problem_configs"]["problem2"]["optimizer_config"]["alpha0"] = 1e4
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    status = {p["problem_name"]: p for p in manifest["pairs"]}
    assert status["dsgd"]["status"] == "diverged" and status["dsgd"]["diverged_round"] >= 1
    assert status["dsgt"]["status"] == "completed"
    assert manifest["status"] == "failed"
    assert (out / "dsgt_results.pt").is_file() and (out / "dsgd_results.pt").is_file()


@pytest.mark.integration
def test_run_py_works_from_repo_root_and_from_experiments(tmp_path):
    path = write_config(tmp_path, {**TINY, "problem_configs": {"p": TINY["problem_configs"]["problem3"]},
                                   "experiment": {**TINY["experiment"], "centralized": False,
                                                  "individual_training": {"train_solo": False}}})
    sets = sum((["--set", s] for s in data_overrides()), [])
    for cwd, script in ((REPO_ROOT, "experiments/run.py"), (REPO_ROOT / "experiments", "run.py")):
        out = tmp_path / f"out_{cwd.name}"
        proc = subprocess.run([sys.executable, script, str(path), "--output-dir", str(out), "--quiet", *sets],
                              cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "results:" in proc.stdout and (out / "dsgt_results.pt").is_file()


# ---------------------------------------------------------------------------------- validation

def bad(cfg_change):
    cfg = copy.deepcopy(TINY)
    cfg_change(cfg)
    return cfg


BAD_CONFIGS = {
    "unknown key": (lambda c: c["experiment"].__setitem__("grpah", {}), "experiment.grpah", "did you mean 'graph'"),
    "wrong type": (lambda c: c["experiment"]["graph"].__setitem__("num_nodes", "ten"),
                   "experiment.graph.num_nodes", "integer"),
    "unknown alg": (lambda c: c["problem_configs"]["problem1"]["optimizer_config"].__setitem__("alg_name", "dinn"),
                    "alg_name", "did you mean 'dinno'"),
    "unknown optimizer key": (lambda c: c["problem_configs"]["problem2"]["optimizer_config"].__setitem__("alpha", 1),
                              "problem_configs.problem2.optimizer_config.alpha", "alpha0"),
    "unknown graph type": (lambda c: c["experiment"]["graph"].__setitem__("type", "ring"),
                           "experiment.graph.type", "cycle"),
    "unknown split": (lambda c: c["experiment"].__setitem__("data_split_type", "heterogeneous"),
                      "experiment.data_split_type", "hetero"),
    "unknown metric": (lambda c: c["problem_configs"]["problem1"]["metrics"].append("top5_accuracy"),
                       "metrics", "top1_accuracy"),
    "no nodes": (lambda c: c["experiment"]["graph"].__setitem__("num_nodes", 0), "num_nodes", "at least 1"),
    "hetero too many nodes": (lambda c: (c["experiment"].__setitem__("data_split_type", "hetero"),
                                         c["experiment"]["graph"].__setitem__("num_nodes", 12)),
                              "hetero", "10"),
    "disconnected random graph": (lambda c: c["experiment"].__setitem__(
        "graph", {"num_nodes": 10, "type": "random", "p": 0.01, "gen_attempts": 3}), "random", "disconnected"),
    "missing required": (lambda c: c["problem_configs"]["problem3"]["optimizer_config"].pop("alpha"),
                         "optimizer_config.alpha", "required"),
    "bad lr schedule": (lambda c: c["problem_configs"]["problem1"]["optimizer_config"].__setitem__(
        "lr_decay_type", "cosine"), "lr_decay_type", "log"),
    "duplicate names": (lambda c: c["problem_configs"]["problem2"].__setitem__("problem_name", "dinno"),
                        "problem_name", "twice"),
    "batch larger than node data": (lambda c: c["problem_configs"]["problem1"].__setitem__(
        "train_batch_size", 100000), "train_batch_size", "smallest node"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    change, key, hint = BAD_CONFIGS[case]
    out = tmp_path / "out"
    cfg = bad(change)
    cfg["experiment"]["output_metadir"] = str(tmp_path / "meta")
    code = main([str(write_config(tmp_path, cfg)), "--quiet",
                 *sum((["--set", s] for s in data_overrides()), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and key in err[0] and hint in err[0], err
    assert not out.exists() and not (tmp_path / "meta").exists()


@pytest.mark.parametrize("argv,hint", [
    (["missing.yaml"], "not found"),
    (["CFG", "--set", "experiment.seed"], "dotted.key=value"),
    (["CFG", "--set", "problem_configs.problem1.optimizer_config.outer_iterations=many"], "integer"),
    (["CFG", "--device", "tpu"], "invalid choice"),
    (["CFG", "--pairs", "dsgt,nope"], "'nope' is not a pair of this config; its pairs: dinno, dsgd, dsgt, individual, "
                                      "centralized"),
    (["CFG", "--pairs", "dsgt,dsgt"], "named twice"),
])
def test_bad_command_line_exits_2(argv, hint, tmp_path, capsys):
    cfg_path = str(write_config(tmp_path, TINY))
    code = main([cfg_path if a == "CFG" else str(tmp_path / a) if a.endswith(".yaml") else a for a in argv])
    assert code == 2
    assert hint in capsys.readouterr().err


def test_missing_mnist_files_are_refused_when_dataset_is_mnist(tmp_path, capsys):
    code = main([str(write_config(tmp_path, TINY)), "--set", f"experiment.data_dir={tmp_path / 'nothing'}",
                 "--set", "experiment.dataset=mnist", "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert main([str(write_config(tmp_path, TINY)), "--output-dir", str(out)]) == 2
    assert (out / "precious.txt").read_text() == "keep" and len(list(out.iterdir())) == 1


# -------------------------------------------------------------------- the original research configs

@pytest.mark.integration
@pytest.mark.parametrize("name", ["dist_mnist_PAPER.yaml", "dist_mnist_anim.yaml"])
def test_original_mnist_configs_run_with_paths_overridden(name, tmp_path):
    path = SEED_CONFIGS / name
    if not path.is_file():
        pytest.skip("seed configs not present")
    raw = yaml.safe_load(path.read_text())
    sets = [f"experiment.output_metadir={tmp_path}"]
    for key, pc in raw["problem_configs"].items():
        sets += [f"problem_configs.{key}.optimizer_config.outer_iterations=2",
                 f"problem_configs.{key}.val_batch_size=2000"]
    args = [str(path), "--quiet", "--device", "cpu"]  # the original's use_cuda: true requires CUDA here
    for item in [*data_overrides(), *sets]:
        args += ["--set", item]
    assert main(args) == 0
    (out,) = list(tmp_path.iterdir())
    assert out.name.endswith("_" + raw["experiment"]["name"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["status"] for p in manifest["pairs"]] == ["completed"] * len(raw["problem_configs"])
    for pc in raw["problem_configs"].values():
        res = torch.load(out / f"{pc['problem_name']}_results.pt", weights_only=True)
        assert set(pc["metrics"]) <= set(res)
    assert (out / "figures" / "top1_accuracy.png").is_file()


# ------------------------------------------------------------------------ learning on real MNIST

def paper_run(tmp_path, problem_key, rounds, mnist_dir):
    out = tmp_path / problem_key
    config = REPO_ROOT / "experiments" / "configs" / "mnist_paper.yaml"
    raw = yaml.safe_load(config.read_text())
    keep = raw["problem_configs"][problem_key]
    raw["problem_configs"] = {problem_key: keep}
    keep["optimizer_config"]["outer_iterations"] = rounds
    keep["metrics_config"]["evaluate_frequency"] = rounds
    keep["val_batch_size"] = 2000
    path = write_config(tmp_path, raw, f"{problem_key}.yaml")
    assert main([str(path), "--quiet", "--output-dir", str(out), "--device", "cpu",
                 "--set", f"experiment.data_dir={mnist_dir}"]) == 0
    res = torch.load(out / f"{keep['problem_name']}_results.pt", weights_only=True)
    return res["top1_accuracy"][-1]


@pytest.mark.slow
def test_paper_setup_dsgt_lifts_every_node_above_70_percent_in_200_rounds(tmp_path, mnist_dir):
    accuracy = paper_run(tmp_path, "problem2", 200, mnist_dir)
    assert accuracy.min() > 0.7, accuracy


@pytest.mark.slow
def test_paper_setup_dinno_lifts_every_node_above_75_percent_in_1000_rounds(tmp_path, mnist_dir):
    accuracy = paper_run(tmp_path, "problem1", 1000, mnist_dir)
    assert accuracy.min() > 0.75, accuracy


@pytest.mark.integration
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_keeps_results_and_marks_the_run_interrupted(signame, tmp_path):
    import signal
    import time

    cfg = copy.deepcopy(TINY)
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    cfg["problem_configs"]["problem1"]["optimizer_config"]["outer_iterations"] = 100000
    cfg["problem_configs"]["problem1"]["optimizer_config"]["profile"] = False
    out = tmp_path / "out"
    sets = sum((["--set", s] for s in data_overrides()), [])
    proc = subprocess.Popen([sys.executable, "experiments/run.py", str(write_config(tmp_path, cfg)),
                             "--output-dir", str(out), *sets], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "manifest.json").exists() and time.time() < deadline:  # setup done, first pair starts
        time.sleep(0.2)
    time.sleep(4)  # some rounds and evaluations
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [p["status"] for p in manifest["pairs"]] == ["interrupted", "not started", "not started"]
    res = torch.load(out / "dinno_results.pt", weights_only=True)
    assert res["round"][0] == 0
    assert (out / "summary.csv").is_file()
