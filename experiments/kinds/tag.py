"""The ``rl_tag`` kind: multi-robot reinforcement learning, robots that learn by PPO on their own episodes to catch an
evader together (the DiNNO paper's third experiment; :mod:`problems.tag`, :mod:`problems.tag_env`)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import torch

from experiments.kinds.base import (
    COMMON_EXPERIMENT,
    GRAPH_SCHEMA,
    METRICS_CONFIG,
    ExperimentSetup,
    ProblemKind,
    build_graph,
    check_graph_parameters,
    first_problem,
)
from foundation.schema import (
    AT_LEAST_ONE,
    OPTIONAL,
    REQUIRED,
    SEED_RANGE,
    Bool,
    Choice,
    ConfigError,
    Float,
    Int,
    ListOf,
    Name,
    Range,
)
from optimizers import OPTIMIZER_CONFIG
from problems.metrics import CONSENSUS_ERROR
from problems.ppo import PPOSettings
from problems.tag import TagProblem, base_model_from_config, scene_from_config
from problems.tag_env import INTEGRATIONS, PAPER_OBSTACLES

SCENE_SCHEMA = {
    "obstacles": (ListOf(ListOf(Float)), [list(p) for p in PAPER_OBSTACLES]),
    "integration": (Choice(INTEGRATIONS), "velocity_first"),
}

EXPERIMENT_SCHEMA = {
    **COMMON_EXPERIMENT,
    "graph": (GRAPH_SCHEMA, REQUIRED),
    "scene": (SCENE_SCHEMA, {}),
    "episode_steps": (Int, 50, Range(1, 100_000)),
    "episodes_per_batch": (Int, 14, Range(1, 100_000)),
    "eval_episodes": (Int, 10, Range(1, 100_000)),
    "eval_seed": (Int, 12345, SEED_RANGE),
    "model": ({"hidden": (ListOf(Int), [64, 64, 64])}, {}),
    "centralized_epochs": (Int, OPTIONAL, AT_LEAST_ONE),
}

PPO_SCHEMA = {
    "gamma": (Float, 0.99, Range(0.0, 1.0)),
    "clip": (Float, 0.2, Range(0.0, 1.0, low_open=True, high_open=True)),
    "action_variance": (Float, 0.5, Range(1e-6, 1e6)),
    "value_loss_coef": (Float, 1.0, Range(0.0, 1e6)),
    "epochs": (Int, 5, Range(1, 10_000)),
    "normalize_advantages": (Bool, True),
}

PROBLEM_SCHEMA = {
    "problem_name": (Name, REQUIRED),
    "verbose_evals": (Bool, False),
    "metrics": (ListOf(Choice(TagProblem.available_metrics())), list(TagProblem.available_metrics())),
    "metrics_config": ({k: METRICS_CONFIG[k] for k in ("evaluate_frequency", "tloss_decay")}, {}),
    "save_models": (Bool, False),
    "ppo": (PPO_SCHEMA, {}),
    "optimizer_config": (OPTIMIZER_CONFIG, REQUIRED),
}

# the whole team plays in shared episodes: every robot of the scene is one of the graph's nodes
MAX_ROBOTS = 64
MAX_SAMPLES = 50_000_000  # a batch's samples per robot (episodes x steps): beyond it, memory runs out first


def check(cfg: dict) -> None:
    exp = cfg["experiment"]
    check_graph_parameters(exp["graph"])
    robots = exp["graph"]["num_nodes"]
    if robots > MAX_ROBOTS:
        raise ConfigError(f"experiment.graph.num_nodes: {robots} robots in one scene; at most {MAX_ROBOTS} (every "
                          f"robot plays in every episode)")
    for i, point in enumerate(exp["scene"]["obstacles"]):
        if len(point) != 2 or any(abs(v) > 1e3 for v in point):
            raise ConfigError(f"experiment.scene.obstacles[{i}]: expected [x, y] with |x|, |y| <= 1000, got {point}")
    hidden = exp["model"]["hidden"]
    if not hidden or any(not 1 <= width <= 65_536 for width in hidden):
        raise ConfigError(f"experiment.model.hidden: expected 1 or more widths in [1, 65536], got {hidden}")
    if exp["episode_steps"] * exp["episodes_per_batch"] > MAX_SAMPLES:
        raise ConfigError(f"experiment.episodes_per_batch: {exp['episodes_per_batch']} episodes of "
                          f"{exp['episode_steps']} steps are more than {MAX_SAMPLES:,} samples per robot")


class TagSetup(ExperimentSetup):
    """The team's graph, the scene and the frozen base actor-critic (every robot of every pair starts from it)."""

    problem_class = TagProblem
    team_metrics = (CONSENSUS_ERROR,)

    def __init__(self, cfg: dict, device: torch.device, graph: nx.Graph | None = None, data=None, base_model=None):
        super().__init__(cfg, device, graph, data, base_model)
        exp = self.exp
        if self.graph is None:
            self.graph = build_graph(exp)
        self.num_nodes = self.graph.number_of_nodes()
        self.scene = scene_from_config(exp)
        self.seeded_base_model(lambda: base_model_from_config(exp))  # (which seeds itself, for the figures too)

    def robot_data_sizes(self) -> list[int]:
        """Samples a robot collects per batch."""
        return [self.exp["episodes_per_batch"] * self.exp["episode_steps"]] * self.scene.num_robots

    def describe(self) -> dict:
        exp = self.exp
        return {"source": f"predator-prey tag, {self.num_nodes} robots, {len(self.scene.obstacles)} obstacles "
                          f"({self.scene.integration})",
                "episode_steps": exp["episode_steps"], "episodes_per_batch": exp["episodes_per_batch"],
                "timesteps_per_batch": exp["episodes_per_batch"] * exp["episode_steps"] * self.scene.num_agents,
                "eval_episodes": exp["eval_episodes"]}

    def problem_kwargs(self, problem_cfg: dict, rounds: int) -> dict:
        exp, mc = self.exp, problem_cfg["metrics_config"]
        return dict(metrics=problem_cfg["metrics"], evaluate_frequency=mc["evaluate_frequency"],
                    tloss_decay=mc["tloss_decay"], device=self.device, dtype=self.dtype, seed=self.seed + 1,
                    execution=exp["execution"], chunk_size=exp["node_chunk_size"], plan_cache=self.plan_cache,
                    compile=exp["compile"], robots=self.block, episodes_per_batch=exp["episodes_per_batch"],
                    episode_steps=exp["episode_steps"], ppo=PPOSettings(**problem_cfg["ppo"]),
                    eval_episodes=exp["eval_episodes"], eval_seed=exp["eval_seed"])

    def build_problem(self, name, kwargs, pooled):
        assert self.base_model is not None
        return TagProblem(name, self.base_model, self.scene, pooled=pooled, **kwargs)

    def make_baseline(self, which: str, ranks=None):
        """(problem, optimizer config) of a baseline: every robot alone (``individual``) or one policy for the whole
        team on all its samples (``centralized``), each with ``individual_training``'s optimizer and rate, a batch's
        PPO epochs as the steps of a round (``centralized_epochs`` for the centralized policy) and ``rounds`` rounds
        (default: the first pair's)."""
        first = first_problem(self.cfg)
        ind = self.exp["individual_training"]
        centralized = which == "centralized"
        epochs = ind["steps_per_round"]
        if centralized and self.exp["centralized_epochs"] is not None:
            epochs = self.exp["centralized_epochs"]
        rounds = ind["rounds"] or first["optimizer_config"]["outer_iterations"]
        kwargs = self.problem_kwargs({**first, "ppo": {**first["ppo"], "epochs": epochs}}, rounds)
        if centralized:
            kwargs["metrics"] = [m for m in kwargs["metrics"] if m not in self.team_metrics]
            kwargs["robots"] = None  # one policy (on rank 0 under torch.distributed)
        else:
            kwargs["ranks"] = ranks
        opt_cfg = {"optimizer": ind["optimizer"], "lr": ind["lr"], "lr_finish": ind["lr_finish"],
                   "lr_decay_type": ind["lr_decay_type"], "lr_decay_rounds": ind["lr_decay_rounds"], "profile": False,
                   "steps_per_round": epochs, "outer_iterations": rounds}
        return self.build_problem(which, kwargs, pooled=centralized), opt_cfg

    def save_figures(self, out_dir: Path) -> list[Path]:
        from visualization.rl_figures import save_run_figures
        return save_run_figures(out_dir)


KIND = ProblemKind("rl_tag", TagSetup, EXPERIMENT_SCHEMA, PROBLEM_SCHEMA, check, sweepable=False)
