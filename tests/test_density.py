"""Density mapping: the Fourier network on the node stack, window sampling, dynamic graphs, runs and configs."""

from __future__ import annotations

import csv
import json
import math
import re

import networkx as nx
import numpy as np
import pytest
import torch
import yaml

from experiments.runner import main
from optimizers.comm.links import FollowPositions
from optimizers.comm.network import InProcessNetwork
from problems.density import OnlineDensityProblem, Sine, WindowSampler, fourier_net, map_quality, observable_walls
from problems.node_stack import NodeStack
from tests.helpers.density import IMAGE_SHAPE, make_plan, original_windows, run_config, tiny_online_config
from tests.helpers.paths import REPO_ROOT

SEED_CONFIGS = REPO_ROOT.parent / "shared" / "seed" / "configs"
PAPER_PLAN = REPO_ROOT / "floorplans" / "paper_plan"


@pytest.fixture(scope="module")
def tiny_online_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("density")
    plan = make_plan(folder / "plan")
    rc, out = run_config(tiny_online_config(plan), folder)
    return rc, out


def test_fourier_net_runs_grouped_and_matches_the_module():
    torch.manual_seed(0)
    model = fourier_net([2, 32, 16, 16, 1], scale=0.05)
    assert isinstance(model[1], Sine) and model[1].elementwise
    bound = (6 / 32) ** 0.5
    assert model[0].weight.abs().max() <= bound
    stack = NodeStack(model, 3)
    assert stack.execution == "grouped"
    stack.theta += 0.01 * torch.randn_like(stack.theta)
    x = torch.randn(3, 50, 2) * 100
    out = stack.forward(stack.theta, x)
    for i in range(3):
        torch.testing.assert_close(out[i], stack.node_model(i)(x[i]), rtol=1e-5, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_fourier_net_output_matches_the_original_layer_rule():
    """The original's FourierNet: relu(sin(scale * (W x + b))), then ReLU layers, a sigmoid output."""
    torch.manual_seed(1)
    shape, scale = [2, 16, 8, 8, 1], 0.3
    model = fourier_net(shape, scale=scale).double()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(shape[:-1], shape[1:]))
    x = torch.randn(64, 2, dtype=torch.float64) * 50
    h = torch.relu(torch.sin(scale * (x @ linears[0].weight.T + linears[0].bias)))
    for m in linears[1:-1]:
        h = torch.relu(h @ m.weight.T + m.bias)
    expect = torch.sigmoid(h @ linears[-1].weight.T + linears[-1].bias)
    torch.testing.assert_close(model(x), expect, rtol=0, atol=1e-12)
    without_relu = torch.sin(scale * (x @ linears[0].weight.T + linears[0].bias))
    assert (without_relu < 0).any()  # so the ReLU after the sine changes the output


def test_window_sampler_draws_each_window_once_per_epoch_then_moves_on():
    n, poses, per_pose, window = 3, 7, 4, 2
    scans = torch.zeros(n, poses, per_pose, 3)
    for i in range(n):
        for p in range(poses):
            scans[i, p, :, 0] = i
            scans[i, p, :, 1] = p
            scans[i, p, :, 2] = torch.arange(per_pose)
    num_poses = [7, 5, 3]
    sampler = WindowSampler(scans, num_poses, window, step=3, seed=0)
    np.testing.assert_array_equal(sampler.current_pose_index().numpy(), [1, 1, 1])
    batch = sampler.next_points(8)  # exactly one window (2 poses x 4 points)
    for i in range(n):
        rows = {(int(p), int(k)) for _, p, k in batch[i].tolist()}
        assert rows == {(p, k) for p in (0, 1) for k in range(per_pose)}
        assert (batch[i, :, 0] == i).all()
    assert sampler.epochs.tolist() == [1, 1, 1]
    np.testing.assert_array_equal(sampler.current_pose_index().numpy(), [4, 4 % 5, (3 + 1) % 3])
    batch = sampler.next_points(8)
    for i, expect in enumerate([(3, 4), (3, 4), (0, 1)]):  # node 2 wraps around its 3 poses
        assert {int(p) for p in batch[i, :, 1]} == set(expect)
    for i, expect in enumerate([(6, 0), (1, 2), (0, 1)]):  # the windows after the second epoch
        assert {int(p) for p in sampler.window_points(i)[:, 1]} == set(expect)
    assert sampler.samples_seen.tolist() == [16, 16, 16]


def encoded_scans(num_poses, per_pose):
    """(N, P_max, S, 3) scans whose points say (robot, pose, point index)."""
    scans = torch.zeros(len(num_poses), max(num_poses), per_pose, 3)
    scans[..., 0] = torch.arange(len(num_poses)).view(-1, 1, 1)
    scans[..., 1] = torch.arange(max(num_poses)).view(1, -1, 1).float()
    scans[..., 2] = torch.arange(per_pose).float()
    return scans


