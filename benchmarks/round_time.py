"""Seconds per round: the node stack (as the real optimizers run it) vs a per-node loop vs one centralized step.

For each setting (N nodes of batch B on a cycle graph) and each optimizer (DiNNO with 2 primal Adam
steps, DSGD, DSGT) three things are timed, interleaved block by block because the machine is noisy:

* **stack**: an ``MNISTProblem`` + ``InProcessNetwork`` + the optimizer class, timing ``round(k)``;
* **loop**: the same algorithm written plainly: N separate ``nn.Module`` copies, each node's data
  already in its own tensors, one ``torch.optim.Adam`` per node (DiNNO), mixing as a loop over each
  node's neighbours;
* **centralized**: one Adam step of the same CNN on the pooled batch of N x B samples.

Reported: medians over the repeats of ms per round (per step for centralized), a round's time per local
gradient step (DiNNO: per primal step) against the centralized step, and the peak memory
of one round: on CPU the rise of the process's resident-set high-water mark (``VmHWM`` in
/proc/self/status, reset through /proc/self/clear_refs before the round), on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before the round.

Example:  venv/bin/python benchmarks/round_time.py --rounds 20 --repeats 5 --execution grouped,vmap,loop
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
from optimizers import DSGD, DSGT, DiNNO  # noqa: E402
from optimizers.comm.graphs import make_graph, metropolis_weights  # noqa: E402
from optimizers.comm.network import InProcessNetwork  # noqa: E402
from problems.mnist import MNISTProblem, mnist_cnn  # noqa: E402
from problems.mnist_data import images_to_tensor, load_mnist  # noqa: E402
from problems.splits import DataError, split_indices  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
SETTINGS = ((10, 64), (100, 8))  # (nodes, per-node batch); cycle graph
OPTIMIZER_NAMES = ("dinno", "dsgd", "dsgt")
DINNO_CFG = {"rho_init": 0.5, "rho_scaling": 1.0003, "primal_iterations": 2, "primal_optimizer": "adam",
             "persistant_primal_opt": False, "primal_lr_start": 0.005, "primal_lr_finish": 0.0005,
             "lr_decay_type": "log"}
DSGD_CFG = {"alpha0": 0.005, "mu": 0.001}
DSGT_CFG = {"alpha": 0.005, "init_grads": True}
CENTRAL_LR = 0.005
# (nodes, batch, optimizer) -> most a round may take per local step, in centralized steps on the pooled batch
PER_STEP_TARGETS = {(100, 8, "dsgd"): 1.4, (100, 8, "dinno"): 1.6, (10, 64, "dsgd"): 1.3}
# Profile categories of aten operators (a substring of the name; the first that matches): where a round's
# time goes
PROFILE_CATEGORIES = (
    ("optimizer update", ("adam", "addcdiv", "addcmul", "lerp")),
    ("convolution", ("conv",)),
    ("matrix products", ("mm", "matmul", "linear")),
    ("pooling", ("pool",)),
    ("copies and layout", ("copy", "clone", "contiguous", "cat", "stack", "index", "gather", "scatter",
                           "as_strided", "fill", "zero", "empty", "narrow")),
)


# ------------------------------------------------------------------------------------ data
def load_data(data_dir: str | None):
    folder = Path(data_dir) if data_dir else SHARED_MNIST
    try:
        data = load_mnist(folder, "mnist")
    except DataError:
        data = load_mnist(folder, "mnist_subset")
    return (images_to_tensor(data.train_images), data.train_labels,
            images_to_tensor(data.test_images[:1000]), data.test_labels[:1000], data.source)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ memory
def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so a round's allocations show up in RSS again."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of a block of work: VmHWM delta on CPU, max_memory_allocated delta on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_reset = False
        if device.type != "cuda":
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                self.cpu_reset = True
            except OSError:
                pass

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated - memory_allocated before the round"
        if self.cpu_reset:
            return "VmHWM after - VmRSS before (malloc_trim, then VmHWM reset via /proc/self/clear_refs)"
        return "VmHWM after - VmHWM before (no reset possible: 0 unless the process peak rose)"

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def measure(self, fn) -> float:
        """Run ``fn()`` once and return its peak extra memory in MiB."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            sync(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
        if self.cpu_reset:
            _release_free_heap()
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            before = self._status_kb("VmRSS")
        else:
            before = self._status_kb("VmHWM")
        fn()
        return max(0, self._status_kb("VmHWM") - before) / 1024


