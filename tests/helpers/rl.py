"""Shared test helpers: rl."""

from __future__ import annotations

import copy

TINY = {
    "experiment": {
        "name": "rl_tiny", "problem": "rl_tag", "seed": 2, "dtype": "float64",
        "graph": {"num_nodes": 3, "type": "wheel"},
        "episodes_per_batch": 3, "episode_steps": 8, "eval_episodes": 2,
        "model": {"hidden": [16, 16]},
        "centralized": True, "centralized_epochs": 3,
        "individual_training": {"train_solo": True, "lr": 0.001, "steps_per_round": 2},
    },
    "problem_configs": {
        "dinno": {"problem_name": "dinno", "ppo": {"epochs": 2}, "metrics_config": {"evaluate_frequency": 2},
                  "optimizer_config": {"alg_name": "dinno", "outer_iterations": 4, "rho_init": 0.5,
                                       "primal_iterations": 2, "primal_lr_start": 0.001}},
        "dsgt": {"problem_name": "dsgt", "ppo": {"epochs": 2, "value_loss_coef": 0.01},
                 "metrics_config": {"evaluate_frequency": 3},
                 "optimizer_config": {"alg_name": "dsgt", "outer_iterations": 6, "alpha": 0.01}},
    },
}


def tiny(**experiment) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(experiment)
    return cfg
