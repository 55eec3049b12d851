"""TensorBoard event files: written per pair at every evaluation, read back equal to the results files."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import yaml

from experiments.runner import main
from tests.helpers.runs import TINY, data_overrides


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def run_tiny(tmp_path, *extra, **experiment):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(experiment)
    cfg["problem_configs"]["problem1"]["optimizer_config"]["profile"] = False
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = [str(path), "--output-dir", str(tmp_path / "out"), "--quiet", *extra]
    for item in data_overrides():
        argv += ["--set", item]
    return main(argv), tmp_path / "out"


def test_event_files_hold_every_evaluation_of_every_pair(tmp_path):
    code, out = run_tiny(tmp_path, "--tensorboard")
    assert code == 0
    for pair in ("dinno", "dsgd", "dsgt", "individual", "centralized"):
        history = torch.load(out / f"{pair}_results.pt", weights_only=True)
        acc = events(out / "tensorboard" / pair)
        mean = acc.Scalars("validation_loss/mean")
        assert [e.step for e in mean] == history["round"]
        for event, value in zip(mean, history["validation_loss"]):
            assert event.value == pytest.approx(float(torch.as_tensor(value).mean()), rel=1e-6)
        sent = acc.Scalars("megabytes_sent/mean")
        assert sent[-1].value == pytest.approx(float(history["bytes_sent"][-1].double().mean()) / 1e6, rel=1e-6)
        assert len(acc.Scalars("seconds")) == len(history["round"])
        if pair != "centralized":  # one model has no worst robot
            worst = acc.Scalars("top1_accuracy/worst_robot")
            for event, value in zip(worst, history["top1_accuracy"]):
                assert event.value == pytest.approx(float(torch.as_tensor(value).min()), rel=1e-6)
            highest = acc.Scalars("validation_loss/worst_robot")
            assert highest[-1].value == pytest.approx(float(history["validation_loss"][-1].max()), rel=1e-6)


def test_density_maps_go_in_as_images(tmp_path):
    from tests.helpers.density import make_plan, run_config, tiny_online_config

    cfg = tiny_online_config(make_plan(tmp_path / "plan"), rounds=4)
    cfg["experiment"]["tensorboard"] = True
    cfg["experiment"]["individual_training"]["train_solo"] = False
    code, out = run_config(cfg, tmp_path)
    assert code == 0
    acc = events(out / "tensorboard" / "dinno")
    images = acc.Images("map/robot_0")
    history = torch.load(out / "dinno_results.pt", weights_only=True)
    assert [i.step for i in images] == history["mesh_round"]
    assert {"map_balanced_accuracy/mean", "validation_loss_wall/mean"} <= set(acc.Tags()["scalars"])


def test_missing_tensorboard_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    code, out = run_tiny(tmp_path, tensorboard=True)
    assert code == 2 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: experiment.tensorboard:") and "pip install" in lines[0]
