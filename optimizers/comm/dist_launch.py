"""Starting and ending a rank of a ``torchrun`` job.

``torchrun --nproc-per-node K script.py`` (or K processes started by hand with the same variables)
gives each process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. ``init_distributed``
reads them, picks the backend (``auto``: NCCL for a CUDA device, else gloo), maps the rank to
``cuda:LOCAL_RANK`` when the device is CUDA, and starts the process group with a timeout
(``dist_timeout_s``, default 60 s) after which a collective or exchange waiting on a silent peer
fails instead of hanging. ``exit_on_peer_loss`` turns such a failure into one line on stderr and
exit status 1 without waiting for the shutdown of a group whose peer is gone.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from optimizers.comm.distributed import HEARTBEAT_S, PeerLostError, start_heartbeat

BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int
    restart: int = 0  # how many times torchrun restarted the workers (--max-restarts)
    run_id: str = ""  # the job's id: the same for every restart of one torchrun job


def rank_env(environ=os.environ) -> RankEnv | None:
    """The torchrun variables of this process; None when it was not started as a rank."""
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must all be integers when set "
                         f"(got RANK={environ.get('RANK')!r}, WORLD_SIZE={environ.get('WORLD_SIZE')!r}, "
                         f"LOCAL_RANK={environ.get('LOCAL_RANK')!r})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0 (got RANK={rank}, "
                         f"WORLD_SIZE={world}, LOCAL_RANK={local})")
    restart = int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    return RankEnv(rank, world, local, restart, environ.get("TORCHELASTIC_RUN_ID", ""))


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend == "auto":
        return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("backend nccl needs a CUDA device (use gloo on CPU)")
    return backend


def init_distributed(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
                     device: str | torch.device = "cpu") -> tuple[RankEnv, torch.device]:
    """Join the torchrun job this process belongs to; returns its ranks and its device."""
    env = rank_env()
    if env is None:
        raise RuntimeError("not started by torchrun: RANK and WORLD_SIZE are not set")
    if not timeout_s > 0:
        raise ValueError(f"dist_timeout_s must be positive (got {timeout_s})")
    device = torch.device(device)
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} has no GPU: this host has "
                             f"{torch.cuda.device_count()} (use at most that many processes per node)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    backend = resolve_backend(backend, device)
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # a timed-out wait raises, not aborts
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, store=_attempt_store(env),
                            timeout=timedelta(seconds=timeout_s),
                            device_id=device if backend == "nccl" else None)
    global _heartbeat
    _heartbeat = start_heartbeat()  # lets the others name this rank if it dies or hangs
    return env, device


def _attempt_store(env: RankEnv):
    """After a restart (torchrun --max-restarts), the job's store with this attempt's own key prefix.
    torchrun serves one store for every attempt, so the keys the lost attempt's ranks left there (the
    backend's addresses among them) would otherwise be read by the new ranks before they overwrite them.
    None for a first attempt: the usual env:// rendezvous."""
    if not env.restart:
        return None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world_size,
                          is_master=not agent and env.rank == 0, timeout=timedelta(seconds=300))
    return dist.PrefixStore(f"nndt/attempt_{env.restart}", store)


_heartbeat = None  # set to stop this rank's heartbeat


def exit_on_peer_loss(main: Callable[[], int | None]) -> int | None:
    """Run ``main``; when a peer is lost print one line and exit 1 at once (a clean shutdown of the
    process group would wait on the lost peer). A rank of a job that ends normally also leaves at once
    with ``main``'s status once its output is flushed: the ranks finish at different times (rank 0 runs
    the centralized baseline last), and tearing down a process group whose peers are exiting at the
    same moment can abort the process in the backend's destructors."""
    try:
        result = main()
    except PeerLostError as error:
        if _heartbeat is not None:
            _heartbeat.set()
        print(f"error: {error}", file=sys.stderr, flush=True)
        if dist.is_initialized() and dist.get_rank() == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            time.sleep(3 * HEARTBEAT_S)  # this process hosts the job's store: let the others finish asking it
        os._exit(1)
    if dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if result is None else int(result))
    return result