# ------------------------------------------------------------------------------ node stack
class StackRunner:
    """The real thing: MNISTProblem + InProcessNetwork + optimizer class."""

    def __init__(self, alg: str, base_model, node_indices, data, graph, batch, device, execution):
        train_x, train_y, val_x, val_y = data
        execution, _, compiled = execution.partition("+")  # "grouped+compile": compiled training steps
        self.problem = MNISTProblem(f"bench_{alg}", base_model, node_indices, train_x, train_y, val_x, val_y,
                                    loss="NLL", metrics=["validation_loss"], train_batch_size=batch,
                                    val_batch_size=1000, device=device, execution=execution, seed=1,
                                    compile="on" if compiled == "compile" else "off")
        self.network = InProcessNetwork(graph, device=device)
        cls, cfg = {"dinno": (DiNNO, DINNO_CFG), "dsgd": (DSGD, DSGD_CFG), "dsgt": (DSGT, DSGT_CFG)}[alg]
        self.horizon = 100_000
        self.optimizer = cls(self.problem, self.network, {**cfg, "outer_iterations": self.horizon})
        with torch.no_grad():
            self.optimizer.setup()
        self.k = 0

    def round(self) -> None:
        self.k = self.k % self.horizon + 1
        with torch.no_grad():
            self.optimizer.round(self.k)


# ------------------------------------------------------------------------------ plain loop
class LoopRunner:
    """The same algorithms with one ordinary nn.Module per node and Python loops over nodes."""

    def __init__(self, alg: str, base_model, node_indices, data, graph, batch, device):
        train_x, train_y = data[0], data[1]
        self.alg = alg
        self.batch = batch
        self.device = device
        n = len(node_indices)
        self.models = []
        for _ in range(n):
            model = copy.deepcopy(base_model).to(device)
            for p in model.parameters():
                p.requires_grad_(True)
            self.models.append(model)
        self.node_x = [train_x[ix].to(device) for ix in node_indices]
        self.node_y = [train_y[ix].to(device) for ix in node_indices]
        self.generator = torch.Generator(device="cpu").manual_seed(1)
        weights = metropolis_weights(graph)
        self.neighbours = [sorted(graph.neighbors(i)) for i in range(n)]
        self.self_weight = [float(weights[i, i]) for i in range(n)]
        self.weight = [{j: float(weights[i, j]) for j in self.neighbours[i]} for i in range(n)]
        self.rounds = 0
        if alg == "dinno":
            self.rho = DINNO_CFG["rho_init"]
            self.duals = [torch.zeros(self.num_params(), device=device) for _ in range(n)]
        elif alg == "dsgd":
            self.alpha = DSGD_CFG["alpha0"]
        else:
            self.grads = [self.gradient(i) for i in range(n)]
            self.trackers = [[g.clone() for g in grads] for grads in self.grads]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.models[0].parameters())

    def sample(self, i: int):
        idx = torch.randint(len(self.node_y[i]), (self.batch,), generator=self.generator).to(self.device)
        return self.node_x[i][idx], self.node_y[i][idx]

    def gradient(self, i: int) -> list[torch.Tensor]:
        """Node i's gradient on a fresh batch of its own data."""
        model = self.models[i]
        x, y = self.sample(i)
        loss = nn.functional.nll_loss(model(x), y)
        return list(torch.autograd.grad(loss, list(model.parameters())))

    def mix(self, tensors: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """For every node: its self-weighted tensors plus the weighted tensors of each neighbour."""
        mixed = []
        for i in range(len(tensors)):
            out = [t * self.self_weight[i] for t in tensors[i]]
            for j in self.neighbours[i]:
                for o, t in zip(out, tensors[j]):
                    o.add_(t, alpha=self.weight[i][j])
            mixed.append(out)
        return mixed

    def params(self) -> list[list[torch.Tensor]]:
        return [[p.detach() for p in m.parameters()] for m in self.models]

    def assign(self, values: list[list[torch.Tensor]]) -> None:
        with torch.no_grad():
            for model, vals in zip(self.models, values):
                for p, v in zip(model.parameters(), vals):
                    p.copy_(v)

    def round(self) -> None:
        self.rounds += 1
        getattr(self, "round_" + self.alg)()

    def round_dsgd(self) -> None:
        self.alpha *= 1.0 - DSGD_CFG["mu"] * self.alpha
        with torch.no_grad():
            self.assign(self.mix(self.params()))
        for i, model in enumerate(self.models):
            grads = self.gradient(i)
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p.sub_(g, alpha=self.alpha)

    def round_dsgt(self) -> None:
        alpha = DSGT_CFG["alpha"]
        with torch.no_grad():
            stepped = [[p - alpha * y for p, y in zip(params, tracker)]
                       for params, tracker in zip(self.params(), self.trackers)]
            self.assign(self.mix(stepped))
        new_grads = [self.gradient(i) for i in range(len(self.models))]
        with torch.no_grad():
            mixed = self.mix(self.trackers)
            self.trackers = [[m + g_new - g_old for m, g_new, g_old in zip(mix_i, new_i, old_i)]
                             for mix_i, new_i, old_i in zip(mixed, new_grads, self.grads)]
        self.grads = new_grads

    def round_dinno(self) -> None:
        self.rho *= DINNO_CFG["rho_scaling"]
        rho = self.rho
        lr = DINNO_CFG["primal_lr_start"]
        with torch.no_grad():
            anchors = [nn.utils.parameters_to_vector(m.parameters()).detach().clone() for m in self.models]
            for i in range(len(self.models)):
                for j in self.neighbours[i]:
                    self.duals[i] += rho * (anchors[i] - anchors[j])
        for i, model in enumerate(self.models):
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            targets = [(anchors[i] + anchors[j]) / 2 for j in self.neighbours[i]]
            for _ in range(DINNO_CFG["primal_iterations"]):
                opt.zero_grad()
                x, y = self.sample(i)
                theta = nn.utils.parameters_to_vector(model.parameters())
                loss = nn.functional.nll_loss(model(x), y) + torch.dot(theta, self.duals[i])
                for target in targets:
                    loss = loss + rho * torch.sum((theta - target) ** 2)
                loss.backward()
                opt.step()


# ---------------------------------------------------------------------------- centralized
class CentralRunner:
    """One Adam step of the same CNN on the pooled N x B batch."""

    def __init__(self, base_model, node_indices, data, num_nodes, batch, device):
        train_x, train_y = data[0], data[1]
        pooled = torch.cat(list(node_indices))
        self.x = train_x[pooled].to(device)
        self.y = train_y[pooled].to(device)
        self.batch = num_nodes * batch
        self.device = device
        self.model = copy.deepcopy(base_model).to(device)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=CENTRAL_LR)
        self.generator = torch.Generator(device="cpu").manual_seed(1)

    def round(self) -> None:
        idx = torch.randint(len(self.y), (self.batch,), generator=self.generator).to(self.device)
        self.opt.zero_grad()
        nn.functional.nll_loss(self.model(self.x[idx]), self.y[idx]).backward()
        self.opt.step()


