"""Multi-robot RL (the ``rl_tag`` kind): the team's rollout and PPO loss against plain per-robot references, every
registered optimizer on a short pair, resume bit for bit, lossy links, and configs that are refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from torch.distributions import MultivariateNormal

from experiments.config import validate_config
from experiments.kinds.tag import TagSetup
from experiments.runner import main
from foundation.counters import code
from foundation.schema import ConfigError
from optimizers import OPTIMIZERS
from problems.node_stack import Branches, NodeStack, load_flat_parameters
from problems.ppo import PPOSettings, rewards_to_go
from problems.tag import actor_critic, seed_of
from problems.tag_env import ACTION_SIZE, TagEpisodes, TagScene
from tests.helpers.rl import TINY, tiny


def setup_of(cfg: dict) -> TagSetup:
    return TagSetup(validate_config(copy.deepcopy(cfg)), torch.device("cpu"))


def node_modules(setup: TagSetup, theta: torch.Tensor) -> list[torch.nn.Module]:
    """Ordinary actor-critic modules holding each row of ``theta``."""
    modules = []
    for row in theta:
        module = copy.deepcopy(setup.base_model).to(theta.dtype)
        load_flat_parameters(module, row)
        modules.append(module.requires_grad_(True))
    return modules


# ------------------------------------------------------------------------------------------ the node stack
def test_branches_run_grouped_and_equal_the_module_forward():
    torch.manual_seed(0)
    model = actor_critic(12, ACTION_SIZE, [16, 16]).double()
    stack = NodeStack(model, 3, dtype=torch.float64, execution="grouped")
    stack.theta += 0.1 * torch.randn_like(stack.theta)
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    out = stack.forward(stack.theta, x)
    assert out.shape == (3, 7, ACTION_SIZE + 1)
    for i in range(3):
        torch.testing.assert_close(out[i], stack.node_model(i)(x[i]), rtol=0, atol=1e-12)
    # the vmap form gives the same numbers (and is what a model without grouped kernels gets)
    torch.testing.assert_close(stack.forward(stack.theta, x, execution="vmap"), out, rtol=0, atol=1e-12)
    assert isinstance(model, Branches) and list(dict(model.named_children())) == ["actor", "critic"]


# ------------------------------------------------------------------------------------------------ rollouts
def test_the_teams_rollout_is_each_robot_acting_with_its_own_policy():
    """One node-stack forward per step for all robots and episodes = each robot's module on its own observations,
    with the noise stream of (seed, batch, robot)."""
    setup = setup_of(TINY)
    problem = setup.make_problem(setup.cfg["problem_configs"]["dinno"])
    problem.theta.add_(0.05 * torch.randn(problem.theta.shape, generator=torch.Generator().manual_seed(5),
                                          dtype=problem.theta.dtype))
    problem.collect(problem.theta)
    scene, steps, episodes = problem.scene, problem.episode_steps, problem.episodes_per_batch
    modules = node_modules(setup, problem.theta)
    start = torch.Generator().manual_seed(seed_of(problem.seed, code("tag episodes"), 0))
    world = TagEpisodes.start(scene, episodes, start, torch.float64)
    noise = [torch.randn(steps, episodes, ACTION_SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(
        seed_of(problem.seed, code("tag actions"), 0, robot))) for robot in range(3)]
    rewards = []
    for t in range(steps):
        obs = world.observe().detach()
        actions = torch.zeros(episodes, 3, ACTION_SIZE, dtype=torch.float64)
        for robot, module in enumerate(modules):
            for e in range(episodes):
                out = module(obs[e, robot]).detach()
                actions[e, robot] = out[:ACTION_SIZE] + 0.5 ** 0.5 * noise[robot][t, e]
                sample = (robot, e * steps + t)
                torch.testing.assert_close(problem.batch_obs[sample], obs[e, robot], rtol=0, atol=1e-10)
                torch.testing.assert_close(problem.batch_targets[sample][:ACTION_SIZE], actions[e, robot],
                                           rtol=0, atol=1e-12)
        rewards.append(world.step(actions.detach())[0].detach())
    # rewards-to-go and normalized advantages, the plain way
    to_go = torch.zeros(steps, episodes, dtype=torch.float64)
    for e in range(episodes):
        running = 0.0
        for t in reversed(range(steps)):
            running = float(rewards[t][e]) + 0.99 * running
            to_go[t, e] = running
    for robot, module in enumerate(modules):
        values = torch.stack([module(problem.batch_obs[robot, s])[ACTION_SIZE] for s in range(episodes * steps)])
        expected_to_go = to_go.T.reshape(-1)
        advantage = expected_to_go - values
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-10)
        torch.testing.assert_close(problem.batch_targets[robot, :, ACTION_SIZE + 2], expected_to_go, rtol=0,
                                   atol=1e-10)
        torch.testing.assert_close(problem.batch_targets[robot, :, ACTION_SIZE + 1], advantage, rtol=0, atol=1e-10)
    assert problem.timesteps == episodes * steps * 4
    assert problem.history["batch_episode_reward"][0] == pytest.approx(float(torch.stack(rewards).sum(0).mean()) * 3)


def test_rewards_to_go_discount_within_each_episode():
    rewards = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    to_go = rewards_to_go(rewards, 0.5)
    assert to_go[:, 0].tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    assert to_go[:, 1].tolist() == [0.5, 1.0, 0.0]


def test_ppo_loss_and_gradient_equal_a_plain_per_robot_ppo():
    """The stacked loss of one PPO epoch (clipped surrogate + value loss) and its gradient, against each robot's
    module with torch.distributions (the original's MultivariateNormal with covariance 0.5 I)."""
    cfg = tiny()
    cfg["problem_configs"]["dinno"]["ppo"] = {"epochs": 2, "value_loss_coef": 0.3, "clip": 0.1}
    setup = setup_of(cfg)
    problem = setup.make_problem(setup.cfg["problem_configs"]["dinno"])
    problem.collect(problem.theta)
    # parameters that moved since the batch was collected: ratios away from 1, some clipped
    moved = problem.theta + 0.2 * torch.randn(problem.theta.shape, generator=torch.Generator().manual_seed(1),
                                              dtype=problem.theta.dtype)
    losses, grads = problem.local_grads(moved.clone())
    covariance = torch.eye(ACTION_SIZE, dtype=torch.float64) * 0.5
    clipped = 0
    for robot, module in enumerate(node_modules(setup, moved)):
        obs, target = problem.batch_obs[robot], problem.batch_targets[robot]
        out = module(obs)
        mean, value = out[:, :ACTION_SIZE], out[:, ACTION_SIZE]
        action, old, advantage, to_go = (target[:, :ACTION_SIZE], target[:, ACTION_SIZE], target[:, ACTION_SIZE + 1],
                                         target[:, ACTION_SIZE + 2])
        ratio = torch.exp(MultivariateNormal(mean, covariance).log_prob(action) - old)
        clipped += int(((ratio < 0.9) | (ratio > 1.1)).sum())
        actor = (-torch.min(ratio * advantage, torch.clamp(ratio, 0.9, 1.1) * advantage)).mean()
        critic = torch.nn.MSELoss()(value, to_go)
        loss = actor + 0.3 * critic
        expected = torch.autograd.grad(loss, list(module.parameters()))
        torch.testing.assert_close(losses[robot], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[robot], torch.cat([g.reshape(-1) for g in expected]), rtol=1e-10,
                                   atol=1e-12)
    assert clipped > 0


def test_a_batch_serves_its_epochs_then_the_next_round_collects_a_fresh_one():
    setup = setup_of(TINY)
    problem = setup.make_problem(setup.cfg["problem_configs"]["dsgt"])  # ppo.epochs: 2
    problem.begin_round(1)
    first = problem.batch_obs.clone()
    problem.local_grads()
    problem.begin_round(2)
    assert torch.equal(problem.batch_obs, first) and problem.batches == 1  # one of its 2 epochs used
    problem.local_grads()
    problem.begin_round(3)
    assert problem.batches == 2 and not torch.equal(problem.batch_obs, first)


def test_the_pooled_policy_acts_for_every_robot_and_trains_on_all_their_samples():
    setup = setup_of(TINY)
    problem, opt_cfg = setup.make_baseline("centralized")
    assert problem.num_nodes == 1 and opt_cfg["steps_per_round"] == 3 and problem.ppo.epochs == 3
    problem.collect(problem.theta)
    assert problem.batch_obs.shape == (1, 3 * 3 * 8, 12)
    team = setup.make_problem(setup.cfg["problem_configs"]["dinno"])
    team.collect(team.theta)  # the same untrained policy everywhere: the same first batch
    torch.testing.assert_close(problem.batch_obs[0], team.batch_obs.reshape(-1, 12), rtol=0, atol=1e-12)
    assert problem.history["batch_episode_reward"] == pytest.approx(team.history["batch_episode_reward"], abs=1e-9)


# ------------------------------------------------------------------------------------------------ the runner
def run_config(tmp_path, cfg, *extra, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / (name + ".out")
    return main([str(path), "--output-dir", str(out), "--quiet", *extra]), out


def test_a_run_writes_rewards_per_batch_figures_and_a_summary(tmp_path):
    code_, out = run_config(tmp_path, TINY)
    assert code_ == 0
    summary = {r["problem_name"]: r for r in __import__("csv").DictReader(open(out / "summary.csv"))}
    assert set(summary) == {"dinno", "dsgt", "individual", "centralized"}
    for name, row in summary.items():
        assert row["status"] == "completed"
        assert float(row["timesteps_mean"]) == 4 * 3 * 8 * 4  # 4 batches of 3 episodes x 8 steps x 4 agents
        history = torch.load(out / f"{name}_results.pt", weights_only=True)
        assert len(history["batch_episode_reward"]) == 4
    assert "consensus_error_mean" not in summary["centralized"] or summary["centralized"]["consensus_error_mean"] == ""
    for figure in ("rl_reward.png", "rl_agreement.png", "episode_reward.png", "policy_reward.png"):
        assert (out / "figures" / figure).stat().st_size > 1000, figure
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["timesteps_per_batch"] == 96


def test_the_results_page_figures_and_tables_come_from_runs_of_several_seeds(tmp_path, capsys):
    from visualization import rl_figures

    folders = []
    for seed in (2, 3):
        code_, out = run_config(tmp_path, tiny(seed=seed), name=f"seed{seed}.yaml")
        assert code_ == 0
        folders.append(str(out))
    capsys.readouterr()
    figures = tmp_path / "figures"
    assert rl_figures.main([*folders, "--figure-dir", str(figures)]) == 0
    for name in ("rl_reward.png", "rl_agreement.png", "rl_tag_dinno.gif"):
        assert (figures / name).stat().st_size > 1000, name
    printed = capsys.readouterr().out
    finals = rl_figures.final_rewards(folders)
    assert set(finals) == {"dinno", "dsgt", "individual", "centralized"} and all(len(v) == 2 for v in finals.values())
    mean = sum(finals["dinno"]) / 2
    assert f"| dinno | 2 | {mean:.1f} (" in printed  # the table's row is the two seeds' last batches
    assert "| dsgt | " in printed and "seed3.yaml.out |" in printed  # the minutes table, one column per seed
    with pytest.raises(SystemExit):
        rl_figures.main([str(tmp_path), "--figure-dir", str(figures)])  # not a run folder
    with pytest.raises(SystemExit):
        rl_figures.main([*folders, "--figure-dir", str(figures), "--animate", "../outside"])  # not a pair
    assert not (figures.parent / "outside.gif").exists() and not list(figures.glob("rl_tag_..*"))


SHORT_PAIR = {"problem_name": "p", "metrics_config": {"evaluate_frequency": 2},
              "optimizer_config": {"outer_iterations": 4}}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains_a_short_rl_pair(tmp_path, name):
    cls = OPTIMIZERS[name]
    pair = copy.deepcopy(SHORT_PAIR)
    pair["optimizer_config"].update(alg_name=name, **cls.example_config)
    cfg = tiny(centralized=False, individual_training={"train_solo": False})
    cfg["problem_configs"] = {"p": pair}
    code_, out = run_config(tmp_path, cfg)
    assert code_ == 0
    history = torch.load(out / "p_results.pt", weights_only=True)
    start = torch.load(out / "p_final_params.pt", weights_only=True)
    assert torch.isfinite(start).all()
    assert history["batch_episode_reward"] and all(torch.isfinite(torch.as_tensor(history["policy_reward"][-1])))
    assert float(torch.as_tensor(history["bytes_sent"][-1]).min()) > 0  # every robot talked


@pytest.mark.parametrize("crashing", ["dinno", "dsgt", "centralized"])
def test_a_crashed_pair_resumes_bit_for_bit(tmp_path, monkeypatch, crashing):
    """A crash mid-run (DSGT: in the middle of a batch's epochs), then --resume: the uninterrupted run's numbers,
    batches, rewards and parameters exactly."""
    from optimizers.dsgt import DSGT
    from optimizers.local import LocalTraining
    from tests.helpers.runs import crash_once, same_results

    cfg = tiny(individual_training={"train_solo": False, "lr": 0.001, "steps_per_round": 2}, checkpoint_every=1)
    code_, reference = run_config(tmp_path, cfg, name="reference.yaml")
    assert code_ == 0
    cls = {"dinno": OPTIMIZERS["dinno"], "dsgt": DSGT, "centralized": LocalTraining}[crashing]
    crash_once(monkeypatch, cls, 4 if crashing == "dsgt" else 3)  # dsgt: after 3 of its batch-2 epochs... round 4
    code_, out = run_config(tmp_path, cfg, name="crashed.yaml")
    assert code_ == 1
    monkeypatch.undo()
    assert main(["--resume", str(out), "--quiet"]) == 0
    same_results(reference, out, ["dinno", "dsgt", "centralized"])


def test_lossy_links_change_what_the_robots_learn(tmp_path):
    cfg = tiny(centralized=False, individual_training={"train_solo": False})
    code_, whole = run_config(tmp_path, cfg, name="whole.yaml")
    lossy = copy.deepcopy(cfg)
    lossy["experiment"]["links"] = {"model": "independent", "drop_prob": 0.5, "seed": 1}
    code_lossy, lost = run_config(tmp_path, lossy, name="lossy.yaml")
    assert code_ == code_lossy == 0
    for name in ("dinno", "dsgt"):
        assert not torch.equal(torch.load(lost / f"{name}_final_params.pt", weights_only=True),
                               torch.load(whole / f"{name}_final_params.pt", weights_only=True))


@pytest.mark.parametrize("change, key", [
    ({"graph": {"num_nodes": 200, "type": "wheel"}}, "experiment.graph.num_nodes"),
    ({"scene": {"obstacles": [[0.0, 1.0, 2.0]]}}, "experiment.scene.obstacles[0]"),
    ({"model": {"hidden": []}}, "experiment.model.hidden"),
    ({"episode_steps": 0}, "experiment.episode_steps"),
    ({"scene": {"integration": "leapfrog"}}, "experiment.scene.integration"),
])
def test_bad_rl_configs_are_refused_with_one_line(change, key):
    cfg = tiny(**change)
    with pytest.raises(ConfigError) as refused:
        validate_config(cfg)
    assert str(refused.value).startswith(key)


def test_a_bad_ppo_block_is_refused_with_one_line():
    cfg = tiny()
    cfg["problem_configs"]["dinno"]["ppo"] = {"clip": 1.5}
    with pytest.raises(ConfigError, match=r"problem_configs.dinno.ppo.clip: must be in \(0, 1\)"):
        validate_config(cfg)


def test_scene_defaults_are_the_papers():
    scene = TagScene()
    assert len(scene.obstacles) == 8 and scene.num_robots == 3 and scene.integration == "velocity_first"
    assert PPOSettings().action_variance == 0.5 and PPOSettings().gamma == 0.99
