"""experiments/conditions.py: every pair under several radio conditions, resumable, one table."""

import copy
import csv
import json

import pytest
import torch
import yaml

from experiments.conditions import main
from tests.helpers.runs import TINY, data_overrides


def write_config(tmp_path, cfg):
    path = tmp_path / "conditions.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the conditions in the order given
    return path


def tiny_conditions(rounds=6):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=False)
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
    cfg["conditions"] = {"lossless": {},
                         "half_lost": {"links": {"model": "independent", "drop_prob": 0.5, "seed": 2}},
                         "asleep": {"asynchrony": {"activation": 0.5, "max_delay": 2}}}
    return cfg


def sets():
    return [a for item in data_overrides() for a in ("--set", item)]


@pytest.mark.integration
def test_conditions_run_resume_and_tabulate(tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path, tiny_conditions())
    assert main([str(config), "--output-dir", str(out), "--only", "lossless,half_lost", *sets()]) == 0
    rows = list(csv.DictReader(open(out / "conditions.csv")))
    assert [(r["condition"], r["problem_name"]) for r in rows] == [
        (c, p) for c in ("lossless", "half_lost") for p in ("dinno", "dsgd", "dsgt")]
    assert all(r["status"] == "completed" and r["metric"] == "top1_accuracy" and 0 <= float(r["final_worst"])
               <= float(r["final_mean"]) <= 1 for r in rows)
    lossless = {r["problem_name"]: r for r in rows if r["condition"] == "lossless"}
    lost = {r["problem_name"]: r for r in rows if r["condition"] == "half_lost"}
    assert float(lost["dsgd"]["mb_per_robot_sent"]) == float(lossless["dsgd"]["mb_per_robot_sent"])  # lost still sent
    assert lost["dinno"]["final_mean"] != lossless["dinno"]["final_mean"]
    assert (out / "conditions.png").stat().st_size > 0
    assert json.loads((out / "half_lost" / "manifest.json").read_text())["status"] == "completed"
    first = (out / "lossless" / "dsgd_results.pt").stat().st_mtime_ns

    assert main(["--resume", str(out)]) == 0  # the completed ones are kept, the third one runs
    assert (out / "lossless" / "dsgd_results.pt").stat().st_mtime_ns == first
    rows = list(csv.DictReader(open(out / "conditions.csv")))
    assert {r["condition"] for r in rows} == {"lossless", "half_lost", "asleep"}
    asleep = {r["problem_name"]: r for r in rows if r["condition"] == "asleep"}
    assert float(asleep["dsgd"]["mb_per_robot_sent"]) < float(lossless["dsgd"]["mb_per_robot_sent"])


@pytest.mark.parametrize("change,message", [
    ({"conditions": {"bad name!": {}}}, "conditions.'bad name!': a condition name must be"),
    ({"conditions": {"x": {"links": {"drop_prob": 2}}}}, "conditions.x: experiment.links.drop_prob: must be in [0, 1]"),
    ({"conditions": {"x": [1]}}, "conditions.x: expected a mapping of experiment keys"),
    ({"conditions": None}, "conditions: a conditions config needs a top-level conditions block"),
])
def test_bad_conditions_are_refused_with_one_line_before_anything_runs(tmp_path, capsys, change, message):
    cfg = tiny_conditions()
    cfg.update(change)
    out = tmp_path / "out"
    assert main([str(write_config(tmp_path, cfg)), "--output-dir", str(out), *sets()]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--only", "lossles"], "--only: 'lossles' is not a condition; allowed: lossless, half_lost, asleep"),
    (["--metric", "top5"], "--metric: 'top5' is not a scalar metric; allowed: "),
    (["--target", "nan"], "--target: must be a finite number, got nan")])