# -------------------------------------------------------------------------------- timing
def time_block(runner, rounds: int, device: torch.device) -> float:
    """Milliseconds per round over ``rounds`` consecutive rounds."""
    sync(device)
    start = time.perf_counter()
    for _ in range(rounds):
        runner.round()
    sync(device)
    return (time.perf_counter() - start) * 1000.0 / rounds


def bench_setting(num_nodes, batch, data, executions, args, device, memory):
    torch.manual_seed(0)
    base_model = mnist_cnn()
    for p in base_model.parameters():
        p.requires_grad_(False)
    graph = make_graph("cycle", num_nodes, seed=0)
    node_indices = split_indices(data[1], num_nodes, "random", seed=0, min_size=batch)
    rows = []
    for alg in args.optimizers:
        runners = {f"stack:{ex}": StackRunner(alg, base_model, node_indices, data, graph, batch, device, ex)
                   for ex in executions}
        runners["loop"] = LoopRunner(alg, base_model, node_indices, data, graph, batch, device)
        runners["central"] = CentralRunner(base_model, node_indices, data, num_nodes, batch, device)
        for runner in runners.values():  # warm-up
            time_block(runner, args.warmup, device)
        times = {name: [] for name in runners}
        order = list(runners)
        for rep in range(args.repeats):
            # alternate the order too, so no variant always runs right after the same neighbour
            for name in (order if rep % 2 == 0 else order[::-1]):
                times[name].append(time_block(runners[name], args.rounds, device))
        peaks = {name: memory.measure(runner.round) for name, runner in runners.items()}
        if args.profile:
            steps = steps_per_round(alg)
            for name in (f"stack:{executions[0]}", "central"):
                column = f"{alg} stack" if name != "central" else "centralized"
                per_round = profile_round(runners[name], args.rounds)
                args.profiles.setdefault(f"N={num_nodes} B={batch}", {})[column] = {
                    k: v if k == "top" else v / (steps if name != "central" else 1) for k, v in per_round.items()}
        median = {name: statistics.median(v) for name, v in times.items()}
        spread = {name: (min(v), max(v)) for name, v in times.items()}
        for ex in executions:
            key = f"stack:{ex}"
            stack = runners[key].problem.stack
            rows.append({
                "setting": f"N={num_nodes} B={batch}", "num_nodes": num_nodes, "batch": batch,
                "optimizer": alg, "execution": stack.execution + ("+compiled" if stack.compile == "on" else ""),
                "requested": ex,
                "stack_ms": median[key], "stack_range": spread[key],
                "loop_ms": median["loop"], "loop_range": spread["loop"],
                "central_ms": median["central"], "central_range": spread["central"],
                "stack_mb": peaks[key], "loop_mb": peaks["loop"], "central_mb": peaks["central"],
            })
        if args.verbose:
            print(f"  done N={num_nodes} B={batch} {alg}", flush=True)
    return rows