@pytest.mark.parametrize("batch", [3, 8, 13, 40])
def test_window_sampler_follows_the_original_window_sequence_by_default(batch):
    num_poses, per_pose, window = [7, 5, 3, 12], 4, 3
    sampler = WindowSampler(encoded_scans(num_poses, per_pose), num_poses, window, seed=1)
    draws = 30
    stream = torch.cat([sampler.next_points(batch) for _ in range(draws)], dim=1)
    for i, P in enumerate(num_poses):
        seen = [(int(p), int(k)) for _, p, k in stream[i].tolist()]
        windows = original_windows(P, window, len(seen) // per_pose + 1)
        at, finished = 0, 0
        for poses in windows:  # each window's points exactly once, in some order, then the next window
            expect = [(p, k) for p in poses for k in range(per_pose)]
            chunk = seen[at:at + len(expect)]
            at += len(expect)
            if at > len(seen):  # the window in use: a part of its points, none twice
                assert len(set(chunk)) == len(chunk) and set(chunk) <= set(expect)
                break
            assert sorted(chunk) == expect
            finished += 1
        assert sampler.epochs[i] == finished
        current = windows[finished]
        assert sampler.current_pose_index()[i] == current[-1]  # the robot stands at its window's last pose
        assert {int(p) for p in sampler.window_points(i)[:, 1]} == set(current)
    assert (stream[:, :, 0] == torch.arange(len(num_poses)).view(-1, 1)).all()
    assert sampler.samples_seen.tolist() == [draws * batch] * len(num_poses)


def test_window_sampler_continues_exactly_from_its_state_dict():
    num_poses = [7, 5, 3]
    a = WindowSampler(encoded_scans(num_poses, 4), num_poses, 3, seed=2)
    for _ in range(5):
        a.next_points(7)
    b = WindowSampler(encoded_scans(num_poses, 4), num_poses, 3, seed=2)
    fresh = WindowSampler(encoded_scans(num_poses, 4), num_poses, 3, seed=2)
    b.load_state_dict(a.state_dict())
    assert not torch.equal(fresh.next_points(7), b.next_points(7))  # the state is what continues
    fresh.next_points(7)
    a.next_points(7)
    for _ in range(6):
        assert torch.equal(a.next_points(7), b.next_points(7))


def test_window_sampler_batches_of_a_robot_do_not_depend_on_the_others():
    num_poses = [7, 5, 3, 6]
    team = WindowSampler(encoded_scans(num_poses, 4), num_poses, 3, seed=5)
    block = WindowSampler(encoded_scans(num_poses, 4)[2:], num_poses[2:], 3, seed=5, robot_ids=[2, 3])
    other_seed = WindowSampler(encoded_scans(num_poses, 4)[2:], num_poses[2:], 3, seed=6, robot_ids=[2, 3])
    differs = False
    for _ in range(8):
        expected = team.next_points(5)[2:]
        assert torch.equal(expected, block.next_points(5))
        differs |= not torch.equal(expected, other_seed.next_points(5))
    assert differs


def test_original_window_rule_covers_the_paper_loop_with_a_short_tail():
    windows = original_windows(2430, 800, 5)
    assert [(w[0], len(w)) for w in windows] == [(0, 800), (800, 800), (1600, 800), (2400, 30), (0, 800)]
    sampler = WindowSampler(torch.zeros(1, 2430, 1, 3), [2430], 800, seed=0)
    starts = []
    for _ in range(5):
        starts.append((int(sampler.start[0]), int(sampler.window_length()[0])))
        sampler.next_points(int(sampler.window_size()[0]))
    assert starts == [(w[0], len(w)) for w in windows]


def test_map_quality_scores_truth_one_and_a_constant_map_one_half():
    img = np.zeros(IMAGE_SHAPE)
    img[:, :10] = 1.0  # border of 10 px
    img[60:100, 60:68] = 1.0  # a wall
    poses = np.array([[-40.0, 0.0], [80.0, 60.0]])
    wall, observable = observable_walls(img, poses, reach=50.0, border_width=10)
    rows, cols = np.arange(0, 160, 8), np.arange(0, 200, 8)
    for a, r in enumerate(rows):  # reference: pixel by pixel
        for b, c in enumerate(cols):
            x, y = c + 0.5 - 100, r + 0.5 - 80
            near = min(np.hypot(x - px, y - py) for px, py in poses) <= 50.0
            assert observable[a, b] == (near and 10 <= r < 150 and 10 <= c < 190)
            assert wall[a, b] == (img[r, c] >= 0.5)
    assert wall[observable].any() and (~wall[observable]).any()
    truth = wall.float().unsqueeze(0)
    maps = torch.cat([truth, torch.zeros_like(truth), torch.ones_like(truth), 1 - truth])
    q = map_quality(maps, wall, observable)
    torch.testing.assert_close(q["balanced_accuracy"], torch.tensor([1.0, 0.5, 0.5, 0.0]))
    walls, seen = int(wall[observable].sum()), int(observable.sum())
    torch.testing.assert_close(q["wall_iou"], torch.tensor([1.0, 0.0, walls / seen, 0.0]))
    # a random map against counts made by hand
    noisy = torch.rand(1, *wall.shape, generator=torch.Generator().manual_seed(0))
    pred, true = (noisy[0] >= 0.5)[observable], wall[observable]
    tp, tn = int((pred & true).sum()), int((~pred & ~true).sum())
    expect = (tp / int(true.sum()) + tn / int((~true).sum())) / 2
    assert abs(float(map_quality(noisy, wall, observable)["balanced_accuracy"][0]) - expect) < 1e-6
    assert abs(float(map_quality(noisy, wall, observable)["wall_iou"][0]) - tp / int((pred | true).sum())) < 1e-6


def test_disk_graph_and_mixing_weights_match_pairwise_distances(tmp_path):
    rng = np.random.default_rng(3)
    n = 6
    positions = rng.uniform(-100, 100, size=(n, 2))
    poses = positions[:, None, :].repeat(2, axis=1)
    scans = torch.zeros(n, 2, 4, 3)
    val = torch.zeros(4, 2), torch.zeros(4, 1)
    for radius in (40.0, 90.0, 150.0):
        problem = OnlineDensityProblem("p", fourier_net([2, 8, 4, 1]), scans, poses, [2] * n,
                                       *val, loss="BCE", num_scans_in_window=1,
                                       metrics=["validation_loss"], train_batch_size=2, val_batch_size=4,
                                       image_shape=(16, 16))
        net = InProcessNetwork(nx.empty_graph(n))
        FollowPositions(net, problem.team_positions, radius)(1)
        dist = np.sqrt(((positions[:, None] - positions[None]) ** 2).sum(-1))
        adj = (dist <= radius) & ~np.eye(n, dtype=bool)
        got = nx.to_numpy_array(net.graph, nodelist=range(n)) > 0
        np.testing.assert_array_equal(got, adj)
        deg = adj.sum(1)
        w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
        w[np.diag_indices(n)] = 1.0 - w.sum(1)
        np.testing.assert_allclose(net.mixing_matrix().double().numpy(), w, atol=1e-6)
        np.testing.assert_allclose(net.degrees.numpy(), deg)
        assert net.is_connected == nx.is_connected(nx.from_numpy_array(adj.astype(float)))


def test_small_online_run_writes_outputs_moves_robots_and_changes_graph(tiny_online_run):
    rc, out = tiny_online_run
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [p["problem_name"] for p in manifest["pairs"]] == ["dinno", "dsgd", "dsgt", "individual", "centralized"]
    # the original's solo training: `epochs` (1) passes over the whole trajectory of 31 poses of 8 x 5
    # points, in batches of 40 points, not the distributed problems' 10 rounds
    individual = next(p for p in manifest["pairs"] if p["problem_name"] == "individual")
    assert individual["rounds_completed"] == 31
    for name in ("dinno", "dsgd", "dsgt", "individual", "centralized"):
        assert (out / f"{name}_results.pt").is_file()
        assert (out / f"{name}_metrics.csv").is_file()
    for fig in ("density_maps.png", "validation_loss.png", "density_map_strips.png", "density_animation.gif"):
        assert (out / "figures" / fig).stat().st_size > 1000
    from PIL import Image
    with Image.open(out / "figures" / "density_animation.gif") as gif:
        assert gif.n_frames == 6  # the maps kept at rounds 0, 2, ..., 10
    assert (out / "summary.csv").is_file() and (out / "graph.json").is_file()
    hist = torch.load(out / "dinno_results.pt", weights_only=True)
    assert hist["round"] == [0, 2, 4, 6, 8, 10]
    for key in ("train_loss_moving_average", "validation_loss", "consensus_error", "current_epoch",
                "forward_pass_count", "bytes_sent", "wall_time"):
        assert len(hist[key]) == 6, key
    pos = torch.stack(hist["current_position"])
    assert pos.shape == (6, 3, 2)
    assert (pos[-1, 1, 0] - pos[0, 1, 0]) > 30  # robot 1 drove to the right
    assert torch.all(pos[1:, 1, 0] >= pos[:-1, 1, 0])
    graphs = torch.stack(hist["current_graph"])
    assert graphs.shape == (6, 3, 3) and graphs.dtype == torch.bool
    assert graphs[0, 0, 1] and not graphs[-1, 0, 1]  # the edge to robot 1 is gone
    assert torch.equal(graphs, graphs.transpose(1, 2))
    mesh = hist["mesh_grid_density"]
    assert len(mesh) == 6 and mesh[0].shape == (3, 20, 25)
    assert hist["mesh_round"] == hist["round"]
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in hist["validation_loss"])
    assert hist["current_epoch"][-1].min() >= 1
    with open(out / "dinno_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 3 and "validation_loss" in rows[0]
    with open(out / "summary.csv") as fh:
        summary = {r["problem_name"]: r for r in csv.DictReader(fh)}
    for name in ("dinno", "dsgd", "dsgt", "individual", "centralized"):
        assert 0 <= float(summary[name]["map_balanced_accuracy_mean"]) <= 1
    assert len(hist["map_balanced_accuracy"]) == len(mesh) and hist["map_wall_iou"][-1].shape == (3,)
    central = torch.load(out / "centralized_results.pt", weights_only=True)
    assert central["validation_loss"][-1].shape == (1,)
    assert central["current_position"][-1].shape == (3, 2)


@pytest.mark.parametrize("every,frequency,expected", [(4, 2, [0, 4, 8, 10]), (3, 2, [0, 4, 6, 10]),
                                                      (250, 100, [0, 300, 500, 800, 1000])])
def test_mesh_every_keeps_the_first_evaluation_at_or_after_each_multiple(every, frequency, expected):
    """mesh_every that is not a multiple of the evaluation frequency still keeps a mesh near every multiple."""
    from types import SimpleNamespace

    total = expected[-1]
    problem = SimpleNamespace(mesh_only_at_end=False, mesh_every=every, total_rounds=total, evaluate_frequency=frequency)
    kept = [r for r in range(0, total + 1, frequency) if OnlineDensityProblem._mesh_due(problem, r)]
    assert kept == expected


def test_map_quality_every_evaluation_mesh_every_and_wall_free_losses(tmp_path):
    plan = make_plan(tmp_path / "plan")
    cfg = tiny_online_config(plan, rounds=10)
    exp = cfg["experiment"]
    exp["individual_training"]["train_solo"] = False
    cfg["problem_configs"] = {"problem1": cfg["problem_configs"]["problem1"]}
    cfg["problem_configs"]["problem1"]["metrics_config"]["mesh_every"] = 4
    rc, out = run_config(cfg, tmp_path)
    assert rc == 0
    hist = torch.load(out / "dinno_results.pt", weights_only=True)
    assert hist["round"] == [0, 2, 4, 6, 8, 10]
    assert hist["mesh_round"] == [0, 4, 8, 10]  # every 4 rounds and the last one
    assert len(hist["map_balanced_accuracy"]) == len(hist["map_wall_iou"]) == 6  # at every evaluation
    from experiments.config import load_yaml, validate_config
    from experiments.kinds.density import OnlineDensitySetup
    setup = OnlineDensitySetup(validate_config(load_yaml(out / "config.yaml")), torch.device("cpu"))
    for mesh, r in zip(hist["mesh_grid_density"], hist["mesh_round"]):
        e = hist["round"].index(r)
        q = map_quality(mesh, *setup.map_truth)
        for key, metric in (("balanced_accuracy", "map_balanced_accuracy"), ("wall_iou", "map_wall_iou")):
            torch.testing.assert_close(q[key], hist[metric][e], rtol=0, atol=0, equal_nan=True)
    # the wall and free losses split the validation loss by the validation points' class
    wall = setup.val_y.reshape(-1) >= 0.5
    share = float(wall.double().mean())
    assert 0 < share < 1
    for e in range(6):
        mixed = share * hist["validation_loss_wall"][e].double() + (1 - share) * hist["validation_loss_free"][e].double()
        torch.testing.assert_close(mixed, hist["validation_loss"][e].double(), rtol=1e-5, atol=1e-6)
    assert hist["validation_loss_wall"][-1].shape == (3,)
    with open(out / "dinno_metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert {"validation_loss_wall", "validation_loss_free", "map_balanced_accuracy", "map_wall_iou"} <= set(row)
    assert (out / "figures" / "map_quality.png").stat().st_size > 1000


@pytest.mark.integration
def test_a_baseline_does_not_depend_on_the_other_pairs(tmp_path):
    """The centralized and individual baselines give the same numbers whatever else the run holds."""
    plan = make_plan(tmp_path / "plan")
    full = tiny_online_config(plan, rounds=6)
    full["experiment"]["execution"] = "grouped"
    alone = json.loads(json.dumps(full))
    alone["problem_configs"] = {"only": {**full["problem_configs"]["problem1"], "problem_name": "dinno"}}
    _, out_full = run_config(full, tmp_path / "full")
    _, out_alone = run_config(alone, tmp_path / "alone")
    for name in ("centralized", "individual"):
        a = torch.load(out_full / f"{name}_results.pt", weights_only=True)
        b = torch.load(out_alone / f"{name}_results.pt", weights_only=True)
        for key in ("validation_loss", "mesh_grid_density", "map_balanced_accuracy"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), (name, key)
        assert torch.equal(torch.load(out_full / f"{name}_final_params.pt", weights_only=True),
                           torch.load(out_alone / f"{name}_final_params.pt", weights_only=True))


def test_individual_baseline_rounds_of_several_steps_are_the_same_steps_as_one_a_round(tmp_path):
    """individual_training.rounds x steps_per_round: as many gradient steps as a DiNNO robot's rounds x
    primal_iterations, each on a fresh batch; at a constant rate, 3 rounds of 2 steps are 6 rounds of 1."""
    plan = make_plan(tmp_path / "plan")
    outs = {}
    for rounds, steps in ((3, 2), (6, 1)):
        cfg = tiny_online_config(plan, rounds=2)
        cfg["experiment"]["centralized"] = False
        cfg["experiment"]["execution"] = "grouped"
        cfg["problem_configs"] = {"problem1": cfg["problem_configs"]["problem1"]}
        cfg["experiment"]["individual_training"].update(rounds=rounds, steps_per_round=steps)
        rc, outs[steps] = run_config(cfg, tmp_path / f"steps{steps}")
        assert rc == 0
    several = torch.load(outs[2] / "individual_results.pt", weights_only=True)
    one = torch.load(outs[1] / "individual_results.pt", weights_only=True)
    assert several["round"][-1] == 3 and one["round"][-1] == 6
    assert torch.equal(several["forward_pass_count"][-1], torch.full((3,), 6 * 40))  # 6 batches of 40 points
    assert torch.equal(torch.load(outs[2] / "individual_final_params.pt", weights_only=True),
                       torch.load(outs[1] / "individual_final_params.pt", weights_only=True))
    assert torch.equal(several["validation_loss"][-1], one["validation_loss"][-1])


def test_disconnected_graph_is_logged_once_per_change(tmp_path, capsys):
    plan = make_plan(tmp_path / "plan")
    cfg = tiny_online_config(plan, rounds=12)
    cfg["problem_configs"] = {"problem1": cfg["problem_configs"]["problem1"]}
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    rc, out = run_config(cfg, tmp_path)
    assert rc == 0
    err = capsys.readouterr().err
    messages = re.findall(r"round (\d+): communication graph is disconnected", err)
    assert 1 <= len(messages) <= 3  # a handful of changes, not one line per round
    assert len(set(messages)) == len(messages)
    hist = torch.load(out / "dinno_results.pt", weights_only=True)
    assert torch.isfinite(hist["validation_loss"][-1]).all()


def _seed_overrides(name: str) -> list[str]:
    over = [f"experiment.data.data_dir={PAPER_PLAN}", "experiment.use_cuda=false",
            "experiment.data.num_validation_scans=5", "experiment.data.spline_res=2",
            "experiment.data.num_beams=8", "experiment.model.shape=[2, 32, 16, 1]"]
    raw = yaml.safe_load((SEED_CONFIGS / f"{name}.yaml").read_text())
    if "num_scans_in_window" in raw["experiment"]["data"]:
        over.append("experiment.data.num_scans_in_window=10")
    over.append("experiment.individual_training.train_batch_size=200")
    for key in raw["problem_configs"]:
        over += [f"problem_configs.{key}.optimizer_config.outer_iterations=2",
                 f"problem_configs.{key}.train_batch_size=200",
                 f"problem_configs.{key}.metrics_config.evaluate_frequency=1"]
    return over


@pytest.mark.integration
@pytest.mark.skipif(not SEED_CONFIGS.is_dir(), reason="the original's configs are not beside the repository "
                                                     "(../shared/seed/configs)")
@pytest.mark.skipif(not (PAPER_PLAN / "tight_paths").is_dir(), reason="shipped paper plan missing")
@pytest.mark.parametrize("name", ["dist_online_dense_PAPER", "dist_online_dense_anim", "dist_dense_v2"])
def test_original_density_configs_run_on_the_shipped_plan(name, tmp_path):
    argv = [str(SEED_CONFIGS / f"{name}.yaml"), "--output-dir", str(tmp_path / "out"), "--quiet"]
    for item in _seed_overrides(name):
        argv += ["--set", item]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    raw = yaml.safe_load((SEED_CONFIGS / f"{name}.yaml").read_text())
    first = next(iter(raw["problem_configs"].values()))["problem_name"]
    hist = torch.load(tmp_path / "out" / f"{first}_results.pt", weights_only=True)
    assert hist["round"] == [0, 1, 2]
    assert "mesh_grid_density" in hist
    if name == "dist_dense_v2":
        assert manifest["graph"]["num_nodes"] == 6
    else:  # no window_step in the original's configs: its non-overlapping windows
        assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["experiment"]["data"]["window_step"] is None


@pytest.mark.parametrize("change, message", [
    ({"floor_img": "missing.png"}, "experiment.data.floor_img: floor plan image not found"),
    ({"waypoint_subdir": "empty"}, "experiment.data.waypoint_subdir: no waypoint files"),
    ({"waypoint_subdir": "walled"}, "robot_1.npy: the robot's path enters a wall"),
    ({"num_nodes": 5}, "experiment.data.num_nodes: 5 robots requested"),
    ({"num_beamz": 5}, "experiment.data.num_beamz: unknown key (did you mean 'num_beams'?)"),
    ({"num_scans_in_window": None}, "experiment.data.num_scans_in_window: required"),
])
def test_bad_density_configs_stop_with_one_clear_line(tmp_path, capsys, change, message):
    plan = make_plan(tmp_path / "plan")
    (plan / "empty").mkdir()
    (plan / "walled").mkdir()
    np.save(plan / "walled" / "robot_0.npy", np.array([[-0.5, 0.0], [-0.4, 0.0]]))
    np.save(plan / "walled" / "robot_1.npy", np.array([[0.3, -0.6], [0.5, -0.6]]))  # through the obstacle
    cfg = tiny_online_config(plan, rounds=1)
    cfg["experiment"]["data"].update(change)
    cfg["experiment"]["data"] = {k: v for k, v in cfg["experiment"]["data"].items() if v is not None}
    rc, out = run_config(cfg, tmp_path)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_density_demo_dinno_draws_the_walls(tmp_path):
    """The demo's DiNNO pair alone: its robots' maps must show the walls (a blank map scores 0.5)."""
    from experiments.config import load_yaml

    raw = load_yaml(REPO_ROOT / "experiments" / "configs" / "density_demo.yaml")
    raw["problem_configs"] = {"problem1": raw["problem_configs"]["problem1"]}
    raw["experiment"].update(centralized=False)
    raw["experiment"]["individual_training"]["train_solo"] = False
    rc, out = run_config(raw, tmp_path)
    assert rc == 0
    with open(out / "summary.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["map_balanced_accuracy_min"]) >= 0.8, row  # every robot's map
    assert float(row["map_wall_iou_mean"]) >= 0.3, row


@pytest.mark.slow
def test_tuned_paper_config_shortened_draws_walls_on_the_paper_plan():
    """density_paper_tuned.yaml on the paper plan, DiNNO alone, its first 600 rounds (of the rate's 2,000-round
    decay, as a tuning trial stops): the robots' maps must have left the blank map's 0.5 (the original's
    settings are still blank at round 1,000; the full tuned run scored 0.759 at round 600)."""
    from experiments.config import load_yaml, validate_config
    from experiments.kinds import KINDS
    from experiments.pair import PairRun, PairSpec
    from experiments.run_record import RunRecord

    stop = 600
    raw = load_yaml(REPO_ROOT / "experiments" / "configs" / "density_paper_tuned.yaml")
    raw["experiment"]["data"]["num_validation_scans"] = 100
    pc = raw["problem_configs"]["problem1"]
    pc["metrics_config"] = {"evaluate_frequency": 100, "mesh_only_at_end": True}
    cfg = validate_config(raw)
    setup = KINDS["online_density"].setup(cfg, torch.device("cpu"))
    pc = cfg["problem_configs"]["problem1"]
    spec = PairSpec(pc["problem_name"], "dinno", pc)
    record = RunRecord(None, {"pairs": [{"problem_name": spec.name, "alg_name": "dinno", "status": "running"}]})
    run = PairRun(spec, setup, torch.device("cpu"), None, record, checkpoints=False, log=lambda message: None)
    scores = {}

    class Stop(Exception):
        pass

    def evaluated(k, metrics):
        if "map_balanced_accuracy" in metrics:
            scores[k] = (metrics["map_balanced_accuracy"].double(), metrics["map_wall_iou"].double())
        if k >= stop:
            raise Stop

    with pytest.raises(Stop):
        run.train(quiet=True, on_evaluation=evaluated)
    accuracy, iou = scores[stop]
    assert float(scores[100][0].max()) == pytest.approx(0.5, abs=0.01)  # blank early on, as the run showed
    assert float(accuracy.mean()) >= 0.6 and float(accuracy.min()) > 0.55, accuracy  # every robot draws walls
    assert float(iou.mean()) >= 0.15, iou


def test_shipped_density_configs_validate_with_the_issue_values():
    from experiments.config import load_yaml, validate_config

    demo = validate_config(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_demo.yaml"))
    assert demo["experiment"]["problem"] == "density"
    assert {pc["optimizer_config"]["alg_name"] for pc in demo["problem_configs"].values()} == {"dinno", "dsgd", "dsgt"}
    assert demo["experiment"]["individual_training"]["train_solo"] and demo["experiment"]["centralized"]
    paper = validate_config(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_paper.yaml"))
    exp = paper["experiment"]
    assert exp["problem"] == "online_density"
    data = exp["data"]
    assert (data["waypoint_subdir"], data["num_beams"], data["beam_samps"], data["beam_length"]) == \
        ("tight_paths", 20, 25, 0.2)
    assert (data["collision_samps"], data["fine_samps"], data["border_width"], data["spline_res"]) == (50, 3, 30, 30)
    assert (data["num_scans_in_window"], data["num_validation_scans"], data["round_density"]) == (800, 500, True)
    assert exp["model"] == {"shape": [2, 256, 64, 64, 64, 1], "scale": 0.05} and exp["loss"] == "BCE"
    pcs = {pc["problem_name"]: pc for pc in paper["problem_configs"].values()}
    assert pcs["dinno"]["train_batch_size"] == 12500
    assert pcs["dsgt"]["train_batch_size"] == pcs["dsgd"]["train_batch_size"] == 20000
    for pc in pcs.values():
        assert pc["comm_radius"] == 1500.0 and pc["dynamic_graph"]
        assert pc["metrics_config"]["evaluate_frequency"] == 20
        assert pc["optimizer_config"]["outer_iterations"] == 4000
    d = pcs["dinno"]["optimizer_config"]
    assert (d["rho_init"], d["rho_scaling"], d["primal_iterations"], d["primal_lr_start"], d["primal_lr_finish"],
            d["lr_decay_type"]) == (0.3, 1.0004, 5, 0.001, 0.0001, "log")
    assert pcs["dsgt"]["optimizer_config"]["alpha"] == 0.001 and pcs["dsgt"]["optimizer_config"]["init_grads"]
    assert (pcs["dsgd"]["optimizer_config"]["alpha0"], pcs["dsgd"]["optimizer_config"]["mu"]) == (0.001, 0.001)
    tuned = validate_config(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_paper_tuned.yaml"))
    assert tuned["experiment"]["data"] == exp["data"] and tuned["experiment"]["model"] == exp["model"]
    t = tuned["problem_configs"]["problem1"]
    assert (t["train_batch_size"], t["comm_radius"], t["dynamic_graph"]) == (12500, 1500.0, True)
    assert (t["optimizer_config"]["primal_penalty"], t["optimizer_config"]["persistant_primal_opt"]) == ("proximal", True)
    # the rate decays over the first 2,000 of 4,000 rounds and is held after, for DiNNO and its baselines alike
    assert (t["optimizer_config"]["outer_iterations"], t["optimizer_config"]["lr_decay_rounds"]) == (4000, 2000)
    assert tuned["experiment"]["individual_training"]["lr_decay_rounds"] == 2000
    static = validate_config(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_static_paper.yaml"))
    static_tuned = validate_config(load_yaml(REPO_ROOT / "experiments" / "configs" /
                                             "density_static_paper_tuned.yaml"))
    assert static_tuned["experiment"]["data"] == static["experiment"]["data"]
    assert static_tuned["experiment"]["graph"] == static["experiment"]["graph"]
    for run in (tuned, static_tuned):
        t = run["problem_configs"]["problem1"]
        steps = {k: t["optimizer_config"][k] for k in ("rho_init", "primal_iterations", "primal_penalty",
                                                         "persistant_primal_opt", "primal_lr_start", "primal_lr_finish")}
        assert steps == {"rho_init": 0.021, "primal_iterations": 2, "primal_penalty": "proximal",
                         "persistant_primal_opt": True, "primal_lr_start": 0.01, "primal_lr_finish": 0.0001}
        solo = run["experiment"]["individual_training"]  # as many gradient steps as a DiNNO robot
        assert (solo["rounds"], solo["steps_per_round"], solo["train_batch_size"]) == (
            t["optimizer_config"]["outer_iterations"], t["optimizer_config"]["primal_iterations"], t["train_batch_size"])


@pytest.mark.parametrize("split", ["trajectory", "random"])
def test_static_density_run_with_either_split(tmp_path, split):
    plan = make_plan(tmp_path / "plan")
    cfg = tiny_online_config(plan, rounds=3)
    exp = cfg["experiment"]
    exp["problem"] = "density"
    exp["centralized"] = False
    exp["individual_training"]["train_solo"] = False
    for key in ("num_scans_in_window", "window_step"):
        exp["data"].pop(key)
    exp["data"].update(split_type=split, num_scans=30)
    if split == "random":
        exp["graph"] = {"num_nodes": 3, "type": "complete"}
    for pc in cfg["problem_configs"].values():
        pc["dynamic_graph"] = False
        pc["metrics"] = [m for m in pc["metrics"] if m not in ("current_position", "current_graph")]
        pc["metrics_config"]["mesh_only_at_end"] = True
        if split == "random":
            pc.pop("comm_radius")
    rc, out = run_config(cfg, tmp_path)
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["problem"] == "density" and manifest["graph"]["num_nodes"] == 3
    sizes = manifest["data"]["node_points"]
    if split == "random":  # the original: every robot its own num_scans scans from random poses
        assert sizes == [30 * 8 * 5] * 3
    else:
        assert sizes == [31 * 8 * 5] * 3
    hist = torch.load(out / "dinno_results.pt", weights_only=True)
    assert hist["mesh_round"] == [3] and hist["mesh_grid_density"][0].shape == (3, 20, 25)
    assert (out / "figures" / "density_maps.png").is_file()


def test_loss_breakdown_splits_the_recorded_validation_loss_by_distance_to_walls(tiny_online_run):
    """experiments.loss_breakdown: the groups' shares add up to one and its mean is the validation loss the run
    recorded for that robot at the end."""
    from experiments.loss_breakdown import breakdown

    rc, out = tiny_online_run
    assert rc == 0
    rows, mean, count = breakdown(out, "dinno", 1)
    history = torch.load(out / "dinno_results.pt", weights_only=True)
    assert mean == pytest.approx(float(history["validation_loss"][-1][1]), rel=1e-5)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0) and sum(r["loss_share"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["points"] == "wall" and count == 20 * 8 * 5  # 20 validation scans of 8 beams x 5 points


def test_blurred_plan_reference_scores_match_a_pointwise_bilinear_reference(tiny_online_run, capsys):
    """loss_breakdown --blurred-plan: the unblurred plan, interpolated bilinearly point by point, gives the same
    BCE; a sharper plan scores lower; a config file prints the table; a bad width or a config without the flag
    is refused with one line."""
    from experiments.config import load_yaml, validate_config
    from experiments.kinds import KINDS
    from experiments.loss_breakdown import blurred_plan_losses
    from experiments.loss_breakdown import main as breakdown_main

    rc, out = tiny_online_run
    assert rc == 0
    cfg = validate_config(load_yaml(out / "config.yaml"))
    blank, rows, count = blurred_plan_losses(cfg, [0, 2, 8])
    setup = KINDS["online_density"].setup(cfg, torch.device("cpu"))
    img = np.asarray(setup.image, dtype=np.float64)
    total = 0.0
    for (x, y), target in zip(setup.val_x.double().tolist(), setup.val_y.double().reshape(-1).tolist()):
        r = min(max(y + img.shape[0] / 2 - 0.5, 0.0), img.shape[0] - 1.0)
        c = min(max(x + img.shape[1] / 2 - 0.5, 0.0), img.shape[1] - 1.0)
        r0, c0 = min(int(r), img.shape[0] - 2), min(int(c), img.shape[1] - 2)
        fr, fc = r - r0, c - c0
        p = ((1 - fr) * (1 - fc) * img[r0, c0] + (1 - fr) * fc * img[r0, c0 + 1]
             + fr * (1 - fc) * img[r0 + 1, c0] + fr * fc * img[r0 + 1, c0 + 1])
        p = min(max(p, 1e-4), 1 - 1e-4)
        total -= target * math.log(p) + (1 - target) * math.log(1 - p)
    assert count == len(setup.val_y)
    assert rows[0] == (0.0, pytest.approx(total / count, rel=1e-9))
    assert rows[0][1] < rows[1][1] < rows[2][1] and rows[0][1] < blank
    assert breakdown_main([str(out / "config.yaml"), "--blurred-plan", "0,4"]) == 0
    assert "floor plan blurred by sigma = 4 px" in capsys.readouterr().out
    assert breakdown_main([str(out / "config.yaml")]) == 2
    assert "--blurred-plan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        breakdown_main([str(out / "config.yaml"), "--blurred-plan", "-3"])