def test_bad_command_lines_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main([str(write_config(tmp_path, tiny_conditions())), "--output-dir", str(out), *args, *sets()]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_shipped_radios_config_has_every_algorithm_under_seven_conditions():
    from pathlib import Path

    from experiments.conditions import condition_configs
    from experiments.config import load_yaml
    from optimizers import OPTIMIZERS

    raw = load_yaml(Path(__file__).resolve().parent.parent / "experiments" / "configs" / "mnist_radios.yaml")
    configs = condition_configs(raw)
    assert list(configs) == ["lossless", "independent_10", "independent_30", "independent_50", "symmetric_30",
                             "bursty_30", "asynchronous"]
    algorithms = {pc["optimizer_config"]["alg_name"] for pc in raw["problem_configs"].values()}
    assert algorithms == set(OPTIMIZERS)
    bursty = configs["bursty_30"]["experiment"]["links"]["bursty"]
    mean_loss = (bursty["leave_bad"] * bursty["loss_good"] + bursty["enter_bad"] * bursty["loss_bad"]) / (
        bursty["enter_bad"] + bursty["leave_bad"])
    assert abs(mean_loss - 0.3) < 1e-9
    assert all(pc["optimizer_config"]["outer_iterations"] == 2000 for pc in raw["problem_configs"].values())


def test_the_shipped_density_radios_config_validates():
    from pathlib import Path

    from experiments.conditions import condition_configs
    from experiments.config import load_yaml

    raw = load_yaml(Path(__file__).resolve().parent.parent / "experiments" / "configs" / "density_radios.yaml")
    configs = condition_configs(raw)
    assert list(configs) == ["lossless", "distance"]
    assert configs["distance"]["experiment"]["links"]["model"] == "distance"
    algorithms = {pc["optimizer_config"]["alg_name"] for pc in raw["problem_configs"].values()}
    assert algorithms == {"dinno", "dsgd", "dsgt", "relaxed_admm"}


def write_table(path, rows):
    from experiments.conditions import ROW_KEYS

    path.mkdir(parents=True, exist_ok=True)
    with open(path / "conditions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ROW_KEYS)
        writer.writeheader()
        writer.writerows({"condition": c, "problem_name": p, "alg_name": p, "status": "completed",
                          "metric": metric, "final_mean": mean, "final_worst": mean - 0.01, "rounds_to_target": "",
                          "mb_per_robot_to_target": "", "mb_per_robot_sent": 4.5} for c, p, mean, metric in rows)
    return path


def test_combine_joins_tables_of_separate_folders_in_the_order_asked(tmp_path, capsys):
    a = write_table(tmp_path / "a", [("lossless", "dinno", 0.94, "top1_accuracy"),
                                     ("lossless", "dsgd", 0.57, "top1_accuracy"),
                                     ("asleep", "dinno", 0.2, "top1_accuracy")])
    b = write_table(tmp_path / "b", [("lost", "dinno", 0.32, "top1_accuracy"),
                                     ("lost", "dsgd", 0.60, "top1_accuracy"),
                                     ("asleep", "dinno", 0.25, "top1_accuracy")])  # in both, left out by --only
    out = tmp_path / "out"
    assert main(["--combine", str(b / "conditions.csv"), str(a), "--output-dir", str(out),
                 "--only", "lossless,lost"]) == 0
    rows = list(csv.DictReader(open(out / "conditions.csv")))
    assert [(r["condition"], r["problem_name"], float(r["final_mean"])) for r in rows] == [
        ("lossless", "dinno", 0.94), ("lossless", "dsgd", 0.57), ("lost", "dinno", 0.32), ("lost", "dsgd", 0.60)]
    assert rows[0]["rounds_to_target"] == "nan" and float(rows[0]["final_worst"]) == pytest.approx(0.93)
    assert (out / "conditions.png").stat().st_size > 0
    assert "4 rows" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("twice", "--combine: condition 'lost', pair 'dinno' is in both"),
    ("metrics", "--combine: the tables report different metrics (map_balanced_accuracy, top1_accuracy)"),
    ("not_a_table", "not a conditions table (its columns must be condition, problem_name"),
    ("missing", "cannot read a conditions table"),
    ("only", "--only: 'asleep' is in no table; allowed: lossless, lost"),
    ("used_output", "exists and is not empty; choose a new folder"),
    ("with_set", "--combine: give only tables (folders or conditions.csv files), no CONFIG, --resume or --set")])