def steps_per_round(optimizer: str) -> int:
    """Local gradient steps in one round (DiNNO's primal steps; one for DSGD and DSGT)."""
    return DINNO_CFG["primal_iterations"] if optimizer == "dinno" else 1


def per_step_ratio(row) -> float:
    """A round's time per local gradient step against one centralized step on the pooled batch."""
    return row["stack_ms"] / steps_per_round(row["optimizer"]) / row["central_ms"]


def print_table(rows) -> None:
    header = ["setting", "optimizer", "execution", "stack ms/round", "loop ms/round", "central ms/step",
              "stack/central", "per step", "loop/stack", "peak MiB stack/loop/central"]
    cells = [header]
    for r in rows:
        cells.append([r["setting"], r["optimizer"], r["execution"],
                      f"{r['stack_ms']:.1f} ({r['stack_range'][0]:.1f}-{r['stack_range'][1]:.1f})",
                      f"{r['loop_ms']:.1f} ({r['loop_range'][0]:.1f}-{r['loop_range'][1]:.1f})",
                      f"{r['central_ms']:.1f} ({r['central_range'][0]:.1f}-{r['central_range'][1]:.1f})",
                      f"{r['stack_ms'] / r['central_ms']:.2f}x", f"{per_step_ratio(r):.2f}x",
                      f"{r['loop_ms'] / r['stack_ms']:.2f}x",
                      f"{r['stack_mb']:.1f} / {r['loop_mb']:.1f} / {r['central_mb']:.1f}"])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def check_targets(rows, reference: str) -> bool:
    """PASS/FAIL of the speed targets, judged on the rows of the ``reference`` execution."""
    ref = [r for r in rows if r["requested"] == reference]
    results = []
    for r in ref:  # per local step against the centralized step on the pooled batch
        limit = PER_STEP_TARGETS.get((r["num_nodes"], r["batch"], r["optimizer"]))
        if limit is not None:
            ratio = per_step_ratio(r)
            results.append((f"{r['setting']} {r['optimizer']}: stack per step <= {limit}x centralized step",
                            ratio <= limit, f"{ratio:.2f}x"))
    for r in ref:
        ratio = r["loop_ms"] / r["stack_ms"]
        results.append((f"{r['setting']} {r['optimizer']}: stack not slower than loop", ratio >= 1.0,
                        f"loop/stack {ratio:.2f}x"))
    for r in ref:
        if r["num_nodes"] == 100 and r["batch"] == 8:
            ratio = r["loop_ms"] / r["stack_ms"]
            results.append((f"{r['setting']} {r['optimizer']}: stack >= 3x faster than loop", ratio >= 3.0,
                            f"loop/stack {ratio:.2f}x"))
    print(f"\ntargets (stack execution {reference}):")
    for label, ok, value in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}  ({value})")
    return all(ok for _, ok, _ in results)