def test_combine_refuses_bad_tables_with_one_line(tmp_path, capsys, case, message):
    a = write_table(tmp_path / "a", [("lossless", "dinno", 0.94, "top1_accuracy"), ("lost", "dinno", 0.3,
                                                                                     "top1_accuracy")])
    other = {"twice": [("lost", "dinno", 0.32, "top1_accuracy")],
             "metrics": [("distance", "dinno", 0.5, "map_balanced_accuracy")]}.get(case, [])
    b = write_table(tmp_path / "b", other)
    if case == "not_a_table":
        (b / "conditions.csv").write_text("round,node,top1_accuracy\n1,0,0.5\n")
    if case == "missing":
        (b / "conditions.csv").unlink()
    out = tmp_path / "out"
    extra = {"only": ["--only", "asleep"], "with_set": ["--set", "experiment.seed=1"]}.get(case, [])
    if case == "used_output":
        out.mkdir()
        (out / "kept.txt").write_text("mine")
    assert main(["--combine", str(a), str(b), "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (out / "conditions.csv").exists()
    if case == "used_output":
        assert (out / "kept.txt").read_text() == "mine"


def test_the_committed_radios_table_reads_back_as_a_conditions_table():
    from pathlib import Path

    from experiments.conditions import read_table

    rows = read_table(str(Path(__file__).resolve().parent.parent / "docs" / "figures" / "mnist_radios"))
    assert {r["condition"] for r in rows} >= {"symmetric_30", "asynchronous"}
    assert all(r["metric"] == "top1_accuracy" for r in rows)
    assert all(0.0 <= r["final_worst"] <= r["final_mean"] <= 1.0 for r in rows if r["final_mean"] == r["final_mean"])


def test_every_shipped_config_validates_with_its_own_tool():
    """A config with a tune block is a tuning study, one with conditions a conditions run, one with
    experiment.scaling a scaling sweep, one with a real_radio block a real radio study, the rest runs."""
    from pathlib import Path

    from experiments.conditions import condition_configs
    from experiments.config import load_yaml, validate_config, validate_scaling_config
    from experiments.real_radio import STUDY_KEY, study_plan
    from experiments.tuning import validate_tuning

    configs = sorted((Path(__file__).resolve().parent.parent / "experiments" / "configs").glob("*.yaml"))
    assert len(configs) >= 15
    for path in configs:
        raw = load_yaml(path)
        if "tune" in raw:
            validate_tuning(raw)
        elif "conditions" in raw:
            condition_configs(raw)
        elif "scaling" in raw.get("experiment", {}):
            validate_scaling_config(raw)
        elif STUDY_KEY in raw:
            study_plan(raw)
        else:
            validate_config(raw)


def test_the_shipped_compressed_comparison_has_three_splits_and_every_compressed_method():
    from pathlib import Path

    from experiments.conditions import condition_configs
    from experiments.config import load_yaml

    raw = load_yaml(Path(__file__).resolve().parent.parent / "experiments" / "configs" / "mnist_compressed.yaml")
    configs = condition_configs(raw)
    assert [c["experiment"]["data_split_type"] for c in configs.values()] == ["hetero", "random", "dirichlet"]
    pairs = raw["problem_configs"].values()
    compressed = {(pc["optimizer_config"]["alg_name"], pc["optimizer_config"]["compressor"]["name"])
                  for pc in pairs if "compressor" in pc["optimizer_config"]}
    assert {("beer", "top_k"), ("beer", "qsgd"), ("choco_sgd", "top_k"), ("choco_sgd", "qsgd"),
            ("deepsqueeze", "top_k")} <= compressed
    uncompressed = {pc["optimizer_config"]["alg_name"] for pc in pairs if "compressor" not in pc["optimizer_config"]}
    assert {"dsgt", "choco_sgd", "beer"} <= uncompressed


def test_a_conditions_row_reports_the_honest_robots_when_a_pair_had_faulty_ones(tmp_path):
    """A faulty robot's accuracy and bytes are left out of the row, as out of summary.csv's honest_* columns."""
    import torch

    from experiments.conditions import pair_rows

    folder = tmp_path / "nan_mean"
    folder.mkdir()
    pairs = [{"problem_name": "dsgd", "alg_name": "dsgd", "status": "completed", "faulty_robots": [1]},
             {"problem_name": "dsgt", "alg_name": "dsgt", "status": "completed"}]
    (folder / "manifest.json").write_text(json.dumps({"pairs": pairs}))
    history = {"round": [10, 20], "top1_accuracy": [[0.95, 0.0, 0.87], [0.99, 0.1, 0.91]],
               "bytes_sent": [[1e6, 0.0, 3e6], [2e6, 0.0, 4e6]]}
    for name in ("dsgd", "dsgt"):
        torch.save(history, folder / f"{name}_results.pt")
    faulty, plain = pair_rows("nan_mean", folder, "top1_accuracy", 0.9)
    assert faulty["final_mean"] == pytest.approx(0.95) and faulty["final_worst"] == pytest.approx(0.91)
    assert faulty["rounds_to_target"] == 10 and faulty["mb_per_robot_to_target"] == pytest.approx(2.0)
    assert faulty["mb_per_robot_sent"] == pytest.approx(3.0)
    assert plain["final_mean"] == pytest.approx(2.0 / 3) and plain["final_worst"] == pytest.approx(0.1)
    assert plain["rounds_to_target"] != plain["rounds_to_target"]  # NaN: the mean of all three never reaches 0.9


def test_a_team_metric_keeps_its_one_value_when_a_robot_is_faulty(tmp_path):
    """Faulty robots leave the per-robot numbers; a team metric (one value a round) is the team's as it is."""
    from experiments.conditions import pair_rows

    folder = tmp_path / "nan_mean"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"pairs": [
        {"problem_name": "dsgd", "alg_name": "dsgd", "status": "completed", "faulty_robots": [0]}]}))
    torch.save({"round": [10, 20], "mean_model_top1_accuracy": [[0.5], [0.95]],
                "top1_accuracy": [[0.1, 0.5, 0.7], [0.0, 0.92, 0.96]], "bytes_sent": [[1e6, 2e6, 2e6], [9e6, 4e6, 4e6]]},
               folder / "dsgd_results.pt")
    team, = pair_rows("nan_mean", folder, "mean_model_top1_accuracy", 0.9)
    assert (team["final_mean"], team["final_worst"], team["rounds_to_target"]) == (0.95, 0.95, 20.0)
    per_robot, = pair_rows("nan_mean", folder, "top1_accuracy", 0.9)
    assert per_robot["final_mean"] == pytest.approx(0.94) and per_robot["final_worst"] == 0.92
    assert per_robot["mb_per_robot_sent"] == pytest.approx(4.0) and per_robot["mb_per_robot_to_target"] == pytest.approx(4.0)