def profile_category(op_name: str) -> str:
    """The category of one aten operator (``aten::bmm`` -> "matrix products"); "element-wise and other"
    for the rest (activations, losses, reductions, the DiNNO penalty)."""
    name = op_name.removeprefix("aten::")
    for category, parts in PROFILE_CATEGORIES:
        if any(part in name for part in parts):
            return category
    return "element-wise and other"


def profile_round(runner, rounds: int) -> dict[str, float]:
    """Milliseconds per round by category of the aten operators' own (self) CPU time, "total" (wall) and
    "top" (the five operators with the most time, as text)."""
    from torch.profiler import ProfilerActivity, profile

    by_category: dict[str, float] = {}
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            runner.round()
    total = (time.perf_counter() - start) * 1000.0 / rounds
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            category = profile_category(event.key)
            by_category[category] = by_category.get(category, 0.0) + event.self_cpu_time_total / 1000.0 / rounds
    by_category["outside aten (Python, dispatch)"] = max(0.0, total - sum(by_category.values()))
    by_category["total"] = total
    ops = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    by_category["top"] = ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / 1000.0 / rounds:.1f}"
                                   for e in ops[:5])
    return by_category


def print_profiles(profiles) -> None:
    """One table per setting: each column a profiled variant, each row a category, ms per local step."""
    categories = [c for c, _ in PROFILE_CATEGORIES] + ["element-wise and other", "outside aten (Python, dispatch)",
                                                       "total"]
    for setting, columns in profiles.items():
        print(f"\nprofile {setting}: ms per local step (the profiler's own cost included)")
        names = list(columns)
        widths = [max(len(c) for c in categories)] + [max(12, len(n)) for n in names]
        print("  ".join(t.ljust(w) for t, w in zip(["category"] + names, widths)))
        for category in categories:
            cells = [category] + [f"{columns[n].get(category, 0.0):.2f}" for n in names]
            print("  ".join(t.ljust(w) for t, w in zip(cells, widths)))
        for name in names:
            print(f"  {name}, most time per round (ms): {columns[name]['top']}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per timed block (default 20)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed blocks per variant, interleaved; medians are reported (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per variant first (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--execution", default="auto",
                        help="node-stack execution(s), comma separated from auto, grouped, vmap, loop, each "
                             "optionally +compile (compiled training steps); 'all' = grouped,vmap,loop. Targets "
                             "are judged on the first (default auto)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZER_NAMES),
                        help="comma separated subset of dinno,dsgd,dsgt")
    parser.add_argument("--settings", default=",".join(f"{n}x{b}" for n, b in SETTINGS),
                        help="comma separated NODESxBATCH settings (default 10x64,100x8)")
    parser.add_argument("--data-dir", default=None, help=f"MNIST folder (default {SHARED_MNIST})")
    parser.add_argument("--verbose", action="store_true", help="print progress")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the first execution's round and the centralized step (torch.profiler) "
                             "and print where the time goes, by kind of operator")
    args = parser.parse_args(argv)
    args.executions = ["grouped", "vmap", "loop"] if args.execution == "all" else args.execution.split(",")
    for ex in args.executions:
        form, _, compiled = ex.partition("+")
        if form not in ("auto", "grouped", "vmap", "loop") or compiled not in ("", "compile"):
            parser.error(f"--execution: unknown execution {ex!r} (a form, optionally with +compile)")
    args.optimizers = args.optimizers.split(",")
    for alg in args.optimizers:
        if alg not in OPTIMIZER_NAMES:
            parser.error(f"--optimizers: unknown optimizer {alg!r}")
    args.settings = [tuple(int(v) for v in s.lower().split("x")) for s in args.settings.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_x, train_y, val_x, val_y, source = load_data(args.data_dir)
    data = (train_x, train_y, val_x, val_y)
    memory = PeakMemory(device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, load average before {load[0]:.2f}" if load else "")
    print(f"data: {source}, {len(train_y)} training samples, random split, cycle graph")
    print(f"timing: {args.warmup} warm-up rounds, then {args.repeats} interleaved blocks of {args.rounds} "
          f"rounds per variant; medians (min-max over blocks)")
    print(f"peak memory of one round: {memory.method}")
    rows = []
    args.profiles = {}
    for num_nodes, batch in args.settings:
        rows += bench_setting(num_nodes, batch, data, args.executions, args, device, memory)
    print()
    print_table(rows)
    if args.profiles:
        print_profiles(args.profiles)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"\nload average after: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    check_targets(rows, args.executions[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
